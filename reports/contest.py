"""The selector against the valid-tuned rules, across runs: summary.json's `selector_vs_rule`,
`compute_by_hops` and `frontier`, their tables and figures (read by reports/adaptive.py).

Each halting run holds its contest (grokloop/adaptive/contest.py): the rule chosen on `valid`
for each metric, scored once on test, and the per-fact test arrays (RUN/halting/contest.npz).
Here every run gives one entry per metric, and the runs that share a model recipe and a
selector recipe (seeds apart) a pooled one: the facts of all its runs, each answered by the
selector and by the rule chosen in its own run, resampled in pairs (the same percentile
bootstrap), with `seed_gains` beside it, so the spread over seeds shows next to the interval
over facts.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from grokloop.stats import wilson
from reports.figures import style

ENTRY_FIELDS = ("rule", "metric", "gain", "lo", "hi", "n", "n_variants", "margin")
COMPANIONS = {"accuracy": "acc_gain", "compute": "compute_saving"}  # each metric's row field
SIDES = ("acc", "steps", "flops")
N_BOOT = 2000


def load_facts(results_json: Path) -> dict | None:
    """The per-fact test arrays beside a halting results.json, or None."""
    path = Path(results_json).with_name("contest.npz")
    if not path.is_file():
        return None
    with np.load(path) as d:
        return {k: d[k] for k in d.files}


def recipe(run: dict) -> str:
    """What runs pooled together share: the experiment and the selector's options but its seed."""
    cfg = {k: v for k, v in run["halting"].get("config", {}).items() if k != "seed"}
    return json.dumps([run["halting"].get("experiment"), cfg], sort_keys=True)


def run_entries(run: dict) -> list[dict]:
    rows = (run["halting"].get("contest") or {}).get("rows", [])
    seed = run["halting"].get("config", {}).get("seed")
    return [
        {"model": run["name"], "seed": run.get("seed"), "selector_seed": seed}
        | ({"selector": run["selector_label"]} if run.get("selector_label") else {})
        | {k: r.get(k) for k in ENTRY_FIELDS}
        | {f"{c}{x}": r.get(f"{c}{x}") for c in COMPANIONS.values() for x in ("", "_lo", "_hi")}
        | {
            f"{split}_{w}_{s}": r.get(f"{split}_{w}_{s}")
            for split in ("valid", "test")
            for w in ("selector", "rule")
            for s in SIDES
        }
        for r in rows
    ]


def pair_arrays(run: dict, rule: str) -> dict | None:
    facts = run.get("contest_facts")
    if facts is None or f"{rule}.correct" not in facts:
        return None
    return {
        who: {"correct": facts[f"{key}.correct"].astype(float), "flops": facts[f"{key}.flops"]}
        for who, key in (("selector", "selector"), ("rule", rule))
    }


def bootstrap(metric: str, pairs: dict, seed: int = 0) -> tuple[float, float, float]:
    """(gain, lo, hi) of the pooled pairs: accuracy gain or compute saving (module docstring)."""

    def stat(idx):
        s, r = pairs["selector"], pairs["rule"]
        if metric == "accuracy":
            return s["correct"][idx].mean(-1) - r["correct"][idx].mean(-1)
        return 1 - s["flops"][idx].mean(-1) / r["flops"][idx].mean(-1)

    n = len(pairs["selector"]["correct"])
    idx = np.random.default_rng(seed).integers(n, size=(N_BOOT, n))
    lo, hi = np.percentile(stat(idx), [2.5, 97.5])
    return float(stat(np.arange(n))), float(lo), float(hi)


def common_name(names: list[str]) -> str:
    if len(set(names)) == 1:
        return names[0]
    return os.path.commonprefix(names).rstrip("._-") or names[0]


def pooled_entries(runs: list[dict]) -> list[dict]:
    """One entry per metric per group of runs (`recipe`) with at least two members."""
    groups: dict[str, list[dict]] = {}
    for run in runs:
        if (run["halting"].get("contest") or {}).get("rows"):
            groups.setdefault(recipe(run), []).append(run)
    out = []
    for members in (g for g in groups.values() if len(g) > 1):
        for metric in ("accuracy", "compute"):
            entries = [e for run in members for e in run_entries(run) if e["metric"] == metric]
            pairs = [
                pair_arrays(run, e["rule"])
                for run, e in zip(members, entries)
                if e["rule"] is not None
            ]
            if not pairs or any(p is None for p in pairs):
                continue
            joined = {
                who: {k: np.concatenate([p[who][k] for p in pairs]) for k in ("correct", "flops")}
                for who in ("selector", "rule")
            }
            both = {
                f"{COMPANIONS[m]}{x}": v
                for m in COMPANIONS
                for x, v in zip(("", "_lo", "_hi"), bootstrap(m, joined))
            }
            gain, lo, hi = (both[f"{COMPANIONS[metric]}{x}"] for x in ("", "_lo", "_hi"))
            label = members[0].get("selector_label")
            out.append(
                {
                    "model": common_name([r["name"] for r in members]),
                    **({"selector": label} if label else {}),
                    "seed": "pooled",
                    "selector_seed": "pooled",
                    "rule": sorted({e["rule"] for e in entries if e["rule"]}),
                    "metric": metric,
                    "gain": gain,
                    "lo": lo,
                    "hi": hi,
                    "n": len(joined["selector"]["correct"]),
                    "n_variants": max(e["n_variants"] for e in entries),
                    "margin": entries[0].get("margin"),
                    **both,
                    "n_runs": len(members),
                    "seed_gains": [e["gain"] for e in entries],
                    "test_selector_flops": float(joined["selector"]["flops"].mean()),
                    "test_rule_flops": float(joined["rule"]["flops"].mean()),
                    "test_selector_acc": float(joined["selector"]["correct"].mean()),
                    "test_rule_acc": float(joined["rule"]["correct"].mean()),
                }
            )
    return out


def selector_vs_rule(runs: list[dict]) -> list[dict]:
    return [e for run in runs for e in run_entries(run)] + pooled_entries(runs)


def compute_by_hops(runs: list[dict]) -> list[dict]:
    """Rows {model, seed, selector_seed, method, hops, n, acc, lo, hi, flops, steps}: FLOPs per
    fact by hop count for the selector, the fixed depths and every rule tuned on valid (its
    family in `tuned_on_valid`). A rule's rows come once per frozen model (they are the same
    whichever selector ran beside them: repeating them weighted a seed by its number of selector
    runs when pooled), a selector's once per selector run."""
    out, seen = [], set()
    for run in runs:
        contest = run["halting"].get("contest") or {}
        seed = run["halting"].get("config", {}).get("seed")
        label = run.get("selector_label")
        for method, per_hop in contest.get("by_hops", {}).items():
            if method != "selector":  # a rule once per frozen model, however many runs list it
                if (run["name"], run.get("seed"), method) in seen:
                    continue
                seen.add((run["name"], run.get("seed"), method))
            if label and method == "selector":
                method = f"selector.{label}"
            tuned = {v: k for k, v in contest.get("tuned", {}).items()}.get(method)
            for key, r in per_hop.items():
                lo, hi = wilson(round(r["acc"] * r["n"]), r["n"])
                sel = {"selector_seed": seed} if method.startswith("selector") else {}
                out.append(
                    {"model": run["name"], "seed": run.get("seed")}
                    | sel
                    | {"method": method, "hops": int(key[5:])}
                    | ({"tuned_on_valid": tuned} if tuned else {})
                    | r
                    | {"lo": lo, "hi": hi}
                )
    return out


def frontier(runs: list[dict]) -> list[dict]:
    """Every candidate rule's valid and test point of each run (the accuracy-compute plane)."""
    out, seen = [], set()
    for run in runs:  # the rules of one frozen model are the same whichever selector ran
        if (run["name"], run.get("seed")) in seen:
            continue
        seen.add((run["name"], run.get("seed")))
        out += [
            {"model": run["name"], "seed": run.get("seed")} | p
            for p in (run["halting"].get("contest") or {}).get("frontier", [])
        ]
    return out


# --- tables and figures ----------------------------------------------------------------------
def entry_table(
    summary: dict, pooled_only: bool = False
) -> tuple[list[str], list[list[str]]] | None:
    entries = [
        e for e in summary.get("selector_vs_rule") or [] if not pooled_only or e["seed"] == "pooled"
    ]
    if not entries:
        return None
    headers = [
        "model",
        "selector",
        "seed",
        "selector seed",
        "metric",
        "rule (chosen on valid)",
        "gain [95% CI]",
        "other metric [95% CI]",
        "selector acc / GFLOPs",
        "rule acc / GFLOPs",
        "n",
        "rules tried",
    ]
    rows = []
    for e in entries:
        rule = ", ".join(e["rule"]) if isinstance(e["rule"], list) else str(e["rule"])
        gain = (
            "-" if e.get("gain") is None else f"{e['gain']:+.4f} [{e['lo']:+.4f}, {e['hi']:+.4f}]"
        )
        rows.append(
            [
                e["model"],
                e.get("selector", "-"),
                str(e["seed"]),
                str(e["selector_seed"]),
                e["metric"],
                rule,
                gain,
                companion(e),
                side(e, "selector"),
                side(e, "rule"),
                f"{e['n']:,}",
                str(e["n_variants"]),
            ]
        )
    return headers, rows


def by_hops_table(summary: dict) -> tuple[list[str], list[list[str]]] | None:
    """Compute by difficulty: per model and method, accuracy (mean MFLOPs per fact) at each hop
    count, pooled over the runs that have it (facts weighted by n)."""
    rows = summary.get("compute_by_hops") or []
    if not rows:
        return None
    cells: dict[tuple, dict[int, list]] = {}
    for r in rows:
        cells.setdefault((r["model"], r["method"]), {}).setdefault(r["hops"], []).append(r)
    hops = sorted({r["hops"] for r in rows})
    out = []
    for (model, method), per in cells.items():
        line = [model, method]
        for k in hops:
            rs = per.get(k, [])
            n = sum(r["n"] for r in rs)
            if not n:
                line.append("-")
                continue
            acc = sum(r["acc"] * r["n"] for r in rs) / n
            flops = sum(r["flops"] * r["n"] for r in rs) / n
            line.append(f"{acc:.2f} ({flops / 1e6:.1f})")
        out.append(line)
    return ["model", "method"] + [f"{k} hops" for k in hops], out


def companion(e: dict) -> str:
    """The metric the entry was not chosen on, on test: the price of its gain."""
    other = COMPANIONS["compute" if e["metric"] == "accuracy" else "accuracy"]
    if e.get(other) is None:
        return "-"
    name = "saving" if other == "compute_saving" else "acc"
    return f"{name} {e[other]:+.4f} [{e[other + '_lo']:+.4f}, {e[other + '_hi']:+.4f}]"


def side(e: dict, who: str) -> str:
    acc, flops = e.get(f"test_{who}_acc"), e.get(f"test_{who}_flops")
    return "-" if acc is None else f"{acc:.4f} / {flops / 1e9:.4f}"


def by_hops_figure(summary: dict) -> go.Figure | None:
    """Compute by difficulty: mean FLOPs per fact against hop count, and accuracy, per method
    (seeds pooled by their mean)."""
    rows = summary.get("compute_by_hops") or []
    if not rows:
        return None
    fig = make_subplots(
        rows=1, cols=2, subplot_titles=("FLOPs per fact by hop count", "Accuracy by hop count")
    )
    series: dict[tuple, dict[int, list]] = {}
    for r in rows:
        series.setdefault((r["model"], r["method"]), {}).setdefault(r["hops"], []).append(r)
    for i, ((model, method), hops) in enumerate(sorted(series.items())):
        ks = sorted(hops)
        flops = [np.mean([r["flops"] for r in hops[k]]) / 1e6 for k in ks]
        acc = [np.mean([r["acc"] for r in hops[k]]) for k in ks]
        colour = f"hsl({(i * 47) % 360},60%,45%)"
        dash = "solid" if method == "selector" else "dot"
        for col, y in ((1, flops), (2, acc)):
            fig.add_trace(
                go.Scatter(
                    x=ks,
                    y=y,
                    mode="lines+markers",
                    name=f"{model}: {method}",
                    legendgroup=f"{model}{method}",
                    showlegend=col == 1,
                    line=dict(color=colour, dash=dash),
                ),
                row=1,
                col=col,
            )
    fig.update_xaxes(title_text="hops", row=1, col=1)
    fig.update_xaxes(title_text="hops", row=1, col=2)
    fig.update_yaxes(title_text="MFLOPs per fact (mean)", row=1, col=1)
    fig.update_yaxes(title_text="accuracy", range=[0, 1.02], row=1, col=2)
    style(fig, "Compute by difficulty (test_inferred_id)", height=520)
    return fig.update_layout(margin=dict(t=100))


def frontier_figure(summary: dict) -> go.Figure | None:
    """Test accuracy against mean FLOPs per fact: every candidate rule (grey), the valid-tuned
    choices and the selector."""
    points = summary.get("frontier") or []
    if not points:
        return None
    fig = go.Figure()
    for model in dict.fromkeys(p["model"] for p in points):
        mine = [p for p in points if p["model"] == model]
        fig.add_trace(
            go.Scatter(
                x=[p["test_flops"] / 1e6 for p in mine],
                y=[p["test_acc"] for p in mine],
                mode="markers",
                marker=dict(size=5, opacity=0.35),
                text=[f"{p['rule']} (seed {p['seed']})" for p in mine],
                name=f"{model}: rules",
            )
        )
    for e in summary.get("selector_vs_rule", []):
        if e["seed"] == "pooled" or e.get("test_selector_flops") is None:
            continue
        fig.add_trace(
            go.Scatter(
                x=[e["test_selector_flops"] / 1e6],
                y=[e["test_selector_acc"]],
                mode="markers",
                marker=dict(symbol="diamond", size=11),
                name=f"{e['model']}: selector (seed {e['seed']}, sel. {e['selector_seed']})",
            )
        )
    fig.update_xaxes(title_text="mean MFLOPs per fact (test)")
    fig.update_yaxes(title_text="test accuracy")
    return style(fig, "Accuracy against compute: every rule and the selector", height=520)
