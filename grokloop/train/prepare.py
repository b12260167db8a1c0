"""Everything a run checks before it writes a file: the dataset, the evaluated splits, the
stopping splits, the end-token loss, the model's sizes resolved from the data, and a fact
memory's bank (train.bank, checked against the run)."""

from __future__ import annotations

import dataclasses

import torch

from datagen import load_or_build
from grokloop.bank import bank_option, facts_sha256
from grokloop.checkpoint import list_checkpoints
from grokloop.config import RunConfig, TrainConfig
from grokloop.memory import FactBank
from grokloop.tracking import check_logger


def resolve_device(name: str) -> torch.device:
    """train.device as a torch device (auto: cuda if there is one, else cpu); a ValueError naming
    the key if it is not a device, or not one this machine has."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(
            f"train.device={name!r} is not a device; use auto, cpu, cuda or cuda:N"
        ) from None
    backend = getattr(torch, device.type, None)
    available = getattr(backend, "is_available", None)
    if device.type != "cpu" and callable(available) and not available():
        raise ValueError(
            f"train.device={name}: this machine has no {device.type} device (or "
            f"torch was built without it); use train.device=auto or cpu"
        )
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(
            f"train.device={name}: this machine has {torch.cuda.device_count()} "
            "CUDA devices (cuda:0 ...); use train.device=cuda"
        )
    return device


def prepare(cfg: RunConfig, stop_named: bool = True):
    """Dataset, evaluated splits and the config with the model's sizes resolved (a new config;
    `cfg` is not changed), after every check, all before any run directory exists. stop_named=
    False: train.stop_at_grok came from an experiment, not the user, so where the data lacks the
    splits it names the run stops on the data's own held-out split (`with_held_out_stop`)."""
    check_logger(cfg.train.logger)  # its package installed, before the dataset is built
    resolve_device(cfg.train.device)
    ds = load_or_build(cfg.data, cfg.data_cache)
    if not ds.eval_splits:
        raise ValueError(
            f"the {ds.task!r} dataset has no split to evaluate (only train); a "
            "GrokkedTransformer folder (data.path) needs test.json or valid.json"
        )
    wanted = cfg.train.eval_splits or ds.eval_splits
    missing = [s for s in wanted if s not in ds.eval_splits]
    if missing:
        raise ValueError(
            f"train.eval_splits names {missing[0]!r}, which task {ds.task!r} does not "
            f"produce; its splits are {ds.eval_splits}"
        )
    if not stop_named and any(s not in wanted for s in grok_splits(cfg.train)):
        cfg = with_held_out_stop(cfg, wanted)
    for split in grok_splits(cfg.train):
        if split not in wanted:
            raise ValueError(
                f"train.stop_at_grok names {split!r}, which is not an evaluated "
                f"split; choose from {wanted} (several: a,b)"
            )
    if cfg.train.distill and not (ds.task == "mixture" and ds.stats["n_replayed"]):
        raise ValueError(
            f"train.distill={cfg.train.distill} reads the replayed examples of a mixture, and "
            f"this {ds.task!r} dataset replays none; set data.replay (curriculum.replay) > 0 "
            "or train.distill=0"
        )
    if cfg.train.loss_on_end_token and "</a>" not in ds.vocab.tokens:
        raise ValueError(
            f"train.loss_on_end_token=true needs a </a> token, which {ds.task!r} data "
            "in our layout lacks; export it (python -m datagen data=... out_dir=DIR "
            "format=grokked) and train on data=grokked data.path=DIR"
        )
    # The end-token loss reads the answer one position past the query: one more position.
    cfg = dataclasses.replace(
        cfg, model=cfg.model.resolved(len(ds.vocab), ds.n_ctx + int(cfg.train.loss_on_end_token))
    )
    if cfg.train.reveal_delay_max and cfg.model.injection == "none":
        raise ValueError(
            f"train.reveal_delay_max={cfg.train.reveal_delay_max} reveals the head by input "
            "injection, and model.injection=none; set model.injection=add"
        )
    if cfg.train.mix_cores and cfg.model.loops is not None:
        raise ValueError(
            f"train.mix_cores=true draws random schedules, and model.loops={cfg.model.loops} "
            "fixes one; drop one of them"
        )
    if cfg.train.mix_cores and len(cfg.model.bank) < 2:
        raise ValueError(
            "train.mix_cores=true needs a bank of several cores, e.g. model.core_sizes=[1,2]"
        )
    if cfg.model.d_vocab < len(ds.vocab) or cfg.model.n_ctx < ds.n_ctx:
        raise ValueError(
            f"model.d_vocab/n_ctx ({cfg.model.d_vocab}/{cfg.model.n_ctx}) are smaller "
            f"than the dataset's ({len(ds.vocab)}/{ds.n_ctx}); set them to 0 (auto)"
        )
    if cfg.model.memory == "facts" or cfg.train.bank:
        bank = training_bank(cfg, ds)  # raises, naming the fix: no atomic facts; train.bank
        if cfg.train.bank:  # with no memory, not a bank, or another vocabulary
            sha = facts_sha256(bank)
            if cfg.train.bank_sha256 not in (None, sha):
                raise ValueError(
                    f"train.bank={cfg.train.bank} holds facts with sha256 {sha}, not "
                    f"train.bank_sha256={cfg.train.bank_sha256}; pass the bank those "
                    "facts came from, or leave out train.bank_sha256"
                )
            cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, bank_sha256=sha))
    elif cfg.train.memory_address_loss:
        raise ValueError(
            f"train.memory_address_loss={cfg.train.memory_address_loss} trains a fact "
            "memory's addressing; this model has none (set model.memory=facts)"
        )
    if cfg.train.init_from and not list_checkpoints(cfg.train.init_from):
        raise FileNotFoundError(
            f"train.init_from={cfg.train.init_from} holds no checkpoint to "
            "start from; give a run directory with checkpoints/"
        )
    return ds, wanted, cfg


def training_bank(cfg: RunConfig, ds) -> FactBank:
    """The bank a memory model trains with: train.bank's, checked against the run (bank_option:
    the model has a memory, the directory is a bank over the dataset's vocabulary), else the
    training graph's atomic facts."""
    if not cfg.train.bank:
        return FactBank.from_dataset(ds)  # raises, naming the fix, if the task has no atomic facts
    return bank_option(cfg.train.bank, ds.vocab, cfg.model.memory, key="train.bank")[0]


HELD_OUT = ("valid", "test_inferred_id", "test")  # in the order a run should choose by them


def with_held_out_stop(cfg: RunConfig, splits: list[str]) -> RunConfig:
    """cfg stopping on the first of HELD_OUT the data evaluates (valid: the split choices are
    made on), or on none, with one line saying so: an experiment's stop_at_grok names its own
    data's split (the default experiment's `test`), which other data (data=grokked) may lack."""
    held_out = next((s for s in HELD_OUT if s in splits), None)
    print(
        f"train.stop_at_grok={cfg.train.stop_at_grok} (the experiment's) is not a split of this "
        f"data; "
        + (
            f"stopping on {held_out} instead"
            if held_out
            else "no held-out split to stop on: training the whole budget"
        ),
        flush=True,
    )
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, stop_at_grok=held_out))


def grok_splits(tc: TrainConfig) -> list[str]:
    """The splits train.stop_at_grok names ("test", or "test_a,test_b": stop when all pass)."""
    return [s.strip() for s in tc.stop_at_grok.split(",")] if tc.stop_at_grok else []
