"""The phi law study (Wang et al. 2024, arXiv 2405.15071, figure 2): how fast a transformer groks
two-hop composition in distribution as the inferred/atomic ratio phi and the graph's size change.

    python -m grokloop.train --multirun experiment=phi_law sweep=phi_law
    python -m reports.phi_law runs/sweeps/phi_law out=docs/results/phi_law

Per run (phi, n_entities, seed): `steps_to_fit`, the first evaluation at which the training
two-hop facts (train_inferred) reach 0.95, and `steps_to_grok`, the first at which `valid` (held
out, in distribution) does; null if never within the budget (the run is censored there). The
rows are the run's accuracies on valid and test_inferred_id at its last evaluation (the run
stops at grok, so that is the step `valid` chose), in the results schema, plus a pooled row per
(phi, size). Per (phi, size) the median steps to grok is the Kaplan-Meier median over seeds
(reports/survival.py; censored runs count as censored, not as their budget). The law's two
checks: Spearman's rho between phi and the median steps to grok, per size (a median beyond the
budget ranks above every observed one), and at each phi the ratio of the sizes' medians.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import plotly.graph_objects as go

from datagen.provenance import atomic_write_text, code_version, machine
from grokloop.stats import acc_row
from reports.html import Section, page, table, write
from reports.load import RunFiles, find_runs, read_run
from reports.study import commands_from, first_step_at, pooled, summary_text
from reports.survival import km_median, spearman

SPLITS = ("valid", "test_inferred_id")
THRESHOLD = 0.95


def run_entry(run: RunFiles) -> dict:
    """One run's coordinates, budget and stage steps."""
    data, last = run.config["data"], run.metrics[-1]
    return {
        "phi": data["phi"],
        "n_entities": data["n_entities"],
        "seed": run.config["seed"],
        "budget": run.config["train"]["steps"],
        "last_step": last["step"],
        "steps_to_fit": first_step_at(run, "train_inferred", THRESHOLD),
        "steps_to_grok": first_step_at(run, "valid", THRESHOLD),
    }


def finished(entry: dict) -> bool:
    """Stopped at grok or at its budget; a run still going (or killed before either) is neither
    an event nor censored, and stays out of the statistics until it ends."""
    return entry["steps_to_grok"] is not None or entry["last_step"] >= entry["budget"]


def run_rows(run: RunFiles, entry: dict) -> list[dict]:
    last = run.metrics[-1]
    return [
        acc_row(
            last[f"acc/{s}"],
            last[f"n/{s}"],
            model=cell_name(entry),
            split=s,
            step=last["step"],
            **entry,
        )
        for s in SPLITS
        if f"acc/{s}" in last
    ]


def cell_name(entry: dict) -> str:
    return f"phi_law.E{entry['n_entities']}.phi{entry['phi']}"


def cells(entries: list[dict]) -> list[dict]:
    """Per (size, phi): the seeds' steps to grok and the Kaplan-Meier median."""
    out = []
    for n, phi in sorted({(e["n_entities"], e["phi"]) for e in entries}):
        es = sorted(
            (e for e in entries if (e["n_entities"], e["phi"]) == (n, phi)), key=lambda e: e["seed"]
        )
        times = [e["steps_to_grok"] or e["last_step"] for e in es]
        events = [e["steps_to_grok"] is not None for e in es]
        out.append(
            {
                "n_entities": n,
                "phi": phi,
                "seeds": [e["seed"] for e in es],
                "steps_to_grok": [e["steps_to_grok"] for e in es],
                "steps_to_fit": [e["steps_to_fit"] for e in es],
                "budget": max(e["budget"] for e in es),
                "censored": events.count(False),
                "median_steps_to_grok": km_median(times, events),
            }
        )
    return out


def law(cells_: list[dict]) -> dict:
    """Spearman's rho of median steps to grok against phi per size, and the size ratio per phi
    (where one size never grokked within its budget, the ratio is at least budget / the other's
    median: `size_ratio_at_least`)."""
    out = {"spearman": {}, "size_ratio": {}, "size_ratio_at_least": {}}
    for n in sorted({c["n_entities"] for c in cells_}):
        cs = [c for c in cells_ if c["n_entities"] == n]
        ranked = [c["median_steps_to_grok"] or c["budget"] + 1 for c in cs]  # beyond the budget
        out["spearman"][str(n)] = spearman([c["phi"] for c in cs], ranked)
    sizes = sorted({c["n_entities"] for c in cells_})
    for phi in sorted({c["phi"] for c in cells_}):
        med = {c["n_entities"]: c["median_steps_to_grok"] for c in cells_ if c["phi"] == phi}
        if len(sizes) > 1 and all(med.get(n) for n in sizes):
            out["size_ratio"][str(phi)] = max(med.values()) / min(med.values())
        elif len(med) > 1 and any(med.values()):
            budget = max(
                c["budget"] for c in cells_ if c["phi"] == phi and not c["median_steps_to_grok"]
            )
            out["size_ratio_at_least"][str(phi)] = budget / min(m for m in med.values() if m)
    return out


def figure(cells_: list[dict]) -> go.Figure:
    fig = go.Figure()
    for n in sorted({c["n_entities"] for c in cells_}):
        cs = [c for c in cells_ if c["n_entities"] == n]
        fig.add_trace(
            go.Scatter(
                x=[c["phi"] for c in cs],
                y=[c["median_steps_to_grok"] for c in cs],
                mode="lines+markers",
                name=f"{n} entities: median",
            )
        )
        seeds = [(c["phi"], s or c["budget"], s is None) for c in cs for s in c["steps_to_grok"]]
        fig.add_trace(
            go.Scatter(
                x=[p for p, _, _ in seeds],
                y=[t for _, t, _ in seeds],
                mode="markers",
                name=f"{n} entities: seeds (open: censored at the budget)",
                opacity=0.6,
                marker={"symbol": ["circle-open" if c else "circle" for _, _, c in seeds]},
            )
        )
    fig.update_xaxes(title="phi (inferred / atomic training facts)")
    fig.update_yaxes(title=f"steps until valid >= {THRESHOLD}", type="log")
    fig.update_layout(title="The phi law: steps to grok against phi", height=480)
    return fig


def markdown(summary: dict) -> str:
    lines = [
        f"# {summary['study']}",
        "",
        "```bash",
        *summary["commands"],
        "```",
        "",
        f"Machine: {summary['machine'].get('cpu')}, torch {summary['machine'].get('torch')}, "
        f"{summary['machine'].get('date')}. Steps to grok: first evaluation with valid >= "
        f"{THRESHOLD}; `-`: not within the budget (censored). Median: Kaplan-Meier over seeds.",
        "",
        "## Steps to grok",
        "",
        "| entities | phi | seeds | steps to fit | steps to grok | median | censored |",
        "|---|---|---|---|---|---|---|",
    ]
    show = lambda v: "-" if v is None else f"{v:,.0f}"
    for c in summary["cells"]:
        lines.append(
            f"| {c['n_entities']} | {c['phi']} | {c['seeds']} | "
            f"{' / '.join(map(show, c['steps_to_fit']))} | "
            f"{' / '.join(map(show, c['steps_to_grok']))} | "
            f"{show(c['median_steps_to_grok'])} | {c['censored']} |"
        )
    rho = summary["law"]["spearman"]
    lines += [
        "",
        "## The law",
        "",
        "Spearman's rho, phi against median steps to grok: "
        + ", ".join(
            f"{n} entities "
            + ("- (undefined: every median ties, e.g. none grokked)" if r is None else f"{r:+.2f}")
            for n, r in rho.items()
        ),
        "",
        "Ratio of the sizes' medians at each phi: "
        + (
            ", ".join(
                [f"phi {p}: {r:.2f}x" for p, r in summary["law"]["size_ratio"].items()]
                + [
                    f"phi {p}: at least {r:.2f}x (a size censored)"
                    for p, r in summary["law"].get("size_ratio_at_least", {}).items()
                ]
            )
            or "no phi where two sizes grokked"
        ),
        "",
        *(
            [
                "Unfinished runs, left out until they end: "
                + ", ".join(
                    f"{u['n_entities']} entities phi {u['phi']} seed {u['seed']} (step "
                    f"{u['last_step']:,} of {u['budget']:,})"
                    for u in summary["unfinished"]
                ),
                "",
            ]
            if summary.get("unfinished")
            else []
        ),
        "## Accuracy at the step valid chose",
        "",
        "| model | phi | split | seed | step | acc | 95% CI | n |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in summary["rows"]:
        lines.append(
            f"| {r['model']} | {r.get('phi', '')} | {r['split']} | {r['seed']} | "
            f"{r.get('step', '')} | {r['acc']:.3f} | [{r['lo']:.3f}, {r['hi']:.3f}] | "
            f"{r['n']:,} |"
        )
    return "\n".join(lines) + "\n"


def curves(runs: list[RunFiles]) -> go.Figure:
    """valid against step for every run, one colour per size: where the sizes part."""
    fig, colours = go.Figure(), ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")
    top = max((r.config["data"]["phi"] for r in runs), default=1.0)  # the darkest line
    sizes = sorted({r.config["data"]["n_entities"] for r in runs})
    for run in sorted(
        runs, key=lambda r: (r.config["data"]["n_entities"], r.config["data"]["phi"])
    ):
        n, phi = run.config["data"]["n_entities"], run.config["data"]["phi"]
        x, y = run.curve("acc/valid")
        fig.add_trace(
            go.Scatter(
                x=x,
                y=y,
                mode="lines",
                name=f"{n} entities, phi {phi}, seed {run.config['seed']}",
                line={"color": colours[sizes.index(n) % 4]},
                opacity=0.3 + 0.7 * phi / top,
            )
        )
    fig.update_xaxes(title="step", type="log")
    fig.update_yaxes(title="valid accuracy (held-out in-distribution two-hop)")
    fig.update_layout(title="Every run's valid curve (darker: larger phi)", height=480)
    return fig


def write_phi_law(out: str | Path, runs: list[RunFiles], commands: list[str]) -> dict:
    every = [(r, run_entry(r)) for r in runs]
    runs, entries = [r for r, e in every if finished(e)], [e for _, e in every if finished(e)]
    unfinished = [
        {k: e[k] for k in ("n_entities", "phi", "seed", "last_step", "budget")}
        for _, e in every
        if not finished(e)
    ]
    rows = [row for run, e in zip(runs, entries) for row in run_rows(run, e)]
    where = {cell_name(e): {"phi": e["phi"], "n_entities": e["n_entities"]} for e in entries}
    pooled_rows = [r | where[r["model"]] for r in pooled(rows, by_step=False)]
    cells_ = cells(entries)
    summary = {
        "study": "phi_law",
        "machine": machine(),
        "code_version": code_version(),  # of this summary; each run's own code is run_code_versions
        "run_code_versions": sorted({str(r.config.get("code_version")) for r in runs}),
        "commands": list(commands),
        "rows": rows + pooled_rows,
        "cells": cells_,
        "law": law(cells_),
        "unfinished": unfinished,
    }
    out = Path(out)
    atomic_write_text(out / "summary.json", summary_text(summary))
    atomic_write_text(out / "summary.md", markdown(summary))
    head = ["entities", "phi", "median steps to grok", "censored"]
    section = (
        Section("Steps to grok")
        .add(figure(cells_))
        .add(
            table(
                head,
                [
                    [c["n_entities"], c["phi"], c["median_steps_to_grok"] or "-", c["censored"]]
                    for c in cells_
                ],
            )
        )
    )
    section.add(curves(runs))
    write(out / "figures.html", page("grokloop study: the phi law", f"{len(runs)} runs", [section]))
    return summary


@dataclass
class PhiLawCommand:
    """Schema of conf/phi_law.yaml."""

    runs: list[str] = field(default_factory=list)  # the sweep tree(s)
    out: str = "runs/studies/phi_law"
    commands: list[str] = field(
        default_factory=lambda: [
            "python -m grokloop.train --multirun experiment=phi_law sweep=phi_law"
        ]
    )
    commands_file: str | None = None  # replaces `commands` with the file's lines


def run_phi_law(cmd: PhiLawCommand) -> None:
    if not cmd.runs:
        raise ValueError("give the sweep tree: python -m reports.phi_law runs/sweeps/phi_law")
    runs = [read_run(p, probes=False) for p in find_runs(cmd.runs)]
    commands = commands_from(cmd.commands_file) if cmd.commands_file else cmd.commands
    summary = write_phi_law(cmd.out, runs, commands)
    print(Path(cmd.out) / "summary.md")
    print(markdown(summary).split("## Accuracy")[0])


def main(argv: list[str] | None = None) -> None:
    from grokloop import cli

    cli.run("phi_law", run_phi_law, argv)


if __name__ == "__main__":
    main()
