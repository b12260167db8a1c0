"""RUN/metrics.jsonl, one JSON row per evaluation: append a row, read the rows back.

A row is appended with one write, so a process killed in the middle of it (SIGKILL, power loss,
a full disk) can leave a torn last line. Readers drop that line with a warning rather than fail:
the rows before it are whole, and a resumed run rewrites the file from its checkpoint anyway
(grokloop/train/resume.py rewind_metrics). A line that does not parse anywhere else is damage,
not a crash mid-append, and is an error naming the file and line.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path


def append_row(path: Path, row: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")


def read_rows(path: Path) -> list[dict]:
    """The rows of a metrics.jsonl (none if it does not exist), a torn last line dropped with a
    warning; a ValueError naming the line if any other line is not JSON."""
    if not path.exists():
        return []
    lines = path.read_text().split("\n")
    rows = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i == len(lines) - 1:  # no newline after it: the append never finished
                warnings.warn(
                    f"{path}: dropped a torn last line (a process stopped while "
                    f"writing it): {line[:60]!r}"
                )
                continue
            raise ValueError(
                f"{path}: line {i + 1} is not JSON ({e.msg}); the file is "
                "damaged there: delete or repair that line"
            ) from None
    return rows
