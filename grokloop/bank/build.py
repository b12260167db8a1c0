"""`python -m grokloop.bank build ...`: a bank from a run's training graph, another graph's
(data=...), a list of facts by name (facts=FILE), with edits, slimmed to what queries need, or a
random share of it."""

from __future__ import annotations

import json
from pathlib import Path

from datagen import data_config_from_dict, load_or_build
from datagen.provenance import sha256_file
from grokloop.bank.files import parse_facts, save_bank, vocab_sha256
from grokloop.bank.options import BankCommand
from grokloop.bank.slim import random_share, slim_bank
from grokloop.config import as_data_config
from grokloop.memory import FactBank


def run_dataset(run_dir: str | Path):
    """(run config dict, dataset) of a run directory, without loading weights."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").exists():
        raise FileNotFoundError(f"run_dir={run_dir} is not a run directory (no config.json)")
    cfg = json.loads((run_dir / "config.json").read_text())
    return cfg, load_or_build(data_config_from_dict(cfg["data"]), cfg.get("data_cache"))


def build(cmd: BankCommand) -> Path:
    if not (cmd.run_dir or cmd.data):
        raise ValueError(
            "give run_dir=RUN (its training graph and vocabulary) or data=PRESET "
            "(e.g. data=composition_cpu data.seed=1 for another graph)"
        )
    run_cfg, run_ds = run_dataset(cmd.run_dir) if cmd.run_dir else (None, None)
    data_ds = None
    if cmd.data:
        data_ds = load_or_build(as_data_config(cmd.data), cmd.data_cache)
    vocab = (run_ds or data_ds).vocab
    if (
        run_ds is not None
        and data_ds is not None
        and vocab_sha256(data_ds.vocab) != vocab_sha256(vocab)
    ):
        raise ValueError(
            f"data has another vocabulary ({len(data_ds.vocab)} tokens) than run_dir="
            f"{cmd.run_dir} ({len(vocab)}); give a preset with the run's entities "
            "and relations"
        )
    if cmd.facts:
        bank = parse_facts(Path(cmd.facts).read_text().splitlines(), vocab, f"facts={cmd.facts}")
        source = {"kind": "facts", "file": str(cmd.facts), "sha256": sha256_file(cmd.facts)}
    else:
        ds = data_ds or run_ds
        bank = FactBank.from_dataset(ds)
        source = {
            "kind": "data" if data_ds is not None else "run",
            "task": ds.task,
            "data": ds.config,
            "dataset_hash": ds.content_hash(),
        }
    if cmd.needed_by:
        ds = data_ds or run_ds
        full = len(bank)
        bank = slim_bank(bank, ds, cmd.needed_by, vocab)
        source |= {
            "needed_by": list(cmd.needed_by),
            "needed_by_dataset_hash": ds.content_hash(),
            "n_facts_before": full,
        }
    if cmd.keep_fraction != 1.0:
        bank = random_share(bank, cmd.keep_fraction, cmd.keep_seed)
        source |= {"keep_fraction": cmd.keep_fraction, "keep_seed": cmd.keep_seed}
    for fact in cmd.edit:
        edit = parse_facts([fact], vocab, f"edit={fact!r}")
        bank = bank.edited(int(edit.head[0]), int(edit.relation[0]), int(edit.tail[0]))
    source |= {"run_dir": cmd.run_dir, "edits": list(cmd.edit)}
    built_for = (
        None
        if run_cfg is None
        else {
            "run_dir": str(cmd.run_dir),
            "model": run_cfg["model"],
            "experiment": run_cfg.get("experiment"),
        }
    )
    out = save_bank(bank, cmd.out, vocab, source, built_for)
    print(f"bank of {len(bank):,} facts written to {out.resolve()}")
    return out
