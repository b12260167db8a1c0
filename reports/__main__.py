"""Write HTML reports.

    python -m reports run_dir=RUN [out=FILE]                 # one run; default RUN/report.html
    python -m reports compare DIR [DIR ...] [out=FILE]       # runs or sweep trees; default
                                                             # DIR/compare.html (the first DIR)

Typed by ReportsCommand (conf/reports.yaml); `compare DIR...` is the shorthand of compare=[DIR,...].
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from reports import write_run_report
from reports.compare import compare_report
from reports.html import write
from reports.load import find_runs, read_run


@dataclass
class ReportsCommand:
    """Schema of conf/reports.yaml: one of run_dir (a run's page) or compare (a comparison)."""

    run_dir: str | None = None
    compare: list[str] = field(default_factory=list)  # runs or sweep trees
    out: str | None = None  # None: RUN/report.html, or compare.html in the first compare dir


def main(argv: list[str] | None = None) -> None:
    from grokloop import cli

    cli.run("reports", report, argv)


def report(cmd: ReportsCommand) -> None:
    if bool(cmd.run_dir) == bool(cmd.compare):
        raise SystemExit(
            "give one of run_dir=RUN (a run's page) or compare DIR [DIR ...] (a "
            "comparison); `python -m reports --help` shows both"
        )
    if cmd.compare:
        runs = [read_run(p) for p in find_runs(cmd.compare)]
        write(Path(cmd.out or Path(cmd.compare[0]) / "compare.html"), compare_report(runs))
    else:
        write_run_report(cmd.run_dir, cmd.out)


if __name__ == "__main__":
    main()
