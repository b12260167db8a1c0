"""Every GPU figure in one call (bench/gpu_suite.sh runs this; --dry-run: tiny shapes on the CPU).

Steps, each timed and budgeted, results written as they come to
bench/results/gpu/<device>.json (so a step cut off by the budget still leaves the others):
  1. matmul peak: a large fp32, tf32 and bf16 matmul, TFLOP/s
  2. throughput: grokloop.train steps/s on the paper shape (8 x 768, batch 512) and the small
     composition shape, in modes eager, compiled, bf16, compiled_bf16 and compiled_bf16 with
     CUDA graphs (GROKLOOP_COMPILE_MODE=reduce-overhead); FLOPs per step (flop counter) over
     time over the measured peak
  3. seeds in one process: 4 seeds of experiment=default, vmapped against in turn
  4. a phi = 18 composition run (experiment=composition_paper data=composition_paper, bf16,
     compiled) that stops at ID generalisation (test_inferred_id >= 0.95) or at its budget

    python bench/gpu_suite.py [--dry-run] [--budget 450] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_train  # noqa: E402
from common import ROOT, machine, run_config, train_seconds_per_step  # noqa: E402

SHAPES = {
    "paper": ["experiment=composition_paper", "model.dropout=0.0"],
    "small": ["experiment=composition_small"],
}
DRY = {"tiny": bench_train.SHAPES["smoke"]}
MODES = dict(bench_train.MODES) | {
    "compiled_bf16_cudagraphs": ["train.compile=true", "train.precision=bf16"]
}


def peak(dtype, n: int, tf32: bool = False) -> float:
    """GFLOP/s of an n x n x n matmul in dtype, best of 5."""
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    a, b = torch.randn(n, n, device=dev, dtype=dtype), torch.randn(n, n, device=dev, dtype=dtype)
    best = float("inf")
    for _ in range(6):
        if dev == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(10):
            a @ b
        if dev == "cuda":
            torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - t) / 10)
    torch.backends.cuda.matmul.allow_tf32 = False
    return 2 * n**3 / best / 1e9


def flops_per_step(overrides: list[str]) -> int:
    cfg = run_config(overrides)
    from datagen import load_or_build

    ds = load_or_build(cfg.data, cfg.data_cache)
    cfg.model = cfg.model.resolved(len(ds.vocab), ds.n_ctx)
    return bench_train.step_flops(bench_train.grokloop_step_loop(cfg, ds))


def throughput(
    shape: str, overrides: list[str], steps: int, modes: list[str], peaks: dict, deadline: float
) -> dict:
    out = {
        "shape": shape,
        "overrides": overrides,
        "steps_timed": steps,
        "seconds_per_step": {},
        "flops_per_step": flops_per_step(overrides),
        "skipped": [],
    }
    for m in modes:
        if time.monotonic() > deadline:
            out["skipped"].append(m)
            continue
        os.environ["GROKLOOP_COMPILE_MODE"] = "reduce-overhead" if "cudagraphs" in m else ""
        extra = ["train.deterministic=false"] if torch.cuda.is_available() else []
        out["seconds_per_step"][m] = train_seconds_per_step(overrides + MODES[m] + extra, steps)
    os.environ.pop("GROKLOOP_COMPILE_MODE", None)
    sps = out["seconds_per_step"]
    out["steps_per_s"] = {m: 1 / t for m, t in sps.items()}
    out["speedup_vs_eager"] = (
        {m: sps["eager"] / t for m, t in sps.items()} if "eager" in sps else {}
    )
    out["peak_fraction"] = {
        m: out["flops_per_step"] / t / 1e9 / peaks["bf16" if "bf16" in m else "fp32"]
        for m, t in sps.items()
    }
    return out


def composition_run(dry: bool, budget: float, out_dir: Path) -> dict:
    over = (
        ["experiment=composition_small", "debug=tiny", "train.steps=30"]
        if dry
        else [
            "experiment=composition_paper",
            "data=composition_paper",
            "train.precision=bf16",
            "train.compile=true",
            "train.deterministic=false",
            "train.eval_every_max=1000",
        ]
    )
    over += [
        "train.stop_at_grok=test_inferred_id",
        "train.grok_threshold=0.95",
        "train.progress=false",
        "train.report=false",
        f"out_dir={out_dir}",
    ]
    t = time.monotonic()
    try:
        p = subprocess.run(
            [sys.executable, "-m", "grokloop.train", *over],
            cwd=ROOT,
            capture_output=True,
            text=True,
            # the dry run checks the wiring, so a loaded CPU must not cut it short
            timeout=600 if dry else max(budget, 10),
        )
        rc, tail = p.returncode, (p.stdout + p.stderr)[-2000:]
    except subprocess.TimeoutExpired as e:
        rc, tail = (
            "budget",
            ((e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or ""))[
                -2000:
            ],
        )
    rows = (
        [json.loads(r) for r in (out_dir / "metrics.jsonl").read_text().splitlines()]
        if (out_dir / "metrics.jsonl").exists()
        else []
    )
    last = rows[-1] if rows else {}
    reached = next((r["step"] for r in rows if r.get("acc/test_inferred_id", 0) >= 0.95), None)
    return {
        "overrides": over[:-1],
        "returncode": rc,
        "wall_s": time.monotonic() - t,
        "steps_run": last.get("step", 0),
        "id_generalised_at_step": reached,
        "last_eval": {
            k: v
            for k, v in last.items()
            if k.startswith(("acc/", "loss/", "step", "wall")) and k.count("/") <= 1
        },
        "log_tail": tail if rc not in (0, "budget") else "",
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU, seconds")
    ap.add_argument("--budget", type=float, default=450, help="seconds for all steps")
    ap.add_argument("--out")
    args = ap.parse_args()
    t0 = time.monotonic()
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    if not args.dry_run and dev != "cuda":
        sys.exit("no CUDA device: run on a GPU machine, or pass --dry-run")
    name = "dry_run_cpu" if args.dry_run else torch.cuda.get_device_name().replace(" ", "_")
    out = Path(args.out) if args.out else ROOT / "bench" / "results" / "gpu" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"machine": machine(), "device": name, "dry_run": args.dry_run, "steps": {}}

    def save(key, value):
        result["steps"][key] = value
        result["elapsed_s"] = time.monotonic() - t0
        out.write_text(json.dumps(result, indent=2))
        print(f"[{time.monotonic() - t0:5.0f} s] {key}: done", flush=True)

    n = 256 if args.dry_run else 8192
    peaks = {"fp32": peak(torch.float32, n), "bf16": peak(torch.bfloat16, n)}
    if dev == "cuda":
        peaks["tf32"] = peak(torch.float32, n, tf32=True)
    save("matmul_peak_gflops", peaks)

    shapes = DRY if args.dry_run else SHAPES
    modes = list(MODES) if dev == "cuda" else ["eager", "compiled", "bf16"]
    modes = bench_train.available_modes(modes)
    share = {"paper": 0.35, "small": 0.15, "tiny": 0.3}
    for shape, over in shapes.items():
        steps = 10 if args.dry_run else (20 if shape == "paper" else 50)
        deadline = time.monotonic() + share[shape] * args.budget
        save(f"throughput_{shape}", throughput(shape, over, steps, modes, peaks, deadline))

    seeds_json = out.parent / f"{name}_seeds.json"
    cmd = [sys.executable, str(Path(__file__).parent / "bench_seeds.py"), "--out", str(seeds_json)]
    subprocess.run(
        cmd + (["--smoke"] if args.dry_run else ["--steps", "10", "--repeats", "2"]),
        check=True,
        capture_output=True,
        timeout=120,
    )
    save("seeds_in_one_process", json.loads(seeds_json.read_text())["results"][0])

    left = args.budget - (time.monotonic() - t0)
    with tempfile.TemporaryDirectory() as tmp:
        save("composition_phi18", composition_run(args.dry_run, left, Path(tmp) / "run"))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
