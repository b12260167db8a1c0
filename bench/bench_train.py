"""Training throughput: grokloop's training step against the usual alternatives, same shapes,
data and batch size, one process, interleaved repeats.

  grokloop      `grokloop.train.train` itself (data on the device, on-device shuffling, loss on
                the answer position only), timed as a marginal cost per step
  hf_gpt2       a Hugging Face transformers GPT-2 of the same depth and width (built from a
                config: nothing downloaded), a standard PyTorch loop over a DataLoader, loss on
                the answer token of the full logits (what the paper's code does)
  plain_loop    our model in that same DataLoader loop

With --profile it also measures, with torch.profiler, the time each loop spends inside matrix
multiplies. No loop can beat another by more than (the other's step time) / (its own matmul time)
without doing fewer FLOPs, so this says how much speed-up the shapes leave to win.

    python bench/bench_train.py [--shapes small,paper] [--steps 20] [--repeats 3] [--profile]
    python bench/bench_train.py --smoke
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, run_config, table, train_seconds_per_step, write  # noqa: E402

from datagen import load_or_build  # noqa: E402
from grokloop.model import LoopedTransformer  # noqa: E402

SHAPES = {
    # the small CPU composition experiment (4 layers x 128, batch 512)
    "small": ["experiment=composition_small"],
    # the paper shape: 8 layers x 768, batch 512, 4-token sequences (dropout off for all three)
    "paper": ["experiment=composition_paper", "model.dropout=0.0"],
    "smoke": ["experiment=composition_small", "model.d_model=16", "model.n_heads=2",
              "model.d_mlp=32", "train.batch_size=32", "data.n_entities=30", "data.out_degree=5", "data.phi=2.0"],
}


def hf_gpt2(mc):
    from transformers import GPT2Config, GPT2LMHeadModel
    cfg = GPT2Config(vocab_size=mc.d_vocab, n_positions=mc.n_ctx, n_embd=mc.d_model,
                     n_layer=mc.n_prelude + mc.n_core * mc.n_steps + mc.n_coda, n_head=mc.n_heads,
                     n_inner=mc.d_mlp, activation_function=mc.act_fn, resid_pdrop=0.0,
                     embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=None, eos_token_id=None)
    model = GPT2LMHeadModel(cfg)
    return model, lambda x: model(input_ids=x).logits


MATMULS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"}


def matmul_share(run, steps: int) -> float:
    """The fraction of a loop's own CPU time spent in matrix multiplies, over `steps` steps."""
    from torch.profiler import profile
    with profile() as prof:
        run(steps)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    return sum(e.self_cpu_time_total for e in events if e.key in MATMULS) / total


def grokloop_step_loop(cfg, ds):
    """`grokloop.train`'s step (the same calls, without its bookkeeping), for the profiler only:
    the timing itself always runs the real `train`."""
    from grokloop.adaptive.depth import depth_loss
    from grokloop.optim import make_optimizer
    torch.manual_seed(0)
    model = LoopedTransformer(cfg.model)
    opt = make_optimizer(model, cfg.optim)
    train = torch.as_tensor(ds.splits["train"])
    data = [torch.as_tensor(getattr(ds, k)) for k in ("inputs", "answer_pos", "answers")]
    batch = cfg.train.batch_size or len(train)

    def run(n):
        for _ in range(n):
            idx = train[torch.randperm(len(train))[:batch]]
            loss, _ = depth_loss(model, *(d[idx] for d in data), "fixed", cfg.model.n_steps)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
    return run


def dataloader_loop(model, forward, ds, batch: int, lr: float, wd: float):
    train = torch.as_tensor(ds.splits["train"])
    tensors = TensorDataset(torch.as_tensor(ds.inputs)[train], torch.as_tensor(ds.answer_pos)[train],
                            torch.as_tensor(ds.answers)[train])
    loader = DataLoader(tensors, batch_size=batch, shuffle=True, drop_last=True)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
    model.train()

    def run(n):
        done = 0
        while True:
            for x, ap, y in loader:
                logits = forward(x)
                loss = F.cross_entropy(logits[torch.arange(len(x)), ap], y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                done += 1
                if done == n:
                    return
    return run


def seconds_per_step(run, steps: int) -> float:
    run(2)  # warm-up
    t = time.perf_counter()
    run(steps)
    return (time.perf_counter() - t) / steps


def bench_shape(name: str, steps: int, repeats: int, profile: bool = False) -> dict:
    overrides = SHAPES[name]
    cfg = run_config(overrides)
    ds = load_or_build(cfg.data, cfg.data_cache)
    cfg.model = cfg.model.resolved(len(ds.vocab), ds.n_ctx)
    batch = cfg.train.batch_size
    times = {"grokloop": [], "hf_gpt2": [], "plain_loop": []}
    for _ in range(repeats):
        times["grokloop"].append(train_seconds_per_step(overrides, steps))
        for k, run in competitors(cfg, ds).items():
            times[k].append(seconds_per_step(run, steps))
    med = {k: statistics.median(v) for k, v in times.items()}
    extra = {}
    if profile:
        loops = {"grokloop": grokloop_step_loop(cfg, ds)} | competitors(cfg, ds)
        share = {k: matmul_share(run, steps) for k, run in loops.items()}
        # the best any loop could do against HF at these FLOPs: HF's step over our matmul time
        extra = {"matmul_share": share,
                 "ceiling_vs_hf_gpt2": med["hf_gpt2"] / (share["grokloop"] * med["grokloop"])}
    n_params = sum(p.numel() for p in LoopedTransformer(cfg.model).parameters())
    return {"shape": name, "overrides": overrides, "batch_size": batch, "n_ctx": ds.n_ctx,
            "d_vocab": len(ds.vocab), "n_params": n_params, "steps_timed": steps,
            "seconds_per_step": med, "all_seconds_per_step": times,
            "steps_per_s": {k: 1 / v for k, v in med.items()},
            "examples_per_s": {k: batch / v for k, v in med.items()},
            "speedup_vs_hf_gpt2": med["hf_gpt2"] / med["grokloop"],
            "speedup_vs_plain_loop": med["plain_loop"] / med["grokloop"]} | extra


def competitors(cfg, ds) -> dict:
    """The two DataLoader loops, freshly built: HF GPT-2 and our model."""
    batch, lr, wd = cfg.train.batch_size, cfg.optim.lr, cfg.optim.weight_decay
    torch.manual_seed(0)
    model, fwd = hf_gpt2(cfg.model)
    hf = dataloader_loop(model, fwd, ds, batch, lr, wd)
    torch.manual_seed(0)
    ours = LoopedTransformer(cfg.model)
    return {"hf_gpt2": hf, "plain_loop": dataloader_loop(ours, ours, ds, batch, lr, wd)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="small,paper")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--profile", action="store_true", help="also measure each loop's matmul share")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out")
    args = ap.parse_args()
    shapes = ["smoke"] if args.smoke else args.shapes.split(",")
    steps, repeats = (10, 1) if args.smoke else (args.steps, args.repeats)
    results = [bench_shape(s, steps, repeats, args.profile or args.smoke) for s in shapes]
    rows = [[r["shape"], r["batch_size"], f"{r['steps_per_s']['grokloop']:.2f}",
             f"{r['steps_per_s']['hf_gpt2']:.2f}", f"{r['steps_per_s']['plain_loop']:.2f}",
             f"{r['speedup_vs_hf_gpt2']:.2f}x", f"{r['speedup_vs_plain_loop']:.2f}x"] for r in results]
    print(table(["shape", "batch", "grokloop steps/s", "HF GPT-2 steps/s", "plain loop steps/s",
                 "vs HF", "vs plain"], rows))
    for r in results:
        if "matmul_share" in r:
            shares = ", ".join(f"{k} {v:.0%}" for k, v in r["matmul_share"].items())
            print(f"{r['shape']}: time in matmuls: {shares}; at these FLOPs no loop of ours can beat "
                  f"HF by more than {r['ceiling_vs_hf_gpt2']:.2f}x")
    path = write("train_throughput", {"machine": machine(), "results": results}, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
