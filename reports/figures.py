"""Plotly figures of one run's metrics and probe results. Each function takes loaded data and
returns a go.Figure; colours are fixed per split so every figure reads the same way."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.colors import qualitative, sample_colorscale
from plotly.subplots import make_subplots

from reports.load import ProbeResult, RunFiles

SPLIT_COLORS = {
    "train": "#1f77b4",
    "atomic_id": "#1f77b4",
    "atomic_ood": "#aec7e8",
    "train_inferred": "#2ca02c",
    "test": "#d62728",
    "test_inferred_id": "#ff7f0e",
    "test_inferred_ood": "#d62728",
}
FONT = dict(family="Helvetica, Arial, sans-serif", size=13)


def split_color(split: str, i: int = 0) -> str:
    return SPLIT_COLORS.get(split, qualitative.D3[i % len(qualitative.D3)])


def style(fig: go.Figure, title: str, height: int = 420) -> go.Figure:
    fig.update_layout(
        title=dict(text=title, x=0.01),
        font=FONT,
        height=height,
        template="plotly_white",
        margin=dict(l=70, r=30, t=60, b=60),
        legend=dict(itemsizing="constant"),
    )
    return fig


def steps_sequence(n: int) -> list[str]:
    return sample_colorscale("Viridis", [i / max(n - 1, 1) for i in range(n)])


# --- training ------------------------------------------------------------------------------------


def accuracy_curves(run: RunFiles, threshold: float = 0.99) -> go.Figure:
    """Accuracy per split over training (log step axis), each split's grokking step marked."""
    fig = go.Figure()
    grok = (run.summary or {}).get(f"steps_to_{threshold}", {})
    for i, s in enumerate(run.splits()):
        x, y = run.curve(f"acc/{s}")
        fig.add_trace(
            go.Scatter(x=x, y=y, name=s, mode="lines", line=dict(color=split_color(s, i), width=2))
        )
        if grok.get(s):
            # shapes take data coordinates on a log axis; annotations take log10 (plotly.js)
            fig.add_vline(x=grok[s], line=dict(color=split_color(s, i), dash="dot", width=1))
            fig.add_annotation(
                x=np.log10(grok[s]),
                y=1.02,
                text=f"{s} ≥ {threshold}: step {grok[s]:,}",
                showarrow=False,
                textangle=-90,
                xanchor="right",
                yanchor="top",
                font=dict(size=10, color=split_color(s, i)),
            )
    fig.update_xaxes(type="log", title="training step")
    fig.update_yaxes(title="accuracy", range=[0, 1.05])
    return style(fig, "Accuracy per split (dotted: first step at or above the grokking threshold)")


def loss_and_weight_norm(run: RunFiles) -> go.Figure:
    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=("Cross-entropy loss (nats)", "Weight norm (L2, all parameters)"),
    )
    x, y = run.curve("loss/train")
    fig.add_trace(go.Scatter(x=x, y=y, name="train batch", line=dict(color="#444", width=2)), 1, 1)
    for i, s in enumerate(run.splits()):
        x, y = run.curve(f"loss/{s}")
        fig.add_trace(go.Scatter(x=x, y=y, name=s, line=dict(color=split_color(s, i))), 1, 1)
    x, y = run.curve("weight_norm")
    fig.add_trace(
        go.Scatter(x=x, y=y, name="weight norm", line=dict(color="#9467bd", width=2)), 1, 2
    )
    fig.update_xaxes(type="log", title="training step")
    fig.update_yaxes(type="log", title="loss (nats)", row=1, col=1)
    fig.update_yaxes(title="‖θ‖₂", row=1, col=2)
    return style(fig, "Loss and weight norm")


def readout_curves(run: RunFiles, split: str) -> go.Figure:
    """Accuracy if the model stopped after step t, over training: one line per t."""
    ts = sorted(
        {
            int(k.rsplit("/", 1)[1])
            for r in run.metrics
            for k in r
            if k.startswith(f"acc_step/{split}/")
        }
    )
    colors = steps_sequence(len(ts))
    fig = go.Figure()
    for t, c in zip(ts, colors):
        x, y = run.curve(f"acc_step/{split}/{t}")
        fig.add_trace(go.Scatter(x=x, y=y, name=f"after step {t}", line=dict(color=c, width=2)))
    fig.update_xaxes(type="log", title="training step")
    fig.update_yaxes(title=f"accuracy on {split}", range=[0, 1.05])
    return style(fig, f"Per-step readout on {split}: the answer if thinking stopped after step t")


def hops_curves(run: RunFiles, split: str) -> go.Figure:
    hops = sorted(
        {
            int(k.rsplit("_", 1)[1])
            for r in run.metrics
            for k in r
            if k.startswith(f"acc/{split}/hops_")
        }
    )
    colors = steps_sequence(len(hops))
    fig = go.Figure()
    for h, c in zip(hops, colors):
        x, y = run.curve(f"acc/{split}/hops_{h}")
        fig.add_trace(go.Scatter(x=x, y=y, name=f"{h} hops", line=dict(color=c, width=2)))
    fig.update_xaxes(type="log", title="training step")
    fig.update_yaxes(title=f"accuracy on {split}", range=[0, 1.05])
    return style(fig, f"Accuracy per hop count on {split}")


def chosen_steps(run: RunFiles) -> go.Figure:
    """Best-step training: the share of each batch that learned from step t, over training."""
    ts = sorted(
        {
            int(k.rsplit("/", 1)[1])
            for r in run.metrics
            for k in r
            if k.startswith("depth/chosen_step/")
        }
    )
    fig = go.Figure()
    for t, c in zip(ts, steps_sequence(len(ts))):
        x, y = run.curve(f"depth/chosen_step/{t}")
        fig.add_trace(go.Scatter(x=x, y=y, name=f"step {t}", stackgroup="one", line=dict(color=c)))
    fig.update_xaxes(type="log", title="training step")
    fig.update_yaxes(title="share of examples", range=[0, 1])
    return style(fig, "Which step each batch learned from (best-step training)")


# --- probes --------------------------------------------------------------------------------------


def pick_checkpoints(steps: list[int], n: int = 3) -> list[int]:
    """First, last and evenly spread ones between (by index, i.e. log-spaced in practice)."""
    if len(steps) <= n:
        return steps
    return [steps[round(i * (len(steps) - 1) / (n - 1))] for i in range(n)]


def heatmap_grid(
    grids: list[np.ndarray],
    titles: list[str],
    y_labels,
    x_title: str,
    z_title: str,
    title: str,
    zmin=None,
    zmax=None,
    colorscale="Viridis",
    x_labels=None,
    y_title: str = "virtual layer",
) -> go.Figure:
    fig = make_subplots(
        rows=1, cols=len(grids), subplot_titles=titles, shared_yaxes=True, horizontal_spacing=0.04
    )
    for j, g in enumerate(grids):
        xs = x_labels if x_labels is not None else list(range(g.shape[1]))
        fig.add_trace(
            go.Heatmap(
                z=g,
                x=xs,
                y=list(y_labels),
                zmin=zmin,
                zmax=zmax,
                colorscale=colorscale,
                showscale=j == len(grids) - 1,
                colorbar=dict(title=z_title),
                hovertemplate=f"{x_title} %{{x}}<br>%{{y}}<br>{z_title} %{{z:.3f}}<extra></extra>",
            ),
            1,
            j + 1,
        )
        fig.update_xaxes(title=x_title, row=1, col=j + 1, type="category")
    fig.update_yaxes(title=y_title, row=1, col=1, type="category")
    return style(fig, title, height=max(360, 28 * len(y_labels) + 160))


def logit_lens_maps(lens: ProbeResult, split: str) -> list[go.Figure]:
    """Per role: MRR of the role's token at every (virtual layer, position), at chosen checkpoints."""
    steps = pick_checkpoints(lens.steps)
    last = lens.arrays[steps[-1]]
    figs = []
    for j, role in enumerate(last["roles"]):
        grids = [lens.arrays[s][f"{split}/mrr"][j] for s in steps]
        figs.append(
            heatmap_grid(
                grids,
                [f"step {s:,}" for s in steps],
                last["layers"],
                "position",
                "MRR",
                f"Logit lens on {split}: reciprocal rank of the {role} token",
                zmin=0,
                zmax=1,
            )
        )
    return figs


def role_mrr_over_training(lens: ProbeResult, split: str) -> go.Figure:
    """Per role: MRR of the role's token at its own position, per virtual layer, over checkpoints
    (circuit formation as a curve)."""
    steps = lens.steps
    last = lens.arrays[steps[-1]]
    grids = [
        np.stack([lens.arrays[s][f"{split}/at_role_mrr"][j] for s in steps], axis=1)
        for j in range(len(last["roles"]))
    ]
    return heatmap_grid(
        grids,
        [str(r) for r in last["roles"]],
        last["layers"],
        "checkpoint (training step)",
        "MRR",
        f"Logit lens over training on {split}: each role's token at its position",
        zmin=0,
        zmax=1,
        x_labels=[f"{s:,}" for s in steps],
    )


def tracing_maps(tracing: ProbeResult, split: str, role: str) -> go.Figure:
    """Causal strength (flip rate) per (virtual layer, position) at the first and last checkpoint
    traced, and the change between them."""
    steps = tracing.steps
    key = f"{split}/{role}/strength"
    have = [s for s in steps if key in tracing.arrays[s]]
    first, last = tracing.arrays[have[0]][key], tracing.arrays[have[-1]][key]
    layers = tracing.arrays[have[-1]]["layers"]
    grids, titles = [first, last], [f"step {have[0]:,}", f"step {have[-1]:,}"]
    if len(have) > 1:
        grids.append(last - first)
        titles.append("change")
    fig = make_subplots(
        rows=1, cols=len(grids), subplot_titles=titles, shared_yaxes=True, horizontal_spacing=0.06
    )
    for j, g in enumerate(grids):
        change = j == 2
        fig.add_trace(
            go.Heatmap(
                z=g,
                y=list(layers),
                x=list(range(g.shape[1])),
                zmin=-1 if change else 0,
                zmax=1,
                colorscale="RdBu" if change else "Viridis",
                reversescale=change,
                colorbar=dict(
                    title="Δ flip rate" if change else "flip rate",
                    x=1.0 if change else 0.64 if len(grids) == 3 else 1.0,
                ),
                showscale=change or j == 1,
                hovertemplate="position %{x}<br>%{y}<br>%{z:.3f}<extra></extra>",
            ),
            1,
            j + 1,
        )
        fig.update_xaxes(title="position", type="category", row=1, col=j + 1)
    fig.update_yaxes(title="virtual layer (state patched)", type="category", row=1, col=1)
    return style(
        fig,
        f"Causal tracing on {split}, {role} corrupted: flip rate when the state at "
        "(layer, position) comes from the corrupted run",
        height=max(360, 28 * len(layers) + 160),
    )


def patching_map(tracing: ProbeResult, split: str, role: str) -> go.Figure | None:
    last = tracing.arrays[tracing.steps[-1]]
    keys = [k for k in last if k.startswith(f"{split}/{role}/patching_")]
    if not keys:
        return None
    grids = [last[k] for k in keys]
    titles = [k.rsplit("patching_", 1)[1] for k in keys]
    fig = make_subplots(rows=1, cols=len(grids), subplot_titles=titles, horizontal_spacing=0.07)
    for j, (g, t) in enumerate(zip(grids, titles)):
        fig.add_trace(
            go.Heatmap(
                z=g,
                colorscale="RdBu",
                zmid=0,
                showscale=j == len(grids) - 1,
                colorbar=dict(title="restored"),
                hovertemplate="%{x}, %{y}: %{z:.3f}<extra></extra>",
            ),
            1,
            j + 1,
        )
        fig.update_xaxes(title="head" if "head" in t else "position", dtick=1, row=1, col=j + 1)
        fig.update_yaxes(title="block (virtual layer)", dtick=1, row=1, col=j + 1)
    return style(
        fig,
        f"transformer_lens.patching at step {tracing.steps[-1]:,} ({split}, {role} corrupted): "
        "normalised logit difference, 1 = clean restored, 0 = corrupted",
    )


def attention_maps(att: ProbeResult, split: str) -> go.Figure:
    step = att.steps[-1]
    mean, layers = att.arrays[step][f"{split}/mean"], att.arrays[step]["layers"]
    V, H = mean.shape[:2]
    fig = make_subplots(
        rows=V,
        cols=H,
        subplot_titles=[f"{layers[v]} · head {h}" for v in range(V) for h in range(H)],
        vertical_spacing=min(0.3 / max(V, 1), 0.08),
        horizontal_spacing=0.04,
    )
    for v in range(V):
        for h in range(H):
            fig.add_trace(
                go.Heatmap(
                    z=mean[v, h],
                    zmin=0,
                    zmax=1,
                    colorscale="Blues",
                    showscale=v == 0 and h == H - 1,
                    colorbar=dict(title="attention"),
                    hovertemplate="query %{y} → key %{x}: %{z:.2f}<extra></extra>",
                ),
                v + 1,
                h + 1,
            )
    fig.update_yaxes(autorange="reversed", title_text="", dtick=1)
    fig.update_xaxes(dtick=1)
    fig.update_yaxes(title_text="query position", col=1)
    fig.update_xaxes(title_text="key position", row=V)
    fig = style(
        fig,
        f"Attention patterns at step {step:,} on {split} (mean over the chosen examples)",
        height=180 * V + 120,
    )
    fig.update_annotations(font_size=10)
    return fig


def fourier_figures(four: ProbeResult) -> list[go.Figure]:
    steps = four.steps
    norms = np.stack([four.arrays[s]["freq_norm"] for s in steps])
    freqs = np.arange(1, norms.shape[1] + 1)
    spectrum = go.Figure()
    for s, c in zip(steps, steps_sequence(len(steps))):
        spectrum.add_trace(
            go.Scatter(
                x=freqs, y=four.arrays[s]["freq_norm"], name=f"step {s:,}", line=dict(color=c)
            )
        )
    spectrum.update_xaxes(title="frequency k")
    spectrum.update_yaxes(title="norm of the embedding's (cos, sin) k components")
    rows = sorted(four.rows, key=lambda r: r["checkpoint"])
    x = [r["checkpoint"] for r in rows]
    measures = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=(
            "Restricted and excluded loss (nats)",
            "Gini coefficient of the Fourier norms",
        ),
    )
    for key, color in (
        ("train_loss", "#1f77b4"),
        ("test_loss", "#d62728"),
        ("restricted_loss", "#2ca02c"),
        ("excluded_loss", "#9467bd"),
    ):
        measures.add_trace(
            go.Scatter(
                x=x, y=[r[key] for r in rows], name=key.replace("_", " "), line=dict(color=color)
            ),
            1,
            1,
        )
    measures.add_trace(
        go.Scatter(x=x, y=[r["gini"] for r in rows], name="Gini", line=dict(color="#444")), 1, 2
    )
    measures.update_xaxes(type="log", title="training step")
    measures.update_yaxes(type="log", title="loss (nats)", row=1, col=1)
    measures.update_yaxes(title="Gini (0 = spread, 1 = sparse)", row=1, col=2)
    key = rows[-1]["key_freqs"] if rows else []
    return [
        style(
            spectrum,
            f"Fourier spectrum of the embedding over training (key frequencies at the last "
            f"checkpoint: {key})",
        ),
        style(measures, "Fourier progress measures"),
    ]


def surgery_maps(surg: ProbeResult, split: str) -> go.Figure:
    step = surg.steps[-1]
    acc, layers, repeats = (surg.arrays[step][k] for k in (f"{split}/acc", "layers", "repeats"))
    base = next(
        (r["base_acc"] for r in surg.rows if r["checkpoint"] == step and r["split"] == split), None
    )
    return heatmap_grid(
        [a.T for a in acc],
        [f"range repeated {r}× more" for r in repeats],
        layers,
        "first layer of the range",
        "accuracy",
        f"Layer-loop surgery at step {step:,} on {split}: accuracy when virtual layers "
        f"start..end run again (unmodified: {base:.3f})"
        if base is not None
        else "",
        zmin=0,
        zmax=1,
        x_labels=list(layers),
        y_title="last layer of the range",
    )


def interval_bars(rows: list[dict], title: str) -> go.Figure:
    """Accuracy with its Wilson 95% interval for result-schema rows: one bar per (model, split)
    grouped by split, a bar per model (e.g. a study's included rows: baselines, bank evaluations)."""
    fig = go.Figure()
    models = list(dict.fromkeys(r["model"] for r in rows))
    for i, model in enumerate(models):
        rs = [r for r in rows if r["model"] == model]
        fig.add_bar(
            name=model,
            x=[r["split"] for r in rs],
            y=[r["acc"] for r in rs],
            marker_color=split_color(model, i),
            error_y=dict(
                type="data",
                symmetric=False,
                array=[r["hi"] - r["acc"] for r in rs],
                arrayminus=[r["acc"] - r["lo"] for r in rs],
            ),
            hovertext=[f"n = {r['n']:,}" for r in rs],
        )
    fig.update_layout(barmode="group", yaxis=dict(title="accuracy", range=[0, 1.05]))
    return style(fig, title)
