"""The authors' released data format, end to end (datagen/grokked_format.py): small folders
written here in their layout (composition with all seven test types, comparison, without
train.json, without vocab.json), round trips both ways, their loader's view of our export,
training and probing on an imported folder, and the two corruption modes of causal tracing."""

from __future__ import annotations

import json
import random
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from datagen import build_dataset, data_config_from_dict
from datagen.grokked_format import SPECIALS, authors_tokens, read_grokked, write_grokked
from grokloop import cli
from grokloop.config import run_config_from_dict

TOKEN = re.compile(r"<[^<>]+>")
SEVEN = {
    "id_atomic",
    "ood_atomic",
    "train_inferred",
    "test_inferred_iid",
    "test_inferred_ood",
    "test_OI",
    "test_IO",
}


def rec(query: list[str], answer: str, kind: str | None = None) -> dict:
    text = "".join(query)
    return {"input_text": text, "target_text": text + answer + "</a>"} | (
        {"type": kind} if kind else {}
    )


def write_folder(path: Path, train=None, valid=None, test=None, vocab=None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for name, obj in (("train", train), ("valid", valid), ("test", test), ("vocab", vocab)):
        if obj is not None:
            (path / f"{name}.json").write_text(json.dumps(obj))
    return path


def authors_composition(path: Path, n_e=16, n_r=5, deg=3, seed=0) -> dict:
    """A composition folder as the authors' notebook lays it out, with test_OI / test_IO as in
    the newer released files. Returns the records by type (and the atomic facts)."""
    rng = random.Random(seed)
    E, R = (lambda i: f"<e_{i}>"), (lambda i: f"<r_{i}>")
    atomic = {(h, r): rng.randrange(n_e) for h in range(n_e) for r in rng.sample(range(n_r), deg)}
    facts = sorted(atomic)
    first = facts[0]  # an OOD fact followed by an OOD fact
    ood = {first, next(f for f in facts if f[0] == atomic[first])} | set(rng.sample(facts, 3))
    by = {t: [] for t in SEVEN}
    train = []
    for f in facts:
        r = rec([E(f[0]), R(f[1])], E(atomic[f]))
        train.append(r)
        by["ood_atomic" if f in ood else "id_atomic"].append(r)
    n = 0
    for (h, r1), b in sorted(atomic.items()):
        for r2 in range(n_r):
            if (b, r2) not in atomic:
                continue
            r = rec([E(h), R(r1), R(r2)], E(atomic[(b, r2)]))
            o1, o2 = (h, r1) in ood, (b, r2) in ood
            kind = {
                (True, True): "test_inferred_ood",
                (True, False): "test_OI",
                (False, True): "test_IO",
            }.get((o1, o2))
            if kind is None:
                n += 1
                kind = "test_inferred_iid" if n % 7 == 0 else "train_inferred"
            if kind == "train_inferred":
                train.append(r)
            by[kind].append(r)
    assert all(by.values()), {k: len(v) for k, v in by.items()}
    test = [r | {"type": k} for k, rs in by.items() for r in rs]
    vocab = [E(i) for i in range(n_e)] + [R(i) for i in range(n_r)] + SPECIALS
    write_folder(path, train, by["test_inferred_ood"], test, vocab)
    return {"by": by, "atomic": atomic, "train": train}


def authors_comparison(path: Path, n_e=14, n_a=2, n_v=4, seed=0) -> dict:
    """A comparison folder as the authors' comparison.ipynb lays it out (train records typed)."""
    rng = random.Random(seed)
    value = {(e, a): rng.randrange(n_v) for e in range(n_e) for a in range(n_a)}
    E, A = (lambda i: f"<e_{i}>"), (lambda j: f"<attr_{j}>")
    train, test = [], []
    for a in range(n_a):
        ood = set(rng.sample(range(n_e), 3))
        for e in range(n_e):
            kind = "ood_atomic" if e in ood else "id_atomic"
            r = rec([E(e), A(a)], f"<{value[(e, a)]}>", kind)
            train.append(r)
            test.append(r)
        for e1 in range(n_e):
            for e2 in range(e1 + 1, n_e):
                if (e1 in ood) != (e2 in ood):
                    continue
                kind = (
                    "test_inferred_ood"
                    if e1 in ood
                    else ("test_inferred_iid" if rng.random() < 0.1 else "train_inferred")
                )
                for x, y in ((e1, e2), (e2, e1)):
                    label = f"<attr_{a}_{1 + np.sign(value[(x, a)] - value[(y, a)])}>"
                    r = rec([A(a), "<q>", E(x), "<mask>", E(y)], label, kind)
                    (train if kind == "train_inferred" else test).append(r)
                    if kind == "train_inferred" and rng.random() < 0.5:
                        test.append(r)
    vocab = (
        [E(i) for i in range(n_e)]
        + [A(j) for j in range(n_a)]
        + [f"<{k}>" for k in range(n_v)]
        + SPECIALS
        + [f"<attr_{j}_{c}>" for j in range(n_a) for c in range(3)]
    )
    valid = [{k: v for k, v in r.items()} for r in test if r["type"] == "test_inferred_ood"]
    write_folder(path, train, valid, test, vocab)
    return {"value": value}


def records(path: Path, name: str) -> list:
    return json.loads((path / f"{name}.json").read_text())


def as_set(items) -> set:
    return {json.dumps(r, sort_keys=True) for r in items}


# --- reading ---------------------------------------------------------------------------------------


def test_composition_folder_with_all_seven_types(tmp_path):
    fx = authors_composition(tmp_path / "c")
    ds = read_grokked(tmp_path / "c")
    assert ds.task == "composition" and len(ds.vocab) == 2 + 16 + 5
    names = {
        "atomic_id": "id_atomic",
        "atomic_ood": "ood_atomic",
        "train_inferred": "train_inferred",
        "test_inferred_id": "test_inferred_iid",
        "test_inferred_ood": "test_inferred_ood",
        "test_OI": "test_OI",
        "test_IO": "test_IO",
    }
    assert set(ds.splits) == set(names) | {"train"}
    for ours, theirs in names.items():
        assert len(ds.splits[ours]) == len(fx["by"][theirs]), ours
    assert len(ds.splits["train"]) == len(fx["train"])
    # bridges, recovered by chaining the atomic facts of train.json
    two = np.flatnonzero(ds.hops == 2)
    e0, r0 = ds.vocab.ranges["entities"][0], ds.vocab.ranges["relations"][0]
    for i in two:
        h, r1 = ds.inputs[i, 0] - e0, ds.inputs[i, 1] - r0
        assert ds.roles["bridge_1"][i] == e0 + fx["atomic"][(h, r1)]
        assert ds.role_pos["bridge_1"][i] == 1
    assert (ds.answer_pos == ds.hops).all()


def test_comparison_folder(tmp_path):
    fx = authors_comparison(tmp_path / "k")
    ds = read_grokked(tmp_path / "k")  # used to fail: max() arg is an empty sequence
    assert ds.task == "comparison"
    assert set(ds.splits) == {
        "train",
        "atomic_id",
        "atomic_ood",
        "train_inferred",
        "test_inferred_id",
        "test_inferred_ood",
    }
    assert "</a>" in ds.vocab.tokens and len(ds.vocab.range("labels")) == 2 * 3
    tok = ds.vocab.token
    for i in range(len(ds)):
        q = [tok(t) for t in ds.inputs[i, : ds.answer_pos[i] + 1]]
        if ds.answer_pos[i] == 1:  # <e><attr> -> <value>
            assert q[0].startswith("<e_") and q[1].startswith("<attr_")
            assert ds.role_pos["attribute"][i] == 1 and ds.role_pos["entity_1"][i] == 0
        else:  # <attr><q><e1><mask><e2> -> <attr_j_c>
            e1, e2 = int(q[2][3:-1]), int(q[4][3:-1])
            a = int(q[0][6:-1])
            assert tok(ds.roles["value_1"][i]) == f"<{fx['value'][(e1, a)]}>"
            assert tok(ds.roles["value_2"][i]) == f"<{fx['value'][(e2, a)]}>"
            assert tok(ds.answers[i]).startswith(f"<attr_{a}_")


def test_unknown_type_is_its_own_split_with_a_warning(tmp_path):
    authors_composition(tmp_path / "c")
    test = records(tmp_path / "c", "test")
    test[0] = test[0] | {"type": "my_probe"}
    (tmp_path / "c" / "test.json").write_text(json.dumps(test))
    with pytest.warns(UserWarning, match="my_probe"):
        ds = read_grokked(tmp_path / "c")
    assert len(ds.splits["my_probe"]) == 1


def test_folder_without_train_json_names_what_is_unknown(tmp_path):
    authors_composition(tmp_path / "c")
    (tmp_path / "c" / "train.json").unlink()
    test = records(tmp_path / "c", "test")  # the released test.json samples the atomic facts
    kept = [r for i, r in enumerate(test) if r["type"] != "id_atomic" or i % 2]
    (tmp_path / "c" / "test.json").write_text(json.dumps(kept))
    with pytest.warns(UserWarning) as got:
        ds = read_grokked(tmp_path / "c")
    said = " ".join(str(w.message) for w in got)
    assert "no train.json" in said and "bridge_1 is unknown (-1)" in said
    assert len(ds.splits["train"]) == 0 and "test_inferred_ood" in ds.splits
    from datagen.build import read_folder

    with pytest.raises(ValueError, match="no training records"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        read_folder(data_config_from_dict({"task": "grokked", "path": str(tmp_path / "c")}))


def test_folder_without_vocab_json(tmp_path):
    authors_comparison(tmp_path / "k")
    (tmp_path / "k" / "vocab.json").unlink()
    with pytest.warns(UserWarning, match="no vocab.json"):
        ds = read_grokked(tmp_path / "k")
    assert ds.task == "comparison" and len(ds.splits["train"])
    write_grokked(ds, tmp_path / "again")  # export writes the vocab.json back
    assert (tmp_path / "again" / "vocab.json").exists()


def test_nothing_to_read_and_bad_records_are_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="none of train.json"):
        read_grokked(tmp_path / "empty")
    write_folder(
        tmp_path / "bad", train=[{"input_text": "<e_1><r_2>", "target_text": "<e_1><r_2><e_3>"}]
    )
    with pytest.raises(ValueError, match="malformed record"):
        read_grokked(tmp_path / "bad")
    write_folder(tmp_path / "short", train=[rec(["<e_1>", "<r_2>"], "<e_3>")], vocab=["<e_1>"])
    with pytest.raises(ValueError, match="lacks 3 tokens"):
        read_grokked(tmp_path / "short")


# --- round trips --------------------------------------------------------------------------------


def ours(task: str):
    if task == "composition":
        return build_dataset(
            data_config_from_dict(
                dict(
                    task="composition",
                    n_entities=40,
                    n_relations=8,
                    out_degree=4,
                    phi=3.0,
                    eval_size=60,
                    valid_fraction=0.1,
                )
            )
        )
    return build_dataset(
        data_config_from_dict(
            dict(task="comparison", n_entities=30, n_attributes=3, n_values=5, eval_size=80)
        )
    )


@pytest.mark.parametrize("task", ["composition", "comparison"])
def test_ours_to_theirs_to_ours_is_lossless(tmp_path, task):
    ds = ours(task)
    write_grokked(ds, tmp_path / "a")
    back = read_grokked(tmp_path / "a")
    assert back.task == task and set(back.splits) == set(ds.splits)

    def facts(d, split, role=None):
        return sorted(
            (tuple(authors_tokens(d, i)[0]), authors_tokens(d, i)[1])
            + (
                (d.vocab.token(d.roles[role][i]) if d.roles[role][i] >= 0 else None,)
                if role
                else ()
            )
            for i in d.splits[split]
        )

    for s in ds.splits:
        assert facts(back, s) == facts(ds, s), s
    if task == "composition":  # same tokens, so the same vocabulary and roles
        assert back.vocab == ds.vocab
        for s in ds.splits:
            assert facts(back, s, "bridge_1") == facts(ds, s, "bridge_1"), s
    else:  # values carry over; the layout is theirs (one-to-one)
        for s in ds.splits:
            got = [(q, a, v and v.strip("<>v_")) for q, a, v in facts(back, s, "value_1")]
            want = [(q, a, v and v.strip("<>v_")) for q, a, v in facts(ds, s, "value_1")]
            assert got == want, s
    write_grokked(back, tmp_path / "b")
    for name in ("train", "valid", "test", "vocab"):
        assert records(tmp_path / "a", name) == records(tmp_path / "a", name)
        if name == "vocab":
            assert records(tmp_path / "a", name) == records(tmp_path / "b", name)
        else:
            assert as_set(records(tmp_path / "a", name)) == as_set(records(tmp_path / "b", name))


@pytest.mark.parametrize("make", [authors_composition, authors_comparison])
def test_theirs_to_ours_to_theirs_gives_the_same_records(tmp_path, make):
    make(tmp_path / "theirs")
    write_grokked(read_grokked(tmp_path / "theirs"), tmp_path / "again")
    for name in ("train", "valid", "test"):
        assert as_set(records(tmp_path / "theirs", name)) == as_set(
            records(tmp_path / "again", name)
        ), name
    assert records(tmp_path / "theirs", "vocab") == records(tmp_path / "again", "vocab")


@pytest.mark.parametrize("task", ["composition", "comparison"])
def test_the_authors_loader_reads_our_export(tmp_path, task):
    """Their main.py: read_data_source_target (a DataFrame with the first record's keys, so every
    record needs them), test.json as JSON with 'type', vocab.json a list for add_tokens; the
    seq2seq data prefix check (target starts with input) and loss on answer + </a>."""
    write_grokked(ours(task), tmp_path)
    vocab = records(tmp_path, "vocab")
    assert isinstance(vocab, list) and all(isinstance(t, str) for t in vocab)
    assert len(set(vocab)) == len(vocab) and "</a>" in vocab
    added = set(vocab)
    for name in ("train", "valid", "test"):
        data = records(tmp_path, name)
        assert isinstance(data, list) and data, name
        keys = list(data[0])
        assert {"input_text", "target_text"} <= set(keys)
        for item in data:
            assert all(k in item for k in keys), (name, item)  # DataFrame columns
            assert isinstance(item["input_text"], str) and isinstance(item["target_text"], str)
            tokens = TOKEN.findall(item["target_text"])
            assert "".join(tokens) == item["target_text"]  # nothing but added tokens
            assert set(tokens) <= added, set(tokens) - added
            assert item["target_text"].startswith(item["input_text"])
            assert (
                tokens[-1] == "</a>" and len(tokens) - len(TOKEN.findall(item["input_text"])) == 2
            )
        if name == "test":
            assert {r["type"] for r in data} <= SEVEN | {"valid"}
        if task == "comparison" and name == "train":
            assert {r["type"] for r in data} == {"id_atomic", "ood_atomic", "train_inferred"}
    test_ood = [
        {k: v for k, v in r.items() if k != "type" or task == "comparison"}
        for r in records(tmp_path, "test")
        if r["type"] == "test_inferred_ood"
    ]
    assert as_set(records(tmp_path, "valid")) == as_set(test_ood)


# --- training and probing on an imported folder ------------------------------------------------


def compose(overrides):
    d = OmegaConf.to_container(cli.compose("train", overrides), resolve=True)
    d.pop("out_dir"), d.pop("resume")
    return run_config_from_dict(d)


def test_train_and_probe_on_an_imported_folder(tmp_path):
    from grokloop.train import train
    from probes.__main__ import ProbesCommand, run_probes

    authors_composition(tmp_path / "c")
    cfg = compose(
        [
            "data=grokked",
            f"data.path={tmp_path / 'c'}",
            "debug=tiny",
            "train.steps=30",
            "model.n_core=2",
        ]
    )
    summary = train(cfg, tmp_path / "run")
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["data"] == {"task": "grokked", "path": str((tmp_path / "c").resolve())}
    assert config["dataset_hash"] == read_grokked(tmp_path / "c").content_hash()
    assert summary["steps"] == 30 and "acc/test_OI" in summary["final"]
    for mode in ("exists", "free"):
        run_probes(
            ProbesCommand(
                run_dir=str(tmp_path / "run"),
                probe=["logit_lens", "causal_tracing"],
                n=40,
                repeats=[1],
                patching_examples=4,
                n_attention=2,
                corruption=mode,
            )
        )
        rows = [
            json.loads(line)
            for line in (tmp_path / "run" / "probes" / "causal_tracing.jsonl")
            .read_text()
            .splitlines()
        ]
        summ = [r for r in rows if r["kind"] == "summary"]
        assert summ and all(r["corruption"] == mode for r in summ)
    lens = [
        json.loads(line)
        for line in (tmp_path / "run" / "probes" / "logit_lens.jsonl").read_text().splitlines()
    ]
    assert any(r.get("role") == "bridge_1" for r in lens)


def test_authors_protocol_trains_on_the_end_token(tmp_path):
    from grokloop.losses import answer_and_end_loss, cross_entropy, with_answer
    from grokloop.train import train

    authors_comparison(tmp_path / "k")
    cfg = compose(
        [
            "experiment=comparison_authors",
            f"data.path={tmp_path / 'k'}",
            "debug=tiny",
            "train.steps=30",
            "model.n_core=2",
            "train.batch_size=64",
        ]
    )
    assert cfg.train.loss_on_end_token and cfg.model.tied_embeddings and not cfg.model.unembed_bias
    train(cfg, tmp_path / "run")
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["model"]["n_ctx"] == 6  # 5 query positions + the answer before </a>

    # the loss is the mean cross-entropy of the answer and of </a> after it
    from grokloop.checkpoint import load_model

    model, ds, _ = load_model(tmp_path / "run")
    idx = torch.as_tensor(ds.splits["train"][:16])
    ap, ans = torch.as_tensor(ds.answer_pos)[idx], torch.as_tensor(ds.answers)[idx]
    tokens = with_answer(torch.as_tensor(ds.inputs)[idx], ap, ans)
    assert (tokens[torch.arange(16), ap + 1] == ans).all()
    end = ds.vocab.id("</a>")
    loss, _ = answer_and_end_loss(model, tokens, ap, ans, end, 1)
    logits = model(tokens)
    rows = torch.arange(16)
    want = (
        cross_entropy(logits[rows, ap], ans)
        + cross_entropy(logits[rows, ap + 1], torch.full_like(ans, end))
    ) / 2
    assert torch.allclose(loss, want, atol=1e-5)


def test_end_token_loss_refuses_data_without_an_end_token():
    from grokloop.train import prepare

    cfg = compose(
        ["data=comparison_small", "train.loss_on_end_token=true", "train.stop_at_grok=null"]
    )
    with pytest.raises(ValueError, match="needs a </a> token"):
        prepare(cfg)


# --- causal tracing: the two corruption modes --------------------------------------------------


def test_free_corruption_keeps_more_examples_than_exists(tmp_path):
    from probes.examples import corrupt, probe_batch

    # sparse like the paper's graph (each head has a quarter of the relations), so few corrupted
    # r1 queries exist in the data
    ds = build_dataset(
        data_config_from_dict(
            dict(task="composition", n_entities=100, n_relations=20, out_degree=5, phi=3.6)
        )
    )
    b = probe_batch(ds, "train_inferred", 300)
    for role in ("head", "relation_1", "relation_2"):
        _, answers_e, kept_e = corrupt(ds, b, role, mode="exists")
        bad, answers_f, kept_f = corrupt(ds, b, role, mode="free")
        assert len(kept_f) == len(b) and len(kept_e) <= len(kept_f), role
        if role == "relation_1":
            assert len(kept_e) < 0.7 * len(b)
        assert (answers_e >= 0).all() and (answers_f != b.answers[kept_f]).all()
        pos = int(b.role_pos[role][0])
        assert (bad[:, pos] != b.tokens[kept_f, pos]).all()
        others = [p for p in range(bad.shape[1]) if p != pos]
        assert (bad[:, others] == b.tokens[kept_f][:, others]).all()
    with pytest.raises(ValueError, match="corruption='loose'"):
        corrupt(ds, b, "head", mode="loose")


def test_an_experiments_stop_split_the_folder_lacks_gives_way_to_its_held_out_split(tmp_path):
    """python -m grokloop.train data=grokked data.path=DIR: the default experiment stops on
    `test`, which a composition folder lacks; unless the user named it, the run stops on the
    folder's held-out ID split instead (and says so); named, it is refused."""
    from grokloop import compose_run
    from grokloop.train import prepare
    from grokloop.train.__main__ import names_stop

    authors_composition(tmp_path / "c")
    cfg = compose_run("data=grokked", f"data.path={tmp_path / 'c'}")
    assert cfg.train.stop_at_grok == "test"
    assert prepare(cfg, stop_named=False)[2].train.stop_at_grok == "test_inferred_id"
    with pytest.raises(ValueError, match="stop_at_grok names 'test'"):
        prepare(cfg, stop_named=True)
    assert names_stop(["train.stop_at_grok=test"]) and not names_stop(["train.steps=3"])


def test_a_folder_option_on_a_generated_preset_names_the_preset_that_has_it(capsys):
    from grokloop.cli import UsageError
    from grokloop.train.__main__ import main

    with pytest.raises(UsageError):
        main(["experiment=composition_authors", "data.path=/nowhere"])
    assert "add data=grokked" in capsys.readouterr().err
