"""Write HTML reports.

    python -m reports run_dir=RUN [out=FILE]                 # one run; default RUN/report.html
    python -m reports compare DIR [DIR ...] [out=FILE]       # runs or sweep trees; default
                                                             # DIR/compare.html (the first DIR)
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from reports.compare import compare_report
from reports.load import find_runs, load_run
from reports.run_report import run_report

USAGE = __doc__.split("\n", 1)[1].rstrip()


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    print(f"wrote {path} ({len(text) / 1e6:.1f} MB; open it in a browser, no network needed)")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    opts = dict(a.split("=", 1) for a in argv if "=" in a)
    bare = [a for a in argv if "=" not in a]
    if bare[:1] == ["compare"]:
        dirs = bare[1:]
        if not dirs or set(opts) - {"out"}:
            raise SystemExit(USAGE)
        runs = [load_run(p) for p in find_runs(dirs)]
        write(Path(opts.get("out") or Path(dirs[0]) / "compare.html"), compare_report(runs))
    elif bare or "run_dir" not in opts or set(opts) - {"run_dir", "out"}:
        raise SystemExit(USAGE)
    else:
        run = load_run(opts["run_dir"])
        write(Path(opts.get("out") or run.path / "report.html"), run_report(run))


if __name__ == "__main__":
    main()
