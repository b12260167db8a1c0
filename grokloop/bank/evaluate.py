"""`python -m grokloop.bank eval ...`: a run's frozen memory model reading a bank (its own, or one
swapped in), accuracy per split and hop count, and how often the memory retrieves the queried
fact at each step."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from datagen import load_or_build
from datagen.provenance import code_version, machine
from grokloop.bank.build import run_dataset
from grokloop.bank.entities import attach_extension, check_extension
from grokloop.bank.files import (
    attach_bank,
    bank_bytes,
    check_fits,
    facts_sha256,
    load_bank,
    read_manifest,
    vocab_sha256,
)
from grokloop.bank.grow import grow
from grokloop.bank.options import BankCommand
from grokloop.checkpoint import last_good_checkpoint, load_model
from grokloop.config import as_data_config
from grokloop.evaluate import evaluate
from grokloop.memory import FactBank
from grokloop.stats import acc_row


def retrieval(model, bank: FactBank, tokens: torch.Tensor, batch_size: int) -> list[float]:
    """For atomic queries `h r` [n, 2]: per step, the fraction whose top-1 memory slot at the
    relation's position holds fact (h, r) (any tail: an edited fact counts)."""
    hits, n_steps = None, model.n_steps
    for chunk in tokens.split(batch_size):
        slots = {}
        hooks = [
            (f"steps.{s}.memory.hook_slots", lambda a, hook, s=s: slots.__setitem__(s, a))
            for s in range(n_steps)
        ]
        model.run_with_hooks(chunk, fwd_hooks=hooks)
        heads, rels = bank.head.to(chunk.device), bank.relation.to(chunk.device)
        got = torch.stack([slots[s][:, 1, 0] for s in range(n_steps)])  # [steps, n]
        ok = (heads[got] == chunk[:, 0]) & (rels[got] == chunk[:, 1])
        hits = ok.sum(1) if hits is None else hits + ok.sum(1)
    return (hits.float() / len(tokens)).tolist()


def load_for_eval(cmd: BankCommand, need_memory: bool = True):
    """(run config, run dataset, dataset, bank manifest or None, model, step) of an eval or
    edit_eval command, every check done before the model is loaded: the run, the bank against
    its vocabulary, the data, the splits named."""
    run_cfg, run_ds = run_dataset(cmd.run_dir)
    has_memory = run_cfg["model"].get("memory", "none") != "none"
    if (need_memory or cmd.bank) and not has_memory:
        raise ValueError(
            f"run_dir={cmd.run_dir} has no memory (model.memory=none); "
            f"{'bank=' if cmd.bank else 'bank ' + cmd.action[0]} needs a run "
            "trained with model.memory=facts"
            + (
                " (edit it by fine-tuning with method=finetune)"
                if cmd.action[0] == "edit_eval"
                else ""
            )
        )
    manifest = None
    if cmd.bank:
        manifest = read_manifest(cmd.bank)
        if "extends" in manifest:  # a bank that adds entities (grokloop/bank/entities.py)
            check_extension(
                manifest,
                cmd.bank,
                run_ds.vocab,
                run_cfg["model"],
                learned_ok=cmd.method == "finetune",
            )
        else:
            check_fits(manifest, cmd.bank, run_ds.vocab)
    ds = run_ds
    if cmd.data:
        ds = load_or_build(as_data_config(cmd.data), cmd.data_cache)
        if vocab_sha256(ds.vocab) != vocab_sha256(run_ds.vocab):
            raise ValueError(
                f"data has another vocabulary ({len(ds.vocab)} tokens) than run_dir="
                f"{cmd.run_dir} ({len(run_ds.vocab)}); evaluate on data with the "
                "run's entities and relations"
            )
    missing = [s for s in cmd.splits if s not in ds.eval_splits]
    if cmd.top_k is not None and cmd.top_k < 1:
        raise ValueError(f"top_k={cmd.top_k} must be at least 1 (slots read per position)")
    if cmd.top_k is not None and not has_memory:
        raise ValueError(f"top_k={cmd.top_k}: run_dir={cmd.run_dir} has no memory to read")
    if missing:
        raise ValueError(
            f"splits names {missing[0]!r}, which this dataset does not have; it has "
            f"{ds.eval_splits}"
        )
    got = last_good_checkpoint(cmd.run_dir) if cmd.step is None else None
    step = got[2]["step"] if got is not None else cmd.step
    model, _, _ = load_model(cmd.run_dir, step)
    if cmd.bank and "extends" in manifest and model.entity_keys is None:
        # learned embeddings (method=finetune only): a grown table, rows for the new entities
        model = grow(model, manifest["extends"]["new_entities"], seed=run_cfg.get("seed") or 0)
        model.memory.attach(
            load_bank(
                cmd.bank,
                check_extension(
                    manifest, cmd.bank, run_ds.vocab, run_cfg["model"], learned_ok=True
                ),
            )[0]
        )
    elif cmd.bank and "extends" in manifest:
        attach_extension(model, cmd.bank, run_ds.vocab, run_cfg["model"])
    elif cmd.bank:
        attach_bank(model, cmd.bank, run_ds.vocab)
    if cmd.n_steps:
        model.set_n_steps(cmd.n_steps)
    if cmd.top_k:
        model.memory.top_k = cmd.top_k
    return run_cfg, run_ds, ds, manifest, model, step


@torch.no_grad()
def evaluate_bank(cmd: BankCommand) -> dict:
    """`python -m grokloop.bank eval`: the run's frozen model reading a bank, on every split, with
    the memory's retrieval per step; the summary in the results schema (the command writes it)."""
    run_cfg, run_ds, ds, manifest, model, step = load_for_eval(cmd)
    splits = cmd.splits or ds.eval_splits
    bank = model.memory.bank

    t = time.perf_counter()
    data = {k: torch.as_tensor(getattr(ds, k)) for k in ("inputs", "answer_pos", "answers", "hops")}
    idx = {s: torch.as_tensor(ds.splits[s]) for s in splits}
    metrics = evaluate(model, data, idx, model.n_steps, cmd.batch_size)
    experiment = run_cfg.get("experiment", "model")
    name = cmd.name or (f"{experiment}.swap" if cmd.bank else experiment)
    bank_name = Path(cmd.bank).name if cmd.bank else "own"
    common = {
        "model": name,
        "seed": run_cfg.get("seed"),
        "step": step,
        "bank": bank_name,
        "bank_facts": len(bank),
        "bank_bytes": bank_bytes(bank),
    }
    rows = []
    for s in splits:
        hops = data["hops"][idx[s]].unique().tolist()
        one_hop = {"hops": hops[0]} if len(hops) == 1 else {}
        rows.append(acc_row(metrics[f"acc/{s}"], metrics[f"n/{s}"], **common, split=s, **one_hop))
        for key in sorted(k for k in metrics if k.startswith(f"acc/{s}/hops_")):
            k = int(key.rsplit("_", 1)[1])
            rows.append(
                acc_row(metrics[key], metrics[f"n/{s}/hops_{k}"], **common, split=s, hops=k)
            )
        atomic = idx[s][(data["hops"][idx[s]] == 1) & (data["answer_pos"][idx[s]] == 1)]
        if len(atomic):
            found = retrieval(model, bank, data["inputs"][atomic, :2], cmd.batch_size)
            for t_, r in enumerate(found):
                rows.append(
                    acc_row(
                        r,
                        len(atomic),
                        **common,
                        split=s,
                        metric=f"retrieval@{t_ + 1}",
                        read_step=t_ + 1,
                    )
                )
    seconds = time.perf_counter() - t
    summary = {
        "study": f"bank_eval/{name}",
        "run_dir": str(cmd.run_dir),
        "machine": machine(),
        "code_version": code_version(),
        "seconds": seconds,
        "commands": ["python -m grokloop.bank " + " ".join(sys.argv[1:])],
        "bank": {
            "path": cmd.bank,
            "n_facts": len(bank),
            "bytes": bank_bytes(bank),
            "facts_sha256": facts_sha256(bank),
            "source": manifest["source"] if manifest else "checkpoint",
        },
        "dataset_hash": ds.content_hash(),
        "n_steps": model.n_steps,
        "top_k": model.memory.top_k,
        "rows": rows,
    }
    return summary
