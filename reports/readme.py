"""README tables generated from committed study results, never typed by hand.

A table in README.md (or any markdown file) sits between two markers; the opening one names the
study's summary.json and how to lay it out:

    <!-- results docs/results/comparison_ood/summary.json rows=model columns=split seed=pooled -->
    ...generated...
    <!-- /results -->

`rows` and `columns` name row fields (model, split, hops, seed, step); every other key=value
keeps only the rows whose field has that value (several values: a,b). A cell is the accuracy
with its Wilson 95% interval; the table ends with the n of each column.

Tables that are not accuracies (e.g. a curriculum's ACC/BWT/FWT over seeds) are copied from a
study's generated summary.md instead, by the title of their section (underscores for spaces):

    <!-- results docs/results/curriculum/summary.md section=Transfer_and_forgetting -->

    python -m reports.readme [README.md ...]     # rewrite every marked table in place
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from datagen.provenance import atomic_write_text

MARKER = re.compile(r"(<!-- results (?P<spec>[^>]*?) -->\n)(?P<body>.*?)(<!-- /results -->)", re.S)


def render(summary: dict, rows_key: str = "model", columns_key: str = "split",
           filters: dict[str, list[str]] | None = None) -> str:
    def lab(r: dict, k: str) -> str:   # a row without the field (e.g. hops) covers all of it
        return "all" if r.get(k) is None else str(r[k])

    keep = [r for r in summary["rows"] if all(lab(r, k) in v for k, v in (filters or {}).items())]
    if not keep:
        raise ValueError(f"no rows of {summary['study']} match {filters}")
    row_names = list(dict.fromkeys(lab(r, rows_key) for r in keep))
    if all(n.isdigit() for n in row_names):   # steps, hops, seeds: in numeric order
        row_names.sort(key=int)
    col_names = list(dict.fromkeys(lab(r, columns_key) for r in keep))
    cell = {(lab(r, rows_key), lab(r, columns_key)): r for r in keep}
    lines = ["| " + " | ".join([rows_key] + col_names) + " |", "|---" * (len(col_names) + 1) + "|"]
    for name in row_names:
        cells = [f"{c['acc']:.3f} [{c['lo']:.2f}, {c['hi']:.2f}]" if (c := cell.get((name, col)))
                 else "" for col in col_names]
        lines.append("| " + " | ".join([name] + cells) + " |")
    ns = [sorted({cell[(r, col)]["n"] for r in row_names if (r, col) in cell}) for col in col_names]
    lines.append("| n | " + " | ".join("/".join(f"{n:,}" for n in sizes) for sizes in ns) + " |")
    return "\n".join(lines) + "\n"


def parse(spec: str) -> tuple[Path, str, str, dict[str, list[str]]]:
    path, *pairs = spec.split()
    opts = dict(p.split("=", 1) for p in pairs)
    rows, cols = opts.pop("rows", "model"), opts.pop("columns", "split")
    return Path(path), rows, cols, {k: v.split(",") for k, v in opts.items()}


def section(markdown: str, title: str) -> str:
    """The body of the first `## ` section whose title starts with `title`, trimmed."""
    for part in markdown.split("\n## ")[1:]:
        head, _, body = part.partition("\n")
        if head.startswith(title):
            return body.strip() + "\n"
    raise ValueError(f"no section {title!r} in the summary.md")


def update(text: str, root: Path) -> str:
    def table(m: re.Match) -> str:
        path, rows, cols, filters = parse(m["spec"])
        if path.suffix == ".md":
            title = filters.pop("section", [""])[0].replace("_", " ")
            return m.group(1) + section((root / path).read_text(), title) + m.group(4)
        summary = json.loads((root / path).read_text())
        return m.group(1) + render(summary, rows, cols, filters) + m.group(4)
    return MARKER.sub(table, text)


def main(argv: list[str] | None = None) -> None:
    files = [Path(p) for p in (sys.argv[1:] if argv is None else argv)] or [Path("README.md")]
    for f in files:
        new = update(f.read_text(), f.resolve().parent)
        if new != f.read_text():
            atomic_write_text(f, new)
            print(f"rewrote the result tables of {f}")


if __name__ == "__main__":
    main()
