"""Curricula (grokloop/curriculum.py, datagen/mixture.py): the mixture's splits and replay, the
plan of every mode, gating and chaining of stages, exact resume mid-curriculum after SIGKILL, the
transfer metrics against a hand-computed matrix, and config errors."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import sigkill_when_checkpointed
from omegaconf import OmegaConf

from datagen import build_dataset, data_config_from_dict
from datagen.tables import table_overlap
from grokloop import cli
from grokloop.checkpoint import last_good_checkpoint
from grokloop.curriculum import checked, plan, run_curriculum, transfer_metrics
from grokloop.train import init_from
from probes.fourier import stage_spectra

# A model small enough that a stage on a 121-cell table takes well under a second.
TINY = [
    "curriculum=tiny",
    "model.d_model=16",
    "model.n_heads=2",
    "model.d_mlp=32",
    "optim.lr=0.01",
    "train.eval_every_min=5",
    "train.eval_every_max=10",
    "train.checkpoint_every_max=10",
    "train.progress=false",
    "train.report=false",
]


def command(tmp_path, *overrides):
    cmd = OmegaConf.to_object(
        cli.compose(
            "curriculum",
            TINY + [f"out_dir={tmp_path / 'cur'}", f"data_cache={tmp_path / 'cache'}", *overrides],
        )
    )
    return checked(cmd), Path(cmd.out_dir), cmd.resume


def table(op, modulus=127):
    return {"task": "table", "op": op, "modulus": modulus, "train_fraction": 0.5, "seed": 0}


# --- the mixture dataset ------------------------------------------------------------------------


def test_mixtures_in_another_part_order_are_cached_apart(tmp_path):
    from datagen import config_hash, load_or_build

    parts = {"xor": table("xor"), "add": table("add"), "mul": table("mul")}
    forward = {"task": "mixture", "parts": parts, "train_on": ["add"], "replay": 0.5}
    # the same parts and trained stage, stacked the other way: mul, not xor, comes before add
    backward = forward | {"parts": dict(reversed(parts.items()))}
    a, b = data_config_from_dict(forward), data_config_from_dict(backward)
    assert config_hash(a) != config_hash(b)
    load_or_build(a, tmp_path)
    got = load_or_build(b, tmp_path)  # not the forward mixture from the cache
    assert list(got.stats["n_replayed"]) == ["mul"]


def test_a_small_held_out_split_is_halved_between_test_and_valid():
    from datagen.mixture import eval_size_of

    assert eval_size_of(8192, 2000) == 2000  # enough for both: each takes eval_size
    assert eval_size_of(3001, 2000) == 1501 and eval_size_of(10, 2000) == 5
    cfg = {"task": "mixture", "parts": {"xor": table("xor")}, "train_on": ["xor"]}
    ds = build_dataset(data_config_from_dict(cfg | {"eval_size": 10**6}))
    test, valid = set(ds.splits["test_xor"].tolist()), set(ds.splits["valid_xor"].tolist())
    held = len(build_dataset(data_config_from_dict(table("xor"))).splits["test"])
    assert not test & valid and len(test) + len(valid) == held and len(test) - len(valid) in (0, 1)


def test_mixture_trains_one_part_replays_earlier_ones_and_evaluates_every_part():
    parts = {"xor": table("xor"), "add": table("add"), "sub": table("sub"), "mul": table("mul")}
    cfg = data_config_from_dict(
        {"task": "mixture", "parts": parts, "train_on": ["sub"], "replay": 0.25, "eval_size": 500}
    )
    ds = build_dataset(cfg)
    alone = {n: build_dataset(data_config_from_dict(d)) for n, d in parts.items()}
    offset = {n: s["offset"] for n, s in ds.stats["parts"].items()}
    span = {n: range(offset[n], offset[n] + len(alone[n])) for n in parts}
    train = set(ds.splits["train"].tolist())
    part_of = lambda i: next(n for n in parts if i in span[n])  # noqa: E731

    # every training cell of the trained part, the same examples as the part alone
    sub_train = set((alone["sub"].splits["train"] + offset["sub"]).tolist())
    assert sub_train <= train
    assert np.array_equal(
        ds.inputs[offset["sub"] : offset["sub"] + len(alone["sub"])], alone["sub"].inputs
    )
    # replay: a quarter of the training split, evenly from the parts BEFORE sub, their train cells
    replayed = train - sub_train
    assert len(replayed) == round(0.25 / 0.75 * len(sub_train))
    assert abs(len(replayed) / len(train) - 0.25) < 1e-3
    by_part = {n: {i for i in replayed if part_of(i) == n} for n in parts}
    assert abs(len(by_part["xor"]) - len(by_part["add"])) <= 1 and not by_part["mul"]
    for n in ("xor", "add"):
        assert by_part[n] <= set((alone[n].splits["train"] + offset[n]).tolist())
    # every part has its held-out split: its own test cells, never trained
    for n in parts:
        test = ds.splits[f"test_{n}"]
        assert len(test) == 500 and set(test.tolist()) <= set(
            (alone[n].splits["test"] + offset[n]).tolist()
        )
        assert not set(test.tolist()) & train
        # valid_NAME: as many more held-out cells, disjoint from test_NAME (the gate reads them)
        valid = set(ds.splits[f"valid_{n}"].tolist())
        assert len(valid) == 500 and not valid & set(test.tolist()) and not valid & train
        assert valid <= set((alone[n].splits["test"] + offset[n]).tolist())
    # one vocabulary: a token means the same thing in every part; the op token names the part
    assert ds.vocab.tokens == alone["xor"].vocab.tokens
    for n in parts:
        assert set(ds.inputs[list(span[n]), 1].tolist()) == {ds.vocab.id(f"<op_{n}>")}


def test_mixture_refuses_parts_on_other_vocabularies_and_replay_with_nothing_before():
    cfg = data_config_from_dict(
        {
            "task": "mixture",
            "train_on": ["xor"],
            "parts": {"xor": table("xor"), "mod": {"task": "modular", "p": 11, "op": "add"}},
        }
    )
    with pytest.raises(ValueError, match="'mod'.*another vocabulary"):
        build_dataset(cfg)
    with pytest.raises(ValueError, match="no part comes before 'xor'"):
        data_config_from_dict(
            {"task": "mixture", "parts": {"xor": table("xor")}, "train_on": ["xor"], "replay": 0.5}
        )


# --- the plan of each mode ----------------------------------------------------------------------


def test_plan_of_every_mode(tmp_path):
    cmd, out, _ = command(
        tmp_path,
        "curriculum.replay=0.25",
        "curriculum.reset_optimizer=false",
        "curriculum.stage_budget=40",
        "curriculum.stages.mul.steps=90",
        "curriculum.stage_steps=60",
    )
    stages = plan(cmd, out)
    assert [s.name for s in stages] == ["add", "sub", "mul"]
    assert [s.cfg.train.steps for s in stages] == [40, 40, 60]  # the cap beats a stage's own 90
    first, second = stages[0].cfg, stages[1].cfg
    assert first.train.init_from is None and first.data.replay == 0
    assert second.train.init_from == str(stages[0].run_dir) and second.train.init_optimizer
    assert second.data.replay == 0.25 and second.data.train_on == ["sub"]
    assert second.train.stop_at_grok == "valid_sub"  # the gate reads valid; R reads test

    rev = plan(command(tmp_path, "curriculum.order=reversed")[0], out)
    assert [s.name for s in rev] == ["mul", "sub", "add"]
    assert list(rev[0].cfg.data.parts) == [
        "mul",
        "sub",
        "add",
    ]  # replay draws from what came before

    scratch = plan(command(tmp_path, "curriculum.mode=scratch")[0], out)
    assert all(s.cfg.train.init_from is None for s in scratch)

    (joint,) = plan(
        command(
            tmp_path,
            "curriculum.mode=joint",
            "curriculum.stage_budget=40",
            "curriculum.stages.mul.steps=70",
        )[0],
        out,
    )
    assert joint.trains == ["add", "sub", "mul"] and joint.cfg.train.steps == 50  # mean budget
    assert joint.cfg.train.stop_at_grok == "valid_add,valid_sub,valid_mul"


# --- running ------------------------------------------------------------------------------------


def test_gated_stages_chain_and_the_summary_holds_the_matrix(tmp_path):
    # add must reach accuracy 1.0 (it will not in 20 steps): it spends its budget; sub's gate is
    # 0.0, passed at its first evaluation; mul gets the default gate and budget.
    cmd, out, _ = command(
        tmp_path,
        "curriculum.stage_budget=20",
        "curriculum.stages.add.gate=1.0",
        "curriculum.stages.sub.gate=0.0",
    )
    summary = run_curriculum(cmd, out, spectra=stage_spectra)
    add, sub, mul = summary["per_stage"]
    assert (add["passed"], add["steps"]) == (False, 20)
    assert sub["passed"] and sub["steps"] == 5 == sub["steps_to_gate"]["sub"]
    # sub started from add's last checkpoint: its first evaluation is not the untrained model's
    first_sub = json.loads((out / sub["run_dir"] / "metrics.jsonl").read_text().splitlines()[0])
    last_add = json.loads((out / add["run_dir"] / "metrics.jsonl").read_text().splitlines()[-1])
    assert first_sub["weight_norm"] == pytest.approx(last_add["weight_norm"], rel=0.2)
    R = np.array(summary["matrix"])
    assert R.shape == (3, 3) and np.allclose(
        R[0], [last_add[f"acc/test_{n}"] for n in ("add", "sub", "mul")]
    )
    assert summary["ACC"] == pytest.approx(R[-1].mean())
    assert set(summary["per_stage"][0]["spectra"]) == {"fourier127", "walsh128"}


def test_b_is_the_untrained_models_accuracy_on_each_stage_test_cells(tmp_path):
    from grokloop.curriculum import initial_accuracy
    from grokloop.model import LoopedTransformer
    from grokloop.train.prepare import prepare

    cmd, out, _ = command(tmp_path, "curriculum.stage_budget=5")
    stages = plan(cmd, out)
    ds, _, cfg = prepare(stages[0].cfg)
    torch.manual_seed(cmd.seed)  # the model train builds from the seed, before any step
    model = LoopedTransformer(cfg.model).eval()
    expected = []
    for n in ("add", "sub", "mul"):
        idx = ds.splits[f"test_{n}"]
        with torch.no_grad():
            logits = model(torch.as_tensor(ds.inputs[idx]))
        guess = logits[torch.arange(len(idx)), torch.as_tensor(ds.answer_pos[idx])].argmax(-1)
        expected.append((guess == torch.as_tensor(ds.answers[idx])).float().mean().item())
    assert initial_accuracy(stages[0], ["add", "sub", "mul"]) == pytest.approx(expected)
    assert max(expected) < 0.5  # untrained: at or below chance


def test_init_from_loads_the_previous_stage_exactly(tmp_path):
    from grokloop.model import LoopedTransformer
    from grokloop.train import init_from

    cmd, out, _ = command(tmp_path, "curriculum.stage_budget=10")
    summary = run_curriculum(cmd, out)
    stages = plan(cmd, out)
    model = LoopedTransformer(cmd.model.resolved(142, 4))
    init_from(model, None, stages[0].run_dir)
    weights, _, _ = last_good_checkpoint(stages[0].run_dir)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())
    assert summary["per_stage"][0]["steps"] == 10


def test_distillation_keeps_the_previous_stage_answers_on_replayed_cells_only(tmp_path):
    from grokloop.model import LoopedTransformer
    from grokloop.train.distill import distill_loss, replayed_ids, teacher_answers
    from grokloop.train.prepare import prepare
    from grokloop.train.state import ResidentData

    cmd, out, _ = command(
        tmp_path, "curriculum.stage_budget=10", "curriculum.replay=0.5", "curriculum.distill=1"
    )
    summary = run_curriculum(cmd, out)
    stages = plan(cmd, out)
    assert [st.cfg.train.distill for st in stages] == [0.0, 1.0, 1.0] and summary["distill"] == 1
    # the teacher of stage sub: stage add's final model, on the add cells replayed into sub
    ds, _, cfg = prepare(stages[1].cfg)
    data = ResidentData.build(ds, [], None, False, torch.device("cpu"))
    teacher = teacher_answers(cfg, ds, data, torch.device("cpu"))
    add = ds.stats["parts"]["add"]
    assert len(teacher.idx) == ds.stats["n_replayed"]["add"] > 0
    assert bool((teacher.idx < add["offset"] + add["size"]).all())
    assert torch.equal(teacher.idx, replayed_ids(cfg, ds, data.train_idx))
    model = LoopedTransformer(cfg.model)
    init_from(model, None, stages[0].run_dir)
    sub_only = data.train_idx[data.train_idx >= ds.stats["parts"]["sub"]["offset"]][:8]
    both = torch.cat([teacher.idx[:8], sub_only])
    # the previous model itself: KL 0; a batch without replayed cells: no term at all
    assert distill_loss(model, teacher, data, both, 1).item() == pytest.approx(0, abs=1e-5)
    assert distill_loss(model, teacher, data, sub_only, 1).item() == 0
    with torch.no_grad():
        model.W_U_own.add_(torch.randn_like(model.W_U_own))
    assert distill_loss(model, teacher, data, both, 1).item() > 0.01


@pytest.mark.parametrize(
    "edit", ["project_bits", "project_random", "rescale_matched", "transplant_embedding"]
)
def test_an_edited_stage_starts_from_the_edited_previous_model(tmp_path, edit):
    from datagen.tables import walsh_basis
    from grokloop.curriculum.edits import bit_directions, project_out, removed_norm_fraction

    cmd, out, _ = command(
        tmp_path,
        "curriculum.stage_budget=5",
        f"curriculum.edit={edit}",
        "curriculum.edit_stage=sub",
    )
    summary = run_curriculum(cmd, out)
    add, sub, mul = plan(cmd, out)
    assert sub.cfg.train.init_from == str(out / "stages" / "01_sub.init") and sub.edit == edit
    assert mul.cfg.train.init_from == str(sub.run_dir) and summary["edit_stage"] == "sub"
    before = last_good_checkpoint(add.run_dir)[0]
    start = last_good_checkpoint(sub.cfg.train.init_from)[0]
    bits = torch.from_numpy(walsh_basis())[[1 << i for i in range(7)]]
    along_bits = lambda W: (bits @ W[:128].double()).norm()  # noqa: E731
    others = [k for k in before if k != "W_E"]
    if edit == "transplant_embedding":  # the embedding kept, everything else fresh
        assert torch.equal(start["W_E"], before["W_E"])
        assert not any(torch.equal(start[k], before[k]) for k in others if before[k].abs().sum())
        return
    # only the integer tokens' embeddings change
    assert all(torch.equal(start[k], before[k]) for k in others)
    assert torch.equal(start["W_E"][128:], before["W_E"][128:])
    delta = (start["W_E"] - before["W_E"])[:128].double()
    projected = project_out(before["W_E"].double(), bit_directions(before["W_E"].double()))
    if edit == "rescale_matched":  # same directions, the norm project_bits would leave
        ratio = start["W_E"][:128].double() / before["W_E"][:128].double()
        assert torch.allclose(ratio, ratio[0, 0].expand_as(ratio), atol=1e-4)
        assert removed_norm_fraction(before["W_E"], start["W_E"]) == pytest.approx(
            removed_norm_fraction(before["W_E"], projected), abs=1e-4
        )
        return
    assert torch.linalg.matrix_rank(delta, atol=1e-4) == 7  # a rank-7 projection
    if edit == "project_bits":
        assert along_bits(start["W_E"]) < 1e-4 < along_bits(before["W_E"])
        # the study reads the share of the norm the edit removed from the two checkpoints
        from reports.curriculum import load_curriculum

        assert load_curriculum(out)["edit_removed"] == pytest.approx(
            removed_norm_fraction(before["W_E"], start["W_E"])
        )


def test_transpose_probe_splits_held_out_cells_by_whether_their_transpose_trained(tmp_path):
    from probes.transpose import transpose_accuracy

    cmd, out, _ = command(tmp_path, "curriculum.stage_budget=5")
    run_curriculum(cmd, out)
    add = plan(cmd, out)[0]
    got = transpose_accuracy(add.run_dir, "test_add")
    ds = build_dataset(add.cfg.data)
    trained = {(a, b) for a, _, b, _ in ds.inputs[ds.splits["train"]].tolist()}
    held = ds.inputs[ds.splits["test_add"]].tolist()
    mirrored = sum((b, a) in trained for a, _, b, _ in held)
    assert (got["n_mirrored"], got["n_rest"]) == (mirrored, len(held) - mirrored)
    assert 0 < mirrored < len(held) and 0 <= got["mirrored"] <= 1 and 0 <= got["rest"] <= 1


def test_shrink_and_perturb_mixes_every_chained_start_with_a_fresh_model(tmp_path):
    from grokloop.model import LoopedTransformer

    cmd, out, _ = command(tmp_path, "curriculum.stage_budget=5", "curriculum.shrink=0.75")
    run_curriculum(cmd, out)
    add, sub, mul = plan(cmd, out)
    assert [st.edit for st in (add, sub, mul)] == ["none", "shrink_perturb", "shrink_perturb"]
    torch.manual_seed(cmd.seed)
    fresh = LoopedTransformer(cmd.model.resolved(142, 4)).state_dict()
    before = last_good_checkpoint(sub.run_dir)[0]
    start = last_good_checkpoint(mul.cfg.train.init_from)[0]
    for k, v in before.items():
        assert torch.allclose(start[k], 0.75 * v + 0.25 * fresh[k], atol=1e-6), k


@pytest.mark.slow
def test_resume_after_sigkill_mid_curriculum_is_exact(tmp_path):
    over = TINY + [
        "curriculum.stage_budget=120",
        "curriculum.gate=1.0",
        "model.dropout=0.1",
        f"data_cache={tmp_path / 'cache'}",
    ]
    cmd = [sys.executable, "-m", "grokloop.curriculum", *over]
    subprocess.run(
        cmd + [f"out_dir={tmp_path / 'full'}"], check=True, capture_output=True, cwd=tmp_path
    )
    killed = tmp_path / "killed"
    second = killed / "stages" / "01_sub"  # killed inside the second stage
    sigkill_when_checkpointed(cmd + [f"out_dir={killed}"], tmp_path, second, 40)
    assert not (second / "summary.json").exists(), "the stage finished before it could be killed"
    subprocess.run(
        cmd + [f"out_dir={killed}", "resume=true"], check=True, capture_output=True, cwd=tmp_path
    )

    def rows(run):
        return [
            {k: v for k, v in json.loads(r).items() if k != "wall_time_s"}
            for r in run.read_text().splitlines()
        ]

    for stage in ("00_add", "01_sub", "02_mul"):
        assert rows(killed / "stages" / stage / "metrics.jsonl") == rows(
            tmp_path / "full" / "stages" / stage / "metrics.jsonl"
        )
    full, resumed = (
        json.loads((d / "summary.json").read_text()) for d in (tmp_path / "full", killed)
    )
    assert full["matrix"] == resumed["matrix"] and full["BWT"] == resumed["BWT"]


def test_a_looped_model_runs_a_curriculum(tmp_path):
    cmd, out, _ = command(tmp_path, "model=looped", "curriculum.stage_budget=5")
    summary = run_curriculum(cmd, out)
    assert summary["model"].startswith("looped") and len(summary["matrix"]) == 3


# --- metrics and errors -------------------------------------------------------------------------


def test_transfer_metrics_match_a_hand_computed_matrix():
    R = [[0.90, 0.10, 0.00], [0.70, 0.95, 0.20], [0.60, 0.80, 0.99]]
    b = [0.01, 0.02, 0.03]
    m = transfer_metrics(R, b)
    assert m["ACC"] == pytest.approx((0.60 + 0.80 + 0.99) / 3)
    assert m["BWT"] == pytest.approx(((0.60 - 0.90) + (0.80 - 0.95)) / 2)  # -0.225
    assert m["FWT"] == pytest.approx(((0.10 - 0.02) + (0.20 - 0.03)) / 2)  # 0.125
    assert m["forgetting"] == pytest.approx([0.90 - 0.60, 0.95 - 0.80])


@pytest.mark.parametrize(
    "override, needle",
    [
        ("curriculum.mode=bogus", "curriculum.mode='bogus' is not one of"),
        ("curriculum.order=sideways", "forward, reversed or shuffled"),
        ("curriculum.edit=bogus", "curriculum.edit='bogus' is not one of"),
        ("curriculum.shrink=1.5", "curriculum.shrink=1.5 must be in [0, 1]"),
        ("curriculum.edit=project_bits", "an edit needs the stage it starts"),
        ("curriculum.edit=project_bits curriculum.edit_stage=add", "must name a stage after"),
        ("curriculum.replay=0.5 curriculum.mode=scratch", "mode=sequential only"),
        ("curriculum.stage_steps=0", "curriculum.stage_steps=0 must be at least 1"),
        ("curriculum.gate=abc", "curriculum.gate=abc"),
        ("curriculum.distill=1", "set curriculum.replay > 0 too"),
    ],
)
def test_config_errors_are_one_line_and_write_nothing(tmp_path, capsys, override, needle):
    from grokloop.curriculum.__main__ import main

    out = tmp_path / "cur"
    with pytest.raises(SystemExit) as e:
        main([*TINY, *override.split(), f"out_dir={out}", f"data_cache={tmp_path / 'cache'}"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and needle in err and err.count("\n") == 1, err
    assert not out.exists()


def test_resume_with_another_config_is_refused_and_changes_nothing(tmp_path):
    cmd, out, _ = command(tmp_path, "curriculum.stage_budget=5")
    run_curriculum(cmd, out)
    before = (out / "curriculum.json").read_text()
    other, _, _ = command(tmp_path, "curriculum.stage_budget=5", "curriculum.replay=0.25")
    with pytest.raises(ValueError, match="curriculum.replay: 0.0 -> 0.25"):
        run_curriculum(other, out, resume=True)
    with pytest.raises(FileExistsError, match="resume=true"):
        run_curriculum(cmd, out)
    assert (out / "curriculum.json").read_text() == before


# --- the study report ---------------------------------------------------------------------------


def fake(mode, seed, steps_to, budget=100, model="vanilla 1L"):
    """A curriculum summary with given steps to the gate per stage (None: budget spent)."""
    names = list(steps_to)
    spectra = {b: {"gini": 0.5, "top": [1, 2, 3]} for b in ("fourier127", "walsh128")}
    per = [
        {
            "stage": n,
            "trains": [n],
            "budget": budget,
            "steps": g or budget,
            "passed": g is not None,
            "steps_to_gate": {n: g},
            "n_eval": 100,
            "wall_time_s": 1.0,
            "spectra": spectra,
        }
        for n, g in steps_to.items()
    ]
    R = np.eye(len(names)) * 0.9
    s = {
        "curriculum": "c",
        "mode": mode,
        "order": "forward",
        "seed": seed,
        "replay": 0.0,
        "reset_optimizer": True,
        "model": model,
        "stages": names,
        "matrix": R.tolist(),
        "per_stage": per,
        "initial": [0.0] * len(names),
        "wall_time_s": len(names) * 1.0,
        "curves": [[{f"acc/valid_{n}": 0.9, f"acc/test_{n}": 0.9}] for n in names],
    }
    return s | (transfer_metrics(R, np.zeros(len(names))) if mode == "sequential" else {})


def test_transfer_is_survival_of_steps_to_the_gate_checked_by_hand():
    from scipy.stats import chi2

    from reports.curriculum import aggregate

    curricula = [
        fake("sequential", 0, {"a": 50, "b": 20, "c": None}),
        fake("sequential", 1, {"a": 50, "b": 40, "c": None}),
        fake("scratch", 0, {"a": 50, "b": 80, "c": 60}),
        fake("scratch", 1, {"a": 50, "b": 80, "c": None}),
    ]
    agg = aggregate(curricula)
    surv = agg["survival"]["vanilla 1L sequential"]
    assert surv["a"]["ratio"] == 1.0 and surv["a"]["logrank_p"] == pytest.approx(1.0)
    # b: medians 20 (S falls to 1/2 at the first of two events) and 80; the log-rank test by hand:
    # t=20: 4 at risk (2 + 2), 1 event in the curriculum, E = 2/4, V = 1/4; t=40: 3 at risk (1 +
    # 2), E = 1/3, V = 2/9; t=80: no curriculum run at risk. O - E = 2 - 5/6, V = 17/36.
    b = surv["b"]
    assert (b["km_median"], b["base_km_median"], b["ratio"]) == (20, 80, 4.0)
    assert b["logrank_p"] == pytest.approx(chi2.sf((7 / 6) ** 2 / (17 / 36), 1), rel=1e-6)
    # c: both curriculum seeds spent the budget (censored at 100, never a ratio of bounds)
    c = surv["c"]
    assert c["times"] == [100, 100] and c["events"] == [False, False]
    assert c["km_median"] is None and c["base_km_median"] == 60 and c["ratio"] is None
    assert 0 < c["logrank_p"] < 1
    assert agg["BWT"]["vanilla 1L sequential"]["mean"] == pytest.approx(-0.9)
    assert "vanilla 1L scratch" not in agg["survival"]
    # a stage the scratch runs never trained has no comparison
    other = [
        fake("sequential", 0, {"a": 5, "d": 5}, model="m"),
        fake("scratch", 0, {"a": 9}, model="m"),
    ]
    assert list(aggregate(other)["survival"]["m sequential"]) == ["a"]


def test_a_label_names_the_recipe_unless_every_configuration_shares_it():
    from reports.curriculum import label

    s = fake("sequential", 0, {"a": 1}) | {"recipe": "AdamW, lr 0.003", "tag": "arm"}
    assert label(s) == "vanilla 1L [AdamW, lr 0.003] sequential (arm)"
    assert label(s | {"show_recipe": False}) == "vanilla 1L sequential (arm)"


def test_an_edit_is_compared_with_the_same_ladder_unedited():
    from reports.curriculum import aggregate

    edited = {"edit": "project_bits", "edit_stage": "b"}
    curricula = [
        fake("sequential", 0, {"a": 10, "b": 20, "c": 30}),
        fake("sequential", 1, {"a": 10, "b": 25, "c": 30}),
        fake("sequential", 0, {"a": 10, "b": 80, "c": None}) | edited,
        fake("sequential", 1, {"a": 10, "b": 90, "c": None}) | edited,
    ]
    effect = aggregate(curricula)["edit_effect"]
    eff = effect["vanilla 1L sequential project_bits before b"]
    assert eff["baseline"] == "vanilla 1L sequential" and list(eff["stages"]) == ["b", "c"]
    b = eff["stages"]["b"]
    assert (b["km_median"], b["base_km_median"], b["ratio"]) == (80, 20, 0.25)
    assert b["times"] == [80, 90] and b["base_times"] == [20, 25] and b["logrank_p"] < 0.2


def test_kaplan_meier_curve_steps_down_at_each_event():
    from reports.survival import km_curve

    assert km_curve([20, 40, 100], [True, True, False]) == {
        "t": [0.0, 20.0, 40.0, 100.0],
        "surviving": [1.0, pytest.approx(2 / 3), pytest.approx(1 / 3), pytest.approx(1 / 3)],
    }


def test_study_writes_schema_rows_tables_and_report(tmp_path):
    from reports.curriculum import write_study
    from reports.readme import update

    for mode in ("sequential", "scratch"):
        cmd, _, _ = command(tmp_path, "curriculum.stage_budget=10", f"curriculum.mode={mode}")
        run_curriculum(cmd, tmp_path / mode)
    summary = write_study(
        tmp_path / "res",
        "demo",
        [tmp_path / "sequential", tmp_path / "scratch"],
        ["cmd"],
        transpose=True,
    )
    rows = summary["rows"]
    assert {"model", "split", "acc", "lo", "hi", "n", "after_stage", "seed"} <= set(rows[0])
    assert all(r["lo"] <= r["acc"] <= r["hi"] for r in rows)
    assert len([r for r in rows if r["seed"] == 0]) == 2 * 3 * 3  # 2 curricula x R[3, 3]
    # a configuration names the model and the mode; the one recipe they share is said once
    name = "vanilla 1L sequential"
    assert summary["recipe"] == "AdamW, lr 0.01, wd 1 (matrices), batch 1024, bf16"
    assert set(summary["ACC"]) == {name} and "matrix" in summary
    # transfer as survival against scratch, and FWT's parts: b per seed beside the table overlap
    surv = summary["survival"][name]
    assert set(surv) == set(summary["stages"]) and {"logrank_p", "km_median"} <= set(surv["add"])
    zs = summary["zero_shot"][name]
    assert list(zs) == summary["stages"][1:] and len(zs["sub"]["b"]) == 1
    assert zs["sub"]["overlap"] == pytest.approx(table_overlap("sub", "add", 11))
    md = (tmp_path / "res" / "summary.md").read_text()
    assert "log-rank p" in md and f"| {name} | sub | add |" in md
    assert "## Cost on this machine" in md and summary["code_version"]
    assert set(summary["transpose"][name]) == {"add", "mul"} and "looked up by symmetry" in md
    assert summary["cost"][name]["stage_wall_time_s"]["add"][0] > 0
    end = summary["stage_end"][name]["sub"]  # each stage's own valid and test where it ended
    assert end["test"][0] == summary["matrix"][name]["mean"][1][1] and 0 <= end["valid"][0] <= 1
    assert (tmp_path / "res" / "report.html").read_text().startswith("<!DOCTYPE html>")
    doc = (
        "<!-- results res/summary.md section=Transfer_and_forgetting -->\nold\n<!-- /results -->\n"
    )
    out = update(doc, tmp_path)
    assert f"| {name} |" in out and "old" not in out and update(out, tmp_path) == out


def test_mixture_pads_parts_of_different_lengths_and_fills_missing_roles():
    base = dict(
        task="composition", n_entities=60, n_relations=6, out_degree=3, phi=2.0, eval_size=50
    )
    cfg = data_config_from_dict(
        {
            "task": "mixture",
            "parts": {"h2": base | {"hops": [2]}, "h3": base | {"hops": [3]}},
            "train_on": ["h3"],
            "held_out": "test_inferred_id",
        }
    )
    ds = build_dataset(cfg)
    h2 = build_dataset(data_config_from_dict(base | {"hops": [2]}))
    size = ds.stats["parts"]["h2"]["size"]
    assert ds.n_ctx == h2.n_ctx + 1  # one more relation
    assert np.array_equal(ds.inputs[:size, : h2.n_ctx], h2.inputs)
    assert (ds.inputs[:size, h2.n_ctx :] == ds.vocab.id("<pad>")).all()
    assert (ds.roles["bridge_2"][:size] == -1).all() and (ds.roles["bridge_2"][size:] >= 0).any()
    with pytest.raises(ValueError, match="no split 'test'"):
        build_dataset(
            data_config_from_dict({"task": "mixture", "parts": {"h2": base}, "train_on": ["h2"]})
        )


def test_commutativity_is_read_from_the_table_itself():
    from datagen.tables import is_commutative

    assert all(is_commutative(op) for op in ("or", "xor", "gfmul", "add", "mul", "poly"))
    assert not any(is_commutative(op) for op in ("sub", "implies", "s5"))
