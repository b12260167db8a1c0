"""A study's committed results: `docs/results/<study>/summary.json`, `summary.md` and
`compare.html` (which loads the shared docs/results/plotly.min.js: reports/html.py `write`),
made from run directories, in the one results schema every study uses:

    {"study": NAME, "machine": {...}, "commands": [...],
     "rows": [{"model", "split", "acc", "lo", "hi", "n", "seed", "step", ("hops")}, ...]}

One row per (model configuration, split, hop count where the split has several, seed) at each
run's last evaluation, plus a `seed: "pooled"` row per (model, split, hops) that pools the seeds'
facts; `lo`/`hi` are the Wilson 95% interval (grokloop/stats.py). README tables are generated
from these files (`python -m reports.readme`), never typed by hand.

    python -m reports.study DIR [DIR ...] name=STUDY out=docs/results/STUDY [commands=[...]]
        [steps=[2000,4000]]      # rows at those training steps too, not only the last
        [lens=[bridge_1,answer]] # the probed runs' logit-lens top-1 per role, split and layer
        [wave=true]              # the probed runs' bridge wave per hop count and link
        [hops=[4,8,12]]          # only those hop counts' rows (and the rows over all of them)
        [select=[valid_OI,valid_IO]]  # the model to present, chosen on validation splits only

Runs with inferred facts also get `stages` (summary.json) and a `## Stages` section
(summary.md): the first evaluated step at which each of train_inferred, test_inferred_id and
every OOD split reaches 0.95, and its ratio to the step that fits the training facts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from datagen.provenance import atomic_write_text, code_version, machine
from grokloop.stats import acc_row, wilson
from reports.compare import compare_report, group_runs, short_labels
from reports.html import write
from reports.load import RunFiles, find_runs, read_run


def split_sizes(run: RunFiles) -> dict[str, int]:
    """`n/SPLIT` and `n/SPLIT/hops_K` counts rebuilt from the run's dataset, for runs made before
    evaluation recorded them."""
    from datagen import data_config_from_dict, load_or_build

    ds = load_or_build(data_config_from_dict(run.config["data"]), run.config.get("data_cache"))
    out = {}
    for name in ds.eval_splits:
        idx = ds.splits[name]
        out[f"n/{name}"] = len(idx)
        hops = ds.hops[idx]
        if len(set(hops.tolist())) > 1:
            out |= {
                f"n/{name}/hops_{k}": int((hops == k).sum()) for k in sorted(set(hops.tolist()))
            }
    return out


def run_rows(run: RunFiles, model: str, row: dict | None = None) -> list[dict]:
    """Rows of one run at one evaluation row of its metrics (default: the last)."""
    row = row or (run.metrics[-1] if run.metrics else {})
    if row and not any(k.startswith("n/") for k in row):
        row = split_sizes(run) | row
    out = []
    for key, acc in row.items():
        if not key.startswith("acc/"):
            continue
        parts = key.split("/")  # acc/SPLIT or acc/SPLIT/hops_K
        n = row.get("n/" + "/".join(parts[1:]))
        if n is None:
            continue  # no count recorded: no interval, no row
        fields = {"model": model, "split": parts[1]}
        if len(parts) == 3 and parts[2].startswith("hops_"):
            fields["hops"] = int(parts[2][5:])
        elif len(parts) != 2:
            continue
        out.append(acc_row(acc, n, **fields, seed=run.config.get("seed"), step=row["step"]))
    return out


def lens_rows(run: RunFiles, model: str, roles: list[str]) -> list[dict]:
    """The logit lens of a run (`python -m probes ... probe=logit_lens`) as results rows: top-1 of
    each role's token at its own position, per split and virtual layer, at each probed checkpoint
    (the `acc` of a lens row is that top-1 rate, with its interval)."""
    probe = run.probes.get("logit_lens")
    if probe is None:
        raise SystemExit(
            f"{run.path} has no logit-lens results; run python -m probes "
            f"run_dir={run.path} probe=logit_lens split=..."
        )
    seed = run.config.get("seed")
    return [
        acc_row(
            r["top1"],
            r["n"],
            model=model,
            split=r["split"],
            role=r["role"],
            layer=r["layer_label"],
            seed=seed,
            step=r["checkpoint"],
        )
        for r in probe.rows
        if r.get("kind") == "at_role" and r.get("role") in roles
    ] + [
        row
        for r in probe.rows
        if r.get("kind") == "handoff"
        for row in handoff_rows(r, model, seed)
    ]


def wave_rows(run: RunFiles, model: str) -> list[dict]:
    """The bridge wave of a run (`python -m probes ... probe=wave`) as results rows, role `wave`:
    per split, hop count and link, the share of chains whose link the lens reads right after
    some step (metric wave_ever, with the median first step) and after the last (wave_at_end)."""
    probe = run.probes.get("wave")
    if probe is None:
        raise SystemExit(
            f"{run.path} has no bridge-wave results; run python -m probes "
            f"run_dir={run.path} probe=wave split=... steps=..."
        )
    out = []
    for r in probe.rows:
        if r.get("kind") != "link":
            continue
        key = dict(model=model, split=r["split"], hops=r["hops"], link=r["link"], role="wave")
        key |= dict(seed=run.config.get("seed"), step=r["checkpoint"], steps=r["steps"])
        out += [
            acc_row(r["ever"], r["n"], **key, metric="wave_ever", first_step=r["first_step"]),
            acc_row(r["at_end"], r["n"], **key, metric="wave_at_end"),
        ]
    return out


def handoff_rows(r: dict, model: str, seed) -> list[dict]:
    """A hand-off record (probes/logit_lens.py `handoff`) as three rows, role `handoff`: the bridge
    right on entering the last step, and the answer rate given it right and given it wrong."""
    n, right = r["n"], r["bridge_right"]
    parts = {
        "bridge_right": (right, n),
        "answer_if_bridge_right": (r["answer_if_bridge_right"], right),
        "answer_if_bridge_wrong": (r["answer_if_bridge_wrong"], n - right),
    }
    key = dict(model=model, split=r["split"], role="handoff", seed=seed, step=r["checkpoint"])
    return [acc_row(k / m if m else 0.0, m, **key, metric=name) for name, (k, m) in parts.items()]


# Fields that tell rows of one model and split apart (a halting rule, a baseline's noise scale
# `sigma` and data preset `data` included): seeds are pooled only within one value of each.
POOL_APART = ("hops", "metric", "sigma", "rule", "data", "schedule", "link", "role")


def pooled(rows: list[dict], by_step: bool = True) -> list[dict]:
    """Per (model, split, hops, metric) and step: the seeds' facts pooled into one accuracy and
    interval. by_step=False pools across steps: rows that each evaluate a final model (bank
    evaluations of runs that stopped at grok, at different steps)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:  # runs of one study share their evaluation schedule, so steps line up
        if r.get("role", "wave") != "wave" or r.get("seed") == "pooled":
            continue  # lens rows stay per run; the bridge wave pools the seeds' chains
        key = (
            r["model"],
            r["split"],
            *(r.get(f) for f in POOL_APART),
            r.get("step") if by_step else 0,
        )
        groups.setdefault(key, []).append(r)
    out = []
    for (model, split, *apart, _), rs in groups.items():
        if len(rs) < 2:
            continue
        k, n = sum(r["acc"] * r["n"] for r in rs), sum(r["n"] for r in rs)
        lo, hi = wilson(round(k), n)
        extra = {f: v for f, v in zip(POOL_APART, apart) if v is not None}
        steps = [r["step"] for r in rs if r.get("step") is not None]
        out.append(
            {
                "model": model,
                "split": split,
                **extra,
                "acc": k / n,
                "lo": lo,
                "hi": hi,
                "n": n,
                "seed": "pooled",
                "seeds": len(rs),
            }
            | ({"step": max(steps)} if steps else {})
        )
    return out


def at_step(run: RunFiles, step: int) -> dict | None:
    """The run's last evaluation at or before `step`."""
    rows = [r for r in run.metrics if r["step"] <= step]
    return rows[-1] if rows else None


def run_labels(runs: list[RunFiles], model_names: dict[str, str] | None = None) -> dict[str, str]:
    """Run path -> model name: `model_names` where given, else its group label (the settings
    that differ between runs, seeds aside; the experiment when only seeds differ)."""
    differ, groups = group_runs(runs)
    labels = short_labels(differ, groups)
    if len(groups) == 1:  # nothing differs but the seed: name the model by its experiment
        labels = {label: runs[0].name for label in groups}
    return {
        str(run.path): (model_names or {}).get(str(run.path), labels[label])
        for label, members in groups.items()
        for run in members
    }


def study_rows(
    runs: list[RunFiles],
    model_names: dict[str, str] | None = None,
    steps: list[int] = (),
    lens: list[str] = (),
    wave: bool = False,
    hops: list[int] = (),
) -> list[dict]:
    """Rows for every run at its last evaluation and at each of `steps` (its last evaluation at
    or before that step), the model named by its group label (the settings that differ between
    runs, seeds aside) unless `model_names` maps a run directory to a name; `lens` and `wave`:
    the probed runs' logit lens and bridge wave rows too; `hops`: only those hop counts' rows
    (and the rows over all hop counts)."""
    names = run_labels(runs, model_names)  # in group order, as the rows are
    by_path = {str(run.path): run for run in runs}
    rows = []
    for path, name in names.items():
        run = by_path[path]
        rows += run_rows(run, name)
        for step in steps:
            if (row := at_step(run, step)) is not None and row is not run.metrics[-1]:
                rows += run_rows(run, name, row)
        if lens and "logit_lens" in run.probes:
            rows += lens_rows(run, name, list(lens))
        if wave:
            rows += wave_rows(run, name)
    if hops:
        rows = [r for r in rows if r.get("hops") is None or r["hops"] in hops]
    return rows + pooled(rows)


STAGE_THRESHOLD = 0.95
STAGE_SPLITS = {"fit": "train_inferred", "id": "test_inferred_id"}  # and every other OOD split


def first_step_at(run: RunFiles, split: str, threshold: float = STAGE_THRESHOLD) -> int | None:
    """The first evaluated step at which `split`'s accuracy reaches `threshold` (evaluations
    are log-spaced, so this is the stage's step to that resolution); None if it never does."""
    return next((r["step"] for r in run.metrics if r.get(f"acc/{split}", -1.0) >= threshold), None)


def stage_entries(runs: list[RunFiles], labels: dict[str, str]) -> list[dict]:
    """When each stage arrives, per run with inferred facts: fitting the training facts
    (train_inferred), in-distribution generalisation (test_inferred_id) and each OOD split,
    as the first evaluated step at >= STAGE_THRESHOLD, and its ratio to the fitting step (how
    long generalisation takes against memorisation). `labels`: run path -> model name."""
    out = []
    for run in runs:
        splits = run.splits()
        if STAGE_SPLITS["fit"] not in splits or STAGE_SPLITS["id"] not in splits:
            continue
        fit = first_step_at(run, STAGE_SPLITS["fit"])
        later = [STAGE_SPLITS["id"]] + [
            s for s in splits if s.startswith("test_") and s != STAGE_SPLITS["id"]
        ]
        steps = {s: first_step_at(run, s) for s in later}
        out.append(
            {
                "model": labels[str(run.path)],
                "seed": run.config.get("seed"),
                "threshold": STAGE_THRESHOLD,
                "last_step": run.metrics[-1]["step"],
                "fit_step": fit,
                "steps": steps,
                "ratio": {
                    s: (v / fit if v is not None and fit else None) for s, v in steps.items()
                },
            }
        )
    return out


def stages_lines(stages: list[dict]) -> list[str]:
    """A `## Stages` section: each run's stage steps and their ratio to fitting."""
    if not stages:
        return []
    splits = list(dict.fromkeys(s for e in stages for s in e["steps"]))
    t = stages[0]["threshold"]
    lines = [
        "",
        "## Stages",
        "",
        f"The first evaluated step at which each split reaches {t:g} (evaluations are "
        "log-spaced, so a stage's step is known to that resolution), and in brackets its "
        f"ratio to the step that fits the training facts; `-`: not by the run's last step.",
        "",
        "| model | seed | last step | fit (train_inferred) | " + " | ".join(splits) + " |",
        "|" + "---|" * (4 + len(splits)),
    ]

    def cell(e: dict, split: str) -> str:
        step, ratio = e["steps"].get(split), e["ratio"].get(split)
        if step is None:
            return "-"
        return f"{step:,}" + ("" if ratio is None else f" ({ratio:.1f}x)")  # no ratio: never fit

    for e in stages:
        cells = [cell(e, s) for s in splits]
        fit = f"{e['fit_step']:,}" if e["fit_step"] else "-"
        lines.append(
            f"| {e['model']} | {e['seed']} | {e['last_step']:,} | {fit} | "
            + " | ".join(cells)
            + " |"
        )
    return lines


def validation_only(splits: list[str]) -> None:
    bad = [s for s in splits if not s.startswith("valid")]
    if bad:
        raise ValueError(
            f"select={bad}: choices are made on validation splits (valid, valid_*), never "
            "on test; pass select=[valid,valid_OI,...]"
        )


def selection(rows: list[dict], splits: list[str]) -> dict:
    """The model a study presents, chosen on validation splits only: per model, the minimum over
    `splits` of its accuracy (seeds pooled where it has several) at the largest step every model
    was evaluated at, so longer-trained models get no head start; the highest wins. Every
    model's score is stored, and how many were compared (the variants tried)."""
    validation_only(splits)
    found: dict[tuple, dict] = {}  # (model, step, split) -> its row, pooled over a single seed's
    for r in rows:
        if r["split"] in splits and "role" not in r and "hops" not in r:
            key = (r["model"], r.get("step") or 0, r["split"])
            if key not in found or r.get("seed") == "pooled":
                found[key] = r
    steps_of: dict[str, set] = {}
    for model, step, _ in found:
        if all((model, step, s) in found for s in splits):
            steps_of.setdefault(model, set()).add(step)
    if not steps_of:
        raise ValueError(f"select={splits}: no model has all of these splits")
    common = set.intersection(*steps_of.values())
    if not common:
        raise ValueError(f"select={splits}: the models share no evaluated step; pass steps=[...]")
    step = max(common)
    scores = {m: min(found[(m, step, s)]["acc"] for s in splits) for m in steps_of}
    return {
        "criterion": f"min over {splits} of the accuracy at step {step}, seeds pooled",
        "splits": list(splits),
        "step": step,
        "scores": scores,
        "chosen": max(scores, key=scores.get),
        "n_variants": len(scores),
    }


def selection_lines(chosen: dict | None) -> list[str]:
    if not chosen:
        return []
    lines = ["", "## Selection (on validation splits only)", "", chosen["criterion"] + ":", ""]
    lines += [
        f"- {model}: {score:.3f}" + (" (chosen)" if model == chosen["chosen"] else "")
        for model, score in sorted(chosen["scores"].items(), key=lambda kv: -kv[1])
    ]
    return lines + ["", f"{chosen['n_variants']} variants compared."]


def markdown(summary: dict) -> str:
    rows = [r for r in summary["rows"] if "role" not in r]  # lens rows: in summary.json
    apart = [f for f in POOL_APART if f != "metric" and any(f in r for r in rows)]
    head = ["model", "split"] + apart + ["seed", "step", "acc", "95% CI", "n"]
    lines = [
        f"# {summary['study']}",
        "",
        "Commands:",
        "",
        "```bash",
        *summary["commands"],
        "```",
        "",
        f"Machine: {summary['machine'].get('cpu')} ({summary['machine'].get('cores')} cores), "
        f"torch {summary['machine'].get('torch')}, {summary['machine'].get('date')}.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in rows:
        step = f"{r['step']:,}" if isinstance(r.get("step"), int) else str(r.get("step", "-"))
        cells = (
            [r["model"], r["split"]]
            + [str(r.get(f, "")) for f in apart]
            + [
                str(r["seed"]),
                step,
                f"{r['acc']:.3f}",
                f"[{r['lo']:.3f}, {r['hi']:.3f}]",
                f"{r['n']:,}",
            ]
        )
        lines.append("| " + " | ".join(cells) + " |")
    lines += stages_lines(summary.get("stages", []))
    lines += selection_lines(summary.get("selection"))
    return "\n".join(lines) + "\n"


def summary_text(summary: dict) -> str:
    """summary.json's text: a line per entry of each top-level list of objects (rows, stages...;
    a line per field made the rows most of a file), everything else indented as
    json.dumps(indent=1) does. Every study's summary.json is written by this."""

    def value(v) -> str:
        if isinstance(v, list) and v and all(isinstance(e, dict) for e in v):
            return "[\n" + ",\n".join("  " + json.dumps(e) for e in v) + "\n ]"
        return json.dumps(v, indent=1).replace("\n", "\n ")

    return "{\n" + ",\n".join(f" {json.dumps(k)}: {value(v)}" for k, v in summary.items()) + "\n}\n"


def write_study(
    out: str | Path,
    study: str,
    runs: list[RunFiles],
    commands: list[str],
    model_names: dict[str, str] | None = None,
    extra_rows: list[dict] | None = None,
    steps: list[int] = (),
    lens: list[str] = (),
    select: list[str] = (),
    wave: bool = False,
    hops: list[int] = (),
) -> dict:
    """Write summary.json, summary.md and compare.html for `runs` into `out`; returns the summary.
    `select`: validation splits the presented model is chosen on (`selection`)."""
    out = Path(out)
    summary = {
        "study": study,
        "machine": machine(),
        "code_version": code_version(),  # of this summary; each run's own code is run_code_versions
        "run_code_versions": sorted({str(r.config.get("code_version")) for r in runs}),
        "commands": list(commands),
        "rows": study_rows(runs, model_names, steps, lens, wave, hops) + list(extra_rows or []),
    }
    if stages := stage_entries(runs, run_labels(runs, model_names)):
        summary["stages"] = stages
    if select:
        summary["selection"] = selection(summary["rows"], list(select))
    atomic_write_text(out / "summary.json", summary_text(summary))
    atomic_write_text(out / "summary.md", markdown(summary))
    report = compare_report(runs) if runs else included_report(study, summary["rows"])
    write(out / "compare.html", report)  # under docs/results: loads the shared plotly.js
    return summary


def included_report(study: str, rows: list[dict]) -> str:
    """The HTML of a study made only of included rows (no training runs to compare): per extra
    field value (a baseline's sigma), every model's accuracy by split with its interval, seeds
    pooled where there are several."""
    from reports.figures import interval_bars
    from reports.html import Section, page

    pooled_rows = [r for r in rows if r.get("seed") == "pooled" and "hops" not in r]
    shown = pooled_rows or [r for r in rows if "hops" not in r]
    section = Section("Accuracy by split")
    section.text(
        "Wilson 95% intervals; seeds pooled where a row has several. Per-seed and per-hop "
        "rows are in summary.json and summary.md."
    )
    for sigma in dict.fromkeys(r.get("sigma") for r in shown):
        title = study if sigma is None else f"{study}, sigma = {sigma:g}"
        section.add(interval_bars([r for r in shown if r.get("sigma") == sigma], title))
    return page(f"grokloop study: {study}", f"{len(rows)} rows", [section])


def commands_from(path: str | None) -> list[str]:
    """The lines of a commands file (commands with quotes, brackets and ${...} are easier kept in
    a file than passed through Hydra's grammar)."""
    if path is None:
        return []
    if not Path(path).is_file():
        raise FileNotFoundError(f"commands_file={path}: no such file")
    return [line for line in Path(path).read_text().splitlines() if line.strip()]


@dataclass
class StudyCommand:
    """Schema of conf/study.yaml."""

    runs: list[str] = field(default_factory=list)  # runs or sweep trees
    name: str = "???"  # the study's name
    out: str | None = None  # None: runs/studies/NAME (never docs/)
    commands: list[str] = field(default_factory=list)  # the commands that made the runs
    commands_file: str | None = None  # ... or a file of them, one per line (added after)
    steps: list[int] = field(default_factory=list)  # rows also at these training steps
    lens: list[str] = field(default_factory=list)  # roles whose logit-lens top-1 become rows
    wave: bool = False  # the runs' bridge wave (python -m probes probe=wave) as rows
    hops: list[int] = field(default_factory=list)  # only these hop counts' rows ([]: all)
    include: list[str] = field(default_factory=list)  # other summary.json files whose rows to add
    # (e.g. python -m grokloop.bank eval's)
    names: list[str] = field(default_factory=list)  # a model name per entry of runs (every run
    # under it); default: the fewest config
    # keys that tell the models apart
    select: list[str] = field(default_factory=list)  # validation splits to choose the presented
    # model on (the highest minimum over them)


def run_study(cmd: StudyCommand) -> None:
    if not cmd.runs and not cmd.include:
        raise SystemExit(
            "give the runs or sweep trees, or include=[summary.json,...]: "
            "python -m reports.study DIR [DIR ...] name=NAME"
        )
    out = Path(cmd.out or Path("runs/studies") / cmd.name)
    validation_only(cmd.select)  # before reading any run
    names = list(cmd.names or [])
    if names and len(names) != len(cmd.runs):
        raise SystemExit(
            f"names: {len(names)} names for {len(cmd.runs)} runs entries; give one "
            "per entry (every run under an entry takes its name) or none"
        )
    runs, model_names = [], {}
    for i, entry in enumerate(cmd.runs):
        for path in find_runs([entry]):
            runs.append(read_run(path))
            if names:
                model_names[str(runs[-1].path)] = names[i]
    extra = []
    for path in map(Path, cmd.include):
        if not path.is_file():
            raise SystemExit(f"include={path}: no such summary.json")
        included = json.loads(path.read_text())
        # a baseline's summary names its data preset once: each row carries it, so the same
        # method on two tasks (same split names) never pools
        tag = {"data": included["data"]} if isinstance(included.get("data"), str) else {}
        extra += [tag | r for r in included["rows"]]
    extra += pooled(extra, by_step=False)  # each included row evaluates a final model
    summary = write_study(
        out,
        cmd.name,
        runs,
        cmd.commands + commands_from(cmd.commands_file),
        model_names=model_names or None,
        steps=cmd.steps,
        lens=cmd.lens,
        wave=cmd.wave,
        hops=cmd.hops,
        extra_rows=extra,
        select=cmd.select,
    )
    print(
        f"wrote {out}/summary.json, summary.md and compare.html: {len(runs)} runs, "
        f"{len(summary['rows'])} rows"
    )


def main(argv: list[str] | None = None) -> None:
    from grokloop import cli

    cli.run("study", run_study, argv)


if __name__ == "__main__":
    main()
