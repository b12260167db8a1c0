"""Smoke runs of the benchmark scripts so they cannot rot (no timing is asserted)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def test_datagen_benchmark_smoke(tmp_path):
    out = tmp_path / "datagen.json"
    subprocess.run(
        [sys.executable, str(BENCH / "bench_datagen.py"), "--smoke", "--out", str(out)],
        check=True,
        capture_output=True,
    )
    result = json.loads(out.read_text())
    assert result["counts"]["train"] > 0 and result["achieved_phi"] == 2.0


def smoke(script: str, tmp_path) -> dict:
    out = tmp_path / f"{script}.json"
    subprocess.run(
        [sys.executable, str(BENCH / script), "--smoke", "--out", str(out)],
        check=True,
        capture_output=True,
    )
    return json.loads(out.read_text())


@pytest.mark.slow  # ~14 s: three model stacks timed
def test_train_throughput_benchmark_smoke(tmp_path):
    (r,) = smoke("bench_train.py", tmp_path)["results"]
    assert {"grokloop", "grokloop_eager", "hf_gpt2", "plain_loop"} <= set(r["steps_per_s"])
    assert all(f"speedup_vs_hf_gpt2_{m}" in r for m in r["modes"])
    if "grokloop_bf16" in r["steps_per_s"]:  # a bf16 CPU: HF in bf16 too, side by side
        assert r["speedup_bf16_vs_hf_gpt2_bf16"] > 0 and "hf_gpt2_bf16" in r["steps_per_s"]
    assert all(v > 0 for v in r["matmul_peak_fraction"].values())
    assert all(v > 0 for v in r["steps_per_s"].values())
    assert {"grokloop", "hf_gpt2", "plain_loop"} <= set(r["matmul_share"])
    assert all(0 < v < 1 for v in r["matmul_share"].values())


@pytest.mark.slow  # 13-24 s: a real training or tracing loop, run by CI's slow pass
def test_looped_cost_benchmark_smoke(tmp_path):
    res = smoke("bench_looped.py", tmp_path)["results"]
    assert [r["depth"] for r in res] == [1, 2]
    assert all(r["seconds_per_step"]["looped"] > 0 for r in res)


@pytest.mark.slow  # 13-24 s: a real training or tracing loop, run by CI's slow pass
def test_tracing_benchmark_smoke(tmp_path):
    (r,) = smoke("bench_tracing.py", tmp_path)["results"]
    assert r["same_flips"] and r["examples"] > 0  # the script raises if the flips differ


@pytest.mark.slow  # 13-24 s: a real training or tracing loop, run by CI's slow pass
def test_time_to_grok_benchmark_smoke(tmp_path):
    res = smoke("bench_grok.py", tmp_path)["results"]
    assert [r["method"] for r in res] == ["adamw", "grokfast"]
    assert all(r["steps_run"] == 30 and r["curve"] for r in res)


@pytest.mark.slow  # ~60 s: compiles, and trains a tiny composition model
def test_gpu_suite_dry_run(tmp_path):
    out = tmp_path / "gpu.json"
    subprocess.run(
        ["bash", str(BENCH / "gpu_suite.sh"), "--dry-run", "--out", str(out)],
        check=True,
        capture_output=True,
    )
    r = json.loads(out.read_text())
    assert r["dry_run"] and set(r["steps"]) == {
        "matmul_peak_gflops",
        "throughput_tiny",
        "seeds_in_one_process",
        "composition_phi18",
    }
    assert "eager" in r["steps"]["throughput_tiny"]["seconds_per_step"]
    assert r["steps"]["composition_phi18"]["steps_run"] == 30


@pytest.mark.slow  # 13-24 s: a real training or tracing loop, run by CI's slow pass
def test_seeds_benchmark_smoke(tmp_path):
    (r,) = smoke("bench_seeds.py", tmp_path)["results"]
    assert r["seconds_per_round"]["vmap"] > 0 and r["seconds_per_round"]["sequential"] > 0
    assert r["first_step_max_abs_diff"]["loss"] < 1e-4
    assert r["first_step_max_abs_diff"]["weights"] < 1e-4


@pytest.mark.slow  # ~6 s; the search itself is tested fast in test_memory.py
def test_bank_search_benchmark_smoke(tmp_path):
    res = smoke("bench_bank_search.py", tmp_path)["results"]
    assert [r["shape"] for r in res] == ["balanced", "sparse"]
    assert all(
        r["same_slots"] and r["product_ms"] > 0 and 0 <= r["certified_first_grid"] <= 1 for r in res
    )


@pytest.mark.slow  # ~3-6 s: a benchmark process timing both attention paths
def test_attention_benchmark_smoke(tmp_path):
    res = smoke("bench_attention.py", tmp_path)["results"]
    assert {r["n_pos"] for r in res} == {4, 64}
    for r in res:
        assert r["ms"]["fused"] > 0 and r["ms"]["explicit"] > 0 and r["max_abs_diff"] < 0.05
        assert r["rule_chooses"] == ("explicit" if r["precision"] == "bf16" else "fused")


@pytest.mark.slow  # ~20-30 s: four real training runs in their own processes
def test_studies_benchmark_smoke(tmp_path):
    """bench_studies.py's rows carry what bench/README.md's table reads; `--before` this tree
    itself exercises the side-by-side comparison (a ratio near 1, not asserted)."""
    out = tmp_path / "studies.json"
    subprocess.run(
        [
            sys.executable,
            str(BENCH / "bench_studies.py"),
            "--smoke",
            "--out",
            str(out),
            "--before",
            str(BENCH.parent),
        ],
        check=True,
        capture_output=True,
    )
    r = json.loads(out.read_text())
    assert r["machine"]["cpu"] and r["machine"]["isa"] and r["auto_mode_here"]["precision"]
    (row,) = r["results"]
    assert row["steps_per_s"] > 0 and row["speedup_vs_before"] > 0 and row["top_ops"]
    assert abs(sum(row["share"].values()) - 1) < 1e-9 and row["default_schedule"]["evaluations"]
    assert 0 < row["matmul_peak_fraction"] < 1 and row["resolved"]["precision"] == "fp32"
