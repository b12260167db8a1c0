"""Interactive, self-contained HTML reports: one per run (`python -m reports run_dir=RUN`) and one
comparing runs and sweeps (`python -m reports compare DIR...`). Figures are built from the files a
run writes (metrics.jsonl, summary.json, config.json, probes/); nothing is recomputed here.

`write_run_report(run_dir)` is the one function the rest of the project calls (grokloop/train.py
at the end of a run); `python -m reports.adaptive RUN...` is reports/adaptive.py."""

from __future__ import annotations

from pathlib import Path


def write_run_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Build the run's page from what its directory holds and write it to `out` (default
    RUN/report.html); returns the path written."""
    from reports.html import write
    from reports.load import read_run
    from reports.run_report import run_report

    run = read_run(run_dir)
    return write(Path(out) if out else run.path / "report.html", run_report(run))
