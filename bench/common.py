"""Shared by the benchmarks: the experiment configs, our training loop timed from outside, the
machine description. Every script prints a table and writes JSON to bench/results/."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from omegaconf import OmegaConf

from datagen.provenance import machine  # noqa: F401  (re-exported for the bench scripts)
from grokloop import cli
from grokloop.config import run_config_from_dict

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def run_config(overrides: list[str]):
    """The RunConfig `python -m grokloop.train` would build from these overrides."""
    cfg = cli.compose("train", overrides)
    d = OmegaConf.to_container(cfg, resolve=True)
    d.pop("out_dir"), d.pop("resume")
    return run_config_from_dict(d)


def train_seconds_per_step(overrides: list[str], steps: int) -> float:
    """The marginal wall time of one step of `grokloop.train.train`, evaluation and checkpoints
    excluded: a run of 2*steps minus a run of `steps` (set-up, data and the final evaluation
    cancel), divided by `steps`. A first run warms up (imports, allocator, data cache)."""
    from grokloop.train import train

    times = []
    for n in (steps, steps, 2 * steps):
        cfg = run_config(
            overrides
            + [
                f"train.steps={n}",
                f"train.eval_every_min={n}",
                f"train.eval_every_max={n}",
                f"train.checkpoint_every_max={n}",
                "train.progress=false",
                "train.stop_at_grok=null",
            ]
        )
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            train(cfg, Path(tmp) / "run")
            times.append(time.perf_counter() - t)
    return max(times[2] - times[1], 1e-9) / steps


def write(name: str, result: dict, out: str | None = None) -> Path:
    path = Path(out) if out else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    return path


def table(headers: list[str], rows: list[list]) -> str:
    cells = [[f"{c:.3g}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    line = lambda r: "  ".join(c.rjust(w) for c, w in zip(r, widths))
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in cells])
