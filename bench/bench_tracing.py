"""Causal tracing: the batched implementation (`probes.causal_tracing.causal_trace`) against the
straightforward loop that patches one (layer, position) cell per forward pass through a hook
point (`trace_loop`), on the same model and the same 300 examples, each input token corrupted in
turn (the probe CLI's default). The flip arrays must be equal; the script fails otherwise.

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
from probes.examples import corrupt, input_roles, probe_batch  # noqa: E402

MODELS = {
    "vanilla 4 layers": ["experiment=composition_small"],
    "looped 2 layers x 2 steps": ["experiment=composition_small_looped"],
    "looped 1 layer x 8 steps": [
        "experiment=composition_small_looped",
        "model.n_core=1",
        "model.n_steps=8",
    ],
    # k-hop composition (1..8 hops, 9 positions): the adaptive-thinking models
    "k-hop vanilla 4 layers": ["experiment=khop_vanilla"],
    "k-hop looped 1 layer x 4 steps": ["experiment=khop_fixed"],
}
SMOKE = [
    "model.d_model=16",
    "model.n_heads=2",
    "model.d_mlp=32",
    "data.n_entities=30",
    "data.out_degree=5",
    "data.phi=2.0",
]


def fresh_model(overrides):
    cfg = run_config(overrides)
    ds = load_or_build(cfg.data, cfg.data_cache)
    cfg.model = cfg.model.resolved(len(ds.vocab), ds.n_ctx)
    torch.manual_seed(0)
    return LoopedTransformer(cfg.model).eval(), ds


def bench_model(name, model, ds, n: int, repeats: int) -> dict:
    """Every input role corrupted in turn (what `python -m probes` does by default)."""
    batch = probe_batch(ds, "test_inferred_id", n)
    per_role, totals = {}, {"batched": [], "loop": []}
    for role in input_roles(batch):
        bad, bad_answers, kept = corrupt(ds, batch, role)
        if len(kept) == 0:  # no same-type replacement changes the answer of any example
            continue
        clean, ap, answers = batch.tokens[kept], batch.answer_pos[kept], batch.answers[kept]
        times = {"batched": [], "loop": []}
        for _ in range(repeats):
            t = time.perf_counter()
            res = causal_trace(model, clean, bad, ap, answers, bad_answers)
            times["batched"].append(time.perf_counter() - t)
            t = time.perf_counter()
            flip = trace_loop(model, clean, bad, ap)
            times["loop"].append(time.perf_counter() - t)
            if not (torch.as_tensor(res.flip) == flip).all():
                raise AssertionError(f"{name}, {role}: batched and per-cell flips differ")
        med = {k: statistics.median(v) for k, v in times.items()}
        per_role[role] = {
            "examples": len(clean),
            "seconds": med,
            "all_seconds": times,
            "speedup": med["loop"] / med["batched"],
            "mean_strength": float(res.strength.mean()),
        }
        for k in totals:
            totals[k].append(med[k])
    cells = res.flip.shape[0] * res.flip.shape[1]
    seconds = {k: sum(v) for k, v in totals.items()}
    return {
        "model": name,
        "examples": len(batch),
        "cells": cells,
        "roles": per_role,
        "seconds": seconds,
        "speedup": seconds["loop"] / seconds["batched"],
        "same_flips": True,
    }


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
    rows = []
    for r in results:
        rows += [
            [
                r["model"],
                role,
                v["examples"],
                r["cells"],
                v["seconds"]["batched"],
                v["seconds"]["loop"],
                f"{v['speedup']:.1f}x",
            ]
            for role, v in r["roles"].items()
        ]
        rows.append(
            [
                r["model"],
                "all roles",
                r["examples"],
                r["cells"],
                r["seconds"]["batched"],
                r["seconds"]["loop"],
                f"{r['speedup']:.1f}x",
            ]
        )
    print(
        table(
            [
                "model",
                "corrupted",
                "examples",
                "cells",
                "batched s",
                "one cell per pass s",
                "speedup",
            ],
            rows,
        )
    )
    print("flips identical in every case (the script fails otherwise)")
    path = write("tracing", {"machine": machine(), "results": results}, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
