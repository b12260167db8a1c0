"""Paper-scale composition generation (2000 entities, 200 relations, out-degree 20, phi = 18):
wall time and peak resident memory, each repetition in a fresh process so the peak is its own.

    python bench/bench_datagen.py            # writes bench/results/datagen.json
    python bench/bench_datagen.py --smoke    # tiny dataset, for the test suite
"""

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

CHILD = """
import time, resource, json
from datagen import build_dataset, data_config_from_dict
cfg = data_config_from_dict({cfg!r})
t = time.perf_counter(); ds = build_dataset(cfg); dt = time.perf_counter() - t
print(json.dumps({{"seconds": dt, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "train": len(ds.splits["train"]), "achieved_phi": ds.stats["achieved_phi"],
                  "counts": {{k: len(v) for k, v in ds.splits.items()}}}}))
"""
PAPER = dict(task="composition", n_entities=2000, n_relations=200, out_degree=20, phi=18.0)
SMOKE = dict(task="composition", n_entities=50, n_relations=10, out_degree=5, phi=2.0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "datagen.json"))
    args = ap.parse_args()
    cfg = SMOKE if args.smoke else PAPER
    runs = []
    for _ in range(1 if args.smoke else args.repeats):
        out = subprocess.run(
            [sys.executable, "-c", CHILD.format(cfg=cfg)],
            check=True,
            capture_output=True,
            text=True,
        )
        runs.append(json.loads(out.stdout))
    best = min(runs, key=lambda r: r["seconds"])
    result = {
        "config": cfg,
        "machine": f"{platform.processor() or platform.machine()}, "
        f"{__import__('os').cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d"),
        "seconds_best": best["seconds"],
        "seconds_all": [r["seconds"] for r in runs],
        "peak_rss_mb_max": max(r["peak_rss_mb"] for r in runs),
        "counts": best["counts"],
        "achieved_phi": best["achieved_phi"],
        "targets": {"seconds": 10, "peak_rss_mb": 2048},
    }
    print(
        f"{'dataset':<12}{'seconds (best of %d)' % len(runs):>24}{'peak RSS MB':>14}{'train':>10}{'phi':>8}"
    )
    print(
        f"{'smoke' if args.smoke else 'paper phi18':<12}{result['seconds_best']:>24.2f}"
        f"{result['peak_rss_mb_max']:>14.0f}{best['train']:>10,}{best['achieved_phi']:>8.2f}"
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
