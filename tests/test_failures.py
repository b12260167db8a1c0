"""Every failure is one line (issue 32): a scripted list of bad inputs and faults, each of which
must end in exactly one `error: ...` line on stderr naming the problem, a non-zero exit status,
no traceback, and nothing lost (the files it touched unchanged). Then what recovers from a
failure: a failed start is replaced, a torn metrics line is dropped, a run stopped by SIGTERM or
Ctrl-C resumes to the same weights, a full disk loses nothing; progress lines in a redirected
log; the trackers; sweeps extended with resume=true and counted right; --help everywhere.

The commands run in this process (their `main(argv)`, as the console script calls them), on
debug=tiny (a 16-wide model, 20 steps), so the list stays fast; the redirected log (~6 s) and the
SIGTERM resume (slow) start real processes, so the line and exit status are a shell's.
"""

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import grokloop.train.loop as loop
from grokloop.checkpoint import list_checkpoints

ROOT = Path(__file__).resolve().parent.parent


def train_main(argv):
    from grokloop.train.__main__ import main

    main(argv)


def _readme_bad_marker(c):
    md = c.tmp / "notes.md"
    md.write_text(
        "<!-- results results/nope/summary.json rows=model columns=split -->\n<!-- /results -->\n"
    )
    return readme_main, [str(md)], md


def readme_main(argv):
    from reports.readme import main

    main(argv)


def probes_main(argv):
    from probes.__main__ import main

    main(argv)


def reports_main(argv):
    from reports.__main__ import main

    main(argv)


def datagen_main(argv):
    from datagen.__main__ import main

    main(argv)


def console_main(argv):
    from grokloop.__main__ import main

    main(argv)


def snapshot(path: Path | None) -> dict:
    """Every file under `path` with its bytes and mtime (nothing lost: nothing changed)."""
    if path is None or not path.exists():
        return {}
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in files}


def one_error_line(capsys, main, argv) -> tuple[int, str]:
    """Run a command that must fail: (its exit status, its one error line)."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err, err
    lines = [line for line in err.splitlines() if line and not line.startswith("warning: ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert exit_.value.code not in (0, None), exit_.value.code
    return exit_.value.code, lines[0]


# --- shared inputs, built once ---------------------------------------------------------------


@pytest.fixture(scope="session")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def finished(tmp_path_factory, cache) -> Path:
    """A finished debug=tiny run (20 steps, checkpoints at 5, 10, 15, 20); copy before changing."""
    run = tmp_path_factory.mktemp("finished") / "run"
    train_main(["debug=tiny", f"data_cache={cache}", f"out_dir={run}"])
    return run


@pytest.fixture(scope="session")
def grokked(tmp_path_factory) -> Path:
    """A small composition dataset in the GrokkedTransformer format (train/valid/test/vocab)."""
    from datagen import build_dataset, data_config_from_dict
    from datagen.grokked_format import write_grokked

    cfg = data_config_from_dict(
        {
            "task": "composition",
            "n_entities": 30,
            "n_relations": 4,
            "out_degree": 4,
            "phi": 3.0,
            "eval_size": 50,
        }
    )
    return write_grokked(build_dataset(cfg), tmp_path_factory.mktemp("grokked") / "folder")


@pytest.fixture
def tiny(cache, tmp_path) -> list[str]:
    return ["debug=tiny", f"data_cache={cache}", f"out_dir={tmp_path / 'run'}"]


def copy_run(finished: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    return run


def grokked_copy(grokked: Path, tmp_path: Path, change=None) -> Path:
    folder = tmp_path / "grokked"
    shutil.copytree(grokked, folder)
    if change:
        change(folder)
    return folder


def truncate(path: Path, keep: float = 0.5) -> None:
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * keep)])


# --- the list: (id, how to set it up, what the line must say, the exit status) ----------------
# Each setup gets a Ctx and returns (command, argv, the path that must be unchanged or None).


class Ctx:
    def __init__(self, tmp_path, cache, finished, grokked, monkeypatch):
        self.tmp, self.cache, self.finished, self.grokked = tmp_path, cache, finished, grokked
        self.mp = monkeypatch
        self.out = tmp_path / "run"
        self.tiny = ["debug=tiny", f"data_cache={cache}", f"out_dir={self.out}"]

    def run(self) -> Path:
        return copy_run(self.finished, self.tmp)

    def train(self, *argv, watch=None):
        return train_main, [*self.tiny, *argv], watch

    def grokked_train(self, change):
        folder = grokked_copy(self.grokked, self.tmp, change)
        return self.train("data=grokked", f"data.path={folder}", watch=folder)


def _locked(c: Ctx):
    run = c.run()
    (run / "summary.json").unlink()  # a run another process is training
    (run / ".lock").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    return c.train("resume=true", watch=run)


def _damaged(c: Ctx):
    run = c.run()
    (run / "summary.json").unlink()  # an interrupted run
    for f in (run / "checkpoints").glob("step_*[0-9].safetensors"):
        truncate(f)
    return c.train("resume=true", watch=run)


def _read_only(c: Ctx):
    run = c.run()
    (run / "summary.json").unlink()
    real = os.open

    def deny(path, *args, **kw):  # root ignores chmod: the file system refuses instead
        if str(path).startswith(str(run)):
            raise PermissionError(errno.EROFS, "Read-only file system", str(path))
        return real(path, *args, **kw)

    c.mp.setattr(os, "open", deny)
    return c.train("resume=true", "train.steps=30", watch=run)


def _disk_full(c: Ctx):
    c.mp.setattr("grokloop.checkpoint.save_file", full_disk_after(2))
    return c.train()


def full_disk_after(n_files: int):
    """A safetensors save_file that fills the disk after `n_files` files (one checkpoint)."""
    from safetensors.torch import save_file

    calls = []

    def save(tensors, path):
        calls.append(path)
        if len(calls) > n_files:
            raise OSError(errno.ENOSPC, "No space left on device", path)
        save_file(tensors, path)

    return save


def _bad_cache(c: Ctx):
    cache = c.tmp / "cache"
    shutil.copytree(c.cache, cache)
    [manifest] = cache.glob("modular-*/manifest.json")
    truncate(manifest)
    return train_main, ["debug=tiny", f"data_cache={cache}", f"out_dir={c.out}"], cache


def _bank(c: Ctx, manifest: str | None):
    bank = c.tmp / "bank"
    bank.mkdir()
    if manifest is not None:
        (bank / "manifest.json").write_text(manifest)
    return c.train("model.memory=facts", f"train.bank={bank}", watch=bank)


def _not_installed(c: Ctx):
    import importlib.util

    real = importlib.util.find_spec
    c.mp.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a)
    )
    return c.train("train.logger=mlflow")


def _inject(c: Ctx, name: str, fn, *argv):
    c.mp.setattr(loop, name, fn)
    return c.train(*argv)


def signal_at_step(monkeypatch, signum: int, at: int = 7) -> None:
    """Send this process `signum` during step `at` + 1 (the loop stops after it: `at` + 1)."""
    real = loop.train_step

    def step(state, *args):
        if state.step == at:
            os.kill(os.getpid(), signum)
        return real(state, *args)

    monkeypatch.setattr(loop, "train_step", step)


def _signal_at_step(c: Ctx, signum: int):
    signal_at_step(c.mp, signum)
    return c.train()


def _signal_in_prepare(c: Ctx):
    real = loop.prepare

    def prepare(cfg, *args):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(cfg, *args)

    return _inject(c, "prepare", prepare)


def _raise(e: BaseException):
    def fn(*args, **kw):
        raise e

    return fn


def _sweep_steps(c: Ctx):
    c.mp.chdir(c.tmp)
    return (
        train_main,
        [
            "--multirun",
            "debug=tiny",
            "sweep=seeds",
            "seed=0",
            "train.steps=3,4",
            f"data_cache={c.cache}",
            f"hydra.sweep.dir={c.tmp / 'sw'}",
        ],
        None,
    )


def _probes_damaged(c: Ctx):
    run = c.run()
    for f in (run / "checkpoints").glob("step_*[0-9].safetensors"):
        truncate(f)
    return probes_main, [f"run_dir={run}", "probe=logit_lens"], run


def _probes_one_damaged(c: Ctx):
    run = c.run()
    truncate(sorted((run / "checkpoints").glob("step_*[0-9].safetensors"))[0])
    return probes_main, [f"run_dir={run}", "probe=logit_lens", "checkpoints=all"], run


def _reports(c: Ctx, change):
    run = c.run()
    change(run)
    return reports_main, [f"run_dir={run}", f"out={c.tmp / 'report.html'}"], run


def _metrics_damaged_inside(run: Path):
    lines = (run / "metrics.jsonl").read_text().splitlines()
    lines[1] = lines[1][:20]
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")


CASES = [
    # composing the config: a wrong name, key, type or value
    (
        "unknown experiment",
        lambda c: c.train("experiment=nope"),
        "experiment=nope: no such config",
        2,
    ),
    ("unknown key", lambda c: c.train("model.d_modle=3"), "model.d_modle: unknown option", 2),
    ("wrong type", lambda c: c.train("train.steps=abc"), "train.steps=abc", 2),
    (
        "n_heads=0 (was ZeroDivisionError)",
        lambda c: c.train("model.n_heads=0"),
        "model.n_heads=0 must be at least 1",
        2,
    ),
    (
        "d_model=0 names d_model, not d_mlp",
        lambda c: c.train("model.d_model=0"),
        "model.d_model=0 must be at least 1",
        2,
    ),
    ("n_heads not dividing d_model", lambda c: c.train("model.n_heads=3"), "not divisible", 2),
    (
        "eval_batch_size=0 (was a torch error)",
        lambda c: c.train("train.eval_batch_size=0"),
        "train.eval_batch_size=0 must be at least 1",
        2,
    ),
    (
        "eval_every_min=0",
        lambda c: c.train("train.eval_every_min=0"),
        "train.eval_every_min=0 must be at least 1",
        2,
    ),
    ("steps=0", lambda c: c.train("train.steps=0"), "train.steps=0 must be at least 1", 2),
    ("not a device", lambda c: c.train("train.device=bogus"), "train.device='bogus'", 2),
    (
        "a device this machine lacks",
        lambda c: c.train("train.device=cuda:99"),
        "train.device=cuda:99",
        2,
    ),
    ("unknown logger", lambda c: c.train("train.logger=foo"), "train.logger='foo'", 2),
    ("logger not installed", _not_installed, "pip install 'grokloop[mlflow]'", 2),
    ("unknown stop split", lambda c: c.train("train.stop_at_grok=nope"), "names 'nope'", 2),
    (
        "init_from without checkpoints",
        lambda c: c.train("train.init_from=/nonexistent/run"),
        "holds no checkpoint to start from",
        2,
    ),
    (
        "no out_dir",
        lambda c: (train_main, ["debug=tiny", "out_dir=???"], None),
        "out_dir is required",
        2,
    ),
    # data
    (
        "bad data.path",
        lambda c: c.train("data=grokked", "data.path=/nonexistent"),
        "/nonexistent: no such folder",
        2,
    ),
    (
        "truncated test.json",
        lambda c: c.grokked_train(lambda f: truncate(f / "test.json")),
        "test.json is not valid JSON",
        2,
    ),
    (
        "empty train.json",
        lambda c: c.grokked_train(lambda f: (f / "train.json").write_text("")),
        "train.json is empty",
        2,
    ),
    (
        "train.json not a list",
        lambda c: c.grokked_train(lambda f: (f / "train.json").write_text("{}")),
        "not the list of records",
        2,
    ),
    (
        "no test.json nor valid.json",
        lambda c: c.grokked_train(
            lambda f: [(f / n).unlink() for n in ("test.json", "valid.json")]
        ),
        "no split to evaluate",
        2,
    ),
    ("damaged dataset cache", _bad_cache, "manifest.json is not valid JSON", 2),
    (
        "data.p=1 (datagen)",
        lambda c: (datagen_main, ["data=modular", "data.p=1"], None),
        "data.p=1 must be at least 2",
        2,
    ),
    # banks
    (
        "truncated bank manifest",
        lambda c: _bank(c, '{"format": "grokloop-ba'),
        "manifest.json is not valid JSON",
        2,
    ),
    ("not a bank", lambda c: _bank(c, None), "is not a bank (no manifest.json)", 2),
    ("bank of another format", lambda c: _bank(c, '["a"]'), "has format None", 2),
    # the run directory
    ("a run without resume=true", lambda c: c.train(watch=c.run()), "already holds a run", 2),
    (
        "resume changing optim.lr",
        lambda c: c.train("resume=true", "optim.lr=0.5", watch=c.run()),
        "optim.lr: 0.001 -> 0.5",
        2,
    ),
    ("locked, resume=true", _locked, "is in use by PID", 1),
    ("every checkpoint damaged", _damaged, "every checkpoint is damaged", 1),
    ("read-only run directory", _read_only, "not writable here", 1),
    (
        "out_dir is a file",
        lambda c: (train_main, [*c.tiny[:2], f"out_dir={c.finished / 'config.json'}"], c.finished),
        "file exists",
        2,
    ),
    ("sweeping the step budget", _sweep_steps, "train.steps cannot be swept here", 2),
    # while it runs
    ("NaN at step 1", lambda c: c.train("optim.lr=1e12"), "loss became nan at step 1", 1),
    ("disk full at a checkpoint", _disk_full, "no space left on device", 1),
    (
        "Ctrl-C before training",
        lambda c: _inject(c, "prepare", _raise(KeyboardInterrupt())),
        "interrupted (Ctrl-C)",
        130,
    ),
    ("SIGTERM before training", _signal_in_prepare, "nothing was checkpointed", 143),
    (
        "SIGINT while training",
        lambda c: _signal_at_step(c, signal.SIGINT),
        "stopped by Ctrl-C (SIGINT) at step 8 of 20",
        130,
    ),
    (
        "SIGTERM while training",
        lambda c: _signal_at_step(c, signal.SIGTERM),
        "stopped by SIGTERM at step 8 of 20",
        143,
    ),
    (
        "a bug of ours",
        lambda c: _inject(c, "evaluate", lambda *a: None),
        "internal error, TypeError",
        1,
    ),
    (
        "an error inside torch",
        lambda c: _inject(c, "evaluate", lambda *a: torch.ones(3).split(0)),
        "raised in torch",
        1,
    ),
    # the other commands
    (
        "probes: no such run",
        lambda c: (probes_main, ["run_dir=/nonexistent/run"], None),
        "/nonexistent/run",
        2,
    ),
    ("probes: every checkpoint damaged", _probes_damaged, "train it again", 2),
    ("probes: one checkpoint damaged", _probes_one_damaged, "checkpoints=[", 2),
    (
        "probes: unknown split",
        lambda c: (probes_main, [f"run_dir={c.run()}", "probe=logit_lens", "split=[nope]"], None),
        "nope",
        2,
    ),
    (
        "reports: not a run",
        lambda c: (reports_main, [f"run_dir={c.tmp}"], None),
        "not a run directory",
        2,
    ),
    (
        "reports: truncated config.json",
        lambda c: _reports(c, lambda r: truncate(r / "config.json")),
        "config.json is not valid JSON",
        2,
    ),
    (
        "reports: a damaged metrics line",
        lambda c: _reports(c, _metrics_damaged_inside),
        "metrics.jsonl: line 2 is not JSON",
        2,
    ),
    ("no such command", lambda c: (console_main, ["tarin"], None), "not a grokloop command", 2),
    (
        "reports.readme: no such file",
        lambda c: (readme_main, [str(c.tmp / "nope.md")], None),
        "nope.md: no such file",
        2,
    ),
    (
        "reports.readme: a marker naming no study",
        lambda c: _readme_bad_marker(c),
        "fix the marker",
        2,
    ),
]


@pytest.mark.parametrize("setup,needle,status", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_every_failure_is_one_line_and_loses_nothing(
    setup, needle, status, tmp_path, cache, finished, grokked, monkeypatch, capsys
):
    ctx = Ctx(tmp_path, cache, finished, grokked, monkeypatch)
    main, argv, watched = setup(ctx)
    before = snapshot(watched)
    capsys.readouterr()
    code, line = one_error_line(capsys, main, argv)
    assert needle in line and code == status, (code, line)
    assert snapshot(watched) == before, "a failure changed files it should not"
    lock = ctx.out / ".lock"
    assert not lock.exists() or lock in before, "the lock outlived the failure"


def test_the_list_is_long_enough():
    assert len(CASES) >= 30


def test_derived_keys_are_named_as_the_user_typed_them(tmp_path, cache, capsys):
    _, line = one_error_line(
        capsys, train_main, ["debug=tiny", "model.d_model=0", f"out_dir={tmp_path / 'r'}"]
    )
    assert "d_mlp" not in line and "d_head" not in line


def test_grokloop_debug_shows_the_traceback(tiny, monkeypatch):
    monkeypatch.setenv("GROKLOOP_DEBUG", "1")
    with pytest.raises(FloatingPointError, match="loss became nan"):
        train_main([*tiny, "optim.lr=1e12"])


# --- recovering -------------------------------------------------------------------------------


def rows(run: Path) -> list[dict]:
    return [
        {k: v for k, v in json.loads(line).items() if k != "wall_time_s"}
        for line in (run / "metrics.jsonl").read_text().splitlines()
    ]


def final_weights(run: Path) -> dict:
    return load_file(run / "checkpoints" / f"step_{list_checkpoints(run)[-1]:08d}.safetensors")


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = final_weights(a), final_weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("resume", [False, True])
def test_a_failed_start_does_not_hold_its_directory(tiny, tmp_path, finished, capsys, resume):
    run = tmp_path / "run"
    one_error_line(capsys, train_main, [*tiny, "optim.lr=1e12"])
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "metrics.jsonl"]
    train_main([*tiny] + (["resume=true"] if resume else []))
    out = capsys.readouterr().out
    assert "holds a run that stopped before its first checkpoint; replacing it" in out
    assert rows(run) == rows(finished) and not (run / "resume_log.jsonl").exists()
    assert json.loads((run / "config.json").read_text())["optim"]["lr"] == 0.001


def test_a_torn_metrics_line_is_dropped_on_resume_and_by_readers(tmp_path, cache, finished):
    from reports.load import read_run

    run = copy_run(finished, tmp_path)
    (run / "summary.json").unlink()  # killed while appending the row of step 20
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 25, "loss/tr')
    with pytest.warns(UserWarning, match="torn last line"):
        assert len(read_run(run).metrics) == len(rows(finished))
    with pytest.warns(UserWarning, match="torn last line"):
        train_main(
            ["debug=tiny", f"data_cache={cache}", f"out_dir={run}", "resume=true", "train.steps=30"]
        )
    assert rows(run)[: len(rows(finished))] == rows(finished) and rows(run)[-1]["step"] == 30


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_run_stopped_by_a_signal_resumes_to_the_same_weights(
    tiny, tmp_path, finished, monkeypatch, capsys, signum
):
    run = tmp_path / "run"
    signal_at_step(monkeypatch, signum, at=12)
    code, line = one_error_line(capsys, train_main, tiny)
    assert code == 128 + signum and "at step 13 of 20" in line and "resume=true" in line
    assert 13 in list_checkpoints(run) and not (run / ".lock").exists()
    monkeypatch.undo()
    train_main([*tiny, "resume=true"])
    assert rows(run) == rows(finished) and same_weights(run, finished)


def test_a_schedulers_warning_signal_checkpoints_then_goes_to_its_handler(
    tiny, tmp_path, monkeypatch
):
    # submitit's SIGUSR2 handler requeues the job and exits; training checkpoints first
    from grokloop.config import run_config_from_dict
    from grokloop.train import train

    calls = []

    def submitit(signum, frame):
        calls.append(list_checkpoints(tmp_path / "run"))
        raise SystemExit(-1)

    previous = signal.signal(signal.SIGUSR2, submitit)
    try:
        signal_at_step(monkeypatch, signal.SIGUSR2)
        cfg = {
            "data": {"task": "modular", "p": 11},
            "model": {"d_model": 16, "n_heads": 2},
            "optim": {},
            "train": {
                "steps": 20,
                "eval_every_min": 5,
                "eval_every_max": 10,
                "checkpoint_every_max": 10,
                "progress": False,
                "report": False,
            },
        }
        with pytest.raises(SystemExit):
            train(run_config_from_dict(cfg), tmp_path / "run")
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert calls == [[5, 8]] and not (tmp_path / "run" / ".lock").exists()


def test_a_folder_without_test_json_warns(grokked, tmp_path):
    from datagen.grokked_format import read_grokked

    folder = grokked_copy(grokked, tmp_path, lambda f: (f / "test.json").unlink())
    with pytest.warns(
        UserWarning, match="no test.json: valid.json's test_inferred_ood is the only split"
    ):
        assert read_grokked(folder).eval_splits == ["test_inferred_ood"]


def test_a_full_disk_loses_nothing(tiny, tmp_path, finished, monkeypatch, capsys):
    run = tmp_path / "run"
    monkeypatch.setattr("grokloop.checkpoint.save_file", full_disk_after(2))
    one_error_line(capsys, train_main, tiny)
    assert list_checkpoints(run) == [5] and not list((run / "checkpoints").glob("*.tmp*"))
    monkeypatch.undo()
    train_main([*tiny, "resume=true"])
    assert rows(run) == rows(finished) and same_weights(run, finished)


@pytest.mark.slow  # ~5 s: a real process read while it runs; fast: the SIGTERM resume tests
def test_a_redirected_log_shows_progress_before_the_run_ends_and_sigterm_stops_it(tmp_path, cache):
    run, log = tmp_path / "run", tmp_path / "run.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "grokloop.train",
                "debug=tiny",
                "train.steps=100000",
                f"data_cache={cache}",
                f"out_dir={run}",
            ],
            stdout=out,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
            env=os.environ | {"OMP_NUM_THREADS": "1"},
        )
    deadline = time.time() + 60
    while time.time() < deadline and "step 20/" not in log.read_text():
        time.sleep(0.05)
    assert proc.poll() is None and "step 10/100000  loss" in log.read_text()  # while it runs
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and err.startswith("error: stopped by SIGTERM at step "), err
    assert len(err.splitlines()) == 1 and not (run / ".lock").exists()
    step = int(err.split("at step ")[1].split()[0])
    assert step in list_checkpoints(run)


@pytest.mark.slow  # ~15 s: three training processes
def test_sigterm_at_a_random_step_resumes_to_the_same_final_weights(tmp_path, cache):
    import random

    cmd = [
        sys.executable,
        "-m",
        "grokloop.train",
        "debug=tiny",
        "train.steps=400",
        "train.eval_every_max=20",
        "train.checkpoint_every_max=40",
        "train.batch_size=16",
        "model.dropout=0.1",
        f"data_cache={cache}",
    ]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    subprocess.run(
        cmd + [f"out_dir={tmp_path / 'full'}"],
        check=True,
        capture_output=True,
        env=env,
        cwd=tmp_path,
    )
    stopped = tmp_path / "stopped"
    proc = subprocess.Popen(
        cmd + [f"out_dir={stopped}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    target = random.Random(time.time_ns()).randrange(30, 300)
    for line in proc.stdout:  # one line per evaluation: stop once past the target step
        if line.startswith("step ") and int(line.split()[1].split("/")[0]) >= target:
            proc.send_signal(signal.SIGTERM)
            break
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, (target, err)
    step = int(err.split("at step ")[1].split()[0])
    assert step in list_checkpoints(stopped) and step < 400
    subprocess.run(
        cmd + [f"out_dir={stopped}", "resume=true"],
        check=True,
        capture_output=True,
        env=env,
        cwd=tmp_path,
    )
    assert rows(stopped) == rows(tmp_path / "full"), target
    assert same_weights(stopped, tmp_path / "full"), target


# --- trackers -----------------------------------------------------------------------------------


def test_tensorboard_logs_the_metrics_config_and_code_version(tiny, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train_main([*tiny, "train.logger=tensorboard"])
    run = tmp_path / "run"
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"tensors": 0}).Reload()
    want = rows(run)
    for key in ("loss/train", "acc/test", "weight_norm"):
        got = [(e.step, e.value) for e in events.Scalars(key)]
        assert got == [(r["step"], pytest.approx(r[key], rel=1e-6)) for r in want], key
    tags = events.Tags()["tensors"]
    assert {"config/text_summary", "code_version/text_summary"} <= set(tags), tags


def wandb_records(run: Path) -> tuple[list[dict], dict]:
    """(history rows, config) of an offline W&B run, read from its .wandb file: a LevelDB-style
    log (a 7-byte header, 32 KiB blocks of records with a 7-byte header each) of protobufs."""
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    [path] = run.glob("wandb/offline-run-*/run-*.wandb")
    data, pos, buf, history, config = path.read_bytes(), 7, b"", [], {}
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7]) if left >= 7 else (0, 0, 0)
        if left < 7 or kind == 0:
            pos += left
            continue
        buf, pos = buf + data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # a whole record, or the last piece of one
            record = pb.Record()
            record.ParseFromString(buf)
            buf = b""
            if record.WhichOneof("record_type") == "history":
                history.append(
                    {
                        i.key or "/".join(i.nested_key): json.loads(i.value_json)
                        for i in record.history.item
                    }
                )
            if record.WhichOneof("record_type") == "run":
                config |= {i.key: json.loads(i.value_json) for i in record.run.config.update}
    return history, config


def test_wandb_offline_logs_the_metrics_config_and_code_version(tiny, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    train_main([*tiny, "train.logger=wandb"])
    run = tmp_path / "run"
    deadline = time.time() + 30  # wandb-core may still be writing the file after finish()
    while len(history := wandb_records(run)[0]) < len(rows(run)) and time.time() < deadline:
        time.sleep(0.2)
    config = wandb_records(run)[1]
    assert [h["step"] for h in history] == [r["step"] for r in rows(run)]
    assert all(h["acc/test"] == pytest.approx(r["acc/test"]) for h, r in zip(history, rows(run)))
    saved = json.loads((run / "config.json").read_text())
    assert config["code_version"] == saved["code_version"] and config["model"] == saved["model"]


def test_mlflow_logs_the_metrics_and_a_resume_continues_its_run(tiny, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    import mlflow

    train_main([*tiny, "train.logger=mlflow", "train.steps=10"])
    train_main([*tiny, "train.logger=mlflow", "resume=true"])
    run = tmp_path / "run"
    mlflow.set_tracking_uri((run / "mlruns").resolve().as_uri())
    [found] = mlflow.search_runs(search_all_experiments=True, output_format="list")
    history = mlflow.MlflowClient().get_metric_history(found.info.run_id, "acc/test")
    assert [m.step for m in history] == [r["step"] for r in rows(run)]
    assert found.data.tags["code_version"] and found.data.params["train.logger"] == "mlflow"


# --- sweeps and --help ----------------------------------------------------------------------------


def test_a_sweep_is_counted_right_and_extended_with_resume(tmp_path, cache, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    sweep = [
        "--multirun",
        "debug=tiny",
        "sweep=weight_decay",
        "optim.weight_decay=0.1",
        "seed=0,1",
        f"data_cache={cache}",
        f"hydra.sweep.dir={tmp_path / 'sw'}",
    ]
    train_main([*sweep, "train.steps=10"])  # the grid is 5 x 2; the command line makes it 1 x 2
    out = capsys.readouterr().out
    assert "sweep job 1 of 2: debug=tiny,optim.weight_decay=0.1,seed=0" in out, out
    runs = sorted((tmp_path / "runs" / "sweeps" / "weight_decay" / "default").iterdir())
    assert [r.name for r in runs] == [f"debug=tiny,optim.weight_decay=0.1,seed={s}" for s in (0, 1)]
    train_main([*sweep, "train.steps=20", "resume=true"])  # the same runs, extended
    assert sorted((tmp_path / "runs" / "sweeps" / "weight_decay" / "default").iterdir()) == runs
    for r in runs:
        assert json.loads((r / "summary.json").read_text())["steps"] == 20
        assert json.loads((r / "resume_log.jsonl").read_text())["step"] == 10


@pytest.mark.parametrize("module", ["reports.readme", "reports.browser"])
def test_help_of_the_plain_entry_points(module):
    r = subprocess.run(
        [sys.executable, "-m", module, "--help"], capture_output=True, text=True, cwd=ROOT
    )
    assert r.returncode == 0 and "python -m " + module in r.stdout and not r.stderr, r.stderr


def test_patching_maps_draw_no_progress_bars(capsys):
    from transformer_lens import patching

    from probes.causal_tracing import _quiet_patching

    bar = patching.tqdm
    with _quiet_patching():
        list(patching.tqdm(range(3)))
    assert capsys.readouterr().err == "" and patching.tqdm is bar
