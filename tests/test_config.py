"""Configs: the dataclasses are the schemas of conf/, the YAML holds deltas, every entry point
shares one override grammar, and config errors are one line at compose time."""

import dataclasses
import importlib
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf, open_dict

from datagen import DATA_CONFIGS, data_config_from_dict
from grokloop import cli
from grokloop.config import (
    ModelConfig,
    OptimConfig,
    RunConfig,
    TrainCommand,
    TrainConfig,
    run_config_from_dict,
)

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def run_config(overrides) -> RunConfig:
    """What `python -m grokloop.train overrides` trains, before the dataset resolves sizes."""
    cfg = cli.compose("train", overrides)
    with open_dict(cfg):  # out_dir may name ${hydra:...}, which only a running job resolves
        del cfg["out_dir"], cfg["resume"]
    return run_config_from_dict(OmegaConf.to_container(cfg, resolve=True))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_typed_and_validates(experiment):
    cfg = cli.compose("train", [f"experiment={experiment}"])
    assert experiment in cfg.out_dir  # each experiment its own run directory
    assert OmegaConf.get_type(cfg, "model") is ModelConfig
    assert OmegaConf.get_type(cfg, "data") is DATA_CONFIGS[cfg.data.task]  # typed by its preset
    run = run_config([f"experiment={experiment}"])
    assert run.experiment == experiment
    tiny = run_config([f"experiment={experiment}", "debug=tiny"])
    assert tiny.model.resolved().d_mlp == 64 and tiny.train.steps == 20 and not tiny.train.report


def test_train_command_schema_is_the_run_config_plus_out_dir_and_resume():
    names = [f.name for f in dataclasses.fields(TrainCommand)]
    assert set(names) == {f.name for f in dataclasses.fields(RunConfig)} | {"out_dir", "resume"}


def _schema_defaults(path: Path) -> dict:
    group = path.parent.name
    if group == "data":
        task = OmegaConf.load(path).defaults[0].removeprefix("base_")
        return dataclasses.asdict(DATA_CONFIGS[task]())
    cls = {"model": ModelConfig, "optim": OptimConfig, "train": TrainConfig}[group]
    return OmegaConf.to_container(OmegaConf.structured(cls))


@pytest.mark.parametrize(
    "path",
    sorted(
        p.relative_to(CONF).as_posix()
        for group in ("data", "model", "optim", "train")
        for p in (CONF / group).glob("*.yaml")
    ),
)
def test_group_yaml_holds_only_deltas_from_its_schema(path):
    raw = OmegaConf.to_container(OmegaConf.load(CONF / path)) or {}
    defaults = _schema_defaults(CONF / path)
    raw.pop("defaults", None)
    unknown = set(raw) - set(defaults)
    assert not unknown, f"{path}: keys not in the schema: {unknown}"
    same = {
        k
        for k, v in raw.items()
        if v == defaults[k] or isinstance(v, list) and list(v) == list(defaults[k] or [])
    }
    assert not same, f"{path} repeats schema defaults: {sorted(same)}"


def test_derived_sizes_are_resolved_into_a_new_config():
    model = run_config(["model.d_model=256"]).model
    assert model.d_mlp is None
    resolved = model.resolved(d_vocab=30, n_ctx=4)
    assert (resolved.d_mlp, resolved.d_vocab, resolved.n_ctx) == (1024, 30, 4)
    assert resolved.moe_d_expert == 1024 // 2 and model.d_mlp is None  # the original is unchanged
    assert resolved.resolved(d_vocab=99) == resolved  # resolving again: a no-op
    kept = ModelConfig(d_vocab=50, n_ctx=9, d_mlp=100, moe_d_expert=7).resolved(30, 4)
    assert (kept.d_vocab, kept.n_ctx, kept.d_mlp, kept.moe_d_expert) == (50, 9, 100, 7)


@pytest.mark.parametrize(
    "override",
    [
        "train.steps=abc",
        "optim.lr=abc",
        "train.steps=1.5",
        "resume=maybe",
        "model.d_modle=3",
        "data.n_entities=x",
    ],
)
def test_wrong_types_and_unknown_keys_fail_at_compose_time(override):
    with pytest.raises(ConfigCompositionException) as e:
        cli.compose("train", ["data=composition_small", override])
    assert override.split("=")[0] in cli.describe(e.value, "train")


def test_cli_config_error_is_one_line_exit_2_and_writes_nothing(tmp_path):
    out = tmp_path / "run"
    r = subprocess.run(
        [sys.executable, "-m", "grokloop.train", "train.steps=1.5", f"out_dir={out}"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"},
    )
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("error: train.steps=1.5") and r.stderr.count("\n") == 1, r.stderr
    assert "Traceback" not in r.stderr and not out.exists()


@pytest.mark.slow  # ~25 s (every entry point's --help); fast: the alias help tests in test_adaptive.py
def test_help_works_on_every_entry_point(capsys):
    # In-process (main(argv) is what `python -m` runs; the subprocess test above covers that).
    for name, command in cli.COMMANDS.items():
        # python -m PACKAGE runs PACKAGE/__main__.py
        package = importlib.util.find_spec(command.module).submodule_search_locations is not None
        module = importlib.import_module(command.module + (".__main__" if package else ""))
        with pytest.raises(SystemExit) as e:
            module.main(["--help"])
        assert e.value.code == 0, name
        out = capsys.readouterr().out
        assert f"python -m {command.module}" in out and "`error: ...`" in out, name
        assert (
            name != "train" or "experiment: " in out and "composition_small" in out
        )  # groups listed


@pytest.mark.parametrize(
    "name, argv, expected",
    [
        (
            "reports",
            ["compare", "runs/a", "runs/b", "out=x.html"],
            ["out=x.html", "compare=['runs/a','runs/b']"],
        ),
        ("adaptive_summary", ["runs/k_1", "out=d"], ["out=d", "runs=['runs/k_1']"]),
        (
            "probes",
            ["run_dir=R", "probe=logit_lens", "repeats=[1,2]", "split=[a]"],
            ["run_dir=R", "probe=[logit_lens]", "repeats=[1,2]", "split=[a]"],
        ),
        # Hydra's grammar: a,b is a sweep, left for Hydra to refuse outside --multirun
        (
            "probes",
            ["run_dir=R", "probe=logit_lens,causal_tracing"],
            ["run_dir=R", "probe=logit_lens,causal_tracing"],
        ),
        (
            "train",
            ["--multirun", "seed=0,1", "-cn", "train"],
            ["--multirun", "seed=0,1", "-cn", "train"],
        ),
    ],
)
def test_documented_shorthands_become_overrides(name, argv, expected):
    assert cli.overrides(name, argv) == expected


@pytest.mark.parametrize("name", ["train", "probes", "reports"])
def test_a_stray_word_is_an_error(name):
    with pytest.raises(SystemExit, match="key=value"):
        cli.overrides(name, ["run_dir=R", "stray"])


# --- every command in README.md's bash blocks is a valid override set ---------------------------
# Lines the README still gets wrong, to be fixed there (then delete the entry).
README_KNOWN_WRONG: dict[str, str] = {}
PLACEHOLDERS = {"RUN": "runs/x/seed0", "$e": "khop_vanilla", "DIR": "runs/x"}


def readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    lines = [line.split("&&")[-1].strip() for b in blocks for line in b.splitlines()]
    hydra_commands = {c.module for c in cli.COMMANDS.values()}  # not e.g. reports.readme FILE
    return [
        " ".join(["python", *shlex.split(line, comments=True)[1:]])
        for line in lines
        if (m := re.match(r"^\S*python -m ([\w.]+)", line)) and m[1] in hydra_commands
    ]


def compose_command(line: str):
    words = line.split()[2:]
    module, argv = words[0], [PLACEHOLDERS.get(w, w) for w in words[1:]]
    for k, v in PLACEHOLDERS.items():
        argv = [a.replace(k, v) for a in argv]
    name = next(n for n, c in cli.COMMANDS.items() if c.module == module)
    args = [a for a in cli.overrides(name, argv) if not a.startswith(("-", "hydra"))]
    # a --multirun grid: its first point (compose() runs one job)
    args = [
        f"{o.get_key_element()}={next(o.sweep_string_iterator())}"
        if o.is_sweep_override()
        else o.input_line
        for o in OverridesParser.create().parse_overrides(args)
    ]
    if name == "train":
        return run_config(args)
    cfg = OmegaConf.to_container(cli.compose(name, args), resolve=True, throw_on_missing=True)
    return data_config_from_dict(cfg["data"]) if name == "datagen" else cfg


@pytest.mark.parametrize(
    "line",
    [
        pytest.param(line, marks=pytest.mark.xfail(reason=README_KNOWN_WRONG[line], strict=True))
        if line in README_KNOWN_WRONG
        else line
        for line in readme_commands()
    ],
)
def test_readme_commands_parse(line):
    compose_command(line)


def test_readme_has_commands_for_every_entry_point():
    modules = {shlex.split(line)[2] for line in readme_commands()}
    assert modules >= {c.module for c in cli.COMMANDS.values()}
