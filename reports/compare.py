"""The comparison report: runs grouped by the settings that differ between them (seeds pooled),
a summary table with mean and spread across seeds, and overlaid curves."""

from __future__ import annotations

import html
import statistics

import numpy as np
import plotly.graph_objects as go
from plotly.colors import qualitative

from datagen.provenance import portable_path
from reports import figures as F
from reports.html import Section, page, table
from reports.load import RunFiles

IGNORED = {"seed", "code_version", "data_cache"}


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out |= flatten(v, key + ".")
        else:
            out[key] = str(v)
    return out


def option_defaults() -> dict:
    """The model, optim and train options at their defaults, flattened: a run written before an
    option existed ran with its default (options are added so that the default keeps the old
    behaviour), so a missing key compares as that default, not as a difference."""
    import dataclasses

    from grokloop.config import ModelConfig, OptimConfig, TrainConfig

    return flatten(
        {
            name: dataclasses.asdict(cls())
            for name, cls in (
                ("model", ModelConfig),
                ("optim", OptimConfig),
                ("train", TrainConfig),
            )
        }
    )


def group_runs(runs: list[RunFiles]) -> tuple[list[str], dict[str, list[RunFiles]]]:
    """The config keys that differ between runs (seed aside), and the runs per combination."""
    defaults = option_defaults()
    flat = [defaults | flatten(r.config) for r in runs]
    keys = sorted({k for f in flat for k in f})
    differ = [k for k in keys if k not in IGNORED and len({f.get(k) for f in flat}) > 1]
    groups: dict[str, list[RunFiles]] = {}
    for r, f in zip(runs, flat):
        label = ", ".join(f"{k}={f.get(k)}" for k in differ) or "all runs"
        groups.setdefault(label, []).append(r)
    return differ, groups


def short_labels(differ: list[str], groups: dict[str, list[RunFiles]]) -> dict[str, str]:
    """Group labels as short as still tell them apart: the experiment name, then, chosen greedily,
    the fewest differing keys that separate the groups (a full config diff, data presets' nested
    keys and all, would be hundreds of characters per row)."""
    defaults = option_defaults()
    flat = {label: defaults | flatten(rs[0].config) for label, rs in groups.items()}
    chosen = ["experiment"] if "experiment" in differ else []
    parts = lambda label: tuple(str(flat[label].get(k)) for k in chosen)
    while len({parts(label) for label in groups}) < len(groups):
        rest = [k for k in differ if k not in chosen]
        if not rest:
            break
        # the key that leaves the fewest groups sharing a label; ties go to the least nested key
        # (model.memory before data.parts.h2.hops), then the first in order
        chosen.append(
            max(
                rest,
                key=lambda k: (
                    len({parts(label) + (str(flat[label].get(k)),) for label in groups}),
                    -k.count("."),
                    -rest.index(k),
                ),
            )
        )
    if not chosen:
        return {label: label for label in groups}
    return {
        label: ", ".join(
            ([str(flat[label].get("experiment"))] if "experiment" in chosen else [])
            + [f"{k}={flat[label].get(k)}" for k in chosen if k != "experiment"]
        )
        for label in groups
    }


def mean_spread(runs: list[RunFiles], key: str):
    """Steps common to every run of the group, and the mean, min and max of `key` there."""
    curves = [dict(zip(*r.curve(key))) for r in runs]
    steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
    if not steps:
        return [], [], [], []
    ys = np.array([[c[s] for s in steps] for c in curves])
    return steps, ys.mean(0), ys.min(0), ys.max(0)


def overlaid(groups: dict[str, list[RunFiles]], labels: dict[str, str], split: str) -> go.Figure:
    fig = go.Figure()
    for i, (label, runs) in enumerate(groups.items()):
        color = qualitative.D3[i % len(qualitative.D3)]
        steps, mean, lo, hi = mean_spread(runs, f"acc/{split}")
        if not steps:
            continue
        if len(runs) > 1:
            fig.add_trace(
                go.Scatter(
                    x=steps + steps[::-1],
                    y=list(hi) + list(lo[::-1]),
                    fill="toself",
                    fillcolor=color,
                    opacity=0.2,
                    line=dict(width=0),
                    hoverinfo="skip",
                    showlegend=False,
                    legendgroup=label,
                )
            )
        fig.add_trace(
            go.Scatter(
                x=steps,
                y=mean,
                name=f"{labels[label]} (n={len(runs)})",
                line=dict(color=color, width=2),
                legendgroup=label,
            )
        )
    fig.update_xaxes(type="log", title="training step")
    fig.update_yaxes(title=f"accuracy on {split}", range=[0, 1.05])
    return F.style(fig, f"{split}: mean across seeds (band: min to max)")


def fmt(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def summary_table(
    groups: dict[str, list[RunFiles]], labels: dict[str, str], splits: list[str]
) -> str:
    rows = []
    for label, runs in groups.items():
        finals = {
            s: [
                r.metrics[-1][f"acc/{s}"] for r in runs if r.metrics and f"acc/{s}" in r.metrics[-1]
            ]
            for s in splits
        }
        grok = []
        for s in splits[-1:]:
            got = [(r.summary or {}).get("steps_to_0.99", {}).get(s) for r in runs]
            hit = [g for g in got if g is not None]
            grok.append(
                f"{int(statistics.median(hit)):,} ({len(hit)}/{len(runs)})"
                if hit
                else f"never (0/{len(runs)})"
            )
        walls = [r.summary["wall_time_s"] for r in runs if r.summary]
        steps = [r.metrics[-1]["step"] for r in runs if r.metrics]
        rows.append(
            [
                labels[label],
                len(runs),
                f"{max(steps):,}" if steps else "-",
                *[fmt(finals[s]) for s in splits],
                *grok,
                fmt(walls).replace(".000", ""),
            ]
        )
    return table(
        [
            "group",
            "runs",
            "steps",
            *[f"final acc {s}" for s in splits],
            f"steps to 0.99 on {splits[-1]} (median, grokked/runs)",
            "wall time s",
        ],
        rows,
    )


def compare_report(runs: list[RunFiles]) -> str:
    differ, groups = group_runs(runs)
    labels = short_labels(differ, groups)
    splits = list(dict.fromkeys(s for r in runs for s in r.splits()))
    order = [
        "train_inferred",
        "atomic_id",
        "atomic_ood",
        "train",
        "test_inferred_ood",
        "test_inferred_id",
        "test",
    ]
    splits.sort(key=lambda s: order.index(s) if s in order else -1)
    head = Section("Summary")
    head.text(
        f"{len(runs)} runs in {len(groups)} group(s). Settings that differ: "
        + (", ".join(f"<code>{html.escape(k)}</code>" for k in differ) or "none (seeds only)")
        + ". Accuracies are at each run's last evaluation; ± is the standard deviation across seeds."
    )
    head.add(summary_table(groups, labels, splits))
    head.add(
        "<details><summary>Runs</summary>"
        + table(
            ["group", "seed", "directory"],
            [
                [labels[g], r.config.get("seed"), portable_path(r.path)]
                for g, rs in groups.items()
                for r in rs
            ],
        )
        + "</details>"
    )
    curves = Section("Curves")
    for s in splits:
        curves.add(overlaid(groups, labels, s))
    return page("grokloop comparison", html.escape(f"{len(runs)} runs"), [head, curves])
