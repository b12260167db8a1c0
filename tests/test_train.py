"""Training: config composition and errors, exact resume after SIGKILL, checkpoint fallback."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import sigkill_when_checkpointed
from omegaconf import OmegaConf

from grokloop import cli
from grokloop.checkpoint import last_good_checkpoint, list_checkpoints, load_model
from grokloop.config import run_config_from_dict
from grokloop.train import train

CONF = str(Path(__file__).resolve().parent.parent / "conf")
TINY = [
    "data.p=11",
    "data.train_fraction=0.5",
    "model.d_model=16",
    "model.n_heads=2",
    "model.d_mlp=32",
    "train.steps=60",
    "train.eval_every_min=5",
    "train.eval_every_max=10",
    "train.checkpoint_every_max=10",
    "train.progress=false",
    "train.stop_at_grok=null",
    "train.report=false",
]


def compose_dict(overrides):
    d = OmegaConf.to_container(cli.compose("train", overrides), resolve=True)
    return d.pop("out_dir"), d.pop("resume"), d


@pytest.mark.parametrize(
    "override,needle",
    [
        ("model.n_heads=7", "not divisible by model.n_heads"),
        ("model.n_steps=0", "n_steps"),
        ("train.eval_splits=[test_inferred_ood]", "does not produce"),
    ],
)
def test_config_errors_name_the_key_and_create_no_run_dir(tmp_path, capsys, override, needle):
    # In-process (main(argv) is what `python -m grokloop.train` runs; a process-level test of the
    # same path is test_config.py's test_cli_config_error_is_one_line_exit_2_and_writes_nothing).
    out = tmp_path / "run"
    code, err = train_main([*TINY, override, f"out_dir={out}"], capsys)
    assert code != 0 and needle in err, err[-800:]
    assert not out.exists()


def train_main(argv: list[str], capsys) -> tuple[int, str]:
    """The exit status and stderr of `python -m grokloop.train ARGV`, run in this process."""
    from grokloop.train.__main__ import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    return e.value.code, capsys.readouterr().err


@pytest.mark.parametrize(
    "override,needle",
    [
        ("train.init_from=/nonexistent/run", "holds no checkpoint to start from"),
        ("train.init_optimizer=true", "needs train.init_from"),
        ("train.stop_at_grok='test,nope'", "names 'nope'"),
    ],
)
def test_start_and_stop_options_are_checked_before_any_work(override, needle):
    from grokloop.train import prepare  # in-process: the subprocess test above covers the CLI

    with pytest.raises((ValueError, FileNotFoundError), match=needle):
        prepare(run_config_from_dict(compose_dict(TINY + [override])[2]))


def test_unknown_key_fails_with_its_name(tmp_path, capsys):
    _, _, d = compose_dict(TINY)
    d["model"]["d_modle"] = 3
    with pytest.raises(ValueError, match="model.d_modle: unknown key"):
        run_config_from_dict(d)
    code, err = train_main(["model.d_modle=3", f"out_dir={tmp_path / 'x'}"], capsys)
    assert code != 0 and "d_modle" in err and not (tmp_path / "x").exists()


@pytest.mark.slow  # ~5 s: a training process writing its report; fast: tests/test_reports.py
def test_cli_run_ends_with_its_report_and_says_where(tmp_path):
    out = tmp_path / "run"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "grokloop.train",
            *TINY,
            "train.report=true",
            f"data_cache={tmp_path / 'cache'}",
            f"out_dir={out}",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=True,
    )
    assert (out / "report.html").stat().st_size > 0 and "Plotly.newPlot" in (
        out / "report.html"
    ).read_text()
    assert f"wrote {out / 'report.html'}" in r.stdout and f"run directory: {out}" in r.stdout


def rows(run):
    return [
        {k: v for k, v in json.loads(line).items() if k != "wall_time_s"}
        for line in (run / "metrics.jsonl").read_text().splitlines()
    ]


@pytest.mark.slow  # ~18 s: three CLI processes; fast: test_resume_skips_a_finished_run_and_extends_a_longer_one
def test_resume_after_sigkill_is_exact(tmp_path):
    overrides = TINY + [
        "train.steps=400",
        "train.eval_every_max=20",
        "train.checkpoint_every_max=20",
        "train.batch_size=16",
        "model.dropout=0.1",
        f"data_cache={tmp_path / 'cache'}",
    ]
    cmd = [sys.executable, "-m", "grokloop.train", *overrides]
    subprocess.run(
        cmd + [f"out_dir={tmp_path / 'full'}"], check=True, capture_output=True, cwd=tmp_path
    )
    killed = tmp_path / "killed"
    sigkill_when_checkpointed(cmd + [f"out_dir={killed}"], tmp_path, killed, 100)
    assert not (killed / "summary.json").exists(), "the run finished before it could be killed"
    subprocess.run(
        cmd + [f"out_dir={killed}", "resume=true"], check=True, capture_output=True, cwd=tmp_path
    )
    assert rows(killed) == rows(tmp_path / "full")


def test_corrupt_checkpoint_falls_back_to_previous(tmp_path):
    _, _, d = compose_dict(TINY)
    train(run_config_from_dict(d), tmp_path)
    steps = list_checkpoints(tmp_path)
    weights = tmp_path / "checkpoints" / f"step_{steps[-1]:08d}.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    with pytest.warns(UserWarning, match="falling back"):
        _, _, state = last_good_checkpoint(tmp_path)
    assert state["step"] == steps[-2]
    with pytest.warns(UserWarning):
        model, ds, cfg = load_model(tmp_path)
    assert ds.task == "modular" and cfg["experiment"] == "default"


def test_existing_run_is_not_overwritten(tmp_path):
    _, _, d = compose_dict(TINY + ["train.steps=10"])
    train(run_config_from_dict(d), tmp_path)
    with pytest.raises(FileExistsError, match="resume=true"):
        train(run_config_from_dict(d), tmp_path)


def test_looped_composition_writes_per_step_and_per_split_metrics(tmp_path):
    _, _, d = compose_dict(
        [
            "experiment=composition_khop_looped",
            "train.steps=20",
            "train.progress=false",
            "model.d_model=16",
            "model.n_heads=2",
            "train.batch_size=64",
            f"data_cache={tmp_path / 'c'}",
        ]
    )
    summary = train(run_config_from_dict(d), tmp_path / "r")
    final = summary["final"]
    assert {"acc/test_inferred_id", "acc/test_inferred_ood", "acc/atomic_id"} <= set(final)
    assert "acc/test_inferred_id/hops_8" in final and "acc_step/test_inferred_id/4" in final
    assert summary["steps_to_0.99"].keys() >= {"test_inferred_id"}


@pytest.mark.slow  # minutes; fast: the TINY training tests
def test_modular_addition_groks(tmp_path):
    # The default experiment (mod 113, 30% of the table, perpendicular gradient): it reaches 0.99
    # test accuracy in 320-360 steps (seeds 0-2), about a minute here; the cap leaves 4x margin.
    _, _, d = compose_dict(
        [
            "experiment=default",
            "train.steps=1500",
            "train.progress=false",
            f"data_cache={tmp_path / 'cache'}",
        ]
    )
    summary = train(run_config_from_dict(d), tmp_path)
    assert summary["grokked"]["test"] and summary["steps"] < 1500, summary["final"]
    assert summary["final"]["acc/test"] >= 0.99


def test_resume_skips_a_finished_run_and_extends_a_longer_one(tmp_path, capsys):
    _, _, d = compose_dict(TINY)
    first = train(run_config_from_dict(d), tmp_path)
    mtime = (tmp_path / "metrics.jsonl").stat().st_mtime_ns
    again = train(run_config_from_dict(d), tmp_path, resume=True)
    assert again == first and (tmp_path / "metrics.jsonl").stat().st_mtime_ns == mtime
    assert "already finished" in capsys.readouterr().out
    d["train"]["steps"] = first["steps"] + 20  # a changed config is not finished: it continues
    longer = train(run_config_from_dict(d), tmp_path, resume=True)
    assert longer["steps"] == first["steps"] + 20
