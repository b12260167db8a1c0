"""Loading a report in headless Chromium: JavaScript errors, figures rendered, a screenshot.

The page is loaded from a copy with a probe script inserted before plotly.js: it records every
error (uncaught, promise rejections, console.error) and, after the load, counts the plotly
figures that rendered an SVG, then writes both into the DOM, which `--dump-dom` returns.

    python -m reports.browser REPORT.html [SHOT.png]     # prints the check; saves a screenshot
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PROBE = """<script>
window.__errors = [];
addEventListener("error", e => __errors.push(String(e.message || e)));
addEventListener("unhandledrejection", e => __errors.push("unhandled rejection: " + e.reason));
const __consoleError = console.error;
console.error = (...a) => { __errors.push(a.join(" ")); __consoleError(...a); };
addEventListener("load", () => setTimeout(() => {
  const figs = [...document.querySelectorAll(".js-plotly-plot")];
  const rendered = figs.filter(f => f._fullLayout && f.querySelector(".main-svg")
                                     && f.querySelector(".scatterlayer .trace, .heatmaplayer .hm, .cartesianlayer image")).length;
  const out = document.createElement("pre");
  out.id = "browser-check";
  out.textContent = JSON.stringify({errors: __errors, figures: figs.length, rendered: rendered,
                                    expected: Number(document.body.dataset.figures)});
  document.body.appendChild(out);
}, 1000));
</script>"""
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-extensions",
    "--hide-scrollbars",
]


def chromium() -> str | None:
    return next(
        (p for n in ("chromium", "chromium-browser", "google-chrome") if (p := shutil.which(n))),
        None,
    )


def _run(args: list[str], timeout: float) -> str:
    exe = chromium()
    if exe is None:
        raise RuntimeError(
            "no chromium found; install Debian's `chromium` (bash .ci/install_chromium.sh)"
        )
    with tempfile.TemporaryDirectory() as profile:
        out = subprocess.run(
            [exe, *FLAGS, f"--user-data-dir={profile}", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    if out.returncode:
        raise RuntimeError(f"chromium exited {out.returncode}: {out.stderr[-2000:]}")
    return out.stdout


def check(report: str | Path, timeout: float = 120) -> dict:
    """{errors: [...], figures: n, rendered: n, expected: n} for the report loaded in Chromium."""
    text = Path(report).read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "page.html"
        page.write_text(text.replace("<head>", "<head>" + PROBE, 1), encoding="utf-8")
        dom = _run(["--virtual-time-budget=20000", "--dump-dom", page.as_uri()], timeout)
    found = re.search(r'<pre id="browser-check">(.*?)</pre>', dom, re.S)
    if not found:
        raise RuntimeError("the page never finished loading (no browser-check element in the DOM)")
    import html

    return json.loads(html.unescape(found.group(1)))


def screenshot(
    report: str | Path, png: str | Path, width: int = 1280, height: int = 2000, timeout: float = 120
) -> Path:
    png = Path(png).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    _run(
        [
            f"--screenshot={png}",
            f"--window-size={width},{height}",
            "--virtual-time-budget=20000",
            Path(report).resolve().as_uri(),
        ],
        timeout,
    )
    return png


if __name__ == "__main__":
    if sys.argv[1:2] in (["-h"], ["--help"]):
        print(__doc__.strip())
        raise SystemExit(0)
    if len(sys.argv) not in (2, 3):
        raise SystemExit(__doc__.split("\n\n")[-1])
    print(json.dumps(check(sys.argv[1])))
    if len(sys.argv) == 3:
        print(f"wrote {screenshot(sys.argv[1], sys.argv[2])}")
