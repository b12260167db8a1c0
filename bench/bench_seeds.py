"""Several seeds in one process: what batching S models' training steps with torch.func.vmap
buys over running them one after another (= one process per seed, run in turn on the same cores).

Both sides run the same training step of `experiment=default` (modular addition, full batch,
perpendicular gradient, AdamW) for S models that differ only in their initialisation seed:
  sequential  S models, S optimizers, one step each in turn
  vmap        the S models' weights stacked (torch.func.stack_module_state), the loss and its
              gradient vmapped over the seed axis (functional_call on the unchanged model), the
              perpendicular gradient per seed on the stacked gradients, one fused AdamW on the
              stacked weights (elementwise, so each seed's update is its own)
It checks that the first step's losses and updated weights of the two agree (to float rounding:
a batched matmul does not sum in the same order as S separate ones, so bitwise identity is not
expected), and reports seeds per hour at the default task's steps to grok (about 360).

    python bench/bench_seeds.py [--seeds 4] [--steps 20] [--repeats 3]
    python bench/bench_seeds.py --smoke
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.func import functional_call, grad_and_value, stack_module_state, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, run_config, table, write  # noqa: E402

from datagen import load_or_build  # noqa: E402
from grokloop.losses import cross_entropy  # noqa: E402
from grokloop.model import LoopedTransformer  # noqa: E402
from grokloop.optim import make_optimizer, perpendicular_grad  # noqa: E402

STEPS_TO_GROK = 360  # experiment=default, seeds 0-2: 320-360 steps (conf/experiment/default.yaml)


class Readout(torch.nn.Module):
    """The training forward as a module call, so functional_call can swap its weights."""

    def __init__(self, model):
        super().__init__()
        self.m = model

    def forward(self, tokens, positions):
        return self.m.readout_steps(
            tokens, positions=positions, every_step=False, answer_only=True
        )[-1]


def setup(overrides: list[str], n_seeds: int, device: str = "cpu"):
    cfg = run_config(overrides)
    ds = load_or_build(cfg.data, cfg.data_cache)
    cfg.model = cfg.model.resolved(len(ds.vocab), ds.n_ctx)
    idx = torch.as_tensor(ds.splits["train"])
    pos = torch.as_tensor(ds.answer_pos)[idx]
    x = torch.as_tensor(ds.inputs)[idx][:, : int(pos.max()) + 1]
    y = torch.as_tensor(ds.answers)[idx]
    x, pos, y = x.to(device), pos.to(device), y.to(device)
    models = []
    for s in range(n_seeds):
        torch.manual_seed(s)
        models.append(LoopedTransformer(cfg.model).to(device).train())
    return cfg, (x, pos, y), models


def sequential(cfg, batch, models):
    models = [copy.deepcopy(m) for m in models]
    opts = [make_optimizer(m, cfg.optim) for m in models]

    def step():
        losses = []
        for m, opt in zip(models, opts):
            loss = cross_entropy(Readout(m)(batch[0], batch[1]), batch[2])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.optim.perpendicular_grad:
                perpendicular_grad(list(m.parameters()))
            opt.step()
            losses.append(loss.detach())
        return torch.stack(losses)

    return step, models


def batched_perpendicular(params: dict, grads: dict) -> None:
    """perpendicular_grad for each seed of stacked [S, ...] weights and gradients."""
    for k, g in grads.items():
        w = params[k].detach()
        if w.dim() < 3:  # a vector per seed: perpendicular_grad skips it
            continue
        gf, wf = g.flatten(1), w.flatten(1)
        w2 = (wf * wf).sum(1, keepdim=True)
        perp = (
            gf - torch.where(w2 > 0, (gf * wf).sum(1, keepdim=True) / w2.clamp_min(1e-30), 0) * wf
        )
        scale = gf.norm(dim=1, keepdim=True) / perp.norm(dim=1, keepdim=True).clamp_min(1e-30)
        g.copy_((perp * scale).view_as(g))


def batched(cfg, batch, models):
    base = Readout(copy.deepcopy(models[0])).to("meta")
    params, buffers = stack_module_state([Readout(m) for m in models])
    params = {k: v.detach().requires_grad_() for k, v in params.items()}

    def loss_fn(p, b, x, pos, y):
        return cross_entropy(functional_call(base, (p, b), (x, pos)), y)

    step_fn = vmap(grad_and_value(loss_fn), in_dims=(0, 0, None, None, None))
    decay = [v for k, v in params.items() if v.dim() >= 3]
    no_decay = [v for k, v in params.items() if v.dim() < 3]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.optim.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.optim.lr,
        betas=cfg.optim.betas,
        fused=True,
    )

    def step():
        # CPU flash attention has no vmap batching rule (a per-seed loop): the math kernel has.
        # no_grad: torch.func.grad differentiates inside it regardless, and without it the outer
        # autograd records the whole transformed step onto the weights (which require grad for
        # the optimizer), so every step's graph stayed alive (0.45 GB a step at 4 seeds)
        with sdpa_kernel(SDPBackend.MATH), torch.no_grad():
            grads, losses = step_fn(params, buffers, *batch)
        if cfg.optim.perpendicular_grad:
            batched_perpendicular(params, grads)
        for k, p in params.items():
            p.grad = grads[k]
        opt.step()
        return losses.detach()

    return step, params


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def per_round(step, steps: int) -> float:
    step()
    sync()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return (time.perf_counter() - t) / steps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out")
    args = ap.parse_args()
    overrides = ["experiment=default"] + (
        ["data.p=23", "model.d_model=32", "model.n_heads=2"] if args.smoke else []
    )
    steps, repeats = (3, 1) if args.smoke else (args.steps, args.repeats)
    cfg, batch, models = setup(overrides, args.seeds, args.device)

    # agreement after one step: losses and weights
    seq, seq_models = sequential(cfg, batch, models)
    vm, params = batched(cfg, batch, models)
    l_seq, l_vm = seq(), vm()
    w_diff = max(
        (params[f"m.{k}"][i] - p).abs().max().item()
        for i, m in enumerate(seq_models)
        for k, p in m.named_parameters()
    )
    loss_diff = (l_seq - l_vm).abs().max().item()

    times = {"sequential": [], "vmap": []}
    for _ in range(repeats):
        times["sequential"].append(per_round(sequential(cfg, batch, models)[0], steps))
        times["vmap"].append(per_round(batched(cfg, batch, models)[0], steps))
    med = {k: statistics.median(v) for k, v in times.items()}
    # What batching could save at best: a step of one model costs work that grows with the batch
    # plus a fixed cost (Python, dispatch, optimizer over every tensor) that does not, measured as
    # one model's step on 8 examples. Batching S seeds perfectly pays that fixed cost once
    # instead of S times and does the rest at the same speed (batched matmuls measured no
    # faster than a full batch's own), so it cannot beat S*t / (S*(t - t0) + t0).
    tiny = tuple(x[:8] for x in batch)
    fixed = statistics.median(
        per_round(sequential(cfg, tiny, models[:1])[0], steps) for _ in range(repeats)
    )
    one = med["sequential"] / args.seeds
    ceiling = args.seeds * one / (args.seeds * max(one - fixed, 0.0) + fixed)
    seeds_per_hour = {k: 3600 / (STEPS_TO_GROK * v) * args.seeds for k, v in med.items()}
    result = {
        "experiment": "default",
        "device": args.device,
        "overrides": overrides,
        "n_seeds": args.seeds,
        "examples_per_batch": len(batch[0]),
        "steps_timed": steps,
        "seconds_per_round": med,
        "all_seconds_per_round": times,
        "speedup_vmap_vs_sequential": med["sequential"] / med["vmap"],
        "steps_to_grok_assumed": STEPS_TO_GROK,
        "seeds_per_hour": seeds_per_hour,
        "first_step_max_abs_diff": {"loss": loss_diff, "weights": w_diff},
        "fixed_seconds_per_step": fixed,
        "ceiling_speedup_any_batching": ceiling,
    }
    print(
        table(
            ["loop", f"s per step of {args.seeds} seeds", "seeds/hour to grok"],
            [[k, f"{med[k]:.4f}", f"{seeds_per_hour[k]:.0f}"] for k in med],
        )
    )
    print(
        f"vmap / sequential: {result['speedup_vmap_vs_sequential']:.2f}x; first step max |diff|: "
        f"loss {loss_diff:.2e}, weights {w_diff:.2e}"
    )
    print(
        f"fixed cost of one model's step (8 examples): {1e3 * fixed:.2f} ms of {1e3 * one:.2f} ms; "
        f"no batching of {args.seeds} seeds can beat {ceiling:.2f}x"
    )
    path = write("seeds", {"machine": machine(), "results": [result]}, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
