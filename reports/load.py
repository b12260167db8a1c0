"""Reading what a run directory holds, as files: its config, metrics, summary and probe results
(`read_run`; the model and dataset of a run are grokloop.load_run)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from datagen.dataset import read_json
from grokloop.metrics_log import read_rows


@dataclass
class ProbeResult:
    """One probe's outputs: its JSON record, the arrays of every checkpoint it was run on, and its
    tidy table (rows with a `checkpoint` key)."""

    meta: dict
    arrays: dict[int, dict[str, np.ndarray]]
    rows: list[dict]

    @property
    def steps(self) -> list[int]:
        return sorted(self.arrays)


@dataclass
class RunFiles:
    path: Path
    config: dict
    metrics: list[dict]
    summary: dict | None
    probes: dict[str, ProbeResult] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.config.get("experiment") or self.path.name

    def curve(self, key: str) -> tuple[list[int], list[float]]:
        rows = [r for r in self.metrics if key in r]
        return [r["step"] for r in rows], [r[key] for r in rows]

    def splits(self) -> list[str]:
        """Evaluated splits, in the order the metrics list them."""
        return [
            k[4:]
            for k in (self.metrics[0] if self.metrics else {})
            if k.startswith("acc/") and k.count("/") == 1
        ]


def is_run(path: Path) -> bool:
    return (path / "config.json").is_file() and (path / "metrics.jsonl").is_file()


def load_probe(probe_dir: Path, name: str) -> ProbeResult | None:
    record = probe_dir / f"{name}.json"
    if not record.is_file():
        return None
    arrays = {}
    for npz in sorted((probe_dir / name).glob("step_*.npz")):
        with np.load(npz) as f:
            arrays[int(npz.stem[5:])] = {k: f[k] for k in f.files}
    table = probe_dir / f"{name}.jsonl"
    rows = [json.loads(line) for line in table.read_text().splitlines()] if table.is_file() else []
    return ProbeResult(json.loads(record.read_text()), arrays, rows)


def read_run(path: str | Path, probes: bool = True) -> RunFiles:
    """The run at `path`; with probes=False its probe results are not read (they can be large)."""
    path = Path(path)
    if not path.is_dir():
        raise SystemExit(f"run_dir={path}: no such directory")
    if not is_run(path):
        raise SystemExit(
            f"run_dir={path}: not a run directory (no config.json and metrics.jsonl); "
            "train one with python -m grokloop.train"
        )
    metrics = read_rows(path / "metrics.jsonl")  # a torn last line (a crash) dropped, warned
    summary = read_json(path / "summary.json") if (path / "summary.json").is_file() else None
    config = read_json(
        path / "config.json",
        "each checkpoints/step_*.json holds a copy of the config (its 'config' key)",
    )
    run = RunFiles(path, config, metrics, summary)
    for record in sorted((path / "probes").glob("*.json")) if probes else ():
        if (got := load_probe(path / "probes", record.stem)) is not None and got.arrays:
            run.probes[record.stem] = got
    return run


def find_runs(paths: list[str | Path]) -> list[Path]:
    """Every run directory at or below the given paths (a run, a sweep, a tree of sweeps)."""
    found = []
    for p in map(Path, paths):
        if not p.exists():
            raise SystemExit(f"{p}: no such directory")
        found += (
            [p]
            if is_run(p)
            else sorted(c.parent for c in p.rglob("metrics.jsonl") if is_run(c.parent))
        )
    if not found:
        raise SystemExit(
            f"no run directories (config.json + metrics.jsonl) under {', '.join(map(str, paths))}"
        )
    return list(dict.fromkeys(found))
