"""Where the studies' time goes: for each study preset, training steps/s, the share of a run's
wall time spent evaluating and checkpointing at the preset's own (log-spaced) schedule, the top
operators of a training step (torch.profiler), the fraction of the machine's matmul peak, by
mode (fp32 eager, bf16 autocast where the CPU has bf16 matrix units, compiled, and `auto`, what
train.precision=auto picks here); with --before TREE, each against the code checked out there.

How: each measurement is one real `grokloop.train.train` run in its own process
(bench/studies_worker.py): `--warmup` steps, then `--steps` timed steps, each step, evaluation
and checkpoint timed from outside. The share at the default schedule is
    n_eval * t_eval / (n_steps * t_step + n_eval * t_eval + n_ckpt * t_ckpt)
with n_eval and n_ckpt the evaluations and checkpoints the preset's schedule makes in its full
step budget (a run that stops at grok stops earlier, where evaluations are denser).
With --before, every measurement runs under both trees back to back, their order alternating
between repeats (ABBA), and a row's speed-up is the median over repeats of the ratio of the two
adjacent measurements; the spread is their min and max. Steps/s are means over the timed steps
(the random-depth presets draw each step's depth from the seed: both trees time the same depths).

    git worktree add /tmp/gl_before <commit>
    OMP_NUM_THREADS=1 python bench/bench_studies.py --before /tmp/gl_before [--presets a,b]
        [--modes fp32,auto,compiled] [--compiled comparison_cpu] [--steps 20] [--repeats 3]
    python bench/bench_studies.py --smoke
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, machine, run_config, table, write  # noqa: E402

from grokloop.accelerate import bf16_support, choose_mode  # noqa: E402
from grokloop.schedule import log_schedule  # noqa: E402

# The presets the studies run (README "Studies"), as train-command overrides.
PRESETS = {
    "loop2_feedback_wd1": ["experiment=composition_cpu_loop2_feedback_wd1"],
    "khop_perm_memory": ["experiment=khop_perm_memory"],
    "khop_perm_memory_rope": ["experiment=khop_perm_memory_rope"],
    "khop_perm_memory_window": ["experiment=khop_perm_memory_window"],
    # a curriculum stage: conf/curriculum.yaml's model and optimizer (1 layer, no norm,
    # perpendicular gradient, full batch) on one table, its stage budget and eval cadence
    "curriculum_math_add": [
        "data=math_add",
        "model.n_core=1",
        "model.normalization=none",
        "model.init_std=0.0707",
        "optim.perpendicular_grad=true",
        "optim.weight_decay=0.0",
        "train.eval_every_max=100",
        "train.steps=2000",
    ],
    "comparison_cpu": ["experiment=comparison_cpu"],
    "phi_law": ["experiment=phi_law"],
    "complex_reasoning_cpu": ["experiment=complex_reasoning_cpu"],
}
SMOKE = {
    "smoke": [
        "experiment=composition_small",
        "model.d_model=16",
        "model.n_heads=2",
        "model.d_mlp=32",
        "train.batch_size=32",
        "data.n_entities=30",
        "data.out_degree=5",
        "data.phi=2.0",
    ]
}
# Per mode: the overrides under the current code, and under the earlier tree (None: the
# preset's own config there, which `auto` is compared with).
MODES = {
    "fp32": (["train.precision=fp32", "train.compile=false"],) * 2,
    "bf16": (["train.precision=bf16", "train.compile=false"],) * 2,
    "compiled": (["train.precision=fp32", "train.compile=true"],) * 2,
    "auto": (["train.precision=auto"], []),
}
DEPTH_VARIES = {"khop_perm_memory", "khop_perm_memory_rope", "khop_perm_memory_window"}


def worker(tree: Path, spec: dict, threads: int) -> dict:
    """One measurement under the code in `tree` (bench/studies_worker.py, in its own process)."""
    env = os.environ | {
        "PYTHONPATH": str(tree),
        "OMP_NUM_THREADS": str(threads),
        "GROKLOOP_DATA_CACHE": str(ROOT / ".cache" / "datasets"),
    }
    script = Path(__file__).resolve().parent / "studies_worker.py"
    out = subprocess.run(
        [sys.executable, str(script), json.dumps(spec)],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
    )
    if out.returncode:
        raise RuntimeError(
            f"worker failed under {tree} for {spec['overrides']}:\n{out.stderr[-3000:]}"
        )
    return json.loads(out.stdout.strip().splitlines()[-1])


def schedule_counts(overrides: list[str]) -> dict:
    tc = run_config(overrides).train
    return {
        "steps": tc.steps,
        "evaluations": len(log_schedule(tc.steps, tc.eval_every_min, tc.eval_every_max)),
        "checkpoints": len(log_schedule(tc.steps, tc.eval_every_min, tc.checkpoint_every_max, 5)),
    }


def shares(step_s: float, eval_s: float, ckpt_s: float, counts: dict) -> dict:
    """Fractions of a full-budget run's wall time in training steps, evaluation, checkpoints."""
    parts = {
        "train": counts["steps"] * step_s,
        "evaluate": counts["evaluations"] * eval_s,
        "checkpoint": counts["checkpoints"] * ckpt_s,
    }
    total = sum(parts.values())
    return {k: v / total for k, v in parts.items()}


def summary(runs: list[dict]) -> dict:
    step = statistics.median(sum(r["step_s"]) / len(r["step_s"]) for r in runs)
    return {
        "step_s": step,
        "steps_per_s": 1 / step,
        "evaluate_s": statistics.median(x for r in runs for x in r["evaluate_s"]),
        "checkpoint_s": statistics.median(x for r in runs for x in r["checkpoint_s"]),
    }


def bench_row(preset: str, mode: str, args, before: Path | None, tree_now: Path = ROOT) -> dict:
    overrides = (SMOKE | PRESETS)[preset]
    now, then = MODES[mode]
    spec = {"steps": args.steps, "warmup": args.warmup, "evals": args.evals}
    # the first measurement under the current code also profiles and counts FLOPs, after its
    # timed steps (not in compiled mode: the profile of inductor's kernels is another table)
    extra = {"profile": 5, "flops": 8} if args.profile and mode != "compiled" else {}
    runs, old, ratios = [], [], []
    for r in range(args.repeats):  # ABBA: the tree that runs first alternates
        trees = [("now", tree_now), ("before", before)] if before else [("now", tree_now)]
        for name, tree in trees if r % 2 == 0 else trees[::-1]:
            got = worker(
                tree,
                spec
                | (extra if name == "now" and not runs else {})
                | {"overrides": overrides + (now if name == "now" else then)},
                args.threads,
            )
            (runs if name == "now" else old).append(got)
        if before:
            ratios.append(sum(old[-1]["step_s"]) / sum(runs[-1]["step_s"]))
    row = {
        "preset": preset,
        "mode": mode,
        "overrides": overrides + now,
        "resolved": {"precision": runs[0]["precision"], "compile": runs[0]["compile"]},
        "default_schedule": schedule_counts(overrides),
        "all_steps_per_s": [len(x["step_s"]) / sum(x["step_s"]) for x in runs],
    } | summary(runs)
    row["share"] = shares(
        row["step_s"], row["evaluate_s"], row["checkpoint_s"], row["default_schedule"]
    )
    if before:
        b = summary(old)
        row["before"] = b | {
            "overrides": overrides + then,
            "all_steps_per_s": [len(x["step_s"]) / sum(x["step_s"]) for x in old],
            "share": shares(
                b["step_s"], b["evaluate_s"], b["checkpoint_s"], row["default_schedule"]
            ),
        }
        row["speedup_vs_before"] = statistics.median(ratios)
        row["speedup_spread"] = [min(ratios), max(ratios)]
        row["evaluate_speedup_vs_before"] = b["evaluate_s"] / row["evaluate_s"]
    for key in ("top_ops", "flops_per_step"):
        if key in runs[0]:
            row[key] = runs[0][key]
    return row


def matmul_peak(precision: str) -> float:
    import torch
    from bench_train import matmul_peak as peak

    return peak(torch.bfloat16 if precision == "bf16" else torch.float32)


def modes_here(wanted: list[str], preset: str, compiled: list[str]) -> list[str]:
    """bf16 only where the CPU has bf16 matrix units; compiled only on the presets named (each
    measurement compiles anew, minutes on a loaded CPU) and never on random-depth presets (one
    compile per depth drawn)."""
    bf16 = bf16_support("cpu")[0]
    return [
        m
        for m in wanted
        if (bf16 or m != "bf16")
        and not (m == "compiled" and (preset in DEPTH_VARIES or preset not in compiled))
    ]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", default=",".join(PRESETS))
    ap.add_argument(
        "--modes",
        default="fp32,auto,compiled",
        help="of fp32, bf16, auto (what train.precision=auto picks, against the "
        "preset's own mode before), compiled",
    )
    ap.add_argument(
        "--compiled", default="comparison_cpu", help="the presets the compiled mode is measured on"
    )
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--evals", type=int, default=2, help="evaluations (and checkpoints) per run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--before", help="a git worktree of the earlier code to compare with")
    ap.add_argument(
        "--now",
        default=str(ROOT),
        help="the tree measured as the current code (default: this one; a copy of it "
        "lets you edit while a long comparison runs)",
    )
    ap.add_argument("--no-profile", dest="profile", action="store_false")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.smoke:
        args.presets, args.modes, args.steps, args.warmup, args.repeats = "smoke", "fp32", 4, 1, 1
    before = Path(args.before).resolve() if args.before else None
    now = Path(args.now).resolve()
    load_at_start = os.getloadavg()[0]  # other jobs slow both trees alike, not the ratios
    peaks = {"fp32": matmul_peak("fp32")}
    if bf16_support("cpu")[0]:
        peaks["bf16"] = matmul_peak("bf16")
    rows = []
    for preset in args.presets.split(","):
        for mode in modes_here(args.modes.split(","), preset, args.compiled.split(",")):
            row = bench_row(preset, mode, args, before, now)
            if "flops_per_step" in row:
                prec = row["resolved"]["precision"]
                row["matmul_peak_fraction"] = (
                    row["flops_per_step"] * row["steps_per_s"] / 1e9 / peaks[prec]
                )
            rows.append(row)
            print(
                f"{preset} {mode}: {row['steps_per_s']:.2f} steps/s"
                + (f", {row['speedup_vs_before']:.2f}x before" if before else ""),
                flush=True,
            )
    print(
        table(
            ["preset", "mode", "steps/s", "vs before", "eval share", "ckpt share"],
            [
                [
                    r["preset"],
                    r["mode"],
                    f"{r['steps_per_s']:.2f}",
                    f"{r['speedup_vs_before']:.2f}x" if "speedup_vs_before" in r else "-",
                    f"{r['share']['evaluate']:.1%}",
                    f"{r['share']['checkpoint']:.1%}",
                ]
                for r in rows
            ],
        )
    )
    mode = choose_mode("cpu")
    result = {
        "machine": machine(),
        "matmul_peak_gflops": peaks,
        "threads": args.threads,
        "before": _commit(before) if before else None,
        "now": _commit(now),
        "auto_mode_here": {"precision": mode.precision, "compile": mode.compile, "why": mode.why},
        "steps_timed": args.steps,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "load": {"start": load_at_start, "end": os.getloadavg()[0]},
        "results": rows,
    }
    path = write("studies", result, args.out)
    print(f"wrote {path}")


def _commit(tree: Path) -> str:
    if (tree / ".snapshot_of").exists():  # a copy of a working tree (--now)
        return f"a copy of {(tree / '.snapshot_of').read_text().strip()[:7]} + its changes"
    out = subprocess.run(
        ["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(tree), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    return out + (" + uncommitted changes" if dirty else "")


if __name__ == "__main__":
    main()
