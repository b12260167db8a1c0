"""Study summaries: one row per (model, split, hops, seed) with Wilson intervals, pooled seeds."""

import json
from pathlib import Path

import pytest

from grokloop.stats import wilson
from reports.load import RunFiles
from reports.study import markdown, study_rows, summary_text, write_study


def fake_run(tmp: Path, name: str, seed: int, depth: int, acc: float) -> RunFiles:
    config = {"experiment": "x", "seed": seed, "model": {"n_steps": depth}}
    last = {
        "step": 100,
        "acc/test": acc,
        "n/test": 200,
        "acc/test/hops_2": acc,
        "n/test/hops_2": 100,
        "acc/test/hops_3": acc / 2,
        "n/test/hops_3": 100,
        "acc/old": 0.5,
    }
    return RunFiles(tmp / name, config, [{"step": 10, "acc/test": 0.0, "n/test": 200}, last], None)


def test_rows_carry_intervals_hops_seeds_and_pooled_seeds(tmp_path):
    runs = [fake_run(tmp_path, f"d{d}s{s}", s, d, 0.5 + 0.1 * s) for d in (1, 2) for s in (0, 1)]
    rows = study_rows(runs)
    per_seed = [r for r in rows if r["seed"] != "pooled"]
    assert len(per_seed) == 4 * 3  # 4 runs x (test, hops 2, hops 3); acc/old has no n
    r = next(
        r
        for r in per_seed
        if r["model"] == "model.n_steps=2" and r["seed"] == 1 and "hops" not in r
    )
    assert r["acc"] == 0.6 and r["n"] == 200 and r["step"] == 100
    assert (r["lo"], r["hi"]) == pytest.approx(wilson(120, 200))
    pool = next(
        r
        for r in rows
        if r["seed"] == "pooled" and r["model"] == "model.n_steps=1" and r.get("hops") == 3
    )
    assert pool["n"] == 200 and pool["acc"] == pytest.approx((25 + 30) / 200) and pool["seeds"] == 2
    assert "| model.n_steps=1 | test | 2 |" in markdown(
        {"study": "s", "commands": ["c"], "machine": {}, "rows": rows}
    )


def test_included_rows_pool_seeds_within_one_noise_scale_and_need_no_step():
    from reports.study import pooled

    rows = [
        {
            "model": "lookup_cosine",
            "split": "test",
            "sigma": sigma,
            "seed": seed,
            "acc": acc,
            "n": 100,
        }
        for sigma, acc in ((0.0, 1.0), (4.0, 0.5))
        for seed in (0, 1)
    ]
    pools = {r["sigma"]: r for r in pooled(rows, by_step=False)}
    assert set(pools) == {0.0, 4.0} and pools[0.0]["acc"] == 1.0 and pools[4.0]["acc"] == 0.5
    assert pools[4.0]["n"] == 200 and pools[4.0]["seeds"] == 2 and "step" not in pools[4.0]


def test_a_study_of_included_rows_only_pools_them_and_draws_their_intervals(tmp_path):
    from reports.study import main

    rows = [
        {
            "model": m,
            "split": "test",
            "sigma": 0.0,
            "seed": seed,
            "acc": 0.5,
            "lo": 0.4,
            "hi": 0.6,
            "n": 100,
        }
        for m in ("lookup_cosine", "symbolic")
        for seed in (0, 1)
    ]
    for data in ("taskA", "taskB"):  # the same methods and split names on two data presets
        for seed in (0, 1):
            (tmp_path / f"{data}{seed}.json").write_text(
                json.dumps(
                    {"study": "b", "data": data, "rows": [r for r in rows if r["seed"] == seed]}
                )
            )
    files = ",".join(str(tmp_path / f"{d}{s}.json") for d in ("taskA", "taskB") for s in (0, 1))
    commands = tmp_path / "commands.txt"
    commands.write_text("python -m x 'out_dir=runs/s${seed}' a=[1,2]\n\npython -m y\n")
    main(
        [
            "name=baselines",
            f"out={tmp_path / 'out'}",
            f"include=[{files}]",
            "commands=[make]",
            f"commands_file={commands}",
        ]
    )
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["commands"] == [
        "make",
        "python -m x 'out_dir=runs/s${seed}' a=[1,2]",
        "python -m y",
    ]
    pools = [r for r in summary["rows"] if r["seed"] == "pooled"]
    assert len(pools) == 4 and all(r["n"] == 200 for r in pools)  # per data preset, never across
    assert {r["data"] for r in pools} == {"taskA", "taskB"}
    html = (tmp_path / "out" / "compare.html").read_text()
    assert 'data-figures="1"' in html and "lookup_cosine" in html


def test_write_study_writes_the_schema(tmp_path):
    runs = [fake_run(tmp_path, "a", 0, 1, 0.9)]
    write_study(tmp_path / "out", "demo", runs, ["python -m grokloop.train"])
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert (
        set(summary)
        == {"study", "machine", "code_version", "run_code_versions", "commands", "rows"}
        and summary["study"] == "demo"
    )
    assert {"model", "split", "acc", "lo", "hi", "n"} <= set(summary["rows"][0])
    assert "cpu" in summary["machine"]
    assert (tmp_path / "out" / "compare.html").read_text().startswith("<!DOCTYPE html>")


def test_readme_tables_are_rendered_from_summary_rows(tmp_path):
    from reports.readme import update

    runs = [fake_run(tmp_path, f"d{d}s{s}", s, d, 0.5 + 0.1 * s) for d in (1, 2) for s in (0, 1)]
    write_study(tmp_path / "res", "demo", runs, ["cmd"])
    doc = (
        "intro\n<!-- results res/summary.json rows=model columns=hops seed=pooled split=test -->\n"
        "stale\n<!-- /results -->\nend\n"
    )
    out = update(doc, tmp_path)
    assert (
        "stale" not in out
        and out.startswith("intro\n")
        and out.endswith("<!-- /results -->\nend\n")
    )
    lines = out.splitlines()
    assert lines[2] == "| model | all | 2 | 3 |"  # the whole split, then each hop count
    pool = [
        r
        for r in json.loads((tmp_path / "res" / "summary.json").read_text())["rows"]
        if r["seed"] == "pooled" and r["model"] == "model.n_steps=2" and r.get("hops") == 3
    ][0]
    assert f"{pool['acc']:.3f} [{pool['lo']:.2f}, {pool['hi']:.2f}]" in out
    assert update(out, tmp_path) == out  # idempotent


def test_rows_at_requested_steps(tmp_path):
    runs = [fake_run(tmp_path, f"s{s}", s, 1, 0.5) for s in (0, 1)]
    rows = study_rows(runs, steps=[50])
    early = [r for r in rows if r["step"] == 10]
    assert {r["seed"] for r in early} == {0, 1, "pooled"} and all(r["acc"] == 0.0 for r in early)
    assert {r["step"] for r in rows} == {10, 100}


@pytest.mark.parametrize("name", ["README.md", "docs/findings.md"])
def test_the_generated_tables_match_the_committed_results(name):
    from reports.readme import MARKER, update

    doc = Path(__file__).resolve().parent.parent / name
    text = doc.read_text()
    assert name == "README.md" or MARKER.search(text), f"{name} has no generated result tables"
    assert update(text, doc.parent) == text, f"run: python -m reports.readme {name}"


def test_lens_rows_carry_role_layer_and_interval(tmp_path):
    from reports.load import ProbeResult
    from reports.study import lens_rows

    run = fake_run(tmp_path, "a", 0, 1, 0.5)
    run.probes["logit_lens"] = ProbeResult(
        {},
        {},
        [
            {
                "checkpoint": 100,
                "kind": "at_role",
                "split": "test",
                "role": "bridge_1",
                "layer": 3,
                "layer_label": "s1.c0.L2",
                "mrr": 0.9,
                "top1": 0.8,
                "n": 200,
            },
            {"checkpoint": 100, "kind": "readout", "split": "test", "step": 1, "acc": 0.5},
        ],
    )
    rows = lens_rows(run, "m", ["bridge_1"])
    assert len(rows) == 1 and rows[0]["layer"] == "s1.c0.L2" and rows[0]["role"] == "bridge_1"
    assert (rows[0]["lo"], rows[0]["hi"]) == pytest.approx(wilson(160, 200))
    rows = study_rows([run], lens=["bridge_1"])
    assert sum("role" in r for r in rows) == 1


def test_wave_rows_pool_the_seeds_chains_per_link_and_stay_out_of_the_markdown(tmp_path):
    from reports.load import ProbeResult

    def link(hops, link, ever, n):
        return {"checkpoint": 100, "kind": "link", "split": "valid", "hops": hops, "link": link,
                "ever": ever, "first_step": 2.0, "at_end": ever / 2, "steps": 4, "n": n}  # fmt: skip

    runs = [fake_run(tmp_path, f"s{seed}", seed, 1, 0.5) for seed in (0, 1)]
    for run, ever in zip(runs, (0.5, 1.0)):
        rows = [link(2, 1, ever, 100), link(2, 2, 1.0, 100), {"kind": "other", "checkpoint": 100}]
        run.probes["wave"] = ProbeResult({}, {}, rows)
    rows = study_rows(runs, {str(r.path): "m" for r in runs}, wave=True)
    wave = [r for r in rows if r.get("role") == "wave"]
    assert len(wave) == 2 * 2 * 2 + 2 * 2  # per seed (link x metric), and pooled
    pooled = {(r["link"], r["metric"]): r for r in wave if r["seed"] == "pooled"}
    assert pooled[(1, "wave_ever")]["acc"] == 0.75 and pooled[(1, "wave_ever")]["n"] == 200
    assert pooled[(1, "wave_at_end")]["acc"] == pytest.approx(0.375)
    first = next(r for r in wave if r["seed"] == 0 and r["metric"] == "wave_ever")
    assert first["first_step"] == 2.0 and (first["lo"], first["hi"]) == pytest.approx(
        wilson(50, 100)
    )
    summary = {"study": "s", "machine": {}, "commands": [], "rows": rows}
    assert "wave" not in markdown(summary)
    kept = study_rows(runs, {str(r.path): "m" for r in runs}, wave=True, hops=[3])
    assert {r.get("hops") for r in kept} == {None, 3}  # the 2-hop wave and test rows left out
    with pytest.raises(SystemExit, match="probe=wave"):
        study_rows([fake_run(tmp_path, "b", 0, 1, 0.5)], wave=True)


def test_study_includes_rows_of_other_summaries_and_refuses_a_missing_one(tmp_path):
    from reports.study import main

    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"experiment": "x", "seed": 0, "model": {}}))
    (run / "metrics.jsonl").write_text(
        json.dumps({"step": 5, "acc/test": 0.5, "n/test": 10}) + "\n"
    )
    other = {
        "rows": [
            {
                "model": "x.swap",
                "split": "test",
                "acc": 0.25,
                "lo": 0.1,
                "hi": 0.5,
                "n": 8,
                "seed": 0,
                "step": 5,
            }
        ]
    }
    (tmp_path / "bank.json").write_text(json.dumps(other))
    main(
        [
            str(tmp_path / "runs"),
            "name=s",
            f"out={tmp_path / 'out'}",
            f"include=[{tmp_path / 'bank.json'}]",
        ]
    )
    rows = json.loads((tmp_path / "out" / "summary.json").read_text())["rows"]
    assert other["rows"][0] in rows and any(r["model"] == "x" for r in rows)
    with pytest.raises(SystemExit):
        main(
            [
                str(tmp_path / "runs"),
                "name=s",
                f"out={tmp_path / 'out2'}",
                f"include=[{tmp_path / 'nope.json'}]",
            ]
        )
    assert not (tmp_path / "out2").exists()


def test_model_labels_are_the_fewest_keys_that_tell_groups_apart(tmp_path):
    def run(name, experiment, memory, wd):
        config = {
            "experiment": experiment,
            "seed": 0,
            "model": {"memory": memory},
            "optim": {"weight_decay": wd},
            "data": {"parts": {"h2": {"hops": [2] if wd > 0.05 else None}}},
        }
        return RunFiles(tmp_path / name, config, [{"step": 1, "acc/test": 1.0, "n/test": 10}], None)

    runs = [
        run("a", "loop", "facts", 0.01),
        run("b", "mem", "facts", 0.01),
        run("c", "loop", "none", 0.01),
        run("d", "loop", "none", 0.1),
    ]
    names = {r["model"] for r in study_rows(runs)}
    # experiment first; then memory splits a from c and d; weight decay splits c from d. The
    # nested data key splits c from d as well, and loses the tie to the shallower key.
    assert names == {
        "loop, model.memory=facts, optim.weight_decay=0.01",
        "mem, model.memory=facts, optim.weight_decay=0.01",
        "loop, model.memory=none, optim.weight_decay=0.01",
        "loop, model.memory=none, optim.weight_decay=0.1",
    }


def test_study_names_a_model_per_runs_entry_and_refuses_a_count_mismatch(tmp_path):
    from dataclasses import replace

    from reports.study import StudyCommand, run_study

    for name, seed in (("a", 0), ("a", 1), ("b", 0)):
        run = tmp_path / name / f"seed{seed}"
        run.mkdir(parents=True)
        (run / "config.json").write_text(json.dumps({"experiment": "x", "seed": seed}))
        (run / "metrics.jsonl").write_text(
            json.dumps({"step": 5, "acc/test": 0.5, "n/test": 10}) + "\n"
        )
    cmd = StudyCommand(
        runs=[str(tmp_path / "a"), str(tmp_path / "b")],
        name="s",
        out=str(tmp_path / "out"),
        names=["first", "second"],
    )
    run_study(cmd)
    rows = json.loads((tmp_path / "out" / "summary.json").read_text())["rows"]
    assert {r["model"] for r in rows} == {"first", "second"}
    assert [r["seeds"] for r in rows if r["seed"] == "pooled" and r["model"] == "first"] == [2]
    with pytest.raises(SystemExit, match="names: 1 names for 2"):
        run_study(replace(cmd, names=["one"]))


def test_stages_give_each_split_its_first_step_at_the_threshold_and_its_ratio_to_fitting(tmp_path):
    def run(name, seed, curve):  # curve: step -> (train_inferred, test_inferred_id, test_OI)
        metrics = [
            {
                "step": st,
                "acc/train_inferred": a,
                "acc/test_inferred_id": b,
                "acc/test_OI": c,
                "n/train_inferred": 100,
                "n/test_inferred_id": 100,
                "n/test_OI": 100,
            }
            for st, (a, b, c) in curve.items()
        ]
        return RunFiles(tmp_path / name, {"experiment": "x", "seed": seed}, metrics, None)

    runs = [
        run("a", 0, {100: (0.5, 0.1, 0.0), 200: (0.96, 0.3, 0.0), 800: (1.0, 0.95, 0.2)}),
        run("b", 1, {100: (0.2, 0.1, 0.0), 400: (0.7, 0.2, 0.1)}),
    ]  # never fits
    summary = write_study(tmp_path / "out", "demo", runs, ["cmd"])
    a, b = summary["stages"]
    assert (a["fit_step"], a["steps"], a["ratio"]) == (
        200,
        {"test_inferred_id": 800, "test_OI": None},
        {"test_inferred_id": 4.0, "test_OI": None},
    )
    assert b["fit_step"] is None and b["ratio"] == {"test_inferred_id": None, "test_OI": None}
    assert (a["model"], a["seed"], a["last_step"]) == ("x", 0, 800)
    md = (tmp_path / "out" / "summary.md").read_text()
    assert "## Stages" in md and "| x | 0 | 800 | 200 | 800 (4.0x) | - |" in md
    # runs without inferred facts (modular tables) have no stages
    assert "stages" not in write_study(
        tmp_path / "o2", "d", [fake_run(tmp_path, "m", 0, 1, 0.9)], []
    )


def test_selection_takes_the_highest_minimum_over_validation_splits_at_a_shared_step():
    from reports.study import selection

    def row(model, split, acc, seed="pooled", step=6000):
        return dict(model=model, split=split, acc=acc, lo=0, hi=1, n=300, seed=seed, step=step)

    rows = [
        row("a", "valid_OI", 0.9),
        row("a", "valid_IO", 0.5),  # a's weakest split
        row("b", "valid_OI", 0.7),
        row("b", "valid_IO", 0.6),
        row("b", "valid_IO", 0.99, seed=0),  # one seed: the pooled row counts
        row("b", "valid_OI", 1.0, step=40000),  # b trained longer: compared at 6000, a's last
        row("b", "valid_IO", 1.0, step=40000),
        row("b", "test_IO", 1.0),  # test is never read
        row("c", "valid_OI", 1.0),  # c lacks valid_IO: not comparable
    ]
    chosen = selection(rows, ["valid_OI", "valid_IO"])
    assert chosen["scores"] == {"a": 0.5, "b": 0.6} and chosen["chosen"] == "b"
    assert chosen["n_variants"] == 2 and chosen["step"] == 6000
    with pytest.raises(ValueError, match=r"select=\['test_IO'\]: choices are made on validation"):
        selection(rows, ["valid_OI", "test_IO"])


def test_handoff_rows_give_the_second_hop_alone_with_intervals():
    from reports.study import handoff_rows

    record = dict(
        split="test_IO",
        checkpoint=6000,
        n=300,
        bridge_right=240,
        answer_if_bridge_right=180,
        answer_if_bridge_wrong=6,
    )
    rows = {r["metric"]: r for r in handoff_rows(record, "m", 0)}
    assert rows["bridge_right"]["acc"] == 0.8 and rows["bridge_right"]["n"] == 300
    assert (
        rows["answer_if_bridge_right"]["acc"] == 0.75 and rows["answer_if_bridge_right"]["n"] == 240
    )
    assert (
        rows["answer_if_bridge_wrong"]["acc"] == 0.1 and rows["answer_if_bridge_wrong"]["n"] == 60
    )
    assert all(r["lo"] <= r["acc"] <= r["hi"] and r["role"] == "handoff" for r in rows.values())


def test_summary_text_puts_a_row_on_a_line_and_reads_back():
    s = {
        "study": "s",
        "machine": {"cpu": "c", "cores": 2},
        "rows": [{"model": "a", "acc": 0.5, "n": 2}, {"model": "b", "acc": 1.0, "n": 2}],
    }
    text = summary_text(s)
    assert json.loads(text) == s
    assert '\n  {"model": "a", "acc": 0.5, "n": 2},\n  {"model": "b"' in text


def test_every_committed_summary_is_written_as_summary_text_writes_it():
    """Each study's summary.json as its writer makes it (so regenerating one changes only what
    changed): the text summary_text gives its own content."""
    results = Path(__file__).resolve().parent.parent / "docs" / "results"
    for path in sorted(results.glob("*/summary.json")):
        text = path.read_text()
        assert summary_text(json.loads(text)) == text, path
