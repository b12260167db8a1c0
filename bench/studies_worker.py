"""One measurement for bench/bench_studies.py, in its own process: a real `grokloop.train.train`
run of a preset, with its training step, evaluation and checkpoint timed from outside.

It imports grokloop from whatever tree is first on sys.path, so bench_studies.py runs it under
the current code and under an earlier commit checked out in a git worktree (PYTHONPATH=TREE);
so it touches only what both have: the train command's config (grokloop.cli), `train`, and the
module-level names `train_step`, `evaluation_row`, `save_state` (wrapped with timers) and
`log_schedule` (replaced: evaluations where the timing wants them) of grokloop/train/loop.py.

    python bench/studies_worker.py '{"overrides": [...], "steps": 20, "warmup": 3, ...}'

prints one JSON line: seconds of every timed step, evaluation and checkpoint (and with
"profile": n, the top operators of n steps after the timed ones; with "flops": n, FLOPs per
step over n steps after those).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import torch


def run_config(overrides: list[str]):
    from omegaconf import OmegaConf

    from grokloop import cli
    from grokloop.config import run_config_from_dict

    d = OmegaConf.to_container(cli.compose("train", overrides), resolve=True)
    d.pop("out_dir"), d.pop("resume")
    return run_config_from_dict(d)


def timed(fn, log: list, hook=None):
    """fn with each call's wall time appended to `log`; `hook(call index)` runs before it."""

    def wrapper(*args, **kwargs):
        if hook is not None:
            hook(len(log))
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            log.append(time.perf_counter() - t)

    return wrapper


class Windows:
    """Context managers each active for a window of step calls, [first, first + n): after the
    timed steps, the profiler, then the FLOP counter, so neither slows a timed step."""

    def __init__(self, windows: list[tuple[str, object, int, int]]):
        self.windows, self.active, self.done = windows, None, {}

    def __call__(self, i: int):
        if self.active is not None and i == self.active[1]:
            self.active[2].__exit__(None, None, None)
            self.done[self.active[0]], self.active = self.active[2], None
        for name, make, first, n in self.windows:
            if i == first and n:
                ctx = make()
                ctx.__enter__()
                self.active = (name, first + n, ctx)
        return None


def top_ops(prof, steps: int, n: int = 10) -> list[dict]:
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:n]
    return [
        {
            "op": e.key,
            "ms_per_step": e.self_cpu_time_total / 1e3 / steps,
            "share": e.self_cpu_time_total / total,
            "calls_per_step": e.count / steps,
        }
        for e in top
    ]


def measure(spec: dict) -> dict:
    """One run: `warmup` steps, `steps` timed, then `profile` steps profiled and `flops` steps
    counted (0: none); `evals` evaluations and checkpoints spread over the run."""
    from torch.profiler import profile
    from torch.utils.flop_counter import FlopCounterMode

    import grokloop.train.loop as loop
    from grokloop.train import train

    warmup, steps = spec["warmup"], spec["steps"]
    n_prof, n_flops = spec.get("profile", 0), spec.get("flops", 0)
    total = warmup + steps + n_prof + n_flops + 1  # + 1: the last window closes before it
    n_evals = max(spec.get("evals", 2), 1)
    # Evaluations and checkpoints spread over the timed steps, and at the end; none in the
    # profiled or counted steps (the schedule the loop reads, replaced)
    at = sorted({warmup + steps * (i + 1) // n_evals for i in range(n_evals)} | {total})
    loop.log_schedule = lambda *args, **kwargs: at
    cfg = run_config(
        spec["overrides"]
        + [
            f"train.steps={total}",
            "train.progress=false",
            "train.stop_at_grok=null",
            "train.report=false",
        ]
    )
    logs = {"step": [], "evaluate": [], "checkpoint": []}
    hook = Windows(
        [
            ("profile", profile, warmup + steps, n_prof),
            ("flops", lambda: FlopCounterMode(display=False), warmup + steps + n_prof, n_flops),
        ]
    )
    loop.train_step = timed(loop.train_step, logs["step"], hook)
    loop.evaluation_row = timed(loop.evaluation_row, logs["evaluate"])
    loop.save_state = timed(loop.save_state, logs["checkpoint"])
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        train(cfg, Path(tmp) / "run")
        wall = time.perf_counter() - t
        config = json.loads((Path(tmp) / "run" / "config.json").read_text())
    out = {
        "step_s": logs["step"][warmup : warmup + steps],
        "evaluate_s": logs["evaluate"],
        "checkpoint_s": logs["checkpoint"],
        "wall_s": wall,
        "threads": torch.get_num_threads(),
        "precision": config["train"].get("precision"),
        "compile": config["train"].get("compile"),
    }
    if "profile" in hook.done:
        out["top_ops"] = top_ops(hook.done["profile"], n_prof)
    if "flops" in hook.done:
        out["flops_per_step"] = hook.done["flops"].get_total_flops() / n_flops
    return out


if __name__ == "__main__":
    print(json.dumps(measure(json.loads(sys.argv[1]))))
