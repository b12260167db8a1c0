"""The curriculum's schemas (conf/curriculum.yaml and conf/curriculum/): the stages, the mode
and order, gates and budgets, replay; checked when composed."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from grokloop.config import ModelConfig, OptimConfig, RunConfig, TrainConfig, as_data_config
from grokloop.curriculum.edits import EDITS

MODES = ("sequential", "scratch", "joint")


@dataclass
class StageConfig:
    data: Any = None  # the stage's data preset, composed from conf/data/ by the defaults
    steps: int | None = None  # None: the curriculum's stage_budget
    gate: float | None = None  # None: the curriculum's gate


@dataclass
class CurriculumConfig:
    name: str = "???"
    stages: dict[str, StageConfig] = field(default_factory=dict)  # in curriculum order
    mode: str = "sequential"  # sequential | scratch | joint (module docstring)
    order: str = "forward"  # forward | reversed | shuffled (a permutation drawn from order_seed)
    order_seed: int = 0
    gate: float = 0.95  # advance once the stage's held-out accuracy reaches this
    stage_budget: int = 2000  # steps a stage may take to reach its gate
    stage_steps: int | None = None  # cap on every stage's budget, for quick runs
    replay: float = 0.0  # fraction of each stage's training split drawn from earlier stages
    distill: float = 0.0  # weight of KL(previous stage's model || model) on the replayed cells
    edit: str = "none"  # none | project_bits | project_random | transplant_embedding (edits.py)
    edit_stage: str | None = None  # the stage whose starting weights are edited
    shrink: float = 1.0  # < 1: shrink and perturb before every chained stage (edits.py)
    reset_optimizer: bool = True  # false: stage k continues stage k-1's Adam moments
    eval_size: int = 2000  # held-out cells evaluated per stage
    held_out: str = "test"  # each stage's split that is held out (test_inferred_id for k-hop)

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"curriculum.mode={self.mode!r} is not one of {list(MODES)}")
        if self.order not in ("forward", "reversed", "shuffled"):
            raise ValueError(
                f"curriculum.order={self.order!r} is not forward, reversed or shuffled"
            )
        if not 0 < self.gate <= 1:
            raise ValueError(f"curriculum.gate={self.gate} must be in (0, 1]")
        for key in ("stage_budget", "stage_steps"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise ValueError(f"curriculum.{key}={getattr(self, key)} must be at least 1")
        if self.replay and self.mode != "sequential":
            raise ValueError(
                f"curriculum.replay={self.replay} applies to mode=sequential only "
                f"(mode={self.mode}); set curriculum.replay=0"
            )
        if self.distill and not self.replay:
            raise ValueError(
                f"curriculum.distill={self.distill} distills on the replayed cells; set "
                "curriculum.replay > 0 too (e.g. 0.25)"
            )
        if self.edit not in EDITS or self.edit == "shrink_perturb":
            raise ValueError(
                f"curriculum.edit={self.edit!r} is not one of {list(EDITS[:-1])} "
                "(shrink and perturb: curriculum.shrink)"
            )
        if not 0 <= self.shrink <= 1 or (self.shrink < 1 and self.mode != "sequential"):
            raise ValueError(
                f"curriculum.shrink={self.shrink} must be in [0, 1] (1: off), below 1 only in "
                "mode=sequential"
            )
        if (self.edit != "none") != (self.edit_stage is not None) or (
            self.edit != "none" and self.mode != "sequential"
        ):
            raise ValueError(
                f"curriculum.edit={self.edit} with edit_stage={self.edit_stage} (mode={self.mode}): "
                "an edit needs the stage it starts, in mode=sequential, e.g. "
                "curriculum.edit=project_bits curriculum.edit_stage=add"
            )
        self.stages = {
            k: v if isinstance(v, StageConfig) else StageConfig(**v) for k, v in self.stages.items()
        }

    def check_stages(self) -> None:
        """The stage list, checked when a curriculum is run (the schema's default has none)."""
        if not self.stages:
            raise ValueError("curriculum.stages is empty; name at least one stage")
        for name, st in self.stages.items():
            if not st.data:
                raise ValueError(
                    f"curriculum.stages.{name}.data is empty; compose a preset with "
                    f"`- /data@stages.{name}.data: PRESET` in the defaults list"
                )

        if self.edit_stage is not None and self.edit_stage not in self.ordered()[1:]:
            raise ValueError(
                f"curriculum.edit_stage={self.edit_stage!r} must name a stage after the first, "
                f"one of {self.ordered()[1:]}"
            )

    def ordered(self) -> list[str]:
        names = list(self.stages)
        if self.order == "shuffled":
            return [
                names[i] for i in np.random.default_rng(self.order_seed).permutation(len(names))
            ]
        return names[::-1] if self.order == "reversed" else names

    def budget(self, name: str) -> int:
        steps = self.stages[name].steps or self.stage_budget
        return min(steps, self.stage_steps) if self.stage_steps else steps

    def gate_of(self, name: str) -> float:
        g = self.stages[name].gate
        return self.gate if g is None else g


@dataclass
class CurriculumCommand:
    """Schema of conf/curriculum.yaml."""

    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 0
    data_cache: str | None = None
    out_dir: str = "???"
    resume: bool = False


def checked(cmd: CurriculumCommand) -> CurriculumCommand:
    """The composed command (OmegaConf.to_object of conf/curriculum.yaml), its stages checked:
    at least one, each with a data preset of a known task (a dict, as tests and saved configs
    give it, becomes that task's config)."""
    cmd.curriculum.check_stages()
    for st in cmd.curriculum.stages.values():
        st.data = as_data_config(st.data)
    return cmd


def fresh_run(cfg: RunConfig) -> RunConfig:
    """A stage's run config as a fresh run (no init_from, optimizer moments or teacher): what its
    data, sizes and untrained model are checked and measured with."""
    return dataclasses.replace(
        cfg,
        train=dataclasses.replace(cfg.train, init_from=None, init_optimizer=False, distill=0.0),
    )
