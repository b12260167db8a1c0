"""The simple exit rules, read from one trajectory of the frozen model's default schedule.

`trajectory` runs the schedule (cycled) for T steps and records, per step and example, whether
the readout is right, its top probability, the KL to the previous step's readout and the compute
spent; `rule_exits` turns that into an exit step per rule: fixed depth t, exit when
KL(p_t || p_t-1) < threshold (Huginn), exit when the top probability >= threshold, the most
confident of all T steps, and the oracle (the fewest steps that answer right, which needs the
answer). `summarize_exits` and `coverage_curve` score one rule. No training here: these run
inside `python -m grokloop.halting run_dir=RUN` (grokloop/adaptive/halting.py).
"""
from __future__ import annotations

import math

import torch

KL_THRESHOLDS = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0]
CONFIDENCE_THRESHOLDS = [0.5, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999]


def core_layers(model) -> list[int]:
    """Layers in each core of the model's bank (the compute of one step of that core)."""
    return [len(core) for core in model.cores]


def per_hop(hops: torch.Tensor, **columns: torch.Tensor) -> dict:
    """{'hops_K': {name: mean of column over the examples with K hops}} for every hop count."""
    return {f"hops_{k}": {name: col[hops == k].float().mean().item() for name, col in columns.items()}
            for k in hops.unique().tolist()}


@torch.no_grad()
def trajectory(model, tokens, positions, answers, max_steps: int) -> dict[str, torch.Tensor]:
    """Per step t = 1..T of the model's schedule (cycled): correct, top probability, KL to t-1,
    and layers run so far. Each tensor is [T, batch]."""
    e, state = model.enter_loop(tokens)
    layers = core_layers(model)
    correct, top, kl, spent, prev, total = [], [], [], [], None, 0
    for t in range(max_steps):
        core = model.schedule[t % len(model.schedule)]
        state = model.step(state, e, t, core)
        total += layers[core]
        logp = model.read(state, positions).float().log_softmax(-1)
        correct.append(logp.argmax(-1) == answers)
        top.append(logp.max(-1).values.exp())
        kl.append(torch.full_like(top[-1], math.inf) if prev is None
                  else (logp.exp() * (logp - prev)).sum(-1))
        spent.append(torch.full_like(top[-1], total / layers[model.schedule[0]]))
        prev = logp
    return {k: torch.stack(v) for k, v in
            dict(correct=correct, top=top, kl=kl, cost=spent).items()}


def first_true(mask: torch.Tensor) -> torch.Tensor:
    """[T, batch] -> index of the first True per column, or T-1 where there is none."""
    T = len(mask)
    hit = mask.clone()
    hit[-1] = True
    return hit.float().argmax(0).clamp(max=T - 1)


def rule_exits(traj: dict[str, torch.Tensor], n_steps_trained: int) -> dict[str, torch.Tensor]:
    """Exit step index [batch] for each simple rule, keyed 'fixed_T', 'kl<thr', 'conf>=thr', ..."""
    T, B = traj["correct"].shape
    exits = {f"fixed_{t}": torch.full((B,), t - 1, dtype=torch.long) for t in range(1, T + 1)}
    exits["trained_depth"] = exits[f"fixed_{min(n_steps_trained, T)}"]
    for thr in KL_THRESHOLDS:
        exits[f"kl<{thr:g}"] = first_true(traj["kl"] < thr)
    for thr in CONFIDENCE_THRESHOLDS:
        exits[f"conf>={thr:g}"] = first_true(traj["top"] >= thr)
    exits["max_confidence"] = traj["top"].argmax(0)
    exits["oracle"] = first_true(traj["correct"])
    return exits


def summarize_exits(traj, exit_step, hops, cost_all_steps: bool = False) -> dict:
    """Accuracy and compute of one rule: overall and per hop count."""
    cols = torch.arange(exit_step.shape[0])
    right = traj["correct"][exit_step, cols].float()
    # A rule that must see every step before choosing (max_confidence) pays for all of them.
    steps = torch.full_like(right, len(traj["correct"])) if cost_all_steps else (exit_step + 1).float()
    cost = traj["cost"][-1] if cost_all_steps else traj["cost"][exit_step, cols]
    return {"acc": right.mean().item(), "coverage": 1.0, "mean_steps": steps.mean().item(),
            "mean_cost": cost.float().mean().item(), **per_hop(hops, acc=right, mean_steps=steps)}


def coverage_curve(traj, exit_step) -> list[dict]:
    """Abstain when the chosen step's top probability is below c: coverage vs selective accuracy."""
    cols = torch.arange(exit_step.shape[0])
    top, right = traj["top"][exit_step, cols], traj["correct"][exit_step, cols]
    rows = []
    for c in [0.0, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99]:
        keep = top >= c
        rows.append({"min_confidence": c, "coverage": keep.float().mean().item(),
                     "selective_acc": right[keep].float().mean().item() if keep.any() else None})
    return rows
