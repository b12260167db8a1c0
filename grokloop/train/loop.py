"""The training loop in named pieces: `train` checks and locks the run directory, `start` builds
or restores the state, `run_loop` steps, evaluates on a log-spaced schedule, checkpoints and
stops at grok, `summarize` writes what the run reached."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from datagen.provenance import atomic_write_text, code_version
from grokloop.accelerate import Mode, accelerate_training, autocast, resolve_mode
from grokloop.adaptive.depth import depth_sequence
from grokloop.bank import facts_sha256
from grokloop.checkpoint import (
    checkpoint_path,
    last_good_checkpoint,
    list_checkpoints,
    optimizer_from_tensors,
    save_checkpoint,
)
from grokloop.config import RunConfig
from grokloop.evaluate import evaluate
from grokloop.metrics_log import append_row, read_rows
from grokloop.model import LoopedTransformer
from grokloop.optim import make_optimizer
from grokloop.runlock import run_lock
from grokloop.schedule import log_schedule
from grokloop.tracking import open_tracker
from grokloop.train.distill import teacher_answers
from grokloop.train.prepare import grok_splits, prepare, resolve_device, training_bank
from grokloop.train.progress import Progress
from grokloop.train.resume import current_config, log_resume, resume_point, rewind_metrics
from grokloop.train.rundir import check_start, failed_start, replace_failed_start
from grokloop.train.state import ResidentData, TrainState
from grokloop.train.step import train_step
from grokloop.train.stop import NAMES, Interrupted, StopSignals


def train(
    cfg: RunConfig, out_dir: str | Path, resume: bool = False, stop_named: bool = True
) -> dict:
    """Train `cfg` into `out_dir` (resume=true: continue the run there); returns its summary.
    SIGTERM or SIGINT checkpoints the step and raises Interrupted (grokloop/train/stop.py).
    stop_named=False: train.stop_at_grok is an experiment's, not the user's (`prepare`)."""
    out_dir = Path(out_dir)
    with StopSignals() as stop:
        try:
            return _train(cfg, out_dir, resume, stop, stop_named)
        except Interrupted as e:
            if e.step is not None:  # the loop checkpointed the step it stopped at
                raise
            raise Interrupted(e.signum, f"{e}; {_after_stop(out_dir)}") from None
        except torch.OutOfMemoryError as e:
            raise RuntimeError(
                f"out of memory ({str(e).splitlines()[0]}): lower train.batch_size "
                "(or train.eval_batch_size if it ran out while evaluating); "
                f"{_after_stop(out_dir)}"
            ) from None


def _train(
    cfg: RunConfig, out_dir: Path, resume: bool, stop: StopSignals, stop_named: bool = True
) -> dict:
    ds, eval_names, cfg = prepare(cfg, stop_named)  # cfg with the model's sizes resolved
    device = resolve_device(cfg.train.device)
    cfg, mode = with_mode(cfg, device, out_dir if resume else None)
    config = json.loads(json.dumps(cfg.to_dict()))  # as config.json holds it (tuples as lists)
    changes, done = check_start(cfg, out_dir, resume, config)  # writes nothing
    if done is not None:
        print(f"{out_dir} already finished this config; nothing to do")
        return done

    print(f"run directory: {out_dir.resolve()}{mode}", flush=True)
    with run_lock(out_dir), deterministic_algorithms(cfg.train.deterministic, device):
        if failed_start(out_dir):  # under the lock: no process is starting it now
            replace_failed_start(out_dir)
            changes = {}
        else:  # again: another process may have started or finished it while we checked
            changes, done = check_start(cfg, out_dir, resume, config)
            if done is not None:
                return done
        data = ResidentData.build(
            ds, eval_names, cfg.train.batch_size, cfg.train.loss_on_end_token, device
        )
        state, last_ckpt = start(cfg, ds, data, out_dir, resume, device, config, changes)
        if cfg.train.distill:
            data.teacher = teacher_answers(cfg, ds, data, device)
        tracker = open_tracker(cfg.train.logger, out_dir, state.step)
        try:
            summary = run_loop(cfg, data, state, out_dir, eval_names, last_ckpt, stop, tracker)
        except BaseException:
            tracker.close(failed=True)
            raise
        tracker.close(failed=False)
        return summary


def with_mode(cfg: RunConfig, device: torch.device, resumed: Path | None) -> tuple[RunConfig, str]:
    """cfg with train.precision / train.compile `auto` resolved (grokloop/accelerate.py: the
    mode a resumed run started with, else the machine's), so config.json records the mode; and
    what the run's first line adds about it ("" for the default, fp32 eager, asked for)."""
    tc = cfg.train
    saved = current_config(resumed) if resumed and (resumed / "config.json").exists() else None
    precision, compile, why = resolve_mode(tc.precision, tc.compile, device, saved)
    cfg = dataclasses.replace(
        cfg, train=dataclasses.replace(tc, precision=precision, compile=compile)
    )
    if why is None and precision == "fp32" and not compile:
        return cfg, ""
    asked = ", ".join(
        f"train.{k}={v}"
        for k, v in (("precision", tc.precision), ("compile", tc.compile))
        if v == "auto"
    )
    said = Mode(precision, compile, "").describe()
    return cfg, f" ({said}" + (f"; {asked}: {why})" if why else ")")


def _after_stop(out_dir: Path) -> str:
    """What the run directory holds after a run stopped early, and how to go on."""
    steps = list_checkpoints(out_dir)
    if steps:
        return f"resume=true continues from the checkpoint at step {steps[-1]}"
    return "nothing was checkpointed: the next start replaces the run directory"


@contextmanager
def deterministic_algorithms(on: bool, device: torch.device):
    """Deterministic kernels for the run, the previous setting restored after.

    On the CPU this makes a run a function of (seed, config, machine, torch version), with any
    number of threads: the one nondeterministic op we use is the embedding's backward (an
    index_put with accumulate), which otherwise sums rows in thread order.
    On a GPU it guarantees less: the same results on the same GPU model, driver, CUDA and torch
    version, using the deterministic kernel of each op where one exists; an op that has none
    raises an error naming it (then run with train.deterministic=false). cuBLAS needs
    CUBLAS_WORKSPACE_CONFIG set before its first use; we set :4096:8 if it is unset, which only
    takes effect if CUDA was not used earlier in this process.
    """
    if not on:
        yield
        return
    before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def fresh_state(cfg: RunConfig, data: ResidentData, device: torch.device) -> TrainState:
    """Model, optimizer and RNG streams of a new run, all drawn from cfg.seed."""
    torch.manual_seed(cfg.seed)
    model = LoopedTransformer(cfg.model).to(device)
    mode = accelerate_training(model, cfg.train, device)  # compile / precision; no-op by default
    model.cfg.device = str(device)
    opt = make_optimizer(model, cfg.optim)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    # best / soft_best: how much of each batch learned from each step, summed between evaluations
    chosen = torch.zeros(
        cfg.model.n_steps if cfg.train.depth in ("best", "soft_best") else 0, device=device
    )
    return TrainState(
        model,
        opt,
        gen,
        torch.arange(data.n_train, device=device),
        data.n_train,
        chosen,
        grads_finite=torch.ones((), dtype=torch.bool, device=device),
        precision=mode["precision"],
    )


def start(
    cfg: RunConfig,
    ds,
    data: ResidentData,
    out_dir: Path,
    resume: bool,
    device,
    config: dict,
    changes: dict,
) -> tuple[TrainState, Path | None]:
    """The state the loop starts from (fresh, train.init_from's weights, or the newest readable
    checkpoint of a resumed run) and the newest good checkpoint; writes config.json on a new
    run, rewinds metrics.jsonl and logs the resume on a resumed one."""
    tc = cfg.train
    state = fresh_state(cfg, data, device)
    got, old_rows, restarted = (
        resume_point(out_dir, tc.restart_if_damaged) if resume else (None, [], None)
    )
    if got is None and tc.init_from:  # a fresh start from another run's model (a curriculum stage)
        init_from(state.model, state.opt if tc.init_optimizer else None, tc.init_from)
    if state.model.memory is not None:  # train.bank, else the training graph (not init_from's)
        attach_training_bank(state.model, cfg, ds)

    # --- the run directory: config.json once, at the start; a resume is an event -------------
    dataset_hash = ds.content_hash() if callable(ds.content_hash) else ds.content_hash
    continuing = resume and (out_dir / "config.json").exists()
    if not continuing:
        atomic_write_text(
            out_dir / "config.json",
            json.dumps(
                config | {"code_version": code_version(), "dataset_hash": dataset_hash}, indent=2
            ),
        )
    last_ckpt = None  # the newest checkpoint known good: named when the run fails
    if got is not None:
        state.restore(got, device)
        last_ckpt = checkpoint_path(out_dir, state.step)
        rewind_metrics(out_dir, old_rows, state.step)
        print(f"resumed {out_dir} at step {state.step}")
    else:
        atomic_write_text(out_dir / "metrics.jsonl", "")
    if continuing:
        log_resume(out_dir, state.step, changes, tc.deterministic, dataset_hash, restarted)
        (out_dir / "summary.json").unlink(missing_ok=True)  # no longer finished: it continues
    return state, last_ckpt


def attach_training_bank(model, cfg: RunConfig, ds) -> None:
    """Give a memory model its bank: train.bank (its facts checked against the sha256 the run
    recorded when it was prepared), else the training graph's atomic facts."""
    bank = training_bank(cfg, ds)
    if cfg.train.bank and facts_sha256(bank) != cfg.train.bank_sha256:
        raise ValueError(
            f"train.bank={cfg.train.bank} changed while the run started (its facts' "
            f"sha256 is no longer {cfg.train.bank_sha256}); nothing was trained, run "
            "again"
        )
    model.memory.attach(bank)
    if cfg.train.bank:
        print(f"the memory reads train.bank={cfg.train.bank} ({len(bank):,} facts)", flush=True)


def step_plan(cfg: RunConfig) -> tuple[list[int], list[list[int]], list[int]]:
    """Each step's recurrence depth (random and poisson depth, plus any reveal delay), core
    schedule (mixed cores) and reveal delay (train.reveal_delay_max), drawn once from the seed,
    so a step's draw is a function of its index (exact on resume) and costs no host sync in the
    loop; [] where they do not apply."""
    tc = cfg.train
    depths = depth_sequence(tc, cfg.seed)
    delays = []
    if tc.reveal_delay_max:
        gen = torch.Generator().manual_seed(cfg.seed + 3)
        delays = torch.randint(tc.reveal_delay_max + 1, (tc.steps,), generator=gen).tolist()
        depths = [(depths[i] if depths else cfg.model.n_steps) + d for i, d in enumerate(delays)]
    schedules = []
    if tc.mix_cores:
        cores = torch.Generator().manual_seed(cfg.seed + 2)
        schedules = [
            torch.randint(
                len(cfg.model.bank), (depths[i] if depths else cfg.model.n_steps,), generator=cores
            ).tolist()
            for i in range(tc.steps)
        ]
    return depths, schedules, delays


def run_loop(
    cfg: RunConfig,
    data: ResidentData,
    state: TrainState,
    out_dir: Path,
    eval_names: list[str],
    last_ckpt: Path | None,
    stop: StopSignals,
    tracker,
) -> dict:
    """Step from state.step to train.steps (or until the stop_at_grok splits pass), evaluating
    and checkpointing on their log-spaced schedules; writes summary.json and returns it. On a
    signal it checkpoints the step it stopped at and raises Interrupted."""
    tc = cfg.train
    depths, schedules, delays = step_plan(cfg)
    eval_steps = set(log_schedule(tc.steps, tc.eval_every_min, tc.eval_every_max))
    ckpt_steps = set(log_schedule(tc.steps, tc.eval_every_min, tc.checkpoint_every_max, 5))
    metrics_path = out_dir / "metrics.jsonl"
    history = read_rows(metrics_path)
    t0 = time.perf_counter() - state.wall_before
    on_cpu = state.order.device.type == "cpu"
    progress = Progress(state.step, tc.steps, eval_names, tc.progress, bool(tc.stop_at_grok))
    state.model.train()
    stop.deferred = True  # a signal now stops after the step, at a checkpoint
    try:
        for step in range(state.step, tc.steps):
            done = step + 1
            # Checking the loss and gradients needs a host sync: every step on the CPU (free),
            # else where we evaluate or save, which is enough to never write a non-finite
            # checkpoint (a signal makes the step it stops at one of those).
            check = on_cpu or done in eval_steps or done in ckpt_steps or stop.signum is not None
            loss = train_step(
                state,
                cfg,
                data,
                depths[step] if depths else cfg.model.n_steps,
                schedules[step] if schedules else None,
                check,
                _last_good(last_ckpt),
                delays[step] if delays else 0,
            )
            progress.step()
            if done in eval_steps:
                row = evaluation_row(state, cfg, data, loss, time.perf_counter() - t0)
                history.append(row)
                append_row(metrics_path, row)
                tracker.log(row)
                progress.evaluation(row)
            grokked = bool(
                tc.stop_at_grok
                and history
                and done == history[-1]["step"]
                and all(history[-1][f"acc/{s}"] >= tc.grok_threshold for s in grok_splits(tc))
            )
            if done in ckpt_steps or grokked:  # a grokked run stops here: keep that model
                last_ckpt = save_state(out_dir, state, cfg, time.perf_counter() - t0)
            if grokked:
                break
            if stop.signum is not None and check:
                stop_at_step(out_dir, state, cfg, last_ckpt, time.perf_counter() - t0, stop)
    finally:
        stop.deferred = False
        progress.close()
    return write_summary(out_dir, history, eval_names, tc, time.perf_counter() - t0)


def stop_at_step(
    out_dir: Path,
    state: TrainState,
    cfg: RunConfig,
    last_ckpt: Path | None,
    wall_time_s: float,
    stop: StopSignals,
) -> None:
    """Checkpoint the step the run stopped at (unless the schedule just did), so resume=true
    continues from exactly there, then raise Interrupted (under submitit, hand over first)."""
    if last_ckpt != checkpoint_path(out_dir, state.step):
        last_ckpt = save_state(out_dir, state, cfg, wall_time_s)
    stop.hand_over()
    raise Interrupted(
        stop.signum,
        f"stopped by {NAMES.get(stop.signum, stop.signum)} at step "
        f"{state.step} of {cfg.train.steps}, checkpointed ({last_ckpt}); continue "
        "with the same command and resume=true",
        step=state.step,
    )


def evaluation_row(
    state: TrainState, cfg: RunConfig, data: ResidentData, loss: torch.Tensor, wall_time_s: float
) -> dict:
    """One metrics.jsonl row: the training loss, the weight norm, every split's accuracy and loss
    (grokloop/evaluate.py) and, for depth=best/soft_best, which step the batches learned from."""
    params = list(state.model.parameters())
    row = {
        "step": state.step,
        "loss/train": loss.item(),
        "weight_norm": math.sqrt(sum(p.detach().pow(2).sum().item() for p in params)),
    }
    # train.eval_precision=train: evaluate as the training forward computes (bf16 autocast)
    precision = state.precision if cfg.train.eval_precision == "train" else "fp32"
    with autocast(state.order.device, precision):
        row |= evaluate(
            state.model,
            data.data,
            data.eval_idx,
            cfg.model.n_steps,
            cfg.train.eval_batch_size,
            data.eval_cache,
        )
    if len(state.chosen):  # which step the batches learned from since the last evaluation
        row |= {
            f"depth/chosen_step/{t + 1}": v
            for t, v in enumerate((state.chosen / state.chosen.sum()).tolist())
        }
        state.chosen.zero_()
    row["wall_time_s"] = wall_time_s
    return row


def save_state(out_dir: Path, state: TrainState, cfg: RunConfig, wall_time_s: float) -> Path:
    """A checkpoint of everything the run needs to continue exactly from state.step."""
    tensors, opt_meta = state.checkpoint_tensors()
    return save_checkpoint(
        out_dir,
        state.step,
        state.model,
        tensors,
        {
            "optimizer": opt_meta,
            "cursor": state.cursor,
            "config": cfg.to_dict(),
            "wall_time_s": wall_time_s,
        },
    )


def write_summary(
    out_dir: Path, history: list[dict], eval_names: list[str], tc, wall_time_s: float
) -> dict:
    summary = summarize(history, eval_names, tc.grok_threshold)
    summary["wall_time_s"] = wall_time_s
    summary["code_version"] = code_version()
    summary["budget_steps"] = tc.steps  # what this summary finished; see finished_summary
    summary["deterministic"] = tc.deterministic
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2))
    return summary


def summarize(history: list[dict], splits: list[str], threshold: float) -> dict:
    first = {
        s: next((r["step"] for r in history if r.get(f"acc/{s}", 0) >= threshold), None)
        for s in splits
    }
    return {
        "final": history[-1] if history else {},
        "steps": history[-1]["step"] if history else 0,
        f"steps_to_{threshold}": first,
        "grokked": {s: v is not None for s, v in first.items()},
    }


def init_from(model, opt, run_dir) -> None:
    """Load the newest good checkpoint of `run_dir` into `model` (and `opt`, unless None)."""
    got = last_good_checkpoint(run_dir)
    if got is None:
        raise RuntimeError(f"train.init_from={run_dir}: no readable checkpoint to start from")
    weights, tensors, state = got
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise ValueError(
            f"train.init_from={run_dir}: its model does not fit this one ({e}); the "
            "model config must be the same"
        ) from None
    if opt is not None:
        optimizer_from_tensors(opt, tensors, state["optimizer"])


def _last_good(path: Path | None) -> str:
    return (
        f"the last good checkpoint is {path}"
        if path
        else "no checkpoint was written yet (the next start replaces the run directory)"
    )
