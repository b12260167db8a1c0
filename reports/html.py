"""One self-contained HTML page: plotly.js inlined once in the head, then sections of text,
tables and figures. It opens with no network. `write` saves a page atomically."""
from __future__ import annotations

import html
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
    parts: list = field(default_factory=list)   # str (HTML) or go.Figure

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


def page(title: str, subtitle: str, sections: list[Section]) -> str:
    """The HTML text. Figures get ids fig-0, fig-1, ... and the page body records how many there are
    (data-figures), which the browser test checks against what rendered."""
    anchors = [f"s{i}" for i in range(len(sections))]
    nav = " ".join(f'<a href="#{a}">{html.escape(s.title)}</a>' for a, s in zip(anchors, sections))
    body, n_fig = [], 0
    for a, s in zip(anchors, sections):
        body.append(f'<h2 id="{a}">{html.escape(s.title)}</h2>')
        for part in s.parts:
            if isinstance(part, go.Figure):
                body.append('<div class="figure">' + pio.to_html(
                    part, full_html=False, include_plotlyjs=False, div_id=f"fig-{n_fig}",
                    config={"displaylogo": False, "toImageButtonOptions": {"format": "svg"}}) + "</div>")
                n_fig += 1
            else:
                body.append(part)
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{CSS}</style>"
            f"<script type=\"text/javascript\">{get_plotlyjs()}</script></head>"
            f"<body data-figures=\"{n_fig}\"><h1>{html.escape(title)}</h1>"
            f"<p class=\"muted\">{subtitle}</p><nav>{nav}</nav>{''.join(body)}</body></html>\n")


def write(path: str | Path, text: str) -> Path:
    """Write a page (atomically: a killed process leaves no half page) and say where it is."""
    path = atomic_write_text(path, text)
    print(f"wrote {path} ({len(text) / 1e6:.1f} MB; open it in a browser, no network needed)")
    return path
