"""One HTML page: plotly.js once in the head, then sections of text, tables and figures. It opens
with no network. `write` saves a page atomically.

plotly.js (4.8 MB) is inlined by default, so a run's own report.html stands alone. Committed study
pages share one copy instead (docs/results/plotly.min.js, STYLE.md point 8): `write` makes a page
reference a SHARED_ASSET found in its own folder or the one above it, which is how every study
written to docs/results/NAME shares it, and inlines plotly.js anywhere else (runs/...).
`python -m reports.lean` converts pages written before, with the same `share`.
"""

from __future__ import annotations

import html
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs

from datagen.provenance import atomic_write_text

CSS = """
body { font-family: Helvetica, Arial, sans-serif; max-width: 1280px; margin: 2em auto; padding: 0 1em;
       color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; }
nav a { margin-right: 1em; } .muted { color: #666; } .figure { margin: 1em 0; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.92em; }
td, th { border: 1px solid #ddd; padding: 4px 8px; text-align: right; } th { background: #f4f4f4; }
td:first-child, th:first-child { text-align: left; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 0.88em; }
code { background: #f2f2f2; padding: 1px 4px; }
details { margin: 1em 0; }
"""


@dataclass
class Section:
    title: str
    parts: list = field(default_factory=list)  # str (HTML) or go.Figure

    def text(self, s: str) -> "Section":
        self.parts.append(f"<p>{s}</p>")
        return self

    def add(self, part) -> "Section":
        if part is not None:
            self.parts.append(part)
        return self


def table(headers: list[str], rows: list[list]) -> str:
    cell = lambda c: html.escape(f"{c:.4g}" if isinstance(c, float) else str(c))
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def code(s: str) -> str:
    return f"<pre>{html.escape(s)}</pre>"


SHARED_ASSET = "plotly.min.js"
# The start of an inlined plotly.js: its licence banner opens the script (any plotly.js version,
# and the `<script>` of pages written before `page` added the type).
INLINED = re.compile(r"<script[^>]*>\s*/\*\*?\s*\*\s*plotly\.js v(?P<version>[\w.-]+)")


def plotly_script(plotly_js: str = "inline") -> str:
    """The head's plotly.js: "inline" (the library itself) or a relative URL of a shared copy."""
    if plotly_js == "inline":
        return f'<script type="text/javascript">{get_plotlyjs()}</script>'
    return f'<script type="text/javascript" src="{html.escape(plotly_js)}"></script>'


def page(title: str, subtitle: str, sections: list[Section], plotly_js: str = "inline") -> str:
    """The HTML text. Figures get ids fig-0, fig-1, ... and the page body records how many there are
    (data-figures), which the browser test checks against what rendered. plotly_js: "inline", or
    the URL of a shared plotly.js relative to where the page will be (e.g. ../plotly.min.js)."""
    anchors = [f"s{i}" for i in range(len(sections))]
    nav = " ".join(f'<a href="#{a}">{html.escape(s.title)}</a>' for a, s in zip(anchors, sections))
    body, n_fig = [], 0
    for a, s in zip(anchors, sections):
        body.append(f'<h2 id="{a}">{html.escape(s.title)}</h2>')
        for part in s.parts:
            if isinstance(part, go.Figure):
                body.append(
                    '<div class="figure">'
                    + pio.to_html(
                        part,
                        full_html=False,
                        include_plotlyjs=False,
                        div_id=f"fig-{n_fig}",
                        config={"displaylogo": False, "toImageButtonOptions": {"format": "svg"}},
                    )
                    + "</div>"
                )
                n_fig += 1
            else:
                body.append(part)
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{CSS}</style>"
        f"{plotly_script(plotly_js)}</head>"
        f'<body data-figures="{n_fig}"><h1>{html.escape(title)}</h1>'
        f'<p class="muted">{subtitle}</p><nav>{nav}</nav>{"".join(body)}</body></html>\n'
    )


def inlined(text: str) -> list[tuple[int, int, str]]:
    """(start, end, the library's text) of every inlined plotly.js script element in the page."""
    out = []
    for m in INLINED.finditer(text):
        body, end = text.index(">", m.start()) + 1, text.index("</script>", m.end())
        out.append((m.start(), end + len("</script>"), text[body:end]))
    return out


def version(js: str) -> str:
    """The version a plotly.js names in its banner."""
    m = INLINED.match("<script>" + js[:200])
    return m["version"] if m else "of no known version"


def share(text: str, src: str) -> str:
    """The page with its inlined plotly.js replaced by a reference to the shared copy at `src`
    (relative to the page); a page that inlines none is returned as it is."""
    found = inlined(text)
    if len(found) > 1:
        raise ValueError(f"the page inlines plotly.js {len(found)} times; expected once")
    if not found:
        return text
    start, end, _ = found[0]
    return text[:start] + plotly_script(src) + text[end:]


def shared_asset(path: str | Path) -> str | None:
    """The URL, relative to the page at `path`, of the SHARED_ASSET in the page's folder or the
    one above it, if that copy is the plotly.js installed here (a page's figures are written
    for this plotly.js; a stale copy is not used); None: inline it."""
    folder = Path(path).resolve().parent
    for asset in (folder / SHARED_ASSET, folder.parent / SHARED_ASSET):
        if asset.is_file():
            if (js := asset.read_text(encoding="utf-8")) != get_plotlyjs():
                print(
                    f"{asset} is plotly.js {version(js)}, not the installed "
                    f"{version(get_plotlyjs())}: the page inlines its own",
                    file=sys.stderr,
                )
                return None
            return os.path.relpath(asset, folder).replace(os.sep, "/")
    return None


def write(path: str | Path, text: str) -> Path:
    """Write a page (atomically: a killed process leaves no half page) and say where it is; under
    a shared plotly.js (`shared_asset`) the page references it instead of inlining its own."""
    if (src := shared_asset(path)) is not None:
        text = share(text, src)
    path = atomic_write_text(path, text)
    print(f"wrote {path} ({len(text) / 1e6:.1f} MB; open it in a browser, no network needed)")
    return path
