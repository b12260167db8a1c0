"""One optimisation step: the loss of one batch (the depth objective, or the authors' answer-and-
end loss), the regularisers, the checks that keep a non-finite number out of every checkpoint,
the gradient transforms (Grokfast, the perpendicular gradient), clipping, the learning rate and
the update."""

from __future__ import annotations

import torch

from grokloop.adaptive.depth import depth_loss
from grokloop.config import RunConfig
from grokloop.losses import answer_and_end_loss
from grokloop.memory import address_loss
from grokloop.optim import grokfast_ema, lr_at, perpendicular_grad
from grokloop.train.distill import distill_loss
from grokloop.train.state import ResidentData, TrainState


def batch_loss(
    state: TrainState,
    cfg: RunConfig,
    data: ResidentData,
    idx: torch.Tensor,
    n_steps: int,
    schedule: list[int] | None,
    delay: int = 0,
) -> torch.Tensor:
    """The training loss of the batch `idx` run for `n_steps` recurrence steps, its first token
    revealed at step `delay` (train.reveal_delay_max); adds to state.chosen which step each
    example learned from."""
    tc, d, model = cfg.train, data.data, state.model
    tokens = data.train_tokens[idx]
    late = None
    if delay:  # pad stands in for the head until step `delay`: the chain waits for it
        early = tokens.clone()
        early[:, 0] = cfg.model.pad_id
        late = (early, delay)
    if data.end_id is not None:
        loss, share = answer_and_end_loss(
            model,
            tokens,
            d["answer_pos"][idx],
            d["answers"][idx],
            data.end_id,
            n_steps,
            schedule,
            tc.grad_last_k,
            tc.loss,
            tc.float64_loss,
        )
    else:
        loss, share = depth_loss(
            model,
            tokens,
            d["answer_pos"][idx],
            d["answers"][idx],
            tc.depth,
            n_steps,
            schedule,
            tc.grad_last_k,
            tc.loss,
            tc.float64_loss,
            tc.best_step_tol,
            tc.soft_best_tau,
            late,
        )
    if len(state.chosen):
        state.chosen += share  # stays on the device; read at evaluation
    if cfg.model.moe_experts > 0 and tc.moe_balance:
        loss = loss + tc.moe_balance * model.moe_balance_loss()
    if data.teacher is not None:  # train.distill: keep the previous model's replayed answers
        loss = loss + tc.distill * distill_loss(model, data.teacher, data, idx, n_steps)
    if tc.memory_address_loss:  # the batch's atomic queries `h r` point at their own slot
        atomic = idx[d["hops"][idx] == 1]
        if len(atomic):
            loss = loss + tc.memory_address_loss * address_loss(model, d["inputs"][atomic, :2])
    return loss


def train_step(
    state: TrainState,
    cfg: RunConfig,
    data: ResidentData,
    n_steps: int,
    schedule: list[int] | None,
    check: bool,
    last_good: str,
    delay: int = 0,
) -> torch.Tensor:
    """One update of state.model on the next batch; returns the loss (on the device). With
    `check`, a non-finite loss or gradient raises FloatingPointError before the update, naming
    `last_good` (the newest good checkpoint); `check` costs a host sync, so the loop asks for it
    only where it evaluates or saves (every step on the CPU, where it is free)."""
    step, opt, params = state.step, state.opt, list(state.model.parameters())
    loss = batch_loss(state, cfg, data, state.next_batch(data), n_steps, schedule, delay)
    if check and not torch.isfinite(loss):
        after = "" if state.grads_finite else " after non-finite gradients since the last check"
        raise FloatingPointError(
            f"loss became {loss.item()} at step {step}{after}; {last_good}. "
            "Lower optim.lr, or try train.float64_loss=true / "
            "train.loss=stablemax"
        )
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.optim.grokfast_lambda > 0:
        grokfast_ema(params, state.ema, cfg.optim.grokfast_alpha, cfg.optim.grokfast_lambda)
    if cfg.optim.perpendicular_grad:
        perpendicular_grad(params)
    # A finite loss can still give non-finite gradients (an overflow in backward), and one update
    # with them puts NaN in the weights: the total norm says so before opt.step.
    if cfg.optim.grad_clip:
        norm = torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
    else:
        norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
    state.grads_finite &= torch.isfinite(norm)  # on the device: no sync until the check
    if check and not state.grads_finite:
        when = f"at step {step}" if norm.device.type == "cpu" else f"by step {step}"
        raise FloatingPointError(
            f"gradients became non-finite {when} (total norm {norm.item()}, "
            f"loss {loss.item():.4g}); {last_good}. Lower optim.lr, or try "
            "train.float64_loss=true / a smaller optim.grad_clip"
        )
    for g in opt.param_groups:
        g["lr"] = lr_at(step, cfg.optim)
    opt.step()
    state.step += 1
    return loss
