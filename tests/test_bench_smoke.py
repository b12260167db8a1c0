"""Smoke runs of the benchmark scripts so they cannot rot (no timing is asserted)."""
import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"


def test_datagen_benchmark_smoke(tmp_path):
    out = tmp_path / "datagen.json"
    subprocess.run([sys.executable, str(BENCH / "bench_datagen.py"), "--smoke", "--out", str(out)],
                   check=True, capture_output=True)
    result = json.loads(out.read_text())
    assert result["counts"]["train"] > 0 and result["achieved_phi"] == 2.0
