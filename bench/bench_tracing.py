"""Causal tracing: the batched implementation (`probes.causal_tracing.causal_trace`) against the
straightforward loop that patches one (layer, position) cell per forward pass through a hook
point (`trace_loop`), on the same model and the same 300 examples. The flip arrays must be equal;
the script fails otherwise.

    python bench/bench_tracing.py [--run_dir RUN] [--n 300] [--repeats 3]
    python bench/bench_tracing.py --smoke

Without --run_dir the models are freshly initialised (the timing does not depend on the
weights); with it, the run's last checkpoint is traced.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, run_config, table, write  # noqa: E402

from datagen import load_or_build  # noqa: E402
from grokloop.checkpoint import list_checkpoints, load_model  # noqa: E402
from grokloop.model import LoopedTransformer  # noqa: E402
from probes.causal_tracing import causal_trace, trace_loop  # noqa: E402
from probes.examples import corrupt, probe_batch  # noqa: E402

MODELS = {
    "vanilla 4 layers": ["experiment=composition_small"],
    "looped 2 layers x 2 steps": ["experiment=composition_small_looped"],
    "looped 1 layer x 8 steps": ["experiment=composition_small_looped", "model.n_core=1",
                                 "model.n_steps=8"],
}
SMOKE = ["model.d_model=16", "model.n_heads=2", "model.d_mlp=32", "data.n_entities=30",
         "data.out_degree=5", "data.phi=2.0"]


def fresh_model(overrides):
    cfg = run_config(overrides)
    ds = load_or_build(cfg.data, cfg.data_cache)
    cfg.model.d_vocab, cfg.model.n_ctx = len(ds.vocab), ds.n_ctx
    torch.manual_seed(0)
    return LoopedTransformer(cfg.model).eval(), ds


def bench_model(name, model, ds, n: int, repeats: int) -> dict:
    batch = probe_batch(ds, "test_inferred_id", n)
    bad, bad_answers, kept = corrupt(ds, batch, "r2" if "r2" in batch.roles else "head")
    clean, ap, answers = batch.tokens[kept], batch.answer_pos[kept], batch.answers[kept]
    times = {"batched": [], "loop": []}
    for _ in range(repeats):
        t = time.perf_counter()
        res = causal_trace(model, clean, bad, ap, answers, bad_answers)
        times["batched"].append(time.perf_counter() - t)
        t = time.perf_counter()
        flip = trace_loop(model, clean, bad, ap)
        times["loop"].append(time.perf_counter() - t)
        if not (torch.as_tensor(res["flip"]) == flip).all():
            raise AssertionError(f"{name}: batched and per-cell flips differ")
    med = {k: statistics.median(v) for k, v in times.items()}
    cells = res["flip"].shape[0] * res["flip"].shape[1]
    return {"model": name, "examples": len(clean), "cells": cells, "seconds": med,
            "all_seconds": times, "speedup": med["loop"] / med["batched"],
            "same_flips": True, "mean_strength": float(res["strength"].mean())}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--run_dir")
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.run_dir:
        step = list_checkpoints(Path(args.run_dir))[-1]
        model, ds, _ = load_model(Path(args.run_dir), step)
        todo = [(f"{args.run_dir} step {step}", model.eval(), ds)]
    elif args.smoke:
        todo = [("smoke", *fresh_model(MODELS["looped 2 layers x 2 steps"] + SMOKE))]
    else:
        todo = [(name, *fresh_model(o)) for name, o in MODELS.items()]
    n, repeats = (20, 1) if args.smoke else (args.n, args.repeats)
    results = [bench_model(name, m, ds, n, repeats) for name, m, ds in todo]
    print(table(["model", "examples", "cells", "batched s", "one cell per pass s", "speedup",
                 "same flips"],
                [[r["model"], r["examples"], r["cells"], r["seconds"]["batched"],
                  r["seconds"]["loop"], f"{r['speedup']:.1f}x", r["same_flips"]] for r in results]))
    path = write("tracing", {"machine": machine(), "results": results}, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
