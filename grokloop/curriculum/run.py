"""Planning and running a curriculum: every stage's run config before anything runs, then each
stage as an ordinary training run, chained, resumable at any stage."""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from datagen.config import MixtureConfig, config_dict
from datagen.provenance import atomic_write_text, code_version
from grokloop.config import RunConfig
from grokloop.curriculum.config import CurriculumCommand, fresh_run
from grokloop.curriculum.metrics import summarize
from grokloop.train import config_diff, prepare, train

# Keys of curriculum.json that a resume may change: how the run is shown and where it computes.
RESUMABLE = frozenset(
    {"train.progress", "train.report", "train.device", "train.eval_batch_size", "data_cache"}
)


@dataclass
class Stage:
    name: str  # a stage name, or "joint"
    trains: list[str]  # the stages whose training cells it trains on
    run_dir: Path
    cfg: RunConfig
    edit: str = "none"  # how its starting weights are edited from the last stage's (edits.py)


def plan(cmd: CurriculumCommand, out_dir: Path) -> list[Stage]:
    """Every stage's run config, before anything runs (so every error comes first)."""
    cc = cmd.curriculum
    names = cc.ordered()
    parts = {n: config_dict(cc.stages[n].data) for n in names}  # mixture parts, in run order
    if cc.mode == "joint":
        steps = round(sum(cc.budget(n) for n in names) / len(names))
        jobs = [
            (
                "joint",
                names,
                steps,
                ",".join(f"valid_{n}" for n in names),
                min(cc.gate_of(n) for n in names),
            )
        ]
    else:
        jobs = [(n, [n], cc.budget(n), f"valid_{n}", cc.gate_of(n)) for n in names]
    stages, previous = [], None
    for k, (name, trains, steps, grok, gate) in enumerate(jobs):
        run_dir = out_dir / "stages" / f"{k:02d}_{name}"
        chained = cc.mode == "sequential" and previous is not None
        edit = cc.edit if name == cc.edit_stage else "shrink_perturb" if cc.shrink < 1 else "none"
        edit = edit if chained else "none"
        start_from = run_dir.with_name(run_dir.name + ".init") if edit != "none" else previous
        data = MixtureConfig(
            parts=parts,
            train_on=trains,
            replay=cc.replay if chained else 0.0,
            eval_size=cc.eval_size,
            held_out=cc.held_out,
        )
        tc = dataclasses.replace(
            cmd.train,
            steps=steps,
            stop_at_grok=grok,
            grok_threshold=gate,
            report=False,
            init_from=str(start_from) if chained else None,
            init_optimizer=chained and not cc.reset_optimizer and edit == "none",
            distill=cc.distill if chained else 0.0,
        )
        cfg = RunConfig(
            data=data,
            model=cmd.model,
            optim=cmd.optim,
            train=tc,
            experiment=f"{cc.name}/{cc.mode}/{name}",
            seed=cmd.seed,
            data_cache=cmd.data_cache,
        )
        stages.append(Stage(name, trains, run_dir, cfg, edit))
        previous = run_dir
    return stages


def write_edited_start(stage: Stage, previous_dir: Path, shrink: float) -> None:
    """The stage's starting checkpoint: the previous stage's final weights with stage.edit
    applied (grokloop/curriculum/edits.py), in the run directory stage.cfg.train.init_from names."""
    from grokloop.checkpoint import last_good_checkpoint, save_checkpoint
    from grokloop.curriculum.edits import edited
    from grokloop.model import LoopedTransformer

    _, _, cfg = prepare(fresh_run(stage.cfg))
    torch.manual_seed(cfg.seed)  # the fresh model a transplant starts from: the stage's own seed
    model = LoopedTransformer(cfg.model)
    previous = last_good_checkpoint(previous_dir)[0]
    model.load_state_dict(edited(stage.edit, previous, model.state_dict(), cfg.seed, shrink))
    info = {"edit": stage.edit, "edited": str(previous_dir), "wall_time_s": 0.0, "cursor": 0}
    save_checkpoint(stage.cfg.train.init_from, 0, model, {}, info)


def run_curriculum(
    cmd: CurriculumCommand,
    out_dir: str | Path,
    resume: bool = False,
    spectra: Callable[[Path], dict] | None = None,
) -> dict:
    """Run (or resume) the curriculum into out_dir and write its summary.json. `spectra(run_dir)`
    measures each stage's final model (the command passes probes.fourier.stage_spectra)."""
    out_dir = Path(out_dir)
    stages = plan(cmd, out_dir)
    # curriculum.json records what the curriculum computes, not where it is written or whether
    # this launch resumes (their schema defaults, as every curriculum.json has held them)
    launch = {"out_dir": CurriculumCommand.out_dir, "resume": False}
    config = json.loads(json.dumps(dataclasses.asdict(dataclasses.replace(cmd, **launch))))
    saved = out_dir / "curriculum.json"
    # --- checks that write nothing ------------------------------------------------------------
    if saved.exists() and not resume:
        raise FileExistsError(
            f"{out_dir} already holds a curriculum; pass resume=true to continue "
            "it or choose another out_dir"
        )
    if saved.exists():
        old = json.loads(saved.read_text())
        refused = {k: v for k, v in config_diff(old, config).items() if k not in RESUMABLE}
        if refused:
            lines = "".join(f"\n  {k}: {a!r} -> {b!r}" for k, (a, b) in refused.items())
            raise ValueError(
                f"cannot resume {out_dir} with a different config:{lines}\nNothing was "
                "changed; start a new curriculum (another out_dir) instead."
            )
    for st in stages:  # data, splits and sizes of every stage, before any is trained
        prepare(fresh_run(st.cfg))
    if not saved.exists():
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(saved, json.dumps(config | {"code_version": code_version()}, indent=2))

    t0 = time.perf_counter()
    for k, st in enumerate(stages):
        if st.edit != "none" and not (st.run_dir / "metrics.jsonl").exists():
            write_edited_start(st, stages[k - 1].run_dir, cmd.curriculum.shrink)
        print(
            f"stage {k + 1}/{len(stages)} {st.name}: trains {', '.join(st.trains)}; gate "
            f"{st.cfg.train.stop_at_grok} >= {st.cfg.train.grok_threshold}, budget "
            f"{st.cfg.train.steps} steps",
            flush=True,
        )
        done = train(st.cfg, st.run_dir, resume=(st.run_dir / "metrics.jsonl").exists())
        passed = all(done["grokked"][s] for s in st.cfg.train.stop_at_grok.split(","))
        print(
            f"stage {k + 1}/{len(stages)} {st.name}: "
            f"{'passed its gate' if passed else 'spent its budget'} after {done['steps']} steps",
            flush=True,
        )
    summary = summarize(cmd, stages, time.perf_counter() - t0, spectra)
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2))
    return summary
