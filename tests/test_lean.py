"""A lean docs/: committed pages share one plotly.js (docs/results/plotly.min.js), docs/ stays
small, the README's adaptive tables still regenerate from the lean adaptive summary, and
docs/results/README.md indexes the studies; all of it checked against the committed files.
(The adaptive summary's sidecar of curves is tested in tests/test_adaptive.py.)"""

import gzip
import json
import os
import re
from pathlib import Path

import plotly.graph_objects as go
import pytest
from plotly.offline import get_plotlyjs

from reports.browser import check, chromium
from reports.html import SHARED_ASSET, Section, inlined, page, share, write
from reports.lean import lean
from reports.readme import MARKER, results_index, update

ROOT = Path(__file__).resolve().parent.parent
DOCS, RESULTS = ROOT / "docs", ROOT / "docs" / "results"
CURVES = "summary_curves.json.gz"  # reports/adaptive.py CURVES_FILE
FRONTIER = "summary_frontier.json.gz"  # reports/adaptive.py FRONTIER_FILE
SRC = re.compile(r'<script[^>]*\bsrc="([^"]+)"')
needs_browser = pytest.mark.skipif(
    chromium() is None and not os.environ.get("GROKLOOP_REQUIRE_BROWSER"),
    reason="no chromium: bash .ci/install_chromium.sh (or set GROKLOOP_REQUIRE_BROWSER=1 to fail)",
)


def demo_page(plotly_js: str = "inline") -> str:
    figs = [go.Figure(go.Scatter(x=[0, 1], y=[i, 1 - i])) for i in range(2)]
    return page(
        "demo", "two figures", [Section("a").add(figs[0]), Section("b").add(figs[1])], plotly_js
    )


def figures(text: str) -> tuple[int, str]:
    """The figure divs and the data-figures the page declares."""
    return text.count('<div class="figure">'), re.search(r'data-figures="(\d+)"', text)[1]


def test_a_page_under_the_shared_asset_loads_it_and_one_elsewhere_inlines_it(tmp_path, capsys):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / SHARED_ASSET).write_text(get_plotlyjs())
    shared = (write(tmp_path / "results" / "study" / "compare.html", demo_page())).read_text()
    assert inlined(shared) == [] and SRC.findall(shared) == ["../plotly.min.js"]
    assert shared == demo_page("../plotly.min.js") and figures(shared) == (2, "2")
    alone = write(tmp_path / "runs" / "r" / "report.html", demo_page()).read_text()
    assert len(inlined(alone)) == 1 and SRC.findall(alone) == []
    # a stale shared copy (another plotly.js) is not used: the page stands alone
    (tmp_path / "results" / SHARED_ASSET).write_text("/**\n* plotly.js v0.0.1\n*/")
    stale = write(tmp_path / "results" / "other" / "compare.html", demo_page()).read_text()
    assert len(inlined(stale)) == 1 and "plotly.js 0.0.1, not" in capsys.readouterr().err


def test_lean_converts_once_and_keeps_the_figures(tmp_path):
    docs = tmp_path / "docs"
    new = docs / "results" / "study" / "compare.html"
    old = docs / "archive" / "old" / "figures.html"  # pages once inlined it as a bare <script>
    bare = demo_page().replace('<script type="text/javascript">/**', "<script>/**")
    for path, text in ((new, demo_page()), (old, bare)):
        path.parent.mkdir(parents=True)
        path.write_text(text)
    other = docs / "results" / "other.html"  # another plotly.js: left as it is
    other.write_text(demo_page().replace("plotly.js v", "plotly.js v0.0.1-was-v"))
    asset = docs / "results" / SHARED_ASSET
    assert lean([docs], asset) == [old, new]
    assert asset.read_text() == get_plotlyjs() and len(inlined(other.read_text())) == 1
    assert new.read_text() == demo_page("../plotly.min.js")
    assert SRC.findall(old.read_text()) == ["../../results/plotly.min.js"]
    assert all(figures(p.read_text()) == (2, "2") for p in (new, old))
    files = lambda: {p: p.read_bytes() for p in docs.rglob("*") if p.is_file()}
    before = files()
    assert lean([docs], asset) == [] and files() == before
    assert share(new.read_text(), "elsewhere.js") == new.read_text()


def test_every_committed_page_loads_one_existing_plotly_or_inlines_it_once():
    assert sorted(DOCS.rglob(SHARED_ASSET)) == [RESULTS / SHARED_ASSET]  # one copy
    assert re.match(r"/\*\*?\s*\*\s*plotly\.js v", (RESULTS / SHARED_ASSET).read_text()[:100])
    pages = sorted(DOCS.rglob("*.html"))
    assert len(pages) >= 10
    for p in pages:
        text = p.read_text()
        srcs = SRC.findall(text)
        if inlined(text):
            assert len(inlined(text)) == 1 and srcs == [], p
        else:
            assert len(srcs) == 1 and (p.parent / srcs[0]).resolve() == RESULTS / SHARED_ASSET, p
        n, declared = figures(text) if "data-figures" in text else (1, "1")  # the archived page
        assert n == int(declared) and text.count("Plotly.newPlot(") == n, p


def test_docs_fit_in_15_mb():
    size = sum(p.stat().st_size for p in DOCS.rglob("*") if p.is_file())
    assert size <= 15e6, f"docs/ is {size / 1e6:.1f} MB"


@needs_browser
def test_a_committed_page_renders_with_the_shared_plotly(tmp_path):
    # reports.browser.check loads a copy from a temporary folder, where the relative path does
    # not reach the asset: the copy names it by its absolute file URI instead
    page_ = RESULTS / "two_hop_looped_rerun" / "compare.html"
    text = page_.read_text().replace(
        'src="../plotly.min.js"', f'src="{(RESULTS / SHARED_ASSET).as_uri()}"'
    )
    (tmp_path / "compare.html").write_text(text)
    got = check(tmp_path / "compare.html")
    assert got["errors"] == [] and got["rendered"] == got["expected"] == 5, got


def test_the_adaptive_summary_keeps_its_curves_beside_it():
    summary = json.loads((RESULTS / "adaptive" / "summary.json").read_text())
    curves = json.loads(gzip.decompress((RESULTS / "adaptive" / CURVES).read_bytes()))
    entries, ids = summary["abstention"], ("model", "seed", "split", "facts")
    assert len(summary["rows"]) > 1_000
    assert (RESULTS / "adaptive" / "summary.json").stat().st_size < 2e6  # small enough to read
    assert {"study", "machine", "commands", "runs"} <= set(summary)
    assert [[e[k] for k in ids] for e in entries] == [[c[k] for k in ids] for c in curves]
    assert all("curve" not in e for e in entries) and all("curve" in c for c in curves)
    frontier = json.loads(gzip.decompress((RESULTS / "adaptive" / FRONTIER).read_bytes()))
    assert "frontier" not in summary and {"rule", "valid_acc", "test_flops"} <= set(frontier[0])


def test_the_findings_tables_of_the_adaptive_study_regenerate_unchanged():
    findings = (ROOT / "docs" / "findings.md").read_text()
    blocks = [m[0] for m in MARKER.finditer(findings) if "adaptive" in m["spec"]]
    assert blocks and all(update(b, ROOT / "docs") == b for b in blocks)


def test_the_results_index_is_current():
    assert results_index(RESULTS) == (RESULTS / "README.md").read_text(), (
        "docs/results/README.md is stale: python -m reports.readme index"
    )


def test_committed_results_show_portable_paths(tmp_path, monkeypatch):
    """portable_path: relative below the working directory, else from the last `runs` folder."""
    from datagen.provenance import portable_path

    monkeypatch.chdir(tmp_path)
    assert portable_path(tmp_path / "runs" / "a" / "seed0") == "runs/a/seed0"
    assert portable_path("/elsewhere/x/runs/b/runs/c/seed1") == "runs/c/seed1"
    assert portable_path("/elsewhere/plain") == "/elsewhere/plain"
