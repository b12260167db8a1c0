"""Every training command in README.md runs as written: each one (and each curriculum) runs for a
few steps with a tiny model (`debug=tiny`, or the curriculum's equivalent), a --multirun sweep at
the first point of its grid, in a scratch directory, in the order the README gives them (so
`resume=true` finds the run before it). DIR is a folder in the authors' layout."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parent.parent
TRAINERS = ("grokloop.train", "grokloop.curriculum")
TINY_CURRICULUM = [
    "model.d_model=16",
    "model.n_heads=2",
    "model.d_mlp=32",
    "curriculum.stage_steps=2",
    "curriculum.eval_size=50",
    "train.eval_every_min=1",
    "train.progress=false",
    "train.report=false",
]


def readme_training_commands() -> list[tuple[str, list[str]]]:
    """(module, argv) of every `python -m grokloop.train|grokloop.curriculum` line of README.md."""
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    out = []
    for line in (ln for b in blocks for ln in b.splitlines()):
        words = shlex.split(line, comments=True)
        if words[:2] == ["python", "-m"] and words[2] in TRAINERS:
            out.append((words[2], words[3:]))
    return out


def first_point(argv: list[str]) -> list[str]:
    """A --multirun command at the first point of its grid: every swept key (on the command line
    or in its sweep=NAME config) set to its first value."""
    if "--multirun" not in argv:
        return argv
    swept = {}
    for a in argv:
        if a.startswith("sweep="):
            cfg = OmegaConf.load(ROOT / "conf" / "sweep" / f"{a.split('=')[1]}.yaml")
            swept |= {k: str(v).split(",")[0] for k, v in cfg.hydra.sweeper.params.items()}
    kept = []
    for a in argv:
        key, _, value = a.partition("=")
        if "," in value and not value.startswith("["):
            swept[key] = value.split(",")[0]
        else:
            kept.append(a)
    return kept + [
        f"{k}={v}" for k, v in swept.items() if not any(a.startswith(f"{k}=") for a in kept)
    ]


def test_the_readme_has_training_commands_and_they_use_known_modules():
    commands = readme_training_commands()
    assert {m for m, _ in commands} == set(TRAINERS) and len(commands) >= 10


@pytest.mark.slow  # every README training command, tiny: about a minute
def test_every_readme_training_command_runs(tmp_path, monkeypatch):
    from datagen import build_dataset, data_config_from_dict
    from datagen.grokked_format import write_grokked
    from grokloop.curriculum.__main__ import main as curriculum_main
    from grokloop.train.__main__ import main as train_main

    folder = tmp_path / "authors"
    write_grokked(
        build_dataset(
            data_config_from_dict(
                {
                    "task": "composition",
                    "n_entities": 40,
                    "n_relations": 5,
                    "out_degree": 3,
                    "phi": 2.0,
                    "eval_size": 50,
                }
            )
        ),
        folder,
    )
    monkeypatch.chdir(tmp_path)
    cache = f"data_cache={tmp_path / 'cache'}"
    for module, argv in readme_training_commands():
        argv = [a.replace("DIR", str(folder)) for a in first_point(argv)]
        if module == "grokloop.train":
            train_main([*argv, "debug=tiny", cache])
        else:
            curriculum_main([*argv, *TINY_CURRICULUM, cache])
    runs = tmp_path / "runs"
    assert (runs / "debug" / "composition_small" / "seed0" / "summary.json").is_file()
    assert (runs / "authors" / "summary.json").is_file()
    assert list((runs / "sweeps").rglob("summary.json")) and list(
        runs.glob("curriculum/**/summary.json")
    )
