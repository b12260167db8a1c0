"""The adaptive-thinking report across runs: accuracy per hop count and steps used, for every
model and halting rule, plus accuracy-versus-compute and coverage-versus-accuracy figures.

    python -m grokloop.adaptive_summary runs/adaptive/khop_* [out=DIR]

(also `python -m reports.adaptive ...`; options: conf/adaptive_summary.yaml, typed by
SummaryCommand.) Each run directory must hold `halting/results.json` (`python -m grokloop.halting
run_dir=RUN`). Writes summary.json, summary.md and figures.html (a reports/html.py page, opens
offline) into `out`, by default runs/adaptive_summary (untracked; pass out=docs/results/adaptive
to publish). Hop 1 is read from the atomic_id split, hops 2.. from test_inferred_id, and 2-hop
OOD from test_inferred_ood.
"""
from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from pathlib import Path

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from grokloop.adaptive import MAIN_RULES
from grokloop.provenance import atomic_write_text, machine
from grokloop.stats import acc_row
from reports.figures import style
from reports.html import Section, page, table
from reports.load import load_run

DEFAULT_OUT = "runs/adaptive_summary"   # under runs/ (gitignored): nothing tracked is overwritten
HOPS_NOTE = ("Accuracy (mean steps used) per hop count; hop 1 = atomic facts (ID), hops 2-3 are "
             "trained, 4+ never seen in training.")


def load_halting(run_dir: str | Path) -> dict:
    """A run's halting results with what the summary needs of its training (last evaluation)."""
    path = Path(run_dir) / "halting" / "results.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; run `python -m grokloop.halting "
                                f"run_dir={run_dir}` first")
    res = json.loads(path.read_text())
    run = load_run(run_dir, probes=False)
    last = run.metrics[-1]   # also for a run stopped early: its last evaluation
    chosen = {k.rsplit("/", 1)[1]: v for k, v in last.items() if k.startswith("depth/chosen_step/")}
    return {"name": run.name, "halting": res, "config": run.config,
            "train_steps": last["step"], "wall_time_s": last["wall_time_s"],
            "chosen_step_last_interval": chosen,
            "checkpoint": res.get("checkpoint_step")}


def per_hop(run: dict, rule: str) -> dict:
    """{hop: (acc, mean steps)} with hop 1 from atomic_id, 'ood2' from test_inferred_ood."""
    splits = run["halting"]["splits"]
    out = {}
    if rule in splits.get("atomic_id", {}).get("rules", {}):
        row = splits["atomic_id"]["rules"][rule]
        out["1"] = (row["acc"], row["mean_steps"])
    for key, row in splits.get("test_inferred_id", {}).get("rules", {}).get(rule, {}).items():
        if key.startswith("hops_"):
            out[key[5:]] = (row["acc"], row["mean_steps"])
    ood = splits.get("test_inferred_ood", {}).get("rules", {}).get(rule, {}).get("hops_2")
    if ood:
        out["ood2"] = (ood["acc"], ood["mean_steps"])
    return out


def build(runs: list[dict]) -> dict:
    table = []
    for run in runs:
        T = run["halting"]["config"]["max_steps"]
        for rule in (r.replace("{T}", str(T)) for r in MAIN_RULES):
            if rule in run["halting"]["splits"]["test_inferred_id"]["rules"]:
                table.append({"model": run["name"], "rule": rule, "hops": per_hop(run, rule)})
    curves = {}
    for run in runs:
        rules = run["halting"]["splits"]["test_inferred_id"]["rules"]
        curves[run["name"]] = {name: {"mean_steps": r["mean_steps"], "acc": r["acc"],
                                      "coverage": r["coverage"]} for name, r in rules.items()}
    # the results schema (DEVELOPERS.md): one row per (model, split, rule) with its interval
    rows = [acc_row(r["acc"], res["n"], model=run["name"], split=split, rule=rule,
                    mean_steps=r["mean_steps"])
            for run in runs for split, res in run["halting"]["splits"].items()
            for rule, r in res["rules"].items()]
    return {"study": "adaptive", "machine": machine(),
            "commands": [f"python -m grokloop.halting run_dir={run['halting']['run_dir']}" for run in runs],
            "rows": rows, "table": table, "curves": curves,
            "runs": [{k: run[k] for k in ("name", "train_steps", "wall_time_s", "checkpoint",
                                          "chosen_step_last_interval")} for run in runs]}


# --- the two tables, as (headers, rows) for the markdown and the page ------------------------
def hops_table(summary: dict) -> tuple[list[str], list[list[str]]]:
    hops = sorted({h for row in summary["table"] for h in row["hops"] if h != "ood2"}, key=int)
    headers = ["model", "rule"] + [f"{h} hop" + ("s" if h != "1" else "") for h in hops] + ["2-hop OOD"]
    rows = [[row["model"], row["rule"]] +
            [f"{row['hops'][h][0]:.2f} ({row['hops'][h][1]:.1f})" if h in row["hops"] else "-"
             for h in hops + ["ood2"]] for row in summary["table"]]
    return headers, rows


def runs_table(summary: dict) -> tuple[list[str], list[list[str]]]:
    headers = ["model", "training steps (last evaluation)", "checkpoint evaluated", "wall time (s)",
               "share of batches learning from step t (last interval)"]
    rows = [[run["name"], run["train_steps"], run["checkpoint"], f"{run['wall_time_s']:.0f}",
             ", ".join(f"{t}: {v:.2f}" for t, v in run["chosen_step_last_interval"].items()) or "-"]
            for run in summary["runs"]]
    return headers, rows


def markdown_lines(headers: list[str], rows: list[list]) -> list[str]:
    return (["| " + " | ".join(headers) + " |", "|---" * len(headers) + "|"] +
            ["| " + " | ".join(map(str, r)) + " |" for r in rows])


def markdown(summary: dict) -> str:
    return "\n".join([HOPS_NOTE, "", *markdown_lines(*hops_table(summary)), "",
                      *markdown_lines(*runs_table(summary))]) + "\n"


# --- figures.html ------------------------------------------------------------------------------
def compute_figure(summary: dict) -> go.Figure:
    """Accuracy against mean steps per rule family, and the selector's coverage and accuracy."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=(
        "Accuracy vs compute (test_inferred_id, all hops)", "Coverage vs accuracy (abstention)"))
    for i, (name, rules) in enumerate(summary["curves"].items()):
        colour = f"hsl({(i * 67) % 360},60%,45%)"
        for family, prefix in (("fixed T", "fixed_"), ("KL exit", "kl<"), ("confidence exit", "conf>=")):
            pts = sorted((r["mean_steps"], r["acc"]) for k, r in rules.items() if k.startswith(prefix))
            fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], mode="lines+markers",
                                     name=f"{name}: {family}", line=dict(color=colour,
                                     dash={"fixed T": "solid", "KL exit": "dot"}.get(family, "dash")),
                                     legendgroup=name), row=1, col=1)
        for special, symbol in (("oracle", "star"), ("selector", "diamond")):
            if special in rules:
                r = rules[special]
                fig.add_trace(go.Scatter(x=[r["mean_steps"]], y=[r["acc"]], mode="markers",
                                         marker=dict(symbol=symbol, size=12, color=colour),
                                         name=f"{name}: {special}", legendgroup=name), row=1, col=1)
                if special == "selector":
                    fig.add_trace(go.Scatter(x=[r["coverage"]], y=[r["acc"] / max(r["coverage"], 1e-9)],
                                             mode="markers", marker=dict(symbol=symbol, size=12, color=colour),
                                             name=f"{name}: selector", legendgroup=name,
                                             showlegend=False), row=1, col=2)
    fig.update_xaxes(title_text="mean thinking steps per example", row=1, col=1)
    fig.update_yaxes(title_text="accuracy", range=[0, 1.02], row=1, col=1)
    fig.update_xaxes(title_text="coverage (share answered)", range=[0, 1.02], row=1, col=2)
    fig.update_yaxes(title_text="accuracy on answered", range=[0, 1.02], row=1, col=2)
    style(fig, "Halting rules and the selector on the frozen models", height=540)
    return fig.update_layout(margin=dict(t=100))   # room for the subplot titles under the title


def figures_html(summary: dict) -> str:
    names = ", ".join(run["name"] for run in summary["runs"])
    return page("Adaptive thinking", html.escape(f"{len(summary['runs'])} run(s): {names}"), [
        Section("Accuracy against compute").add(compute_figure(summary)),
        Section("Accuracy per hop count").text(HOPS_NOTE).add(table(*hops_table(summary))),
        Section("Runs").add(table(*runs_table(summary)))])


# --- the command line: python -m grokloop.adaptive_summary RUN [RUN ...] [out=DIR] -----------
@dataclass
class SummaryCommand:
    """Schema of conf/adaptive_summary.yaml; the positional RUN words are runs=[...]."""
    runs: list[str] = field(default_factory=list)   # run directories holding halting/results.json
    out: str = DEFAULT_OUT


def main(argv: list[str] | None = None) -> None:
    from grokloop import cli

    cli.run("adaptive_summary", summarize, argv)


def summarize(d: dict) -> None:
    if not d["runs"]:
        raise ValueError("runs: give at least one run directory: "
                         "python -m grokloop.adaptive_summary RUN [RUN ...] [out=DIR]")
    summary = build([load_halting(r) for r in d["runs"]])
    out = Path(d["out"])
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1))
    atomic_write_text(out / "summary.md", markdown(summary))
    atomic_write_text(out / "figures.html", figures_html(summary))
    print(markdown(summary))
    print(f"wrote {out}/summary.json, summary.md, figures.html")


if __name__ == "__main__":
    main()
