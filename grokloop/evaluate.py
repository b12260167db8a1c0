"""Accuracy and loss on the answer token for every evaluation split, per hop count, and per
recurrence step (what the model would answer if it stopped after step t)."""
from __future__ import annotations

import torch

from grokloop.losses import cross_entropy


def answer_prefix(inputs: torch.Tensor, answer_pos: torch.Tensor,
                  idx: torch.Tensor) -> torch.Tensor:
    """`inputs` cut after the last answer position of the examples `idx`. The model is causal, so
    later tokens cannot change any answer (k-hop data is padded to its deepest test path)."""
    return inputs[:, :int(answer_pos[idx].max()) + 1]


@torch.no_grad()
def evaluate(model, data: dict[str, torch.Tensor], splits: dict[str, torch.Tensor],
             n_steps: int, batch_size: int = 4096) -> dict[str, float]:
    was_training = model.training
    model.eval()
    out = {}
    for name, idx in splits.items():
        per_step, losses = [], []
        tokens = answer_prefix(data["inputs"], data["answer_pos"], idx)
        for chunk in idx.split(batch_size):
            logits = model.readout_steps(tokens[chunk], n_steps,
                                         positions=data["answer_pos"][chunk])  # [steps, batch, vocab]
            target = data["answers"][chunk]
            per_step.append(logits.argmax(-1) == target)
            losses.append(cross_entropy(logits[-1].float(), target, reduction="none"))
        correct = torch.cat(per_step, dim=1)                  # [steps, n]
        out[f"acc/{name}"] = correct[-1].float().mean().item()
        out[f"n/{name}"] = len(idx)   # with acc, gives the Wilson interval (grokloop/stats.py)
        out[f"loss/{name}"] = torch.cat(losses).mean().item()
        hops = data["hops"][idx]
        if len(hops.unique()) > 1:
            for k in hops.unique().tolist():
                out[f"acc/{name}/hops_{k}"] = correct[-1][hops == k].float().mean().item()
                out[f"n/{name}/hops_{k}"] = int((hops == k).sum())
        if n_steps > 1:
            for t in range(n_steps):
                out[f"acc_step/{name}/{t + 1}"] = correct[t].float().mean().item()
    model.train(was_training)
    return out
