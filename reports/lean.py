"""Committed pages that share one plotly.js instead of each inlining its 4.8 MB (STYLE.md point 8).

    python -m reports.lean [DIR ...] [asset=FILE]   # default: docs asset=docs/results/plotly.min.js

Every HTML page under DIR that inlines plotly.js is rewritten to load FILE by its path relative
to the page (`<script src="../plotly.min.js">`); FILE is written once, from the installed plotly,
if it is missing. A page whose inlined copy is another plotly.js than FILE is left as it is (its
figures were written for its own version). Running it again changes nothing: a converted page
inlines nothing. This is for pages that cannot be regenerated (their runs are gone); a study
written into docs/results/NAME shares the asset from the start (reports/html.py `write`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from plotly.offline import get_plotlyjs

from datagen.provenance import atomic_write_text
from reports.html import inlined, share, version

DEFAULT_ASSET = Path("docs/results/plotly.min.js")


def write_asset(asset: Path) -> str:
    """The shared plotly.js's text, written from the installed plotly if the file is missing."""
    if not asset.is_file():
        atomic_write_text(asset, get_plotlyjs())
        print(f"wrote {asset} (plotly.js {version(get_plotlyjs())})")
    return asset.read_text(encoding="utf-8")


def lean_page(page: Path, asset: Path, library: str) -> bool:
    """Make `page` load the shared `asset` (whose text is `library`); True if it was rewritten."""
    text = page.read_text(encoding="utf-8")
    found = inlined(text)
    if not found:
        return False
    if any(js != library for _, _, js in found):
        print(
            f"left {page}: it inlines plotly.js {version(found[0][2])}, {asset} is "
            f"{version(library)}",
            file=sys.stderr,
        )
        return False
    src = os.path.relpath(asset.resolve(), page.resolve().parent).replace(os.sep, "/")
    atomic_write_text(page, share(text, src))
    return True


def lean(dirs: list[Path], asset: Path = DEFAULT_ASSET) -> list[Path]:
    """Every page under `dirs` that inlined plotly.js, now loading `asset`; returns them."""
    library = write_asset(asset)
    pages = sorted(p for d in dirs for p in Path(d).rglob("*.html"))
    return [p for p in pages if lean_page(p, asset, library)]


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in args):
        print(__doc__)
        return
    assets = [a.split("=", 1)[1] for a in args if a.startswith("asset=")]
    dirs = [Path(a) for a in args if not a.startswith("asset=")] or [Path("docs")]
    changed = lean(dirs, Path(assets[-1]) if assets else DEFAULT_ASSET)
    for p in changed:
        print(f"{p}: loads the shared plotly.js ({p.stat().st_size / 1e6:.2f} MB)")
    print(f"{len(changed)} page(s) rewritten")


if __name__ == "__main__":
    main()
