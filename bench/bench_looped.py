"""Looped cost: time per training step of a looped model (one shared layer applied K times, input
injection by addition) against a vanilla stack of K distinct layers, the same effective depth, on
the small composition shape (d_model 128, batch 512). Both are timed through
`grokloop.train.train`, interleaved, as a marginal cost per step.

    python bench/bench_looped.py [--steps_list 1,2,4,8] [--steps 20] [--repeats 3]
    python bench/bench_looped.py --smoke
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, table, train_seconds_per_step, write  # noqa: E402

BASE = ["experiment=composition_small"]
SMOKE = [
    "model.d_model=16",
    "model.n_heads=2",
    "model.d_mlp=32",
    "train.batch_size=32",
    "data.n_entities=30",
    "data.out_degree=5",
    "data.phi=2.0",
]


def variants(k: int) -> dict[str, list[str]]:
    return {
        "looped": ["model=looped", "model.n_core=1", f"model.n_steps={k}", "model.injection=add"],
        "vanilla": ["model=vanilla", f"model.n_core={k}", "model.n_steps=1"],
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps_list", default="1,2,4,8")
    ap.add_argument("--steps", type=int, default=20, help="training steps timed per measurement")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out")
    args = ap.parse_args()
    ks = [1, 2] if args.smoke else [int(k) for k in args.steps_list.split(",")]
    steps, repeats = (5, 1) if args.smoke else (args.steps, args.repeats)
    base = BASE + (SMOKE if args.smoke else [])
    results = []
    for k in ks:
        times = {"looped": [], "vanilla": []}
        for _ in range(repeats):
            for name, extra in variants(k).items():
                times[name].append(train_seconds_per_step(base + extra, steps))
        med = {n: statistics.median(v) for n, v in times.items()}
        results.append(
            {
                "depth": k,
                "seconds_per_step": med,
                "all_seconds_per_step": times,
                "looped_over_vanilla": med["looped"] / med["vanilla"],
            }
        )
    print(
        table(
            ["effective depth", "looped ms/step", "vanilla ms/step", "looped / vanilla"],
            [
                [
                    r["depth"],
                    1e3 * r["seconds_per_step"]["looped"],
                    1e3 * r["seconds_per_step"]["vanilla"],
                    f"{r['looped_over_vanilla']:.2f}",
                ]
                for r in results
            ],
        )
    )
    path = write("looped_cost", {"machine": machine(), "base": base, "results": results}, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
