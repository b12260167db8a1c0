"""Curricula: train one model through an ordered list of stages, each to its gate, and measure
transfer and forgetting on every stage throughout.

    python -m grokloop.curriculum curriculum=logic_to_math [seed=1] [curriculum.mode=scratch]
        [curriculum.order=reversed] [curriculum.replay=0.25] [curriculum.stage_steps=200]

A stage is a data preset (conf/data/; every stage of one curriculum shares a vocabulary) with a
gate: the stage ends when its held-out accuracy (`test_NAME`) reaches `gate`, or after its step
budget. Each stage is an ordinary training run (grokloop/train.py) on a mixture dataset
(datagen/mixture.py) whose training split is the stage's training cells plus `replay`, and whose
evaluation splits are EVERY stage's held-out cells, so one curve per stage shows learning and
forgetting over the whole curriculum. Stage k starts from stage k-1's last checkpoint (its
optimizer state too unless `reset_optimizer`). Everything a run guarantees holds per stage:
checkpoints, exact resume, the run lock; `resume=true` continues the curriculum where it stopped,
exactly, at any stage.

Modes (the baselines are the same command):
  sequential  the curriculum: stage k starts from stage k-1
  scratch     every stage from a fresh model (same seed, budget and gate)
  joint       one run on every stage's training cells at once, for the mean stage budget: each
              step sees every stage's cells, so it spends what the curriculum spends in all
              (matched examples); it stops when every stage passes its gate
`order=reversed` runs the stages backwards (mathematics to logic).

Layout: OUT/curriculum.json (the command's config), OUT/stages/NN_NAME/ (one run directory per
stage), OUT/summary.json (the accuracy matrix R, ACC, BWT, FWT, forgetting, per-stage steps and
gates, embedding spectra), OUT/report.html.

Metrics (Lopez-Paz & Ranzato 2017, arXiv 1706.08840; forgetting: Chaudhry et al. 2018, arXiv
1801.10112), for T stages in the order run: R[i][j] is the held-out accuracy on stage j at the end
of stage i, b[j] that of the initial model.
  ACC = mean_j R[T-1][j]                  BWT = mean_{j<T-1} (R[T-1][j] - R[j][j])
  FWT = mean_{j>0} (R[j-1][j] - b[j])     forgetting[j] = max_{l<T-1} R[l][j] - R[T-1][j]
For tables, FWT is zero-shot accuracy on an operation never trained and sits near chance whatever
transfers; the transfer that matters is how much faster a stage groks, the ratio of its steps to
the gate from scratch to those in the curriculum (`reports/curriculum.py` computes it across runs).
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from datagen import data_config_from_dict
from datagen.config import MixtureConfig
from grokloop.config import ModelConfig, OptimConfig, RunConfig, TrainConfig
from grokloop.provenance import atomic_write_text, code_version, machine
from grokloop.train import config_diff, prepare, train

MODES = ("sequential", "scratch", "joint")
# Keys of curriculum.json that a resume may change: how the run is shown and where it computes.
RESUMABLE = frozenset({"train.progress", "train.report", "train.device", "train.eval_batch_size",
                       "data_cache"})


@dataclass
class StageConfig:
    data: Any = None            # the stage's data preset, composed from conf/data/ by the defaults
    steps: int | None = None    # None: the curriculum's stage_budget
    gate: float | None = None   # None: the curriculum's gate


@dataclass
class CurriculumConfig:
    name: str = "???"
    stages: dict[str, StageConfig] = field(default_factory=dict)   # in curriculum order
    mode: str = "sequential"    # sequential | scratch | joint (module docstring)
    order: str = "forward"      # forward | reversed
    gate: float = 0.95          # advance once the stage's held-out accuracy reaches this
    stage_budget: int = 2000    # steps a stage may take to reach its gate
    stage_steps: int | None = None   # cap on every stage's budget, for quick runs
    replay: float = 0.0         # fraction of each stage's training split drawn from earlier stages
    reset_optimizer: bool = True     # false: stage k continues stage k-1's Adam moments
    eval_size: int = 2000       # held-out cells evaluated per stage
    held_out: str = "test"      # each stage's split that is held out (test_inferred_id for k-hop)

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"curriculum.mode={self.mode!r} is not one of {list(MODES)}")
        if self.order not in ("forward", "reversed"):
            raise ValueError(f"curriculum.order={self.order!r} is not forward or reversed")
        if not 0 < self.gate <= 1:
            raise ValueError(f"curriculum.gate={self.gate} must be in (0, 1]")
        for key in ("stage_budget", "stage_steps"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise ValueError(f"curriculum.{key}={getattr(self, key)} must be at least 1")
        if self.replay and self.mode != "sequential":
            raise ValueError(f"curriculum.replay={self.replay} applies to mode=sequential only "
                             f"(mode={self.mode}); set curriculum.replay=0")
        self.stages = {k: v if isinstance(v, StageConfig) else StageConfig(**v)
                       for k, v in self.stages.items()}

    def check_stages(self) -> None:
        """The stage list, checked when a curriculum is run (the schema's default has none)."""
        if not self.stages:
            raise ValueError("curriculum.stages is empty; name at least one stage")
        for name, st in self.stages.items():
            if not st.data:
                raise ValueError(f"curriculum.stages.{name}.data is empty; compose a preset with "
                                 f"`- /data@stages.{name}.data: PRESET` in the defaults list")

    def ordered(self) -> list[str]:
        names = list(self.stages)
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


@dataclass
class Stage:
    name: str           # a stage name, or "joint"
    trains: list[str]   # the stages whose training cells it trains on
    run_dir: Path
    cfg: RunConfig


def plan(cmd: CurriculumCommand, out_dir: Path) -> list[Stage]:
    """Every stage's run config, before anything runs (so every error comes first)."""
    cc = cmd.curriculum
    names = cc.ordered()
    parts = {n: dict(cc.stages[n].data) for n in names}   # mixture parts in the order run
    if cc.mode == "joint":
        steps = round(sum(cc.budget(n) for n in names) / len(names))
        jobs = [("joint", names, steps, ",".join(f"test_{n}" for n in names),
                 min(cc.gate_of(n) for n in names))]
    else:
        jobs = [(n, [n], cc.budget(n), f"test_{n}", cc.gate_of(n)) for n in names]
    stages, previous = [], None
    for k, (name, trains, steps, grok, gate) in enumerate(jobs):
        run_dir = out_dir / "stages" / f"{k:02d}_{name}"
        chained = cc.mode == "sequential" and previous is not None
        data = MixtureConfig(parts=parts, train_on=trains, replay=cc.replay if chained else 0.0,
                             eval_size=cc.eval_size, held_out=cc.held_out)
        tc = dataclasses.replace(
            cmd.train, steps=steps, stop_at_grok=grok, grok_threshold=gate, report=False,
            init_from=str(previous) if chained else None,
            init_optimizer=chained and not cc.reset_optimizer)
        cfg = RunConfig(data=data, model=cmd.model, optim=cmd.optim, train=tc,
                        experiment=f"{cc.name}/{cc.mode}/{name}", seed=cmd.seed,
                        data_cache=cmd.data_cache)
        stages.append(Stage(name, trains, run_dir, cfg))
        previous = run_dir
    return stages


def command_from_dict(d: dict) -> tuple[CurriculumCommand, Path, bool]:
    d = dict(d)
    out_dir, resume = Path(d.pop("out_dir")), d.pop("resume")
    cc = dict(d.pop("curriculum"))
    curriculum = CurriculumConfig(**cc)   # stage dicts become StageConfigs there
    curriculum.check_stages()
    for st in curriculum.stages.values():   # each stage's preset is checked as its task's config
        data_config_from_dict(st.data)
    cmd = CurriculumCommand(curriculum=curriculum, model=ModelConfig(**d.pop("model")),
                            optim=OptimConfig(**d.pop("optim")), train=TrainConfig(**d.pop("train")),
                            **d)
    return cmd, out_dir, resume


def run_curriculum(cmd: CurriculumCommand, out_dir: str | Path, resume: bool = False) -> dict:
    out_dir = Path(out_dir)
    stages = plan(cmd, out_dir)
    config = json.loads(json.dumps(dataclasses.asdict(cmd)))
    saved = out_dir / "curriculum.json"
    # --- checks that write nothing ------------------------------------------------------------
    if saved.exists() and not resume:
        raise FileExistsError(f"{out_dir} already holds a curriculum; pass resume=true to continue "
                              "it or choose another out_dir")
    if saved.exists():
        old = json.loads(saved.read_text())
        refused = {k: v for k, v in config_diff(old, config).items() if k not in RESUMABLE}
        if refused:
            lines = "".join(f"\n  {k}: {a!r} -> {b!r}" for k, (a, b) in refused.items())
            raise ValueError(f"cannot resume {out_dir} with a different config:{lines}\nNothing was "
                             "changed; start a new curriculum (another out_dir) instead.")
    for st in stages:   # data, splits and sizes of every stage, before any is trained
        prepare(dataclasses.replace(st.cfg, train=dataclasses.replace(
            st.cfg.train, init_from=None, init_optimizer=False)))
    if not saved.exists():
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(saved, json.dumps(config | {"code_version": code_version()}, indent=2))

    t0 = time.perf_counter()
    for k, st in enumerate(stages):
        print(f"stage {k + 1}/{len(stages)} {st.name}: trains {', '.join(st.trains)}; gate "
              f"{st.cfg.train.stop_at_grok} >= {st.cfg.train.grok_threshold}, budget "
              f"{st.cfg.train.steps} steps", flush=True)
        done = train(st.cfg, st.run_dir, resume=(st.run_dir / "metrics.jsonl").exists())
        passed = all(done["grokked"][s] for s in st.cfg.train.stop_at_grok.split(","))
        print(f"stage {k + 1}/{len(stages)} {st.name}: "
              f"{'passed its gate' if passed else 'spent its budget'} after {done['steps']} steps",
              flush=True)
    summary = summarize(cmd, stages, time.perf_counter() - t0)
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2))
    return summary


# --- metrics ------------------------------------------------------------------------------------

def transfer_metrics(R: np.ndarray, b: np.ndarray) -> dict:
    """ACC, BWT, FWT and forgetting per stage from the accuracy matrix R [T, T] (R[i, j]: stage j
    after stage i) and the initial accuracies b [T] (module docstring)."""
    R, b = np.asarray(R, float), np.asarray(b, float)
    T = len(R)
    last = R[T - 1]
    return {"ACC": float(last.mean()),
            "BWT": float(np.mean([last[j] - R[j, j] for j in range(T - 1)])) if T > 1 else None,
            "FWT": float(np.mean([R[j - 1, j] - b[j] for j in range(1, T)])) if T > 1 else None,
            "forgetting": [float(R[:T - 1, j].max() - last[j]) for j in range(T - 1)]}


@torch.no_grad()
def initial_accuracy(stage: Stage, names: list[str]) -> list[float]:
    """Accuracy of the untrained model (as train builds it from the seed) on every stage."""
    from grokloop.evaluate import evaluate
    from grokloop.model import LoopedTransformer

    ds, _, cfg = prepare(dataclasses.replace(stage.cfg, train=dataclasses.replace(
        stage.cfg.train, init_from=None, init_optimizer=False)))
    torch.manual_seed(cfg.seed)
    model = LoopedTransformer(cfg.model)
    data = {k: torch.as_tensor(getattr(ds, k)) for k in ("inputs", "answer_pos", "answers", "hops")}
    acc = evaluate(model, data, {f"test_{n}": torch.as_tensor(ds.splits[f"test_{n}"])
                                 for n in names}, cfg.model.n_steps)
    return [acc[f"acc/test_{n}"] for n in names]


def spectra(run_dir: Path) -> dict:
    """How structured the embedding of the integer tokens is at the end of a stage: the Gini
    coefficient of its Z_127 Fourier spectrum (the modular stages' basis; Nanda et al. 2023) and of
    its Walsh spectrum over Z_2^7 (the XOR group's basis), with the top 5 frequencies of each."""
    from grokloop.checkpoint import load_model
    from probes.fourier import embedding_spectrum, gini, walsh_spectrum

    model, _, _ = load_model(run_dir)
    out = {}
    for basis, spec in (("fourier127", embedding_spectrum(model.W_E, 127)),
                        ("walsh128", walsh_spectrum(model.W_E, 7))):
        out[basis] = {"gini": gini(spec.numpy()),
                      "top": (torch.argsort(spec, descending=True)[:5] + 1).tolist()}
    return out


def n_train(cfg: RunConfig) -> int:
    """Training examples per step (full batch: the training split; the dataset is cached)."""
    from datagen import load_or_build
    n = len(load_or_build(cfg.data, cfg.data_cache).splits["train"])
    return min(cfg.train.batch_size or n, n)


def summarize(cmd: CurriculumCommand, stages: list[Stage], wall_time_s: float) -> dict:
    """summary.json of a finished curriculum (module docstring)."""
    cc = cmd.curriculum
    names = cc.ordered()
    rows, per_stage = [], []
    for st in stages:
        history = [json.loads(r) for r in (st.run_dir / "metrics.jsonl").read_text().splitlines()]
        last, run = history[-1], json.loads((st.run_dir / "summary.json").read_text())
        rows.append([last[f"acc/test_{n}"] for n in names])
        steps_to = {n: next((r["step"] for r in history
                             if r[f"acc/test_{n}"] >= cc.gate_of(n)), None) for n in st.trains}
        per_stage.append({
            "stage": st.name, "run_dir": str(st.run_dir.relative_to(st.run_dir.parent.parent)),
            "trains": st.trains, "budget": st.cfg.train.steps, "steps": run["steps"],
            "gate": st.cfg.train.grok_threshold,
            "passed": all(v is not None for v in steps_to.values()),
            "steps_to_gate": steps_to, "n_train": n_train(st.cfg),
            "wall_time_s": run["wall_time_s"], "n_eval": last[f"n/test_{names[0]}"],
            "spectra": spectra(st.run_dir)})
    b = initial_accuracy(stages[0], names)
    out = {"curriculum": cc.name, "mode": cc.mode, "order": cc.order, "seed": cmd.seed,
           "replay": cc.replay, "reset_optimizer": cc.reset_optimizer,
           "model": _model_label(cmd.model), "stages": names, "initial": b, "matrix": rows,
           "per_stage": per_stage, "wall_time_s": wall_time_s, "machine": machine(),
           "code_version": code_version()}
    if cc.mode == "sequential":
        out |= transfer_metrics(np.array(rows), np.array(b))
    return out


def _model_label(m: ModelConfig) -> str:
    if m.n_steps == 1:
        return f"vanilla {m.n_prelude + m.n_core + m.n_coda}L"
    return f"looped {m.n_prelude}+{m.n_core}x{m.n_steps}+{m.n_coda}"


def main(argv: list[str] | None = None) -> None:
    from grokloop import cli

    def _main(d: dict) -> None:
        cmd, out_dir, resume = command_from_dict(d)
        summary = run_curriculum(cmd, out_dir, resume=resume)
        for st in summary["per_stage"]:
            print(f"  {st['stage']:>10}: {'gate' if st['passed'] else 'budget'} at {st['steps']} "
                  f"of {st['budget']} steps")
        if "ACC" in summary:
            print(f"ACC {summary['ACC']:.3f}  BWT {summary['BWT']:+.3f}  FWT {summary['FWT']:+.3f}")
        if cmd.train.report:
            from reports.curriculum import write_curriculum_report
            print(f"report: {write_curriculum_report(out_dir)}")
        print(f"curriculum directory: {out_dir.resolve()}")

    cli.run("curriculum", _main, argv)


if __name__ == "__main__":
    from grokloop.curriculum import main as imported_main
    imported_main()
