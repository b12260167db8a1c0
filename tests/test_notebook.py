"""The example notebook (docs/notebooks/quickstart.ipynb) runs top to bottom in a fresh kernel:
it trains the default experiment to grok, opens the run, and probes and plots it."""

import re
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parent.parent / "docs" / "notebooks" / "quickstart.ipynb"


def test_the_notebook_is_stored_without_outputs():
    import nbformat

    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


@pytest.mark.slow  # trains the default experiment to grok (about 400 steps)
def test_the_notebook_runs_top_to_bottom(tmp_path):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    text = "\n".join(
        o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs
    )
    assert "steps;" in text and "key frequencies" in text
    steps = int(re.search(r"(\d+) steps;", text)[1])
    assert steps < 10_000 and float(re.search(r"'acc/test': ([0-9.]+)", text)[1]) >= 0.99
    assert any(
        o.get("data", {}).get("application/vnd.plotly.v1+json")
        for c in nb.cells
        for o in c.get("outputs", [])
    )
