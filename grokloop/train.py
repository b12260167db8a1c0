"""Training: one explicit loop, data on the device, loss on the answer token.

    python -m grokloop.train experiment=composition_small [key=value ...] [resume=true]

`train(cfg, out_dir)` is the pure entry; `main` is the thin Hydra wrapper. A fact-memory model
(model.memory=facts) reads the training graph's atomic facts, or with train.bank=DIR that bank
directory (python -m grokloop.bank build), checked against the run before any work; config.json
records its path and facts' sha256 (train.bank_sha256). A run directory holds
config.json (written once, when the run starts, with the code version and the dataset's content
hash), metrics.jsonl (one row per evaluation), summary.json, checkpoints/, resume_log.jsonl (one
event per resume) and, while a process trains there, .lock (grokloop/runlock.py).

Runs you can trust:
  - resume=true compares the config with the saved one before touching anything; only the keys
    in RESUMABLE may change (recorded in resume_log.jsonl), any other difference is refused;
  - one process per run directory (RUN/.lock);
  - train.deterministic=true (default): same seed, config and machine give the same metrics and
    weights, multithreaded (see `deterministic_algorithms`);
  - no resume from a run whose checkpoints are all damaged, unless train.restart_if_damaged=true;
  - a non-finite loss or gradient stops the run before the update, so no checkpoint holds NaN.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch

from datagen import load_or_build
from grokloop.accelerate import accelerate_training
from grokloop.adaptive.depth import depth_loss, depth_sequence
from grokloop.bank import bank_option, facts_sha256
from grokloop.checkpoint import (checkpoint_path, ckpt_dir, last_good_checkpoint,
                                 list_checkpoints, newest_readable, optimizer_from_tensors,
                                 optimizer_to_tensors, save_checkpoint)
from grokloop.config import ModelConfig, OptimConfig, RunConfig, TrainConfig
from grokloop.evaluate import answer_prefix, evaluate
from grokloop.losses import answer_and_end_loss, with_answer
from grokloop.memory import FactBank, address_loss
from grokloop.model import LoopedTransformer
from grokloop.optim import grokfast_ema, lr_at, make_optimizer, perpendicular_grad
from grokloop.provenance import atomic_write_text, code_version
from grokloop.runlock import run_lock
from grokloop.schedule import log_schedule

# Keys that may change when a run is resumed, because they change how the run is driven or
# reported, not what it computes: the step budget (extending a run is the point of resuming),
# progress bar and report, where it runs and how evaluation is batched, where the dataset is
# cached (its content is checked by hash), the kernel choice, and the resume policy itself.
# Every other difference from the saved config.json refuses the resume.
RESUMABLE = frozenset({"train.steps", "train.progress", "train.report", "train.device",
                       "train.eval_batch_size", "train.deterministic", "train.restart_if_damaged",
                       "data_cache"})
BOOKKEEPING = ("code_version", "dataset_hash")   # config.json keys that are not config


def resolve_device(name: str) -> torch.device:
    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)


def prepare(cfg: RunConfig):
    """Dataset, evaluated splits and the config with the model's sizes resolved (a new config;
    `cfg` is not changed), after every check, all before any run directory exists."""
    ds = load_or_build(cfg.data, cfg.data_cache)
    wanted = cfg.train.eval_splits or ds.eval_splits
    missing = [s for s in wanted if s not in ds.eval_splits]
    if missing:
        raise ValueError(f"train.eval_splits names {missing[0]!r}, which task {ds.task!r} does not "
                         f"produce; its splits are {ds.eval_splits}")
    for split in grok_splits(cfg.train):
        if split not in wanted:
            raise ValueError(f"train.stop_at_grok names {split!r}, which is not an evaluated "
                             f"split; choose from {wanted} (several: a,b)")
    if cfg.train.loss_on_end_token and "</a>" not in ds.vocab.tokens:
        raise ValueError(f"train.loss_on_end_token=true needs a </a> token, which {ds.task!r} data "
                         "in our layout lacks; export it (python -m datagen data=... out_dir=DIR "
                         "format=grokked) and train on data=grokked data.path=DIR")
    # The end-token loss reads the answer one position past the query: one more position.
    cfg = dataclasses.replace(cfg, model=cfg.model.resolved(
        len(ds.vocab), ds.n_ctx + int(cfg.train.loss_on_end_token)))
    if cfg.train.mix_cores and len(cfg.model.bank) < 2:
        raise ValueError("train.mix_cores=true needs a bank of several cores, e.g. "
                         "model.core_sizes=[1,2]")
    if cfg.model.d_vocab < len(ds.vocab) or cfg.model.n_ctx < ds.n_ctx:
        raise ValueError(f"model.d_vocab/n_ctx ({cfg.model.d_vocab}/{cfg.model.n_ctx}) are smaller "
                         f"than the dataset's ({len(ds.vocab)}/{ds.n_ctx}); set them to 0 (auto)")
    if cfg.model.memory == "facts" or cfg.train.bank:
        bank = training_bank(cfg, ds)   # raises, naming the fix: no atomic facts; train.bank
        if cfg.train.bank:              # with no memory, not a bank, or another vocabulary
            sha = facts_sha256(bank)
            if cfg.train.bank_sha256 not in (None, sha):
                raise ValueError(f"train.bank={cfg.train.bank} holds facts with sha256 {sha}, not "
                                 f"train.bank_sha256={cfg.train.bank_sha256}; pass the bank those "
                                 "facts came from, or leave out train.bank_sha256")
            cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, bank_sha256=sha))
    elif cfg.train.memory_address_loss:
        raise ValueError(f"train.memory_address_loss={cfg.train.memory_address_loss} trains a fact "
                         "memory's addressing; this model has none (set model.memory=facts)")
    if cfg.train.init_from and not list_checkpoints(cfg.train.init_from):
        raise FileNotFoundError(f"train.init_from={cfg.train.init_from} holds no checkpoint to start "
                                "from; give a run directory with checkpoints/")
    return ds, wanted, cfg


def training_bank(cfg: RunConfig, ds) -> FactBank:
    """The bank a memory model trains with: train.bank's, checked against the run (bank_option:
    the model has a memory, the directory is a bank over the dataset's vocabulary), else the
    training graph's atomic facts."""
    if not cfg.train.bank:
        return FactBank.from_dataset(ds)   # raises, naming the fix, if the task has no atomic facts
    return bank_option(cfg.train.bank, ds.vocab, cfg.model.memory, key="train.bank")[0]


def grok_splits(tc: TrainConfig) -> list[str]:
    """The splits train.stop_at_grok names ("test", or "test_a,test_b": stop when all pass)."""
    return [s.strip() for s in tc.stop_at_grok.split(",")] if tc.stop_at_grok else []


def train(cfg: RunConfig, out_dir: str | Path, resume: bool = False) -> dict:
    ds, eval_names, cfg = prepare(cfg)   # cfg with the model's sizes resolved
    out_dir = Path(out_dir)
    config = json.loads(json.dumps(cfg.to_dict()))   # as config.json holds it (tuples as lists)

    # --- checks that write nothing ------------------------------------------------------------
    if not resume and (out_dir / "metrics.jsonl").exists():
        raise FileExistsError(f"{out_dir} already holds a run; pass resume=true to continue it "
                              "or choose another out_dir")
    changes = {}
    if resume and (out_dir / "config.json").exists():
        changes = resume_changes(out_dir, config)    # raises on a change outside RESUMABLE
        if (done := finished_summary(cfg, out_dir)) is not None:
            print(f"{out_dir} already finished this config; nothing to do")
            return done

    print(f"run directory: {out_dir.resolve()}", flush=True)
    device = resolve_device(cfg.train.device)
    with run_lock(out_dir), deterministic_algorithms(cfg.train.deterministic, device):
        if not resume and (out_dir / "metrics.jsonl").exists():   # started while we checked
            raise FileExistsError(f"{out_dir} already holds a run; pass resume=true to continue it")
        return _train(cfg, ds, eval_names, out_dir, resume, device, config, changes)


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
    before = torch.are_deterministic_algorithms_enabled(), \
        torch.is_deterministic_algorithms_warn_only_enabled()
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def _train(cfg, ds, eval_names, out_dir: Path, resume: bool, device, config: dict,
           changes: dict) -> dict:
    tc = cfg.train

    # --- data, resident on the device for the whole run -----------------------------------
    data = {k: torch.as_tensor(getattr(ds, k), device=device)
            for k in ("inputs", "answer_pos", "answers", "hops")}
    train_idx = torch.as_tensor(ds.splits["train"], device=device)
    eval_idx = {s: torch.as_tensor(ds.splits[s], device=device) for s in eval_names}
    n_train = len(train_idx)
    batch = min(tc.batch_size or n_train, n_train)
    train_tokens = answer_prefix(data["inputs"], data["answer_pos"], train_idx)
    end_id = ds.vocab.id("</a>") if tc.loss_on_end_token else None
    if end_id is not None:   # the authors' loss: answer, then </a> (grokloop/losses.py)
        train_tokens = with_answer(train_tokens, data["answer_pos"], data["answers"])

    # --- model, optimizer, RNG ----------------------------------------------------------------
    torch.manual_seed(cfg.seed)
    model = LoopedTransformer(cfg.model).to(device)
    accelerate_training(model, tc, device)   # train.compile / train.precision; no-op by default
    model.cfg.device = str(device)
    opt = make_optimizer(model, cfg.optim)
    params = list(model.parameters())
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    order, cursor, ema, start, wall_before = torch.arange(n_train, device=device), n_train, {}, 0, 0.0
    # best / soft_best: how much of each batch learned from each step, summed between evaluations
    chosen = torch.zeros(cfg.model.n_steps if tc.depth in ("best", "soft_best") else 0, device=device)

    # --- what a resume continues from: the newest readable checkpoint, or nothing --------------
    metrics_path = out_dir / "metrics.jsonl"
    got, damaged = newest_readable(out_dir) if resume else (None, [])
    old_rows = [r for r in metrics_path.read_text().splitlines() if r] \
        if resume and metrics_path.exists() else []
    restarted = None
    if resume and got is None and (damaged or old_rows):
        why = (f"every checkpoint is damaged:\n" + "".join(f"  {p}: {e}\n" for p, e in damaged)
               if damaged else f"it holds {len(old_rows)} metrics rows but no checkpoint\n")
        if not tc.restart_if_damaged:
            raise RuntimeError(f"cannot resume {out_dir}: {why}Nothing was changed. Pass "
                               "train.restart_if_damaged=true to start it over from step 0.")
        warnings.warn(f"restarting {out_dir} from step 0: {why.strip()}")
        restarted = why.strip()
        for path, _ in damaged:   # kept for inspection, out of the way of the new checkpoints
            (ckpt_dir(out_dir) / "damaged").mkdir(exist_ok=True)
            for f in list(ckpt_dir(out_dir).glob(path.stem + ".*")):
                f.rename(ckpt_dir(out_dir) / "damaged" / f.name)
    for _, e in (damaged if got is not None else []):
        warnings.warn(f"{e}; falling back to the previous checkpoint")
    if got is None and tc.init_from:   # a fresh start from another run's model (a curriculum stage)
        init_from(model, opt if tc.init_optimizer else None, tc.init_from)
    if model.memory is not None:   # train.bank, else the training graph (not init_from's bank)
        bank = training_bank(cfg, ds)
        if tc.bank and facts_sha256(bank) != tc.bank_sha256:
            raise ValueError(f"train.bank={tc.bank} changed while the run started (its facts' "
                             f"sha256 is no longer {tc.bank_sha256}); nothing was trained, run "
                             "again")
        model.memory.attach(bank)
        if tc.bank:
            print(f"the memory reads train.bank={tc.bank} ({len(bank):,} facts)", flush=True)

    # --- the run directory: config.json once, at the start; a resume is an event -------------
    dataset_hash = ds.content_hash() if callable(ds.content_hash) else ds.content_hash
    continuing = resume and (out_dir / "config.json").exists()
    if not continuing:
        atomic_write_text(out_dir / "config.json", json.dumps(
            config | {"code_version": code_version(), "dataset_hash": dataset_hash}, indent=2))
    last_ckpt = None   # the newest checkpoint known good: named when the run fails
    if got is not None:
        weights, tensors, state = got
        model.load_state_dict(weights)
        optimizer_from_tensors(opt, tensors, state["optimizer"])
        ema = {int(k[4:]): v.to(device) for k, v in tensors.items() if k.startswith("ema.")}
        order, cursor = tensors["data.order"].to(device), state["cursor"]
        chosen = tensors.get("depth.chosen", chosen).to(device)
        torch.set_rng_state(tensors["rng.torch"])
        gen.set_state(tensors["rng.gen"])
        start, wall_before = state["step"], state["wall_time_s"]
        last_ckpt = checkpoint_path(out_dir, start)
        rows = [r for r in map(json.loads, old_rows) if r["step"] <= start]
        atomic_write_text(metrics_path, "".join(json.dumps(r) + "\n" for r in rows))
        print(f"resumed {out_dir} at step {start}")
    else:
        atomic_write_text(metrics_path, "")
    if continuing:
        log_resume(out_dir, start, changes, tc.deterministic, dataset_hash, restarted)
        (out_dir / "summary.json").unlink(missing_ok=True)   # no longer finished: it continues

    # Random and poisson depth: the whole sequence is drawn once from the seed, so a step's depth
    # is a function of its index (exact on resume) and costs no host sync in the loop.
    depths = depth_sequence(tc, cfg.seed)
    schedules = []   # mixed cores: every step's schedule drawn once from the seed, likewise
    if tc.mix_cores:
        cores = torch.Generator().manual_seed(cfg.seed + 2)
        schedules = [torch.randint(len(cfg.model.bank), (depths[i] if depths else cfg.model.n_steps,),
                                   generator=cores).tolist() for i in range(tc.steps)]
    moe = cfg.model.moe_experts > 0
    eval_steps = set(log_schedule(tc.steps, tc.eval_every_min, tc.eval_every_max))
    ckpt_steps = set(log_schedule(tc.steps, tc.eval_every_min, tc.checkpoint_every_max, 5))
    history = [json.loads(line) for line in metrics_path.read_text().splitlines()]
    t0 = time.perf_counter() - wall_before
    grads_finite = torch.ones((), dtype=torch.bool, device=device)   # since the last check

    from tqdm import tqdm
    # A run that stops at grok ends at an unknown step: no ETA for the full budget.
    fmt = "{n_fmt}/{total_fmt} steps (stops at grok) [{elapsed}, {rate_fmt}{postfix}]" \
        if tc.stop_at_grok else None
    bar = tqdm(range(start, tc.steps), initial=start, total=tc.steps, disable=not tc.progress,
               dynamic_ncols=True, mininterval=1.0, bar_format=fmt)
    model.train()
    for step in bar:
        # --- batch: on-device shuffle, one permutation per epoch --------------------------------
        if cursor + batch > n_train:
            order, cursor = torch.randperm(n_train, generator=gen, device=device), 0
        idx = train_idx[order[cursor:cursor + batch]]
        cursor += batch
        n_steps = depths[step] if depths else cfg.model.n_steps

        if end_id is not None:
            loss, share = answer_and_end_loss(model, train_tokens[idx], data["answer_pos"][idx],
                                              data["answers"][idx], end_id, n_steps,
                                              schedules[step] if schedules else None,
                                              tc.grad_last_k, tc.loss, tc.float64_loss)
        else:
            loss, share = depth_loss(model, train_tokens[idx], data["answer_pos"][idx],
                                     data["answers"][idx], tc.depth, n_steps,
                                     schedules[step] if schedules else None, tc.grad_last_k,
                                     tc.loss, tc.float64_loss, tc.best_step_tol, tc.soft_best_tau)
        if len(chosen):
            chosen += share   # stays on the device; read at evaluation
        if moe and tc.moe_balance:
            loss = loss + tc.moe_balance * model.moe_balance_loss()
        if tc.memory_address_loss:   # the batch's atomic queries `h r` point at their own slot
            atomic = idx[data["hops"][idx] == 1]
            if len(atomic):
                loss = loss + tc.memory_address_loss * address_loss(model, data["inputs"][atomic, :2])
        # Checking the loss and gradients needs a host sync: every step on the CPU (free), else
        # where we evaluate or save, which is enough to never write a non-finite checkpoint.
        check = device.type == "cpu" or step + 1 in eval_steps or step + 1 in ckpt_steps
        if check and not torch.isfinite(loss):
            after = "" if grads_finite else " after non-finite gradients since the last check"
            raise FloatingPointError(f"loss became {loss.item()} at step {step}{after}; "
                                     f"{_last_good(last_ckpt)}. Lower optim.lr, or try "
                                     "train.float64_loss=true / train.loss=stablemax")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.optim.grokfast_lambda > 0:
            grokfast_ema(params, ema, cfg.optim.grokfast_alpha, cfg.optim.grokfast_lambda)
        if cfg.optim.perpendicular_grad:
            perpendicular_grad(params)
        # A finite loss can still give non-finite gradients (an overflow in backward), and one
        # update with them puts NaN in the weights: the total norm says so before opt.step.
        if cfg.optim.grad_clip:
            norm = torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
        grads_finite &= torch.isfinite(norm)   # on the device: no sync until the check
        if check and not grads_finite:
            when = f"at step {step}" if device.type == "cpu" else f"by step {step}"
            raise FloatingPointError(f"gradients became non-finite {when} (total norm "
                                     f"{norm.item()}, loss {loss.item():.4g}); "
                                     f"{_last_good(last_ckpt)}. Lower optim.lr, or try "
                                     "train.float64_loss=true / a smaller optim.grad_clip")
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg.optim)
        opt.step()

        done = step + 1
        if done in eval_steps:
            row = {"step": done, "loss/train": loss.item(),
                   "weight_norm": math.sqrt(sum(p.detach().pow(2).sum().item() for p in params))}
            row |= evaluate(model, data, eval_idx, cfg.model.n_steps, tc.eval_batch_size)
            if len(chosen):   # which step the batches learned from since the last evaluation
                row |= {f"depth/chosen_step/{t + 1}": v for t, v in
                        enumerate((chosen / chosen.sum()).tolist())}
                chosen.zero_()
            row["wall_time_s"] = time.perf_counter() - t0
            history.append(row)
            with metrics_path.open("a") as f:
                f.write(json.dumps(row) + "\n")
            bar.set_postfix({"loss": f"{row['loss/train']:.3g}"} |
                            {s: f"{row[f'acc/{s}']:.3f}" for s in eval_names[:3]})
        grokked = bool(tc.stop_at_grok and history and done == history[-1]["step"] and
                       all(history[-1][f"acc/{s}"] >= tc.grok_threshold for s in grok_splits(tc)))
        if done in ckpt_steps or grokked:  # a grokked run stops here: keep that model
            tensors, opt_meta = optimizer_to_tensors(opt)
            tensors |= {f"ema.{i}": v for i, v in ema.items()}
            tensors |= {"data.order": order, "rng.torch": torch.get_rng_state(),
                        "rng.gen": gen.get_state(), "depth.chosen": chosen}
            last_ckpt = save_checkpoint(out_dir, done, model, tensors,
                                        {"optimizer": opt_meta, "cursor": cursor,
                                         "config": cfg.to_dict(),
                                         "wall_time_s": time.perf_counter() - t0})
        if grokked:
            break
    bar.close()

    summary = summarize(history, eval_names, tc.grok_threshold)
    summary["wall_time_s"] = time.perf_counter() - t0
    summary["code_version"] = code_version()
    summary["budget_steps"] = tc.steps    # what this summary finished; see finished_summary
    summary["deterministic"] = tc.deterministic
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2))
    return summary


def init_from(model, opt, run_dir) -> None:
    """Load the newest good checkpoint of `run_dir` into `model` (and `opt`, unless None)."""
    got = last_good_checkpoint(run_dir)
    if got is None:
        raise RuntimeError(f"train.init_from={run_dir}: no readable checkpoint to start from")
    weights, tensors, state = got
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise ValueError(f"train.init_from={run_dir}: its model does not fit this one ({e}); the "
                         "model config must be the same") from None
    if opt is not None:
        optimizer_from_tensors(opt, tensors, state["optimizer"])


def _last_good(path: Path | None) -> str:
    return f"the last good checkpoint is {path}" if path else "no checkpoint was written yet"


# --- the saved config, resumes, finished runs ---------------------------------------------------

def flatten(d: dict, prefix: str = "") -> dict:
    """{"train": {"steps": 5}} -> {"train.steps": 5}."""
    out = {}
    for k, v in d.items():
        out |= flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v}
    return out


_ABSENT = object()
_SECTIONS = {"model": ModelConfig, "optim": OptimConfig, "train": TrainConfig}


def _default(key: str):
    """The dataclass default of a config key (e.g. train.deterministic), or _ABSENT."""
    section, _, name = key.rpartition(".")
    cls = _SECTIONS.get(section) if section else RunConfig
    for f in dataclasses.fields(cls) if cls else ():
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
    return _ABSENT


def config_diff(saved: dict, new: dict) -> dict[str, tuple]:
    """{key: (old, new)} for every differing config key (bookkeeping keys aside). A key the saved
    config lacks counts as unchanged when the new value is its default: the run predates the key,
    and a new key's default keeps the old behaviour."""
    old = flatten({k: v for k, v in saved.items() if k not in BOOKKEEPING})
    new = flatten({k: v for k, v in new.items() if k not in BOOKKEEPING})
    diff = {}
    for k in sorted(old.keys() | new.keys()):
        a, b = old.get(k, _ABSENT), new.get(k, _ABSENT)
        if a is _ABSENT and b == _default(k):
            continue
        if a != b:
            diff[k] = ("<absent>" if a is _ABSENT else a, "<absent>" if b is _ABSENT else b)
    return diff


def _events(out_dir: Path) -> list[dict]:
    log = out_dir / "resume_log.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def current_config(out_dir: Path) -> dict:
    """The run's config as it stands: config.json with every logged resume's changes applied
    (flattened keys)."""
    saved = json.loads((out_dir / "config.json").read_text())
    flat = flatten({k: v for k, v in saved.items() if k not in BOOKKEEPING})
    for event in _events(out_dir):
        flat |= {k: change["new"] for k, change in event.get("changed", {}).items()}
    return flat


def resume_changes(out_dir: Path, config: dict) -> dict[str, tuple]:
    """The changes a resume of out_dir with `config` makes, relative to the run's current config;
    a ValueError naming every key that differs from config.json outside RESUMABLE."""
    saved = json.loads((out_dir / "config.json").read_text())
    refused = {k: v for k, v in config_diff(saved, config).items() if k not in RESUMABLE}
    if refused:
        lines = "".join(f"\n  {k}: {old!r} -> {new!r}" for k, (old, new) in refused.items())
        raise ValueError(f"cannot resume {out_dir} with a different config; these keys differ from "
                         f"its config.json:{lines}\nOnly {sorted(RESUMABLE)} may change on resume. "
                         "Nothing was changed; start a new run (another out_dir) instead.")
    current, new = current_config(out_dir), flatten(config)
    return {k: (current.get(k), v) for k, v in new.items() if k in RESUMABLE and current.get(k) != v
            and not (k not in current and v == _default(k))}


def log_resume(out_dir: Path, step: int, changes: dict, deterministic: bool, dataset_hash: str,
               restarted: str | None) -> None:
    """Append one resume event to RUN/resume_log.jsonl (config.json stays as the run started)."""
    saved_hash = json.loads((out_dir / "config.json").read_text()).get("dataset_hash")
    event = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "step": step,
             "changed": {k: {"old": old, "new": new} for k, (old, new) in changes.items()},
             "code_version": code_version(), "deterministic": deterministic}
    if saved_hash is not None and saved_hash != dataset_hash:
        warnings.warn(f"{out_dir}: the dataset's content differs from the one this run started "
                      f"with (sha256 {saved_hash[:12]}... -> {dataset_hash[:12]}...); the data "
                      "generator changed. Continuing; recorded in resume_log.jsonl")
        event["dataset_hash"] = {"old": saved_hash, "new": dataset_hash}
    if restarted:
        event["restarted_from_scratch"] = restarted
    with (out_dir / "resume_log.jsonl").open("a") as f:
        f.write(json.dumps(event) + "\n")


def finished_summary(cfg: RunConfig, out_dir: Path) -> dict | None:
    """The summary of a run in out_dir that already finished this config, else None, so a
    re-launched sweep with resume=true skips its finished runs and extends one given more steps.
    Finished: the config matches config.json outside RESUMABLE, and summary.json was written
    for this train.steps budget (the budget config.json holds for summaries that predate it)."""
    summary, config = out_dir / "summary.json", out_dir / "config.json"
    if not (summary.exists() and config.exists()):
        return None
    saved = json.loads(config.read_text())
    if any(k not in RESUMABLE for k in config_diff(saved, json.loads(json.dumps(cfg.to_dict())))):
        return None
    done = json.loads(summary.read_text())
    return done if done.get("budget_steps", saved["train"]["steps"]) == cfg.train.steps else None


def summarize(history: list[dict], splits: list[str], threshold: float) -> dict:
    first = {s: next((r["step"] for r in history if r.get(f"acc/{s}", 0) >= threshold), None)
             for s in splits}
    return {"final": history[-1] if history else {}, "steps": history[-1]["step"] if history else 0,
            f"steps_to_{threshold}": first, "grokked": {s: v is not None for s, v in first.items()}}


def main(argv: list[str] | None = None) -> None:
    from grokloop import cli
    from grokloop.config import run_config_from_dict

    def _main(d: dict) -> None:   # the composed, type-checked conf/train.yaml as a dict
        out_dir, resume = d.pop("out_dir"), d.pop("resume")
        cfg = run_config_from_dict(d)      # every config error surfaces here, before any file
        summary = train(cfg, out_dir, resume=resume)
        final = {k: round(v, 4) for k, v in summary["final"].items() if k.startswith("acc/")
                 and k.count("/") == 1}
        print(f"final {final}")
        print(f"steps to {cfg.train.grok_threshold}: {summary[f'steps_to_{cfg.train.grok_threshold}']}")
        if cfg.train.report:
            from reports import write_run_report
            write_run_report(out_dir)
        print(f"run directory: {Path(out_dir).resolve()}")

    cli.run("train", _main, argv)


if __name__ == "__main__":
    # Run the imported module, not __main__: a sweep launcher (joblib, submitit) then pickles the
    # training functions by reference instead of by value.
    from grokloop.train import main as imported_main
    imported_main()
