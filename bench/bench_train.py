"""Training throughput: grokloop's training step against the usual alternatives, same shapes,
data and batch size, one process, interleaved repeats.

  grokloop      `grokloop.train.train` itself (data on the device, on-device shuffling, loss on
                the answer position only), timed as a marginal cost per step
  hf_gpt2       a Hugging Face transformers GPT-2 of the same depth and width (built from a
                config: nothing downloaded), a standard PyTorch loop over a DataLoader, loss on
                the answer token of the full logits (what the paper's code does)
  plain_loop    our model in that same DataLoader loop

    python bench/bench_train.py [--shapes small,paper] [--steps 20] [--repeats 3]
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


def dataloader_seconds_per_step(model, forward, ds, batch: int, steps: int, lr: float, wd: float) -> float:
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

    run(2)  # warm-up
    t = time.perf_counter()
    run(steps)
    return (time.perf_counter() - t) / steps


def bench_shape(name: str, steps: int, repeats: int) -> dict:
    overrides = SHAPES[name]
    cfg = run_config(overrides)
    ds = load_or_build(cfg.data, cfg.data_cache)
    cfg.model.d_vocab, cfg.model.n_ctx = len(ds.vocab), ds.n_ctx
    batch = cfg.train.batch_size
    times = {"grokloop": [], "hf_gpt2": [], "plain_loop": []}
    for _ in range(repeats):
        times["grokloop"].append(train_seconds_per_step(overrides, steps))
        torch.manual_seed(0)
        model, fwd = hf_gpt2(cfg.model)
        times["hf_gpt2"].append(dataloader_seconds_per_step(model, fwd, ds, batch, steps,
                                                            cfg.optim.lr, cfg.optim.weight_decay))
        torch.manual_seed(0)
        ours = LoopedTransformer(cfg.model)
        times["plain_loop"].append(dataloader_seconds_per_step(ours, ours, ds, batch, steps,
                                                               cfg.optim.lr, cfg.optim.weight_decay))
    med = {k: statistics.median(v) for k, v in times.items()}
    n_params = sum(p.numel() for p in LoopedTransformer(cfg.model).parameters())
    return {"shape": name, "overrides": overrides, "batch_size": batch, "n_ctx": ds.n_ctx,
            "d_vocab": len(ds.vocab), "n_params": n_params, "steps_timed": steps,
            "seconds_per_step": med, "all_seconds_per_step": times,
            "steps_per_s": {k: 1 / v for k, v in med.items()},
            "examples_per_s": {k: batch / v for k, v in med.items()},
            "speedup_vs_hf_gpt2": med["hf_gpt2"] / med["grokloop"],
            "speedup_vs_plain_loop": med["plain_loop"] / med["grokloop"]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="small,paper")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out")
    args = ap.parse_args()
    shapes = ["smoke"] if args.smoke else args.shapes.split(",")
    steps, repeats = (10, 1) if args.smoke else (args.steps, args.repeats)
    results = [bench_shape(s, steps, repeats) for s in shapes]
    rows = [[r["shape"], r["batch_size"], f"{r['steps_per_s']['grokloop']:.2f}",
             f"{r['steps_per_s']['hf_gpt2']:.2f}", f"{r['steps_per_s']['plain_loop']:.2f}",
             f"{r['speedup_vs_hf_gpt2']:.2f}x", f"{r['speedup_vs_plain_loop']:.2f}x"] for r in results]
    print(table(["shape", "batch", "grokloop steps/s", "HF GPT-2 steps/s", "plain loop steps/s",
                 "vs HF", "vs plain"], rows))
    path = write("train_throughput", {"machine": machine(), "results": results}, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
