"""Runs you can trust (issue 16): resume checks the saved config, one process per run directory,
deterministic CPU training, no resume without a readable checkpoint, no NaN in a checkpoint,
the dataset's hash in config.json, honest progress, untracked default outputs."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import grokloop.train.step as train_mod
from datagen import load_or_build
from grokloop.checkpoint import list_checkpoints
from grokloop.config import run_config_from_dict
from grokloop.runlock import RunLockedError, acquire, release
from grokloop.schedule import log_schedule
from grokloop.train import train


# Configs are built from the dataclasses directly (not composed from conf/), so these tests do not
# depend on the Hydra tree's layout.
def tiny(tmp_path, **train) -> dict:
    """A tiny run config dict (modular addition mod 11, a 16-wide model, 60 steps; what
    tests/test_train.py's TINY composes), the data cached under tmp_path."""
    return {
        "data": {"task": "modular", "p": 11, "train_fraction": 0.5},
        "model": {"d_model": 16, "n_heads": 2, "d_mlp": 32},
        "optim": {"lr": 1e-3, "weight_decay": 1.0, "grad_clip": None},
        "train": {
            "steps": 60,
            "eval_every_min": 5,
            "eval_every_max": 10,
            "checkpoint_every_max": 10,
            "progress": False,
            "report": False,
        }
        | train,
        "data_cache": str(tmp_path / "cache"),
    }


def composition_small(tmp_path, steps: int) -> dict:
    """The composition_small experiment at its real size (conf/data/composition_small.yaml,
    conf/experiment/composition_small.yaml: vanilla 4 x 128 model, nanda optimizer, batch 512)."""
    data = {
        "task": "composition",
        "n_entities": 100,
        "n_relations": 10,
        "out_degree": 10,
        "ood_fraction": 0.05,
        "test_id_fraction": 0.1,
        "phi": 7.2,
        "hops": [2],
        "test_hops": [],
        "eval_size": 1000,
        "seed": 0,
    }
    return {
        "data": data,
        "experiment": "composition_small",
        "model": {"n_core": 4, "d_model": 128, "n_heads": 4, "d_mlp": 512},
        "optim": {"lr": 1e-3, "weight_decay": 0.1, "warmup_steps": 100, "grad_clip": 1.0},
        "train": {
            "steps": steps,
            "batch_size": 512,
            "eval_every_max": 500,
            "progress": False,
            "report": False,
        },
        "data_cache": str(tmp_path / "cache"),
    }


def rows(run: Path) -> list[dict]:
    """The metrics rows, wall time aside."""
    return [
        {k: v for k, v in json.loads(line).items() if k != "wall_time_s"}
        for line in (run / "metrics.jsonl").read_text().splitlines()
    ]


def snapshot(run: Path) -> dict:
    """Every file under a run directory with its bytes and mtime."""
    return {
        p.relative_to(run): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(run.rglob("*"))
        if p.is_file()
    }


# --- 1. resume checks the saved config -----------------------------------------------------------


def test_resume_with_a_changed_config_is_refused_and_changes_nothing(tmp_path):
    run = tmp_path / "run"
    d = tiny(tmp_path, steps=20)
    train(run_config_from_dict(d), run)
    before = snapshot(run)
    d["optim"]["lr"], d["model"]["d_mlp"], d["train"]["steps"] = 0.5, 64, 40
    with pytest.raises(ValueError) as err:
        train(run_config_from_dict(d), run, resume=True)
    msg = str(err.value)
    assert "optim.lr: 0.001 -> 0.5" in msg and "model.d_mlp: 32 -> 64" in msg, msg
    assert "train.steps" not in msg.split("Only")[0]  # an allowed change is not a refusal
    assert snapshot(run) == before and not (run / "resume_log.jsonl").exists()


def test_resume_with_more_steps_is_logged_and_config_json_stays(tmp_path, capsys):
    run = tmp_path / "run"
    d = tiny(tmp_path, steps=20)
    train(run_config_from_dict(d), run)
    config = (run / "config.json").read_bytes()
    d["train"]["steps"], d["train"]["eval_batch_size"] = 30, 7
    longer = train(run_config_from_dict(d), run, resume=True)
    assert longer["steps"] == 30 and longer["budget_steps"] == 30
    assert (run / "config.json").read_bytes() == config  # written once, when the run started
    [event] = [json.loads(line) for line in (run / "resume_log.jsonl").read_text().splitlines()]
    assert event["step"] == 20 and event["code_version"] and event["time"]
    assert event["changed"] == {
        "train.steps": {"old": 20, "new": 30},
        "train.eval_batch_size": {"old": 4096, "new": 7},
    }
    # The extended run is finished for 30 steps: a relaunch skips it and logs nothing.
    capsys.readouterr()
    assert train(run_config_from_dict(d), run, resume=True) == longer
    assert "already finished" in capsys.readouterr().out
    assert len((run / "resume_log.jsonl").read_text().splitlines()) == 1


def test_a_run_from_before_the_new_keys_still_resumes(tmp_path):
    # config.json of an older run lacks train.deterministic & co., summary.json lacks budget_steps:
    # keys at their defaults are no change, and the budget comes from config.json.
    run = tmp_path / "run"
    d = tiny(tmp_path, steps=20)
    train(run_config_from_dict(d), run)
    saved = json.loads((run / "config.json").read_text())
    for k in ("deterministic", "restart_if_damaged"):
        del saved["train"][k]
    del saved["dataset_hash"]
    (run / "config.json").write_text(json.dumps(saved))
    summary = json.loads((run / "summary.json").read_text())
    del summary["budget_steps"]
    (run / "summary.json").write_text(json.dumps(summary))
    assert train(run_config_from_dict(d), run, resume=True) == summary  # finished: skipped
    d["train"]["deterministic"] = False  # not the default: a logged change, still allowed
    d["train"]["steps"] = 30
    assert train(run_config_from_dict(d), run, resume=True)["steps"] == 30
    event = json.loads((run / "resume_log.jsonl").read_text())
    assert event["changed"] == {
        "train.steps": {"old": 20, "new": 30},
        "train.deterministic": {"old": None, "new": False},
    }


def test_config_json_records_code_version_dataset_hash_and_determinism(tmp_path):
    run = tmp_path / "run"
    d = tiny(tmp_path, steps=5)
    cfg = run_config_from_dict(d)
    train(cfg, run)
    saved = json.loads((run / "config.json").read_text())
    ds = load_or_build(cfg.data, cfg.data_cache)
    expected = ds.content_hash() if callable(ds.content_hash) else ds.content_hash
    assert saved["dataset_hash"] == expected and len(expected) == 64
    assert saved["code_version"] and saved["train"]["deterministic"] is True


# --- 2. one process per run directory -----------------------------------------------------------


def test_a_second_process_into_one_run_dir_is_refused(tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        run.mkdir()
        lock = {"pid": holder.pid, "host": socket.gethostname()}
        (run / ".lock").write_text(json.dumps(lock))
        with pytest.raises(
            RunLockedError, match=f"PID {holder.pid} on host {socket.gethostname()}"
        ):
            train(run_config_from_dict(tiny(tmp_path, steps=5)), run)
        assert sorted(p.name for p in run.iterdir()) == [".lock"]
        assert json.loads((run / ".lock").read_text()) == lock  # the holder's lock is kept
    finally:
        holder.kill()
        holder.wait()
    # in one process too, and another host's lock is never second-guessed
    other = tmp_path / "other"
    path = acquire(other)
    with pytest.raises(RunLockedError, match=f"PID {os.getpid()}"):
        acquire(other)
    release(path)
    path.write_text(json.dumps({"pid": 999_999_999, "host": "elsewhere"}))
    with pytest.raises(RunLockedError, match="elsewhere"):
        acquire(other)


def test_a_stale_lock_is_taken_over_and_every_lock_is_released(tmp_path):
    run = tmp_path / "run"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run.mkdir()
    (run / ".lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    with pytest.warns(UserWarning, match=f"stale lock of PID {dead.pid}"):
        train(run_config_from_dict(tiny(tmp_path, steps=5)), run)
    assert (run / "summary.json").exists() and not (run / ".lock").exists()
    with pytest.raises(FileExistsError):  # a failing start releases the lock too
        train(run_config_from_dict(tiny(tmp_path, steps=5)), run)
    assert not (run / ".lock").exists()


# --- 4. no resume without a readable checkpoint ---------------------------------------------------


def test_resume_with_every_checkpoint_damaged_stops_and_names_them(tmp_path):
    run = tmp_path / "run"
    d = tiny(tmp_path, steps=20)
    train(run_config_from_dict(d), run)
    first = rows(run)
    steps = list_checkpoints(run)
    assert len(steps) >= 3
    for s in steps:  # truncated weights, all of them
        f = run / "checkpoints" / f"step_{s:08d}.safetensors"
        f.write_bytes(f.read_bytes()[:100])
    (run / "summary.json").unlink()  # an interrupted run
    before = snapshot(run)
    with pytest.raises(RuntimeError, match="every checkpoint is damaged") as err:
        train(run_config_from_dict(d), run, resume=True)
    for s in steps:
        assert f"step_{s:08d}.json" in str(err.value) and "sha256" in str(err.value)
    assert "restart_if_damaged" in str(err.value) and snapshot(run) == before
    # The explicit option starts over, keeps the damaged files aside, logs the restart.
    d["train"]["restart_if_damaged"] = True
    with pytest.warns(UserWarning, match="restarting"):
        train(run_config_from_dict(d), run, resume=True)
    assert rows(run) == first and list_checkpoints(run) == steps
    assert len(list((run / "checkpoints" / "damaged").glob("*.safetensors"))) == 2 * len(steps)
    event = json.loads((run / "resume_log.jsonl").read_text())
    assert event["step"] == 0 and "every checkpoint is damaged" in event["restarted_from_scratch"]


def test_resume_of_a_run_without_checkpoints_stops(tmp_path):
    run = tmp_path / "run"
    d = tiny(tmp_path, steps=20)
    train(run_config_from_dict(d), run)
    for f in (run / "checkpoints").iterdir():
        f.unlink()
    (run / "summary.json").unlink()
    with pytest.raises(RuntimeError, match=r"holds \d+ metrics rows but no checkpoint"):
        train(run_config_from_dict(d), run, resume=True)


# --- 5. non-finite gradients and losses ---------------------------------------------------------


def inject(monkeypatch, at_step: int, what: str):
    """Make step `at_step` produce a NaN gradient (with a finite loss) or a NaN loss."""
    real, calls = train_mod.depth_loss, []

    def depth_loss(model, *args):
        loss, share = real(model, *args)
        calls.append(1)
        if len(calls) - 1 == at_step:
            if what == "loss":
                return loss * float("nan"), share
            p = next(model.parameters())
            handle = p.register_hook(
                lambda g: (handle.remove(), torch.full_like(g, float("nan")))[1]
            )
        return loss, share

    monkeypatch.setattr(train_mod, "depth_loss", depth_loss)


def test_a_nan_gradient_is_never_checkpointed(tmp_path, monkeypatch):
    run = tmp_path / "run"
    d = tiny(tmp_path)
    ckpts = log_schedule(60, 5, 10, 5)
    bad = ckpts[2] - 1  # the update that a checkpoint would save right after
    inject(monkeypatch, bad, "grad")
    with pytest.raises(
        FloatingPointError, match=f"gradients became non-finite at step {bad}"
    ) as err:
        train(run_config_from_dict(d), run)
    assert f"step_{ckpts[1]:08d}.json" in str(err.value)  # the last good checkpoint, named
    assert list_checkpoints(run) == ckpts[:2]
    for f in (run / "checkpoints").glob("*.safetensors"):
        assert all(v.isfinite().all() for v in load_file(f).values() if v.is_floating_point()), f
    assert not (run / ".lock").exists()


def test_a_nan_loss_names_what_exists(tmp_path, monkeypatch):
    inject(monkeypatch, 0, "loss")
    with pytest.raises(FloatingPointError, match="no checkpoint was written yet"):
        train(run_config_from_dict(tiny(tmp_path)), tmp_path / "run")


# --- 7. progress ----------------------------------------------------------------------------------


def test_progress_names_the_run_first_and_shows_no_eta_when_stopping_at_grok(
    tmp_path, capsys, monkeypatch
):
    import grokloop.train.progress as progress

    monkeypatch.setattr(progress, "on_terminal", lambda: True)  # the bar is for terminals only
    run = tmp_path / "run"
    train(run_config_from_dict(tiny(tmp_path, steps=20, progress=True, stop_at_grok="test")), run)
    out, err = capsys.readouterr()
    assert out.splitlines()[0] == f"run directory: {run.resolve()}"
    bars = [line for line in err.replace("\r", "\n").splitlines() if "steps" in line]
    assert bars and all("stops at grok" in b and "<" not in b for b in bars), bars
    train(run_config_from_dict(tiny(tmp_path, steps=20, progress=True)), tmp_path / "run2")
    assert "<" in capsys.readouterr().err  # the normal bar, with its ETA


def test_progress_off_a_terminal_is_a_line_per_evaluation(tmp_path, capsys):
    # capsys is no terminal: no bar (no carriage returns), a flushed line per evaluation
    train(run_config_from_dict(tiny(tmp_path, steps=20, progress=True)), tmp_path / "run")
    out, err = capsys.readouterr()
    lines = [line for line in out.splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in lines] == ["5/20", "10/20", "15/20", "20/20"], out
    assert all("loss " in line and "test " in line and "steps/s" in line for line in lines)
    assert "ETA" in lines[0] and "ETA" not in lines[-1] and "\r" not in out + err
    train(run_config_from_dict(tiny(tmp_path, steps=20, stop_at_grok="test")), tmp_path / "run2")
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
    assert "ETA <= " in lines[0]  # progress=false still prints lines; the ETA is a bound


# --- 8. adaptive summary writes under runs/ ------------------------------------------------------


def test_adaptive_summary_writes_under_runs_by_default(tmp_path, monkeypatch):
    from reports import adaptive as A
    from reports.adaptive import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(A, "load_halting", lambda d: {})
    monkeypatch.setattr(A, "build", lambda runs: {"rows": []})
    monkeypatch.setattr(A, "markdown", lambda s: "md")
    monkeypatch.setattr(A, "figures_html", lambda s: "html")
    main(["some_run"])
    assert (tmp_path / "runs" / "adaptive_summary" / "summary.md").read_text() == "md"
    assert not (tmp_path / "docs").exists()
    main(["some_run", f"out={tmp_path / 'elsewhere'}"])
    assert (tmp_path / "elsewhere" / "summary.md").exists()


# --- 3. determinism at the real size --------------------------------------------------------------


@pytest.mark.slow  # ~25 s: two runs of the real composition_small shape
def test_composition_small_is_deterministic_with_two_threads(tmp_path):
    d = composition_small(tmp_path, steps=50)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for name in ("a", "b"):
            train(run_config_from_dict(d), tmp_path / name)
    finally:
        torch.set_num_threads(threads)
    assert rows(tmp_path / "a") == rows(tmp_path / "b") and len(rows(tmp_path / "a")) >= 5
    weights = [load_file(tmp_path / n / "checkpoints" / "step_00000050.safetensors") for n in "ab"]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


@pytest.mark.slow  # 17 s: two short training runs, run by CI's slow pass
def test_determinism_benchmark_smoke(tmp_path):
    out = tmp_path / "determinism.json"
    bench = Path(__file__).resolve().parent.parent / "bench" / "bench_determinism.py"
    subprocess.run(
        [sys.executable, str(bench), "--smoke", "--threads", "1", "--out", str(out)],
        check=True,
        capture_output=True,
    )
    result = json.loads(out.read_text())
    assert result["smoke"] and all(v > 0 for v in result["steps_per_s"].values())
    assert result["machine"]["cpu"] and result["machine"]["torch"] == torch.__version__


def test_a_sweep_says_job_k_of_n_and_leaves_no_empty_job_dirs(tmp_path, capsys):
    from grokloop.train.__main__ import main

    main(
        [
            "--multirun",
            "debug=tiny",
            "seed=0,1",
            "train.steps=3",
            f"hydra.sweep.dir={tmp_path}/sw",
            f"out_dir={tmp_path}/runs/s${{seed}}",
        ]
    )
    out = capsys.readouterr().out
    assert "sweep job 1 of 2: debug=tiny,seed=0" in out and "sweep job 2 of 2" in out
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["s0", "s1"]
    # Hydra records the sweep (multirun.yaml) and makes no numbered job directories
    assert [p.name for p in (tmp_path / "sw").iterdir()] == ["multirun.yaml"]
    # Several seeds in one process, one run directory each, each what its own run gives (on
    # this CPU batching seeds cannot pay: bench/bench_seeds.py), metrics for metrics
    main(["debug=tiny", "seed=1", "train.steps=3", f"out_dir={tmp_path}/alone"])
    rows = lambda d: [
        {k: v for k, v in json.loads(line).items() if k != "wall_time_s"}
        for line in (d / "metrics.jsonl").read_text().splitlines()
    ]
    assert (
        rows(tmp_path / "runs" / "s1") == rows(tmp_path / "alone") != rows(tmp_path / "runs" / "s0")
    )
