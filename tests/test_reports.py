"""Reports: content, CLI errors, a real browser (headless Chromium) loading them, and a tiny sweep
launched through submitit's local executor, interrupted, resumed and compared."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from plotly.offline import get_plotlyjs

from grokloop.config import run_config_from_dict
from grokloop.train import train
from probes.__main__ import main as probes_main
from reports.__main__ import main as reports_main
from reports.browser import check, chromium, screenshot
from tests.test_train import compose_dict

ROOT = Path(__file__).resolve().parent.parent
needs_browser = pytest.mark.skipif(
    chromium() is None and not os.environ.get("GROKLOOP_REQUIRE_BROWSER"),
    reason="no chromium: bash .ci/install_chromium.sh (or set GROKLOOP_REQUIRE_BROWSER=1 to fail)",
)
TINY = ["model.d_model=32", "model.n_heads=2", "model.d_mlp=64", "train.progress=false"]


def tiny_run(path: Path, overrides: list[str]) -> Path:
    _, _, d = compose_dict(overrides + TINY + [f"data_cache={path.parent / 'cache'}"])
    train(run_config_from_dict(d), path)
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A looped composition run without probes, the same run with every probe over its
    checkpoints, and a modular run with the Fourier probe."""
    tmp = tmp_path_factory.mktemp("reports")
    probed = tiny_run(
        tmp / "probed",
        [
            "experiment=composition_small_looped",
            "train.steps=40",
            "train.batch_size=128",
            "train.checkpoint_every_max=20",
        ],
    )
    bare = shutil.copytree(probed, tmp / "bare")
    probes_main(
        [
            f"run_dir={probed}",
            "checkpoints=all",
            "n=30",
            "patching_examples=5",
            "repeats=1",
            "n_attention=4",
        ]
    )
    modular = tiny_run(
        tmp / "modular",
        ["experiment=modular_add_nanda", "data.p=23", "data.train_fraction=0.5", "train.steps=30"],
    )
    probes_main([f"run_dir={modular}", "checkpoints=all", "probe=[fourier,logit_lens]", "n=30"])
    for run in (probed, bare, modular):
        reports_main([f"run_dir={run}"])
    return {"probed": probed, "bare": bare, "modular": modular}


def test_report_is_self_contained_with_plotly_inlined_once(runs):
    text = (runs["probed"] / "report.html").read_text()
    assert text.count(get_plotlyjs()[:500]) == 1
    ours = text.replace(get_plotlyjs(), "")  # what the page adds to plotly.js
    assert "http" not in ours.replace("http://www.w3.org", "")
    for title in (
        "Training",
        "Logit lens",
        "Causal tracing",
        "Attention patterns",
        "Layer-loop surgery",
    ):
        assert f">{title}</h2>" in text
    assert "Probes not run" not in text and "Fourier" not in text  # not a modular task


def test_report_names_the_probes_not_run_and_their_command(runs):
    text = (runs["bare"] / "report.html").read_text()
    assert ">Probes not run</h2>" in text and ">Logit lens</h2>" not in text
    assert (
        f"python -m probes run_dir={runs['bare']} probe=logit_lens,causal_tracing,attention,surgery"
        in text
    )
    modular = (runs["modular"] / "report.html").read_text()
    assert (
        ">Fourier progress measures</h2>" in modular
        and "probe=causal_tracing,attention,surgery" in modular
    )


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["run_dir=/nonexistent"], "no such directory"),
        (["compare"], "usage|python -m reports"),
        (["colour=red"], "python -m reports"),
    ],
)
def test_report_cli_errors(argv, needle):
    with pytest.raises(SystemExit, match=needle):
        reports_main(argv)


def test_report_cli_on_a_directory_without_runs(tmp_path):
    with pytest.raises(SystemExit, match="not a run directory"):
        reports_main([f"run_dir={tmp_path}"])
    with pytest.raises(SystemExit, match="no run directories"):
        reports_main(["compare", str(tmp_path)])


@needs_browser
@pytest.mark.slow  # ~11 s; fast: test_browser_check_catches_errors_and_unrendered_figures
def test_reports_render_in_a_browser_without_errors(runs, tmp_path):
    for name in ("probed", "bare", "modular"):
        got = check(runs[name] / "report.html")
        assert got["errors"] == [], name
        assert got["expected"] > 0 and got["figures"] == got["rendered"] == got["expected"], (
            name,
            got,
        )
    shot = screenshot(runs["probed"] / "report.html", tmp_path / "report.png")
    assert shot.stat().st_size > 20_000


@needs_browser
def test_browser_check_catches_errors_and_unrendered_figures(runs, tmp_path):
    text = (runs["probed"] / "report.html").read_text()
    broken = tmp_path / "broken.html"
    broken.write_text(
        text.replace("Plotly.newPlot(", "Plotly.newPlotX(", 1).replace(
            "</body>", "<script>throw new Error('boom')</script></body>"
        )
    )
    got = check(broken)
    assert any("boom" in e for e in got["errors"]) and any("newPlotX" in e for e in got["errors"])
    assert got["rendered"] == got["expected"] - 1


def test_compare_groups_seeds_of_one_setting(runs, tmp_path):
    # Two seeds of the bare run and the probed run (a different directory, same settings) plus the
    # modular run (different settings): two groups, one per setting.
    for i, name in enumerate(("bare", "probed", "modular")):
        dst = shutil.copytree(runs[name], tmp_path / "tree" / f"r{i}")
        cfg = json.loads((dst / "config.json").read_text())
        (dst / "config.json").write_text(json.dumps(cfg | {"seed": i}))
    reports_main(["compare", str(tmp_path / "tree")])
    text = (tmp_path / "tree" / "compare.html").read_text()
    assert "3 runs in 2 group(s)" in text and "final acc test_inferred_id" in text


def launch_sweep(tmp: Path, *extra: str) -> subprocess.CompletedProcess:
    """Two settings (vanilla, looped) x two seeds, tiny, into tmp/sweep."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "grokloop.train",
            "--multirun",
            "sweep=looped",
            "seed=0,1",
            "train.steps=30",
            "train.checkpoint_every_max=10",
            *TINY,
            f"data_cache={tmp / 'cache'}",
            f"hydra.sweep.dir={tmp / 'hydra'}",
            f"out_dir={tmp}/sweep/${{experiment}}/seed${{seed}}",
            *extra,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )


@pytest.mark.slow  # ~35 s; fast: test_compare_groups_seeds_of_one_setting
def test_sweep_through_submitit_local_resumes_and_compares(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    launch_sweep(
        tmp_path, "hydra/launcher=local", f"hydra.launcher.submitit_folder={tmp_path}/submitit/%j"
    )
    runs = sorted((tmp_path / "sweep").glob("*/seed*"))
    assert [r.relative_to(tmp_path / "sweep").as_posix() for r in runs] == [
        "composition_small/seed0",
        "composition_small/seed1",
        "composition_small_looped/seed0",
        "composition_small_looped/seed1",
    ]
    assert all((r / "summary.json").exists() for r in runs)
    assert not any((r / "report.html").exists() for r in runs)  # a sweep gets one compare page
    assert list((tmp_path / "submitit").iterdir())  # the jobs really went through submitit

    # interrupt: one run never ran, one was killed after a checkpoint; two finished
    shutil.rmtree(runs[0])
    (runs[1] / "summary.json").unlink()
    finished = {r: (r / "summary.json").stat().st_mtime_ns for r in runs[2:]}
    out = launch_sweep(tmp_path, "resume=true", "hydra/launcher=parallel")  # joblib, 2 at a time
    assert out.stdout.count("already finished this config") == 2
    assert f"resumed {runs[1]}" in out.stdout
    assert all((r / "summary.json").stat().st_mtime_ns == t for r, t in finished.items())
    assert all((r / "summary.json").exists() for r in runs)

    reports_main(["compare", str(tmp_path / "sweep")])
    text = (tmp_path / "sweep" / "compare.html").read_text()
    assert "4 runs in 2 group(s)" in text and "composition_small_looped" in text
    if chromium() or os.environ.get("GROKLOOP_REQUIRE_BROWSER"):
        got = check(tmp_path / "sweep" / "compare.html")
        assert got["errors"] == [] and got["rendered"] == got["expected"] > 0
