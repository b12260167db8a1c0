"""The fair contest between the selector and the valid-tuned exit rules (issue 36): the rules
tried, the choice on valid, measured FLOPs per fact, the paired bootstrap, and the pooled entries
of the adaptive summary."""

import numpy as np
import pytest
import torch

from grokloop.adaptive.contest import (
    MARGIN,
    accuracy_gain,
    candidate_exits,
    choose_rule,
    cumulative_rule_flops,
    family,
    flops_table,
    paired_bootstrap,
    rule_flops,
    rule_schedules,
    score_rules,
    selector_flops,
    tuned_per_family,
)
from grokloop.adaptive.halting import scored_split
from grokloop.adaptive.rules import scheduled, trajectory
from grokloop.adaptive.selector import HaltingConfig, Selector, rollout
from tests.test_adaptive import hand_traj


def side(correct, flops, steps=None):
    correct = torch.as_tensor(correct, dtype=torch.bool)
    flops = torch.as_tensor(flops, dtype=torch.float64)
    return {"correct": correct, "flops": flops, "steps": flops if steps is None else steps}


def test_the_valid_choice_respects_the_selectors_compute_or_accuracy():
    valid = {
        "cheap": side([1, 0, 0, 0], [1, 1, 1, 1]),
        "middle": side([1, 1, 1, 0], [2, 2, 2, 2]),
        "dear": side([1, 1, 1, 1], [9, 9, 9, 9]),
    }
    # the selector: accuracy 0.75 at mean FLOPs 2.5
    assert choose_rule(valid, 0.75, 2.5, "accuracy") == "middle"  # best within 2.5 FLOPs
    assert choose_rule(valid, 0.75, 2.5, "compute") == "middle"  # cheapest at >= 0.75
    assert choose_rule(valid, 1.0, 2.5, "compute") == "dear"
    # equal accuracy allows MARGIN: the selector's own valid accuracy is in-sample
    assert choose_rule(valid, 0.75 + MARGIN / 2, 2.5, "compute") == "middle"
    assert choose_rule(valid, 0.75 + 2 * MARGIN, 2.5, "compute") == "dear"
    assert choose_rule(valid, 0.75, 0.5, "accuracy") is None  # no rule is that cheap
    assert tuned_per_family({"conf>=0.9": valid["middle"], "conf>=0.99": valid["dear"]}) == {
        "conf": "conf>=0.99"
    }
    assert [family(r) for r in ("fixed_12", "length-1", "kl<1e-05", "argmax_3")] == [
        "fixed",
        "length",
        "kl",
        "argmax",
    ]


def test_paired_bootstrap_of_a_known_gain():
    n = 400
    rule = side(torch.arange(n) % 2 == 0, torch.ones(n))  # half right
    same = paired_bootstrap(accuracy_gain, rule, rule)
    assert same == (0.0, 0.0, 0.0)  # paired: identical sides never differ
    better = side(torch.arange(n) % 4 != 3, torch.ones(n))  # 3/4 right, a superset of rule's
    gain, lo, hi = paired_bootstrap(accuracy_gain, better, rule)
    assert gain == pytest.approx(0.25) and 0.2 < lo < gain < hi < 0.3


def test_candidates_read_length_thresholds_and_never_the_answer():
    # 2 facts, 4 steps: fact 0 (1 relation) right from step 1, fact 1 (3 relations) from step 3
    traj = hand_traj(
        [[1, 0], [1, 0], [1, 1], [1, 1]],
        [[0.95, 0.5], [0.99, 0.6], [0.99, 0.97], [0.99, 0.99]],
    )
    rules = candidate_exits(traj, torch.tensor([1, 3]))
    assert "oracle" not in rules
    assert rules["length+0"][0].tolist() == [0, 2]  # exit at step k
    assert rules["length+4"][0].tolist() == [3, 3]  # capped at T
    assert rules["conf>=0.9"][0].tolist() == [0, 2]
    assert rules["fixed_2"][0].tolist() == [1, 1]
    assert rules["max_confidence"][2] is True  # sees every step


def test_flops_are_measured_per_length_and_core_size(make_model):
    m = make_model(core_sizes=[1, 2], n_steps=2, injection="add")
    table = flops_table(m, [3, 5])
    small, large = table["step"]
    assert large[5] == 2 * small[5] > 0  # two layers cost twice one
    assert small[3] < small[5]  # longer queries cost more
    assert table["read"][5] > 0
    # a fixed exit pays its steps and one readout; a monitoring one a readout per step
    lengths = torch.tensor([5, 5])
    cum = cumulative_rule_flops(table, [0, 1], lengths, 3)
    assert cum[:, 0].tolist() == [small[5], small[5] + large[5], 2 * small[5] + large[5]]
    ex = torch.tensor([1, 2])
    fixed = rule_flops(table, cum, ex, lengths, monitors=False)
    watching = rule_flops(table, cum, ex, lengths, monitors=True)
    assert (watching - fixed).tolist() == [table["read"][5], 2 * table["read"][5]]


def test_selector_flops_follow_the_cores_it_ran(make_model):
    m = make_model(core_sizes=[1, 2], n_steps=2, injection="add")
    sel = Selector(m.config.d_model, 2)
    table = flops_table(m, [5], sel, sel.n_features)
    assert table["selector"] > 0
    cfg = HaltingConfig(max_steps=3)
    tokens = torch.randint(0, 23, (6, 5), generator=torch.Generator().manual_seed(0))
    out = rollout(m, sel, tokens, torch.full((6,), 4), torch.zeros(6, dtype=torch.long), cfg, True)
    assert (out["core_steps"].sum(-1) == out["steps"].long()).all()
    got = selector_flops(table, out, torch.full((6,), 5))
    small, large = table["step"][0][5], table["step"][1][5]
    want = (
        out["core_steps"][:, 0] * small
        + out["core_steps"][:, 1] * large
        + out["steps"] * (table["read"][5] + table["selector"])
    )
    assert torch.allclose(got, want.double())


def test_a_bank_lets_the_rules_run_every_schedule_of_its_blocks(make_model):
    single = make_model(n_core=1, n_steps=2, injection="add")
    assert rule_schedules(single, 4) == {"": list(single.schedule)}
    m = make_model(core_sizes=[1, 2], n_steps=2, injection="add")
    assert m.schedule == [0, 0]  # the default runs the small block throughout: core_0 is no new one
    assert rule_schedules(m, 4) == {"": [0, 0], "core_1/": [1], "cycle/": [0, 1]}
    # the contest scores each rule on its own schedule's trajectory and FLOPs
    gen = torch.Generator().manual_seed(0)
    n, L = 6, 5
    data = {
        "inputs": torch.randint(0, 23, (n, L), generator=gen),
        "answer_pos": torch.full((n,), L - 1),
        "answers": torch.randint(0, 23, (n,), generator=gen),
        "hops": torch.full((n,), 2),
    }
    sel = Selector(m.config.d_model, 2)
    table = flops_table(m, [L], sel, sel.n_features)
    cfg = HaltingConfig(max_steps=3)
    rules, _, _ = scored_split(m, sel, data, torch.arange(n), table, cfg)
    assert {"fixed_2", "core_1/fixed_2", "cycle/fixed_2", "cycle/conf>=0.9"} <= set(rules)
    small, large = table["step"][0][L], table["step"][1][L]
    base = table["prelude"][L] + table["read"][L]
    assert rules["fixed_2"]["flops"][0] == base + 2 * small
    assert rules["cycle/fixed_2"]["flops"][0] == base + small + large
    assert rules["core_1/fixed_3"]["flops"][0] == base + 3 * large
    with scheduled(m, [0, 1]):
        want = trajectory(m, data["inputs"], data["answer_pos"], data["answers"], 3)
    assert torch.equal(rules["cycle/fixed_3"]["correct"], want["correct"][2])
    assert m.schedule == [0, 0]  # restored
    assert family("cycle/conf>=0.9") == "cycle/conf" and family("core_1/fixed_3") == "core_1/fixed"


def test_score_rules_charges_all_steps_to_the_most_confident(make_model):
    m = make_model(n_core=1, n_steps=2, injection="add")
    table = flops_table(m, [5])
    traj = hand_traj([[1, 1], [1, 1], [1, 1]], [[0.2, 0.9], [0.9, 0.2], [0.3, 0.3]])
    scored = score_rules(
        traj, candidate_exits(traj, torch.tensor([4, 4])), table, [0], torch.tensor([5, 5])
    )
    assert scored["max_confidence"]["steps"].tolist() == [3, 3]
    assert (
        scored["max_confidence"]["flops"][0] == scored["fixed_3"]["flops"][0] + 2 * table["read"][5]
    )


def test_read_length_gives_the_selector_the_query_length(make_model):
    m = make_model(n_core=1, n_steps=2, injection="add")
    plain, reads = Selector(m.config.d_model, 1), Selector(m.config.d_model, 1, read_length=True)
    assert reads.n_features == plain.n_features + 2
    cfg = HaltingConfig(max_steps=3, read_length=True)
    tokens = torch.randint(0, 23, (4, 5), generator=torch.Generator().manual_seed(0))
    out = rollout(
        m, reads, tokens, torch.tensor([1, 2, 3, 4]), torch.zeros(4, dtype=torch.long), cfg, True
    )
    assert out["steps"].min() >= 1


def test_pooled_entries_join_every_seeds_facts_and_keep_each_gain():
    from reports.contest import pooled_entries

    def run(name, seed, sel_right, rule_right):
        n = len(sel_right)
        facts = {
            "hops": np.full(n, 2),
            "selector.correct": np.array(sel_right, bool),
            "selector.flops": np.full(n, 10.0),
            "fixed_4.correct": np.array(rule_right, bool),
            "fixed_4.flops": np.full(n, 20.0),
        }
        gain = np.mean(sel_right) - np.mean(rule_right)
        row = {"metric": "accuracy", "rule": "fixed_4", "gain": gain, "lo": 0, "hi": 0, "n": n}
        row["n_variants"] = 80
        row |= {"acc_gain": gain, "compute_saving": 0.5, "margin": 0.005}
        return {
            "name": name,
            "seed": seed,
            "contest_facts": facts,
            "halting": {
                "experiment": "x",
                "config": {"seed": seed, "max_steps": 4},
                "contest": {"rows": [row, row | {"metric": "compute", "gain": 0.5}]},
            },
        }

    runs = [run("m", 0, [1, 1, 1, 0] * 50, [1, 0, 1, 0] * 50), run("m", 1, [1] * 200, [1] * 200)]
    pooled = {e["metric"]: e for e in pooled_entries(runs)}
    acc = pooled["accuracy"]
    assert acc["n"] == 400 and acc["n_runs"] == 2 and acc["seed"] == "pooled"
    assert acc["gain"] == pytest.approx((150 + 200 - 100 - 200) / 400)
    assert acc["seed_gains"] == pytest.approx([0.25, 0.0])
    assert acc["lo"] < acc["gain"] < acc["hi"]
    assert pooled["compute"]["gain"] == pytest.approx(0.5)  # 1 - 10 / 20
    # each entry carries the other metric too: the accuracy a saving costs, and the reverse
    assert acc["compute_saving"] == pytest.approx(0.5)
    assert pooled["compute"]["acc_gain"] == pytest.approx(acc["gain"])


def test_selectors_of_one_model_share_its_rule_rows(make_model):
    from reports.adaptive import build
    from tests.test_adaptive import halting_runs

    runs, _ = halting_runs(make_model, [("m", 0), ("m", 0), ("m", 0)])
    for run, (label, seed) in zip(runs, [("state", 0), ("state", 1), ("length", 0)]):
        run["selector_label"] = label
        run["halting"]["config"] = run["halting"]["config"] | {"seed": seed}
    rows = build(runs)["rows"]
    per_run = [r for r in rows if r["seed"] == 0]
    fixed = [r for r in per_run if r["rule"] == "fixed_3" and r["split"] == "test_inferred_id"]
    assert len({r.get("hops") for r in fixed}) == len(fixed)  # once per hop count, not thrice
    sel = [r for r in per_run if r["rule"].startswith("selector.") and "hops" not in r]
    assert sorted((r["rule"], r["selector_seed"], r["split"]) for r in sel) == sorted(
        (rule, s, split)
        for rule, s in [("selector.state", 0), ("selector.state", 1), ("selector.length", 0)]
        for split in ("atomic_id", "test_inferred_id", "test_inferred_ood")
    )
    runs[1]["halting"]["config"]["seed"] = 0  # two selectors alike in label and seed
    with pytest.raises(SystemExit, match="selectors="):
        build(runs)
    # rules that may run longer score differently under the same names: one model, one max_steps
    runs[1]["halting"]["config"] |= {"seed": 1, "max_steps": 32}
    with pytest.raises(SystemExit, match="max_steps 32, .* names="):
        build(runs)


def test_the_summary_keeps_only_the_splits_asked_for():
    from reports.adaptive import only_splits

    splits = {"atomic_id": 1, "train_inferred": 2, "test_inferred_id": 3}
    assert only_splits(splits, ["test_inferred_id"]) == {"test_inferred_id": 3}
    with pytest.raises(ValueError, match="valid not evaluated"):
        only_splits(splits, ["valid"])


def test_compute_by_difficulty_pools_runs_by_their_facts():
    from reports.contest import by_hops_table

    rows = [
        {"model": "m", "method": "selector.x", "hops": 2, "n": 100, "acc": 1.0, "flops": 2e6},
        {"model": "m", "method": "selector.x", "hops": 2, "n": 300, "acc": 0.5, "flops": 4e6},
        {"model": "m", "method": "fixed_4", "hops": 3, "n": 100, "acc": 0.25, "flops": 1e6},
    ]
    headers, table = by_hops_table({"compute_by_hops": rows})
    assert headers == ["model", "method", "2 hops", "3 hops"]
    assert table == [["m", "selector.x", "0.62 (3.5)", "-"], ["m", "fixed_4", "-", "0.25 (1.0)"]]


def test_a_rules_compute_rows_come_once_per_model_seed_and_a_selectors_once_per_run():
    from reports.contest import compute_by_hops

    def run(seed, selector_seed, methods):
        per_hop = {"hops_2": {"n": 10, "acc": 0.5, "flops": 1e6, "steps": 2.0}}
        return {
            "name": "m",
            "seed": seed,
            "selector_label": "state",
            "halting": {
                "config": {"seed": selector_seed},
                "contest": {"by_hops": {m: per_hop for m in methods}, "tuned": {}},
            },
        }

    runs = [run(0, 0, ["selector", "fixed_4"]), run(0, 1, ["selector", "fixed_4", "fixed_7"])]
    rows = compute_by_hops(runs + [run(1, 0, ["selector", "fixed_4"])])
    got = sorted((r["seed"], r["method"], r.get("selector_seed", "-")) for r in rows)
    assert got == [
        (0, "fixed_4", "-"),
        (0, "fixed_7", "-"),  # listed by the second run only: still kept
        (0, "selector.state", 0),
        (0, "selector.state", 1),
        (1, "fixed_4", "-"),
        (1, "selector.state", 0),
    ]


def test_the_summary_keeps_per_hop_rows_of_the_main_rules_and_a_grid_of_depths():
    from reports.adaptive import on_depth_grid, per_hop_kept

    grid = [t for t in range(1, 33) if on_depth_grid(f"fixed_{t}")]
    assert grid == [1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 28, 32]
    kept = ["kl<0.01", "conf>=0.9", "fixed_32", "fixed_12", "oracle", "selector", "trained_depth"]
    assert all(per_hop_kept(rule, 32) for rule in kept)
    assert not any(per_hop_kept(rule, 32) for rule in ["kl<0.03", "conf>=0.99", "fixed_13"])
    assert not on_depth_grid("kl<0.01") and not on_depth_grid("cycle/fixed_4")
