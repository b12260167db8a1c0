"""The adaptive-thinking evaluation across runs: accuracy per hop count and steps used, for every
model and halting rule, plus accuracy-versus-compute and coverage-versus-accuracy figures.

    python -m grokloop.adaptive_summary runs/adaptive/khop_* [out=DIR]

Each run directory must hold `halting/results.json` (`python -m grokloop.halting run_dir=RUN`).
Writes summary.json, summary.md and figures.html (plotly, inlined, opens offline) into `out`,
by default runs/adaptive_summary (untracked; pass out=docs/results/adaptive to publish).
Hop 1 is read from the atomic_id split, hops 2.. from test_inferred_id, and 2-hop OOD from
test_inferred_ood.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_OUT = "runs/adaptive_summary"   # under runs/ (gitignored): nothing tracked is overwritten
RULES = ["trained_depth", "fixed_{T}", "kl<0.01", "conf>=0.9", "max_confidence", "oracle",
         "selector"]


def load_run(run_dir: Path) -> dict:
    path = run_dir / "halting" / "results.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; run `python -m grokloop.halting "
                                f"run_dir={run_dir}` first")
    res = json.loads(path.read_text())
    config = json.loads((run_dir / "config.json").read_text())
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    last = history[-1]   # also for a run stopped early: its last evaluation
    chosen = {k.rsplit("/", 1)[1]: v for k, v in last.items() if k.startswith("depth/chosen_step/")}
    return {"name": config["experiment"], "halting": res, "config": config,
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
        for rule in (r.replace("{T}", str(T)) for r in RULES):
            if rule in run["halting"]["splits"]["test_inferred_id"]["rules"]:
                table.append({"model": run["name"], "rule": rule, "hops": per_hop(run, rule)})
    curves = {}
    for run in runs:
        rules = run["halting"]["splits"]["test_inferred_id"]["rules"]
        curves[run["name"]] = {name: {"mean_steps": r["mean_steps"], "acc": r["acc"],
                                      "coverage": r["coverage"]} for name, r in rules.items()}
    return {"table": table, "curves": curves,
            "runs": [{k: run[k] for k in ("name", "train_steps", "wall_time_s", "checkpoint",
                                          "chosen_step_last_interval")} for run in runs]}


def markdown(summary: dict) -> str:
    hops = sorted({h for row in summary["table"] for h in row["hops"] if h != "ood2"}, key=int)
    head = "| model | rule | " + " | ".join(f"{h} hop" + ("s" if h != "1" else "") for h in hops) \
        + " | 2-hop OOD |"
    lines = ["Accuracy (mean steps used) per hop count; hop 1 = atomic facts (ID), hops 2-3 are "
             "trained, 4+ never seen in training.", "", head, "|---" * (3 + len(hops)) + "|"]
    for row in summary["table"]:
        cells = [f"{row['hops'][h][0]:.2f} ({row['hops'][h][1]:.1f})" if h in row["hops"] else "-"
                 for h in hops + ["ood2"]]
        lines.append(f"| {row['model']} | {row['rule']} | " + " | ".join(cells) + " |")
    lines += ["", "| model | training steps (last evaluation) | checkpoint evaluated | wall time (s) | "
              "share of batches learning from step t (last interval) |", "|---|---|---|---|---|"]
    for run in summary["runs"]:
        share = ", ".join(f"{t}: {v:.2f}" for t, v in run["chosen_step_last_interval"].items()) or "-"
        lines.append(f"| {run['name']} | {run['train_steps']} | {run['checkpoint']} | "
                     f"{run['wall_time_s']:.0f} | {share} |")
    return "\n".join(lines) + "\n"


def figures_html(summary: dict) -> str:
    import plotly.graph_objects as go
    from plotly.offline import get_plotlyjs
    from plotly.subplots import make_subplots

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
    fig.update_layout(height=520, width=1300, template="plotly_white")
    body = fig.to_html(full_html=False, include_plotlyjs=False)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Adaptive thinking</title>"
            f"<script>{get_plotlyjs()}</script></head><body>{body}</body></html>")


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
    summary = build([load_run(Path(r)) for r in d["runs"]])
    out = Path(d["out"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    (out / "summary.md").write_text(markdown(summary))
    (out / "figures.html").write_text(figures_html(summary))
    print(markdown(summary))
    print(f"wrote {out}/summary.json, summary.md, figures.html")


if __name__ == "__main__":
    main()
