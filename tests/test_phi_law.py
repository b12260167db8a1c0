"""The phi law study and the page beside the paper, on hand-made runs whose answers are known:
steps to fit and to grok, censoring, Kaplan-Meier medians checked by hand, Spearman's rho, the
size ratio; and every claim of the paper page read from committed-style summaries."""

import json

import pytest

from reports.load import read_run
from reports.phi_law import cells, law, run_entry, write_phi_law
from reports.survival import km_median, logrank, spearman


def fake_run(root, phi, n, seed, fit, grok, budget=1000):
    """A run whose train_inferred reaches 0.95 at `fit` and valid at `grok` (None: never)."""
    run = root / f"E{n}_phi{phi}_s{seed}"
    run.mkdir(parents=True)
    (run / "config.json").write_text(
        json.dumps(
            {
                "experiment": "phi_law",
                "seed": seed,
                "train": {"steps": budget},
                "data": {"task": "composition", "phi": phi, "n_entities": n},
            }
        )
    )
    last = grok or budget
    rows = [
        {
            "step": s,
            "acc/train_inferred": 0.99 if s >= fit else 0.5,
            "n/train_inferred": 100,
            "acc/valid": 0.96 if grok and s >= grok else 0.3,
            "n/valid": 200,
            "acc/test_inferred_id": 0.97 if grok and s >= grok else 0.3,
            "n/test_inferred_id": 200,
        }
        for s in range(100, last + 1, 100)
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def test_kaplan_meier_medians_and_the_log_rank_test_by_hand():
    assert km_median([400, 900, 10000], [True, True, False]) == 900
    assert km_median([500, 10000], [True, False]) == 500  # S falls to 0.5 at the event
    assert km_median([10000, 10000], [False, False]) is None  # beyond every budget
    assert logrank([100] * 8, [True] * 8, [1000] * 8, [False] * 8) < 0.001
    assert logrank([100, 200], [True, True], [100, 200], [True, True]) == pytest.approx(1.0)
    assert (
        spearman([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)
        and spearman([1, 2], [1, 2]) is None
    )


def test_steps_to_grok_are_censored_at_the_budget_and_the_law_is_measured(tmp_path):
    grid = {
        (100, 3.6): [(300, None), (300, None)],
        (100, 7.2): [(200, 800), (200, 600)],
        (100, 18.0): [(200, 300), (200, 400)],
        (200, 7.2): [(300, 900), (300, 700)],
    }
    paths = [
        fake_run(tmp_path, phi, n, seed, fit, grok)
        for (n, phi), seeds in grid.items()
        for seed, (fit, grok) in enumerate(seeds)
    ]
    runs = [read_run(p, probes=False) for p in paths]
    entries = [run_entry(r) for r in runs]
    assert {
        (e["phi"], e["seed"]): (e["steps_to_fit"], e["steps_to_grok"])
        for e in entries
        if e["n_entities"] == 100
    }[(7.2, 1)] == (200, 600)
    by = {(c["n_entities"], c["phi"]): c for c in cells(entries)}
    assert by[(100, 3.6)]["censored"] == 2 and by[(100, 3.6)]["median_steps_to_grok"] is None
    assert by[(100, 7.2)]["median_steps_to_grok"] == 600  # KM: S = 0.5 at the first event
    result = law(list(by.values()))
    assert result["spearman"]["100"] == pytest.approx(-1.0)  # the censored cell ranks last
    assert result["size_ratio"] == {"7.2": pytest.approx(700 / 600)}
    censored_big = law(
        list(by.values())
        + [{"n_entities": 200, "phi": 18.0, "budget": 1000, "median_steps_to_grok": None}]
    )
    assert censored_big["size_ratio_at_least"] == {"18.0": pytest.approx(1000 / 300)}
    stopped = read_run(fake_run(tmp_path, 3.6, 200, 0, 300, None, budget=1000), probes=False)
    stopped.metrics[:] = stopped.metrics[:4]  # killed at step 400 of 1,000: no outcome
    summary = write_phi_law(tmp_path / "out", runs + [stopped], ["cmd"])
    assert summary["unfinished"] == [
        {"n_entities": 200, "phi": 3.6, "seed": 0, "last_step": 400, "budget": 1000}
    ]
    assert not any(c["n_entities"] == 200 and c["phi"] == 3.6 for c in summary["cells"])
    rows = summary["rows"]
    assert {"study", "machine", "code_version", "commands", "rows"} <= set(summary)
    assert {
        "phi",
        "n_entities",
        "seed",
        "steps_to_fit",
        "steps_to_grok",
        "acc",
        "lo",
        "hi",
        "n",
    } <= set(rows[0])
    pooled = [r for r in rows if r["seed"] == "pooled" and r["split"] == "valid"]
    assert len(pooled) == len(grid) and all(r["n"] == 400 for r in pooled)
    assert (tmp_path / "out" / "figures.html").is_file() and "## The law" in (
        tmp_path / "out" / "summary.md"
    ).read_text()


def test_the_paper_page_reads_every_claim_or_says_it_is_not_measured(tmp_path):
    from reports.paper import CLAIMS, paper_summary

    row = lambda model, split, acc, **kw: {
        "model": model,
        "split": split,
        "acc": acc,
        "lo": acc - 0.01,
        "hi": acc + 0.01,
        "n": 1000,
        "seed": "pooled",
        **kw,
    }
    studies = {
        "comparison_ood": [row("comparison_cpu", "test_inferred_ood", 0.98, step=16000)],
        "composition_ood": [row("composition_cpu", "test_inferred_ood", 0.01, step=6000)]
        + [
            row(
                "composition_cpu",
                "test_inferred_id",
                a,
                role="bridge_1",
                layer=f"L{i}",
                step=6000,
                seed=0,
            )
            for i, a in enumerate([0.1, 0.95])
        ],
        "ood_levers": [
            row("composition_cpu_loop2_feedback_wd1", "test_inferred_ood", 0.3, step=6000)
        ],
        "ood_parametric": [row("ood_x", "test_inferred_ood", 0.77, step=6000)],
    }
    chosen = {"ood_parametric": {"selection": {"chosen": "ood_x", "step": 6000, "n_variants": 7}}}
    for name, rows in studies.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(
            json.dumps(
                {"study": name, "rows": rows, "commands": [f"make {name}"]} | chosen.get(name, {})
            )
        )
    summary = paper_summary(tmp_path)
    ours = {c["id"]: c["ours"] for c in summary["claims"]}
    assert [c.id for c in CLAIMS] == list(ours)
    assert ours["comparison_ood"].startswith("0.980 [0.970, 0.990]")
    assert "after layer L1" in ours["circuit"] and "0.300" in ours["composition_ood"]
    assert "(ood_x, chosen on valid among 7): 0.770" in ours["composition_ood"]
    assert ours["complex_reasoning"].startswith("not measured") and ours["phi_law"].startswith(
        "not measured"
    )
    assert {r["claim"] for r in summary["rows"]} == {"comparison_ood", "composition_ood", "circuit"}


def test_the_paper_page_reads_complex_reasoning_with_baselines_run_once(tmp_path):
    from reports.paper import paper_summary

    def row(model, acc, seed, step=None):
        return {
            "model": model,
            "split": "test_hard",
            "acc": acc,
            "lo": acc - 0.01,
            "hi": acc + 0.01,
            "n": 1000,
            "seed": seed,
            "step": step,
        }

    rows = [
        row("complex_reasoning_cpu", a, s, 30000)
        for s, a in ((0, 0.99), (1, 0.97), ("pooled", 0.98))
    ]
    rows += [row("retrieval", 0.333, None), row("chance", 0.323, 0)]  # one run each, not pooled
    (tmp_path / "complex_reasoning").mkdir()
    (tmp_path / "complex_reasoning" / "summary.json").write_text(
        json.dumps({"study": "complex_reasoning", "rows": rows, "commands": ["make it"]})
    )
    ours = {c["id"]: c["ours"] for c in paper_summary(tmp_path)["claims"]}["complex_reasoning"]
    assert "transformer 0.980" in ours and "one step) 0.333" in ours and "chance 0.323" in ours
