"""AdamW with decoupled weight decay, warm-up then constant, and two grokking accelerators
(docs/references.md): the Grokfast EMA gradient filter and the perpendicular gradient."""

from __future__ import annotations

import torch

from grokloop.config import OptimConfig


def make_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """Weight decay on matrices only, unless `decay_norms_and_biases` (norm gains, biases).
    The MoE experts' input biases `b_in` are 2-D ([expert, d_expert]) but biases all the same."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        matrix = p.dim() >= 2 and not name.endswith(".b_in")
        (decay if matrix or cfg.decay_norms_and_biases else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # The fused kernel where torch has one (CPU, CUDA): one pass over every parameter instead of
    # one per arithmetic operation; foreach elsewhere.
    fused = all(p.device.type in ("cpu", "cuda") for p in model.parameters())
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, fused=fused, foreach=not fused)


def lr_at(step: int, cfg: OptimConfig) -> float:
    """Linear warm-up over `warmup_steps`, then constant (as in Wang et al. and Power et al.)."""
    return cfg.lr * min(1.0, (step + 1) / max(cfg.warmup_steps, 1))


@torch.no_grad()
def grokfast_ema(params, ema: dict, alpha: float, lamb: float) -> None:
    """Grokfast-EMA (Lee et al. 2024, Alg. 2): g <- g + lambda * EMA_alpha(g).
    Note: this raises the effective learning rate by about (1 + lambda) for slow gradients.
    `ema` maps a parameter's index in `params` to its average (the checkpoint's ema.{i}); the
    update is three multi-tensor (foreach) kernels over every gradient, the same arithmetic as
    one loop per tensor."""
    live = [(i, p.grad) for i, p in enumerate(params) if p.grad is not None]
    new = {i for i, _ in live if i not in ema}
    for i, g in live:
        if i in new:  # a first step: the average starts at the gradient
            ema[i] = g.detach().clone()
    old = [(ema[i], g) for i, g in live if i not in new]
    if old:
        avg, grads = zip(*old)
        torch._foreach_mul_(avg, alpha)
        torch._foreach_add_(avg, grads, alpha=1 - alpha)
    torch._foreach_add_([g for _, g in live], [ema[i] for i, _ in live], alpha=lamb)


@torch.no_grad()
def perpendicular_grad(params) -> None:
    """⊥Grad (Prieto et al. 2025): remove each tensor's gradient component along its weights and
    rescale to the original gradient norm, so the update cannot just grow the weights. No host
    sync: a zero weight tensor (no direction to remove) keeps its gradient through torch.where,
    where the loop used to ask the device whether the norm was zero."""
    for p in params:
        if p.grad is None or p.dim() < 2:
            continue
        g, w = p.grad.flatten(), p.detach().flatten()
        w_norm2 = w.dot(w)
        along = torch.where(w_norm2 > 0, g.dot(w) / w_norm2, 0.0)
        g_perp = g - along * w
        p.grad.copy_((g_perp * (g.norm() / g_perp.norm().clamp_min(1e-30))).view_as(p.grad))
