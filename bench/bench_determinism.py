"""The cost of deterministic training (train.deterministic=true, the default): steps per second of
`grokloop.train.train` on the composition_small shape (4 layers x 128, batch 512) with and
without deterministic kernels, one process, interleaved repeats, the median of each.

Each measurement is a marginal cost per step: a run of 2*steps minus a run of `steps` (set-up,
data and the final evaluation and checkpoint cancel), divided by `steps`.

    python bench/bench_determinism.py [--steps 20] [--repeats 3] [--threads 2]
    python bench/bench_determinism.py --smoke --out /tmp/determinism.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, table, write  # noqa: E402

from grokloop.config import run_config_from_dict  # noqa: E402
from grokloop.train import train  # noqa: E402


def composition_small(steps: int, deterministic: bool, cache: str, smoke: bool = False):
    """conf/experiment/composition_small.yaml, built directly (not composed from conf/, whose
    layout is being restructured); --smoke shrinks the model and data."""
    data = {
        "task": "composition",
        "n_entities": 100,
        "n_relations": 10,
        "out_degree": 10,
        "ood_fraction": 0.05,
        "test_id_fraction": 0.1,
        "phi": 7.2,
        "hops": [2],
        "test_hops": [],
        "eval_size": 1000,
        "seed": 0,
    }
    model = {"n_core": 4, "d_model": 128, "n_heads": 4, "d_mlp": 512}
    if smoke:
        data |= {"n_entities": 30, "out_degree": 5, "phi": 2.0}
        model = {"n_core": 2, "d_model": 16, "n_heads": 2, "d_mlp": 32}
    return run_config_from_dict(
        {
            "data": data,
            "model": model,
            "experiment": "composition_small",
            "data_cache": cache,
            "optim": {"lr": 1e-3, "weight_decay": 0.1, "warmup_steps": 100, "grad_clip": 1.0},
            "train": {
                "steps": steps,
                "batch_size": 512,
                "eval_every_min": steps,
                "eval_every_max": steps,
                "checkpoint_every_max": steps,
                "progress": False,
                "report": False,
                "deterministic": deterministic,
            },
        }
    )


def seconds_per_step(steps: int, deterministic: bool, cache: str, smoke: bool) -> float:
    times = []
    for n in (steps, 2 * steps):
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            train(composition_small(n, deterministic, cache, smoke), Path(tmp) / "run")
            times.append(time.perf_counter() - t)
    return max(times[1] - times[0], 1e-9) / steps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out")
    args = ap.parse_args()
    steps, repeats = (5, 1) if args.smoke else (args.steps, args.repeats)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as cache:
        seconds_per_step(steps, True, cache, args.smoke)  # warm-up: imports, allocator, data cache
        runs = {True: [], False: []}
        for r in range(repeats):  # interleaved, the order alternating, so drift hits both
            for det in (True, False) if r % 2 == 0 else (False, True):
                runs[det].append(seconds_per_step(steps, det, cache, args.smoke))
    median = {det: statistics.median(v) for det, v in runs.items()}
    result = {
        "machine": machine(),
        "threads": torch.get_num_threads(),
        "shape": "composition_small",
        "smoke": args.smoke,
        "steps_timed": steps,
        "repeats": repeats,
        "steps_per_s": {"deterministic": 1 / median[True], "nondeterministic": 1 / median[False]},
        "slowdown": median[True] / median[False],
        "all_seconds_per_step": {"deterministic": runs[True], "nondeterministic": runs[False]},
        "note": "2-core machine shared with other jobs: noisy; every repeat is listed",
    }
    print(
        table(
            ["mode", "steps/s (median)", "s/step"],
            [
                ["deterministic", 1 / median[True], median[True]],
                ["nondeterministic", 1 / median[False], median[False]],
            ],
        )
    )
    print(
        f"slowdown {result['slowdown']:.3f}x on {result['machine']['cpu']}, "
        f"{result['threads']} threads, torch {torch.__version__}"
    )
    print(f"wrote {write('determinism', result, args.out)}")


if __name__ == "__main__":
    main()
