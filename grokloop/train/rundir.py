"""What a run directory holds when a run starts there: nothing, a run (continued only with
resume=true), or a failed start, which the start replaces.

A failed start is a run that stopped before its first checkpoint: config.json (and an empty
metrics.jsonl), no checkpoint, good or damaged, no metrics row and no summary. It holds nothing
a resume could continue from, so refusing it (without resume=true: "already holds a run"; with
it: "keys differ" for the very setting that made it fail, e.g. optim.lr) would leave the user to
delete it by hand. Anything more (a checkpoint, a row) is a run, and is never replaced.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from grokloop.checkpoint import ckpt_dir
from grokloop.metrics_log import read_rows
from grokloop.train.resume import finished_summary, resume_changes

# What a start writes before its first checkpoint (checkpoints/ may hold a half-written file).
START_FILES = ("config.json", "metrics.jsonl", "resume_log.jsonl")


def failed_start(out_dir: Path) -> bool:
    if not any((out_dir / f).exists() for f in START_FILES[:2]):
        return False
    if (out_dir / "summary.json").exists() or any(ckpt_dir(out_dir).rglob("step_*.json")):
        return False
    return not read_rows(out_dir / "metrics.jsonl")


def replace_failed_start(out_dir: Path) -> None:
    """Remove a failed start's files (call it holding the run's lock)."""
    print(
        f"{out_dir} holds a run that stopped before its first checkpoint; replacing it", flush=True
    )
    for name in START_FILES:
        (out_dir / name).unlink(missing_ok=True)
    shutil.rmtree(ckpt_dir(out_dir), ignore_errors=True)


def check_start(cfg, out_dir: Path, resume: bool, config: dict) -> tuple[dict, dict | None]:
    """(the changes a resume makes, the summary if out_dir already finished this config). Raises
    FileExistsError for a run without resume=true and ValueError for a resume that changes a key
    outside RESUMABLE; writes nothing."""
    if failed_start(out_dir):
        return {}, None
    if not resume and (out_dir / "metrics.jsonl").exists():
        raise FileExistsError(
            f"{out_dir} already holds a run; pass resume=true to continue it "
            "or choose another out_dir"
        )
    if resume and (out_dir / "config.json").exists():
        return resume_changes(out_dir, config), finished_summary(cfg, out_dir)
    return {}, None
