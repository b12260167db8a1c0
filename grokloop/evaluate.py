"""Accuracy and loss on the answer token for every evaluation split, per hop count, and per
recurrence step (what the model would answer if it stopped after step t).

Evaluation runs without gradients on batches grouped by answer position: each group is cut right
after its answer (the model is causal, so later tokens cannot change an answer), so a split that
mixes 2-hop and 6-hop chains does not run its short chains padded to the longest. The groups of a
split are built once per run (`cache`) and reused at every evaluation. Same metrics as one padded
pass; only the matrix shapes differ, so losses can differ in the last bits (<= 1e-6 relative).
On the k-hop memory presets this made an evaluation 1.8x faster (bench/README.md, studies).

Why no_grad and not inference_mode: inference mode was 1-2% faster still, but the model caches
tensors across calls (attention biases, a memory's bank index), and one first built during an
evaluation would be an inference tensor, which a later training step may not save for backward
(a curriculum evaluates its untrained model, then trains, in one process).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from grokloop.losses import cross_entropy


def answer_prefix(
    inputs: torch.Tensor, answer_pos: torch.Tensor, idx: torch.Tensor
) -> torch.Tensor:
    """`inputs` cut after the last answer position of the examples `idx`. The model is causal, so
    later tokens cannot change any answer (k-hop data is padded to its deepest test path)."""
    return inputs[:, : int(answer_pos[idx].max()) + 1]


@dataclass(frozen=True)
class EvalBatch:
    tokens: torch.Tensor  # [n, answer_pos + 1], every example's answer at the last position
    positions: torch.Tensor  # [n] answer positions (all equal)
    targets: torch.Tensor  # [n]
    hops: torch.Tensor  # [n]


def eval_batches(
    data: dict[str, torch.Tensor], idx: torch.Tensor, batch_size: int
) -> list[EvalBatch]:
    """The examples `idx` as batches of at most `batch_size`, grouped by answer position and
    each cut after it."""
    pos = data["answer_pos"][idx]
    out = []
    for p in pos.unique().tolist():  # sorted: the order is the same at every evaluation
        group = idx[pos == p]
        for chunk in group.split(batch_size):
            out.append(
                EvalBatch(
                    data["inputs"][chunk, : p + 1],
                    data["answer_pos"][chunk],
                    data["answers"][chunk],
                    data["hops"][chunk],
                )
            )
    return out


@torch.no_grad()
def evaluate(
    model,
    data: dict[str, torch.Tensor],
    splits: dict[str, torch.Tensor],
    n_steps: int,
    batch_size: int = 4096,
    cache: dict | None = None,
) -> dict[str, float]:
    """Metrics of `model` on each split {name: example ids}. `cache`: a dict kept between calls
    with the same data and splits (a training run's), which holds each split's batches."""
    was_training = model.training
    model.eval()
    out = {}
    for name, idx in splits.items():
        key = (name, batch_size)
        batches = cache.get(key) if cache is not None else None
        if batches is None:
            batches = eval_batches(data, idx, batch_size)
            if cache is not None:
                cache[key] = batches
        out |= split_metrics(model, name, batches, n_steps)
    model.train(was_training)
    return out


def split_metrics(model, name: str, batches: list[EvalBatch], n_steps: int) -> dict[str, float]:
    per_step, loss_sum, hops = [], 0.0, []
    for b in batches:
        logits = model.readout_steps(b.tokens, n_steps, positions=b.positions)  # [steps, n, vocab]
        per_step.append(logits.argmax(-1) == b.targets)
        loss_sum += cross_entropy(logits[-1].float(), b.targets, reduction="none").sum()
        hops.append(b.hops)
    correct, hops = torch.cat(per_step, dim=1), torch.cat(hops)  # [steps, n], [n]
    n = len(hops)
    out = {
        f"acc/{name}": correct[-1].float().mean().item(),
        f"n/{name}": n,  # with acc, gives the Wilson interval (grokloop/stats.py)
        f"loss/{name}": (loss_sum / n).item(),
    }
    kinds = hops.unique()
    if len(kinds) > 1:
        for k in kinds.tolist():
            out[f"acc/{name}/hops_{k}"] = correct[-1][hops == k].float().mean().item()
            out[f"n/{name}/hops_{k}"] = int((hops == k).sum())
    if n_steps > 1:
        for t in range(n_steps):
            out[f"acc_step/{name}/{t + 1}"] = correct[t].float().mean().item()
    return out
