"""Depth objectives: how a training batch decides how many thinking steps to learn from.

- fixed:     the loss after `n_steps` steps.
- random:    the loss after a step count drawn per batch, uniform over `depth_choices`,
             optionally with truncated backpropagation (Huginn-style).
- poisson:   the same, the step count drawn from Poisson(`depth_poisson_mean`) clipped to
             `depth_clip` (Loop, Think & Generalize: Poisson(4) in [2, 8]).
- best:      read out after every step 1..T, and learn from each example's best step: the lowest
             loss, ties (within `tol`) going to the fewest steps. Only the chosen readout enters
             the loss, so gradient flows only along the chosen step's path.
- soft_best: a soft minimum over steps, weights softmax(-loss / tau) held constant, so steps
             near the best keep learning and the choice cannot collapse onto one step (Ouro
             reports that a reward for the lowest-loss exit step does exactly that).

The per-batch step counts of random and poisson are one sequence drawn from the seed before
training (`depth_sequence`), so a step's depth is a function of its index: exact on resume, and
no host sync in the loop. `depth_loss` returns the scalar loss and, per step, the fraction of the
batch that learned from it (for the chosen-step distribution over training). grokloop/train.py
calls it every step; choose the objective with
`python -m grokloop.train experiment=khop_fixed train.depth=best`.
"""

from __future__ import annotations

import torch

from grokloop.losses import cross_entropy

OBJECTIVES = ("fixed", "random", "poisson", "best", "soft_best")


def depth_sequence(tc, seed: int) -> list[int]:
    """The step count of every training step (TrainConfig `tc`), [] when the depth is fixed per
    model (fixed, best, soft_best). Drawn once from the seed, so a step's depth is a function of
    its index."""
    gen = torch.Generator().manual_seed(seed + 1)
    if tc.depth == "random":
        picks = torch.randint(len(tc.depth_choices), (tc.steps,), generator=gen)
        return [tc.depth_choices[i] for i in picks.tolist()]
    if tc.depth == "poisson":
        lo, hi = tc.depth_clip
        draws = torch.poisson(
            torch.full((tc.steps,), float(tc.depth_poisson_mean), dtype=torch.float64),
            generator=gen,
        )
        return draws.clamp(lo, hi).long().tolist()
    return []


def choose_best_step(losses: torch.Tensor, tol: float = 0.0) -> torch.Tensor:
    """losses [steps, batch] -> the chosen step index [batch]: the first step whose loss is within
    `tol` of that example's minimum, i.e. the lowest loss with ties going to the fewest steps."""
    best = losses.min(dim=0).values
    good = losses <= best + tol  # [steps, batch]
    return good.float().argmax(dim=0)  # first True


def depth_loss(
    model,
    tokens,
    positions,
    targets,
    objective: str,
    n_steps: int,
    schedule: list[int] | None = None,
    grad_last_k: int | None = None,
    loss: str = "softmax",
    float64: bool = False,
    tol: float = 0.0,
    tau: float = 1.0,
    late: tuple[torch.Tensor, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(scalar loss, share of the batch learning from each step [n_steps]) for one batch; `late`
    as LoopedTransformer.readout_steps takes it (the last-step objectives only)."""
    if objective in ("fixed", "random", "poisson"):
        logits = model.readout_steps(
            tokens,
            n_steps,
            positions=positions,
            schedule=schedule,
            grad_last_k=grad_last_k,
            every_step=False,
            answer_only=True,
            late=late,
        )[-1]
        share = torch.zeros(n_steps, device=tokens.device)
        share[-1] = 1.0
        return cross_entropy(logits, targets, loss, float64), share
    logits = model.readout_steps(
        tokens, n_steps, positions=positions, schedule=schedule, grad_last_k=grad_last_k
    )  # [steps, batch, vocab]
    per_step = cross_entropy(
        logits, targets.expand(len(logits), -1), loss, float64, reduction="none"
    )  # [steps, batch]
    if objective == "best":
        chosen = choose_best_step(per_step.detach(), tol)
        value = per_step.gather(0, chosen[None]).mean()
        share = torch.bincount(chosen, minlength=n_steps).float() / len(chosen)
        return value, share
    if objective == "soft_best":
        weights = (-per_step.detach() / tau).softmax(dim=0)  # [steps, batch]
        return (weights * per_step).sum(0).mean(), weights.mean(1)
    raise ValueError(f"train.depth={objective!r} is not one of {list(OBJECTIVES)}")
