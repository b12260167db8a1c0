"""Layer-loop surgery: re-run a contiguous range of virtual layers of a trained model.

L1 -> [L2 -> L3] x (1 + N) -> L4: layers start..end (inclusive) run N extra times, with no
retraining. For a looped model a repeated range that starts a recurrence step re-applies input
injection there, as every step after the first does (the loop was trained that way); the prelude
output e is set once.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float


@dataclass
class SurgeryResult:
    """acc[split][r, start, end]: accuracy with layers start..end (inclusive) run repeats[r] more
    times (NaN where end < start); base[split]: the unmodified model's on the same examples;
    layers: the virtual layers' labels."""

    repeats: list[int]
    layers: list[str]
    acc: dict[str, Float[np.ndarray, "repeat start end"]]
    base: dict[str, float]


def repeat_range(layers: list, start: int, end: int, extra: int) -> list:
    again = [
        dataclasses.replace(layer, begins_loop=False, injects=layer.starts_step)
        for layer in layers[start : end + 1]
    ]
    return layers[: end + 1] + again * extra + layers[end + 1 :]


@torch.no_grad()
def accuracy(model, layers, tokens, answer_pos, answers, chunk: int = 4096) -> float:
    correct = 0
    for lo in range(0, len(tokens), chunk):
        rows = slice(lo, lo + chunk)
        x, _ = model.run_layers(model.embed(tokens[rows]), layers)
        ap = answer_pos[rows]
        logits = model.unembed(x[torch.arange(len(x)), ap])
        correct += int((logits.argmax(-1) == answers[rows]).sum())
    return correct / max(len(tokens), 1)


@torch.no_grad()
def layer_loop_surgery(model, batches: dict, repeats=(1, 2, 3)) -> SurgeryResult:
    """The accuracy of every contiguous range of virtual layers run `extra` more times, per
    split of `batches` (ProbeBatches by split name)."""
    layers = model.unrolled()
    V = len(layers)
    out = SurgeryResult(list(repeats), [v.label for v in model.layer_table()], {}, {})
    for split, b in batches.items():
        grid = np.full((len(repeats), V, V), np.nan)
        for r, extra in enumerate(repeats):
            for start in range(V):
                for end in range(start, V):
                    grid[r, start, end] = accuracy(
                        model,
                        repeat_range(layers, start, end, extra),
                        b.tokens,
                        b.answer_pos,
                        b.answers,
                    )
        out.acc[split] = grid
        out.base[split] = accuracy(model, layers, b.tokens, b.answer_pos, b.answers)
    return out
