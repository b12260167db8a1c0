"""bank=DIR beyond `python -m grokloop.bank eval`: training (train.bank), probes and halting read
the bank a directory holds, each checked against the run before any work (one helper:
grokloop/bank.py bank_option), and a swapped bank changes what they measure while the same bank
does not."""

import json

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from grokloop import cli
from grokloop.bank import facts_sha256, load_bank
from grokloop.bank.__main__ import main as bank_main
from grokloop.checkpoint import load_model
from grokloop.config import run_config_from_dict
from grokloop.halting import main as halting_main
from grokloop.memory import FactBank
from grokloop.train import resume_changes, train
from grokloop.train.__main__ import main as train_main
from probes.__main__ import main as probes_main
from tests.test_memory import TINY_DATA

# the command, tiny: python -m grokloop.train experiment=... train.bank=DIR
EXPERIMENT = ["experiment=composition_cpu_loop2_memory_address", "debug=tiny", *TINY_DATA]


def run_config(cache, *over):
    d = OmegaConf.to_container(
        cli.compose("train", [*EXPERIMENT, f"data_cache={cache}", *over]), resolve=True
    )
    d.pop("out_dir"), d.pop("resume")
    return run_config_from_dict(d)


@pytest.fixture(scope="module")
def banked(tmp_path_factory):
    """Banks g1 (the training graph), g2 (graph G2: data.seed=1) and other (another vocabulary),
    and a tiny memory run trained from the command line reading g2 (train.bank)."""
    tmp = tmp_path_factory.mktemp("bank_option")
    cache = f"data_cache={tmp / 'cache'}"
    other = [a for a in TINY_DATA if not a.startswith("data.n_entities")] + ["data.n_entities=13"]
    for name, data in (("g1", TINY_DATA), ("g2", [*TINY_DATA, "data.seed=1"]), ("other", other)):
        bank_main(["build", "data=composition_cpu", *data, cache, f"out={tmp / name}"])
    train_main([*EXPERIMENT, cache, f"train.bank={tmp / 'g2'}", f"out_dir={tmp / 'run'}"])
    return tmp, cache


def test_training_with_train_bank_reads_that_bank_and_records_it(banked):
    tmp, _ = banked
    model, ds, config = load_model(tmp / "run")
    g2, manifest = load_bank(tmp / "g2", ds.vocab)
    assert not torch.equal(g2.ids(), FactBank.from_dataset(ds).ids())  # not the training graph
    assert torch.equal(model.memory.bank.ids(), g2.ids())  # what it trained reading
    first = load_model(tmp / "run", 10)[0]
    assert torch.equal(first.memory.bank.ids(), g2.ids())
    assert config["train"]["bank"] == str(tmp / "g2")
    assert config["train"]["bank_sha256"] == facts_sha256(g2) == manifest["facts_sha256"]


@pytest.mark.parametrize(
    "over, needle",
    [
        (["train.bank=NOPE"], "train.bank=NOPE is not a bank (no manifest.json)"),
        (["train.bank=other"], "was built for another vocabulary"),
        (["train.bank=g2", "model.memory=none"], "this run has no memory to read a bank"),
        (["train.bank=g2", "train.bank_sha256=abc"], "not train.bank_sha256=abc"),
        (["train.bank_sha256=abc"], "train.bank, which is not set"),
    ],
)
def test_a_bank_the_run_cannot_read_is_refused_before_anything_is_written(banked, over, needle):
    tmp, cache = banked
    over = [
        o.replace("=NOPE", f"={tmp / 'nope'}")
        .replace("=other", f"={tmp / 'other'}")
        .replace("=g2", f"={tmp / 'g2'}")
        for o in over
    ]
    with pytest.raises(SystemExit) as e:
        train_main([*EXPERIMENT, cache, *over, f"out_dir={tmp / 'refused'}"])
    assert e.value.code == 2 and needle.replace("NOPE", str(tmp / "nope")) in str(e.value)
    assert not (tmp / "refused").exists()


def test_a_resume_with_another_bank_is_refused_and_the_same_bank_is_the_same_run(banked):
    tmp, cache = banked
    run, cache = tmp / "run", cache.split("=", 1)[1]
    before = {f: (run / f).read_text() for f in ("config.json", "metrics.jsonl", "summary.json")}
    with pytest.raises(ValueError, match="train.bank: .*g2.* -> .*g1") as e:
        train(run_config(cache, f"train.bank={tmp / 'g1'}"), run, resume=True)
    assert "train.bank_sha256" in str(e.value) and "Nothing was changed" in str(e.value)
    with pytest.raises(ValueError, match="train.bank: .*g2.* -> None"):
        train(run_config(cache), run, resume=True)  # the training graph instead
    saved = json.loads((run / "config.json").read_text())  # same path, other facts
    saved["train"]["bank_sha256"] = "0" * 64
    with pytest.raises(ValueError, match="train.bank_sha256"):
        resume_changes(run, saved)
    done = train(run_config(cache, f"train.bank={tmp / 'g2'}"), run, resume=True)
    assert done["steps"] == 20  # finished: nothing to do
    assert before == {f: (run / f).read_text() for f in before}
    assert not (run / "resume_log.jsonl").exists()


def attention_rows(run, sub=""):
    lines = (run / "probes" / sub / "attention.jsonl").read_text().splitlines()
    return {
        (r["checkpoint"], r["split"], r["layer"], r["head"], r["query"], r["key"]): r["attention"]
        for r in map(json.loads, lines)
    }


def test_probes_read_the_bank_given_at_every_checkpoint(banked):
    tmp, _ = banked
    run = tmp / "run"
    args = [f"run_dir={run}", "probe=attention", "checkpoints=all", "n=8", "n_attention=4"]
    probes_main(args)
    own = attention_rows(run)
    probes_main([*args, f"bank={tmp / 'g2'}"])  # the bank it trained with: the same patterns
    assert attention_rows(run, "bank_g2") == own
    probes_main([*args, f"bank={tmp / 'g1'}"])  # another graph's: other patterns, each step
    swapped = attention_rows(run, "bank_g1")
    assert swapped.keys() == own.keys()
    steps = {k[0] for k in own}
    assert len(steps) >= 2 and all(
        any(swapped[k] != v for k, v in own.items() if k[0] == s) for s in steps
    )
    assert attention_rows(run) == own  # the run's own probes are untouched
    record = json.loads((run / "probes" / "bank_g1" / "attention.json").read_text())
    _, ds, _ = load_model(run)
    assert record["bank"]["facts_sha256"] == facts_sha256(load_bank(tmp / "g1", ds.vocab)[0])


def test_halting_reads_the_bank_given(banked):
    tmp, _ = banked
    run = tmp / "run"
    args = [f"run_dir={run}", "iterations=2", "max_steps=3", "batch_size=16"]
    selectors = {}
    for bank in (None, "g2", "g1"):
        halting_main(args + ([f"bank={tmp / bank}"] if bank else []))
        out = run / "halting" / (f"bank_{bank}" if bank else "")
        selectors[bank] = load_file(str(out / "selector.safetensors"))
    # the selector learns from the states the model reaches, which the bank read changes
    assert all(torch.equal(v, selectors["g2"][k]) for k, v in selectors[None].items())
    assert any(not torch.equal(v, selectors["g1"][k]) for k, v in selectors[None].items())
    results = json.loads((run / "halting" / "bank_g1" / "results.json").read_text())
    assert results["bank"]["path"] == str(tmp / "g1") and results["bank"]["n_facts"] > 0
    assert "bank" not in json.loads((run / "halting" / "results.json").read_text())


def test_probes_and_halting_refuse_a_bank_they_cannot_read(banked):
    tmp, cache = banked
    plain = tmp / "plain"  # a run without a memory
    train_main(
        [
            *EXPERIMENT,
            cache,
            "model.memory=none",
            "train.memory_address_loss=0",
            "train.steps=2",
            f"out_dir={plain}",
        ]
    )
    cases = [
        (plain, "g2", "this run has no memory to read a bank"),
        (tmp / "run", "other", "was built for another vocabulary"),
        (tmp / "run", "nope", "is not a bank (no manifest.json)"),
    ]
    for run, bank, needle in cases:
        for main, args in (
            (probes_main, ["probe=attention", "n=4"]),
            (halting_main, ["iterations=1"]),
        ):
            with pytest.raises(SystemExit) as e:
                main([f"run_dir={run}", f"bank={tmp / bank}", *args])
            assert e.value.code == 2 and needle in str(e.value), (run, bank, str(e.value))
            assert f"bank={tmp / bank}" in str(e.value)
        assert not (run / "probes" / f"bank_{bank}").exists()
        assert not (run / "halting").exists() or not (run / "halting" / f"bank_{bank}").exists()
