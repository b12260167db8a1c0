"""The saved config and resumes: what may change when a run continues, what a resume changed
(RUN/resume_log.jsonl), where it continues from, and whether a run already finished its budget."""

from __future__ import annotations

import dataclasses
import json
import time
import warnings
from pathlib import Path

from datagen.provenance import atomic_write_text, code_version
from grokloop.checkpoint import ckpt_dir, newest_readable
from grokloop.config import ModelConfig, OptimConfig, RunConfig, TrainConfig
from grokloop.metrics_log import read_rows

# Keys that may change when a run is resumed, because they change how the run is driven or
# reported, not what it computes: the step budget (extending a run is the point of resuming),
# progress bar and report, where it runs and how evaluation is batched, where the dataset is
# cached (its content is checked by hash), the kernel choice, the tracker it logs to, and the
# resume policy itself. Every other difference from the saved config.json refuses the resume.
RESUMABLE = frozenset(
    {
        "train.steps",
        "train.progress",
        "train.report",
        "train.device",
        "train.eval_batch_size",
        "train.eval_precision",
        "train.deterministic",
        "train.restart_if_damaged",
        "train.logger",
        "data_cache",
    }
)
BOOKKEEPING = ("code_version", "dataset_hash")  # config.json keys that are not config


def flatten(d: dict, prefix: str = "") -> dict:
    """{"train": {"steps": 5}} -> {"train.steps": 5}."""
    out = {}
    for k, v in d.items():
        out |= flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v}
    return out


_ABSENT = object()
_SECTIONS = {"model": ModelConfig, "optim": OptimConfig, "train": TrainConfig}


def _default(key: str):
    """The dataclass default of a config key (e.g. train.deterministic), or _ABSENT."""
    section, _, name = key.rpartition(".")
    cls = _SECTIONS.get(section) if section else RunConfig
    for f in dataclasses.fields(cls) if cls else ():
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
    return _ABSENT


def config_diff(saved: dict, new: dict) -> dict[str, tuple]:
    """{key: (old, new)} for every differing config key (bookkeeping keys aside). A key the saved
    config lacks counts as unchanged when the new value is its default: the run predates the key,
    and a new key's default keeps the old behaviour."""
    old = flatten({k: v for k, v in saved.items() if k not in BOOKKEEPING})
    new = flatten({k: v for k, v in new.items() if k not in BOOKKEEPING})
    diff = {}
    for k in sorted(old.keys() | new.keys()):
        a, b = old.get(k, _ABSENT), new.get(k, _ABSENT)
        if a is _ABSENT and b == _default(k):
            continue
        if a != b:
            diff[k] = ("<absent>" if a is _ABSENT else a, "<absent>" if b is _ABSENT else b)
    return diff


def _events(out_dir: Path) -> list[dict]:
    log = out_dir / "resume_log.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def current_config(out_dir: Path) -> dict:
    """The run's config as it stands: config.json with every logged resume's changes applied
    (flattened keys)."""
    saved = json.loads((out_dir / "config.json").read_text())
    flat = flatten({k: v for k, v in saved.items() if k not in BOOKKEEPING})
    for event in _events(out_dir):
        flat |= {k: change["new"] for k, change in event.get("changed", {}).items()}
    return flat


def resume_changes(out_dir: Path, config: dict) -> dict[str, tuple]:
    """The changes a resume of out_dir with `config` makes, relative to the run's current config;
    a ValueError naming every key that differs from config.json outside RESUMABLE."""
    saved = json.loads((out_dir / "config.json").read_text())
    refused = {k: v for k, v in config_diff(saved, config).items() if k not in RESUMABLE}
    if refused:
        lines = "".join(f"\n  {k}: {old!r} -> {new!r}" for k, (old, new) in refused.items())
        raise ValueError(
            f"cannot resume {out_dir} with a different config; these keys differ from "
            f"its config.json:{lines}\nOnly {sorted(RESUMABLE)} may change on resume. "
            "Nothing was changed; start a new run (another out_dir) instead."
        )
    current, new = current_config(out_dir), flatten(config)
    return {
        k: (current.get(k), v)
        for k, v in new.items()
        if k in RESUMABLE and current.get(k) != v and not (k not in current and v == _default(k))
    }


def log_resume(
    out_dir: Path,
    step: int,
    changes: dict,
    deterministic: bool,
    dataset_hash: str,
    restarted: str | None,
) -> None:
    """Append one resume event to RUN/resume_log.jsonl (config.json stays as the run started)."""
    saved_hash = json.loads((out_dir / "config.json").read_text()).get("dataset_hash")
    event = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "step": step,
        "changed": {k: {"old": old, "new": new} for k, (old, new) in changes.items()},
        "code_version": code_version(),
        "deterministic": deterministic,
    }
    if saved_hash is not None and saved_hash != dataset_hash:
        warnings.warn(
            f"{out_dir}: the dataset's content differs from the one this run started "
            f"with (sha256 {saved_hash[:12]}... -> {dataset_hash[:12]}...); the data "
            "generator changed. Continuing; recorded in resume_log.jsonl"
        )
        event["dataset_hash"] = {"old": saved_hash, "new": dataset_hash}
    if restarted:
        event["restarted_from_scratch"] = restarted
    with (out_dir / "resume_log.jsonl").open("a") as f:
        f.write(json.dumps(event) + "\n")


def finished_summary(cfg: RunConfig, out_dir: Path) -> dict | None:
    """The summary of a run in out_dir that already finished this config, else None, so a
    re-launched sweep with resume=true skips its finished runs and extends one given more steps.
    Finished: the config matches config.json outside RESUMABLE, and summary.json was written
    for this train.steps budget (the budget config.json holds for summaries that predate it)."""
    summary, config = out_dir / "summary.json", out_dir / "config.json"
    if not (summary.exists() and config.exists()):
        return None
    saved = json.loads(config.read_text())
    if any(k not in RESUMABLE for k in config_diff(saved, json.loads(json.dumps(cfg.to_dict())))):
        return None
    done = json.loads(summary.read_text())
    return done if done.get("budget_steps", saved["train"]["steps"]) == cfg.train.steps else None


def resume_point(out_dir: Path, restart_if_damaged: bool):
    """(the newest readable checkpoint as (weights, tensors, state) or None, the metrics rows the
    run has written, why the run restarts from step 0 or None). Every checkpoint damaged, or
    metrics without a checkpoint, is refused unless restart_if_damaged; then the damaged
    checkpoints are moved to checkpoints/damaged/ for inspection."""
    got, damaged = newest_readable(out_dir)
    old_rows = read_rows(out_dir / "metrics.jsonl")  # a torn last line dropped, with a warning
    restarted = None
    if got is None and (damaged or old_rows):
        why = (
            "every checkpoint is damaged:\n" + "".join(f"  {p}: {e}\n" for p, e in damaged)
            if damaged
            else f"it holds {len(old_rows)} metrics rows but no checkpoint\n"
        )
        if not restart_if_damaged:
            raise RuntimeError(
                f"cannot resume {out_dir}: {why}Nothing was changed. Pass "
                "train.restart_if_damaged=true to start it over from step 0."
            )
        warnings.warn(f"restarting {out_dir} from step 0: {why.strip()}")
        restarted = why.strip()
        for path, _ in damaged:  # kept for inspection, out of the way of the new checkpoints
            (ckpt_dir(out_dir) / "damaged").mkdir(exist_ok=True)
            for f in list(ckpt_dir(out_dir).glob(path.stem + ".*")):
                f.rename(ckpt_dir(out_dir) / "damaged" / f.name)
    for _, e in damaged if got is not None else []:
        warnings.warn(f"{e}; falling back to the previous checkpoint")
    return got, old_rows, restarted


def rewind_metrics(out_dir: Path, old_rows: list[dict], step: int) -> None:
    """metrics.jsonl cut back to the rows up to `step` (the checkpoint a resume continues from)."""
    rows = [r for r in old_rows if r["step"] <= step]
    atomic_write_text(out_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
