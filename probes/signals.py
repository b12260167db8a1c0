"""Abstention signals: at each recurrence step, how well what the model itself reads tells its
right answers from its wrong ones.

Along one episode of the default schedule, for every step t: the AUROC (grokloop.adaptive.rules
.auroc; 0.5 is chance) with which each signal ranks step t's right answers above its wrong ones.
The signals are the readout's top probability and its negated entropy at the answer position,
and, in a model with a fact memory, the memory's retrieval margin at each input position
(`retrieval_margin`): what a halting selector reads before it says "I don't know". Where a fact
is missing from the bank the margins separate right from wrong; where a chain is deeper than any
trained the fact is there and the failure lies elsewhere (README, Adaptive thinking).
"""
from __future__ import annotations

import numpy as np
import torch

from grokloop.adaptive.rules import auroc, trajectory


@torch.no_grad()
def abstention_signals(model, tokens, positions, answers, hops, n_steps: int) -> dict:
    """{"signals": names, "acc": [T], "auroc": [signals, T] (nan where step t's answers are
    all right or all wrong), "n": examples} over the batch, and the same per hop count under
    "hops": {k: {...}} where the batch mixes hop counts."""
    traj = trajectory(model, tokens, positions, answers, n_steps,
                      margins=model.memory is not None)
    signals = {"top_probability": traj["top"], "neg_entropy": -traj["entropy"]}
    if "margin" in traj:
        signals |= {f"margin_pos{j}": traj["margin"][:, :, j]
                    for j in range(traj["margin"].shape[-1])}

    def score(mask: torch.Tensor) -> dict:
        right = traj["correct"][:, mask]
        table = [[auroc(s[t, mask], right[t]) for t in range(n_steps)] for s in signals.values()]
        return {"signals": list(signals), "n": int(mask.sum()),
                "acc": right.double().mean(1).numpy(),
                "auroc": np.array([[np.nan if a is None else a for a in row] for row in table])}

    out = score(torch.ones_like(hops, dtype=torch.bool))
    if len(hops.unique()) > 1:
        out["hops"] = {int(k): score(hops == k) for k in hops.unique().tolist()}
    return out
