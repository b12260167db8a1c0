"""Causal tracing across (virtual layer, position), batched; and transformer_lens.patching maps.

The paper's procedure (Wang et al. 2024, docs/references.md): run the clean input; for each cell
(i, pos) overwrite the clean state S[i, pos] (blocks.{i}.hook_resid_pre, the state entering
virtual layer i) with the corrupted run's S[i, pos], run the remaining layers, and record
whether the top-1 prediction at the answer position flips. With causal attention the corrupted
state at pos depends only on tokens up to pos, so the paper's prefix-only corrupted run and one
full corrupted run give the same S[i, pos]. In a looped model the layers after a patched cell
include later recurrence steps, and input injection re-reads the prelude output e: a patch at or
before the loop's entry changes e (as it would), a patch after it leaves the clean e.

Batched: the states of both runs are computed once; for each (layer i, position p) the examples
whose cell can change the answer continue from layer i together, computing only positions p..
(see `patched_logits`). `trace_loop` is the straightforward one-cell-per-forward-pass version
through hook points, kept as the reference the benchmark and tests compare against.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from transformer_lens import patching


@dataclass
class TraceResult:
    """Causal tracing of one batch over the states S[0..V] (V + 1 = `state`) and positions.
    flip: the clean run's top-1 answer changes when S[i, pos] comes from the corrupted run;
    strength: its mean over examples (the paper's causal strength); logit_diff: the patched run's
    mean logit(clean answer) - logit(corrupted answer); full_effect: the share of examples whose
    answer the corruption itself flips; clean_acc: the clean run's accuracy."""

    flip: Bool[np.ndarray, "state pos batch"]
    strength: Float[np.ndarray, "state pos"]
    logit_diff: Float[np.ndarray, "state pos"]
    full_effect: float
    clean_acc: float


@dataclass
class PatchingMaps:
    """transformer_lens.patching heatmaps (denoising, normalised logit difference) over the
    hooked virtual blocks `model.layer_table()`."""

    resid_pre: Float[np.ndarray, "layer pos"]
    attn_out: Float[np.ndarray, "layer pos"]
    head_out: Float[np.ndarray, "layer head"]


def _answer_logits(model, final_state, answer_pos):
    rows = torch.arange(len(final_state), device=final_state.device)
    return model.unembed(final_state[rows, answer_pos])  # [rows, vocab]


def _continue(model, x, layers, first: int, S_base, e, p: int, answer_pos):
    """The final state at the answer position [rows, d_model] after running virtual layers
    first.. on x (S[first] with position p patched). By causality every position before p keeps
    its clean state (read from S_base), so only positions p.. are computed, and the last layer
    computes the answer position alone."""
    for j, layer in enumerate(layers):
        if j:
            x = torch.cat([S_base[first + j][:, :p], x], dim=1)
        x, e = model.before_layer(layer, x, e)
        if j == len(layers) - 1:
            return layer.block(x, None, query_pos=answer_pos)
        x = layer.block(x, from_pos=p)


@torch.no_grad()
def patched_logits(model, base, source, answer_pos, max_rows: int = 8192, with_runs: bool = False):
    """Answer logits [V + 1, pos, n, vocab] of the `base` run with S[i, pos] taken from `source`
    (with_runs: also the unpatched base and source runs' answer logits [n, vocab]).

    Exact shortcuts, each a consequence of causal attention: a cell whose source state equals
    the base state (every position before the corrupted token), or that lies after the answer
    position, leaves the answer unchanged (the base logits); a cell whose patch makes the whole
    state the source's (the only position where they differ), with the same injected input,
    continues as the source run (the source logits); every other cell is continued from layer i
    computing only positions pos.. (earlier positions keep their base states)."""
    n, P = base.shape
    layers = model.unrolled()
    V, n_pre = len(layers), len(model.prelude)
    out, base_out, src_out = [], [], []
    for lo in range(0, n, max(1, max_rows // P)):
        rows = slice(lo, lo + max(1, max_rows // P))
        S_base, e = model.residual_states(base[rows])
        S_src, e_src = model.residual_states(source[rows])
        ap = answer_pos[rows]
        clean, corrupted = (
            _answer_logits(model, S_base[-1], ap),
            _answer_logits(model, S_src[-1], ap),
        )
        same_e = (e_src == e).flatten(1).all(1)  # [m]
        logits = clean.expand(V + 1, P, *clean.shape).clone()  # [V + 1, pos, m, vocab]
        for i in range(V):
            differs = (S_src[i] != S_base[i]).any(-1)  # [m, pos]
            whole = (differs.sum(1) == 1) & (same_e if i > n_pre else True)
            for p in range(P):
                as_source = differs[:, p] & whole
                logits[i, p, as_source] = corrupted[as_source]
                todo = torch.nonzero(differs[:, p] & ~as_source & (p <= ap))[:, 0]
                if not len(todo):
                    continue
                x = S_base[i][todo].clone()
                x[:, p] = S_src[i][todo, p]
                x = _continue(
                    model,
                    x,
                    layers[i:],
                    i,
                    S_base[:, todo],
                    None if i <= n_pre else e[todo],
                    p,
                    ap[todo],
                )
                logits[i, p, todo] = model.unembed(x)
        # after the last layer, patching S[V] replaces the final state itself
        final = S_base[-1][None].expand(P, *S_base[-1].shape).clone()  # [pos, m, pos, d]
        idx = torch.arange(P)
        final[idx, :, idx] = S_src[-1].transpose(0, 1)
        logits[V] = torch.stack([_answer_logits(model, final[p], ap) for p in range(P)])
        out.append(logits)
        base_out.append(clean)
        src_out.append(corrupted)
    logits = torch.cat(out, dim=2)
    return (logits, torch.cat(base_out), torch.cat(src_out)) if with_runs else logits


@torch.no_grad()
def known_or_predicted(model, corrupted, answer_pos, corrupted_answers):
    """Corrupted answers with the unknown ones (-1: corruption=free made a query the data does
    not answer) replaced by the corrupted run's own top-1 token, the answer it moves towards."""
    unknown = corrupted_answers < 0
    if not unknown.any():
        return corrupted_answers
    rows = torch.arange(len(corrupted))
    predicted = model(corrupted)[rows, answer_pos].argmax(-1)
    return torch.where(unknown, predicted, corrupted_answers)


@torch.no_grad()
def causal_trace(
    model,
    clean: Int[torch.Tensor, "batch pos"],
    corrupted: Int[torch.Tensor, "batch pos"],
    answer_pos: Int[torch.Tensor, " batch"],
    clean_answers: Int[torch.Tensor, " batch"],
    corrupted_answers: Int[torch.Tensor, " batch"],
) -> TraceResult:
    """Flip rate and logit difference for every (state, position) cell (TraceResult); an unknown
    corrupted answer (-1) is the corrupted run's top-1 (`known_or_predicted`)."""
    corrupted_answers = known_or_predicted(model, corrupted, answer_pos, corrupted_answers)
    logits = patched_logits(model, clean, corrupted, answer_pos)
    clean_final = _answer_logits(model, model.residual_states(clean)[0][-1], answer_pos)
    corr_final = _answer_logits(model, model.residual_states(corrupted)[0][-1], answer_pos)
    clean_pred = clean_final.argmax(-1)
    flip = logits.argmax(-1) != clean_pred
    diff = (
        logits.gather(-1, clean_answers.expand(*logits.shape[:2], -1)[..., None])
        - logits.gather(-1, corrupted_answers.expand(*logits.shape[:2], -1)[..., None])
    )[..., 0]
    return TraceResult(
        flip.numpy(),
        flip.double().mean(-1).numpy(),
        diff.double().mean(-1).numpy(),
        float((corr_final.argmax(-1) != clean_pred).double().mean()),
        float((clean_pred == clean_answers).double().mean()),
    )


def state_hook_name(i: int, n_layers: int) -> str:
    """The hook point whose output is S[i]: the state entering virtual layer i, or for
    i = n_layers the final residual."""
    return (
        f"blocks.{i}.hook_resid_pre" if i < n_layers else f"blocks.{n_layers - 1}.hook_resid_post"
    )


@torch.no_grad()
def trace_loop(model, clean, corrupted, answer_pos) -> torch.Tensor:
    """Reference: one forward pass per (layer, pos) cell, patching through a hook point.
    Returns the flip [V + 1, pos, n] of `causal_trace`."""
    V, P = len(model.layer_table()), clean.shape[1]
    names = [state_hook_name(i, V) for i in range(V + 1)]
    _, cache = model.run_with_cache(corrupted, names_filter=lambda name: name in names)
    rows = torch.arange(len(clean))
    clean_pred = model(clean)[rows, answer_pos].argmax(-1)
    flip = torch.zeros(V + 1, P, len(clean), dtype=torch.bool)
    for i, name in enumerate(names):
        for p in range(P):

            def patch(act, hook, p=p, name=name):
                act = act.clone()
                act[:, p] = cache[name][:, p]
                return act

            logits = model.run_with_hooks(clean, fwd_hooks=[(name, patch)])
            flip[i, p] = logits[rows, answer_pos].argmax(-1) != clean_pred
    return flip


def logit_diff_metric(
    answer_pos, clean_answers, corrupted_answers, clean_ld: float, corrupted_ld: float
):
    """Normalised logit difference: 0 = the corrupted run, 1 = the clean run."""

    def metric(logits):
        rows = torch.arange(len(logits))
        lg = logits[rows, answer_pos]
        ld = (lg[rows, clean_answers] - lg[rows, corrupted_answers]).mean()
        return (ld - corrupted_ld) / (clean_ld - corrupted_ld + 1e-12)

    return metric


@torch.no_grad()
def patching_maps(
    model, clean, corrupted, answer_pos, clean_answers, corrupted_answers
) -> PatchingMaps:
    """transformer_lens.patching heatmaps (denoising: the corrupted run with one clean activation
    patched in) with the normalised logit-difference metric: resid_pre and attn_out
    [layer, pos], head outputs over all positions [layer, head]. Layers are the hooked
    virtual blocks, `model.layer_table()`."""
    rows = torch.arange(len(clean))
    corrupted_answers = known_or_predicted(model, corrupted, answer_pos, corrupted_answers)

    def ld(tokens):
        lg = model(tokens)[rows, answer_pos]
        return float((lg[rows, clean_answers] - lg[rows, corrupted_answers]).mean())

    metric = logit_diff_metric(
        answer_pos, clean_answers, corrupted_answers, ld(clean), ld(corrupted)
    )
    _, cache = model.run_with_cache(clean)
    with _quiet_patching():
        return PatchingMaps(
            patching.get_act_patch_resid_pre(model, corrupted, cache, metric).numpy(),
            patching.get_act_patch_attn_out(model, corrupted, cache, metric).numpy(),
            patching.get_act_patch_attn_head_out_all_pos(model, corrupted, cache, metric).numpy(),
        )


@contextmanager
def _quiet_patching():
    """transformer_lens.patching draws a tqdm bar per map and checkpoint (it calls the `tqdm` it
    imported, with no way to turn it off), ~18 bars of noise in a probes run: hand it a disabled
    one while the maps are made."""
    bar = patching.tqdm
    patching.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        patching.tqdm = bar
