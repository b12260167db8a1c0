"""Smoke runs of the benchmark scripts so they cannot rot (no timing is asserted)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def test_datagen_benchmark_smoke(tmp_path):
    out = tmp_path / "datagen.json"
    subprocess.run([sys.executable, str(BENCH / "bench_datagen.py"), "--smoke", "--out", str(out)],
                   check=True, capture_output=True)
    result = json.loads(out.read_text())
    assert result["counts"]["train"] > 0 and result["achieved_phi"] == 2.0


def smoke(script: str, tmp_path) -> dict:
    out = tmp_path / f"{script}.json"
    subprocess.run([sys.executable, str(BENCH / script), "--smoke", "--out", str(out)],
                   check=True, capture_output=True)
    return json.loads(out.read_text())


@pytest.mark.slow  # ~14 s: three model stacks timed
def test_train_throughput_benchmark_smoke(tmp_path):
    (r,) = smoke("bench_train.py", tmp_path)["results"]
    assert set(r["steps_per_s"]) == {"grokloop", "hf_gpt2", "plain_loop"}
    assert all(v > 0 for v in r["steps_per_s"].values())
    assert set(r["matmul_share"]) == {"grokloop", "hf_gpt2", "plain_loop"}
    assert all(0 < v < 1 for v in r["matmul_share"].values())


def test_looped_cost_benchmark_smoke(tmp_path):
    res = smoke("bench_looped.py", tmp_path)["results"]
    assert [r["depth"] for r in res] == [1, 2]
    assert all(r["seconds_per_step"]["looped"] > 0 for r in res)


def test_tracing_benchmark_smoke(tmp_path):
    (r,) = smoke("bench_tracing.py", tmp_path)["results"]
    assert r["same_flips"] and r["examples"] > 0   # the script raises if the flips differ


def test_time_to_grok_benchmark_smoke(tmp_path):
    res = smoke("bench_grok.py", tmp_path)["results"]
    assert [r["method"] for r in res] == ["adamw", "grokfast"]
    assert all(r["steps_run"] == 30 and r["curve"] for r in res)
