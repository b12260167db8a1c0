"""The add-entities action (grokloop/bank/entities.py says what it does and why): the base bank
plus a file of new facts, over the run's vocabulary extended by the new names, written as a bank
whose manifest records what it extends; the run's weights hashed before and after the model
reads it, and refused unless equal."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch

from datagen.new_entities import new_facts
from datagen.provenance import atomic_write_text, sha256_file
from grokloop.bank.build import run_dataset
from grokloop.bank.entities import (
    base_of,
    check_extension,
    extended_vocab,
    extension_record,
    parse_new_facts,
    weights_sha256,
)
from grokloop.bank.files import load_bank, read_manifest, save_bank, vocab_sha256
from grokloop.bank.options import BankCommand
from grokloop.bank.questions import question_lines
from grokloop.checkpoint import last_good_checkpoint, load_model
from grokloop.memory import FactBank


def base_bank(cmd: BankCommand, model, vocab, model_cfg) -> tuple[FactBank, list[str], dict]:
    """(the facts the new ones are added to, the new tokens they already use, their source):
    bank=DIR (a bank of the run's vocabulary, or one add-entities made for it), else the bank
    the run's checkpoint holds (its training graph)."""
    if not cmd.bank:
        return model.memory.bank, [], {"kind": "run", "run_dir": str(cmd.run_dir)}
    manifest = read_manifest(cmd.bank)
    if "extends" not in manifest:
        bank, _ = load_bank(cmd.bank, vocab)
        return (
            bank,
            [],
            {"kind": "bank", "path": str(cmd.bank), "facts_sha256": manifest["facts_sha256"]},
        )
    ext_vocab = check_extension(manifest, cmd.bank, vocab, model_cfg)
    bank, _ = load_bank(cmd.bank, ext_vocab)
    return (
        bank,
        base_of(manifest)[1],
        {"kind": "bank", "path": str(cmd.bank), "facts_sha256": manifest["facts_sha256"]},
    )


def synthetic_facts(cmd: BankCommand, base: FactBank, ds, out: Path) -> list[str]:
    """new_entities=N: write out/facts_added.txt (N new entities named new_0 .., their graph and
    with link=true the links; datagen/new_entities.py) and out/questions.txt; returns the new
    tokens in ordinal order (new_i is entity ordinal n_entities + i)."""
    vocab = ds.vocab
    e0, e1 = vocab.ranges["entities"]
    r0, r1 = vocab.ranges["relations"]
    if len(base.ids()) and (base.ids()[:, [0, 2]].max() >= len(vocab)):
        raise ValueError(
            "new_entities= adds a synthetic graph to a bank of the run's vocabulary; "
            f"bank={cmd.bank} already holds new entities: give facts=FILE instead"
        )
    nf = new_facts(
        (base.head - e0).numpy(),
        (base.relation - r0).numpy(),
        (base.tail - e0).numpy(),
        e1 - e0,
        r1 - r0,
        cmd.new_entities,
        cmd.new_degree,
        np.random.default_rng(cmd.new_seed),
        cmd.link,
        cmd.link_degree,
        cmd.n_questions,
    )
    names = vocab.tokens[e0:e1] + tuple(f"<new_{i}>" for i in range(cmd.new_entities))
    ext = extended_vocab(vocab, list(names[e1 - e0 :]))
    ent = np.asarray([ext.id(n) for n in names])  # ordinal -> token id in the extended vocab
    atomic_write_text(
        out / "facts_added.txt",
        "".join(
            f"{names[h]} {vocab.token(r0 + r)} {names[t]}\n"
            for h, r, t in zip(nf.head, nf.relation, nf.tail)
        ),
    )
    lines = []
    for split, q in nf.questions.items():
        rows = np.stack([ent[q[:, 0]], r0 + q[:, 1], r0 + q[:, 2], ent[q[:, 3]]], 1)
        lines += question_lines(cmd.role + split.removeprefix("test"), rows, ext)
    # old entities only: nothing may be lost (valid: the held-out queries the run stopped on)
    idx = ds.splits["test_inferred_id" if cmd.role == "test" else "valid"]
    old = np.concatenate([ds.inputs[idx][:, :3], ds.answers[idx][:, None]], 1)
    lines += question_lines(f"{cmd.role}_old", old, ext)
    atomic_write_text(out / "questions.txt", "\n".join(lines) + "\n")
    return list(names[e1 - e0 :])


def add_entities(cmd: BankCommand) -> Path:
    """`python -m grokloop.bank add-entities`: returns the bank directory written."""
    if not cmd.run_dir or not cmd.out:
        raise ValueError(
            "add-entities needs run_dir=RUN (a model.entity_keys=canonical memory "
            "run: its keys, vocabulary and weights) and out=DIR"
        )
    if cmd.role not in ("test", "valid"):
        raise ValueError(
            f"role={cmd.role!r}: give role=test (the study's questions) or role=valid (a "
            "bank to choose a variant on, with another new_seed)"
        )
    if bool(cmd.facts) == (cmd.new_entities > 0):
        raise ValueError(
            "give facts=FILE (new facts by name) or new_entities=N (a synthetic "
            "graph over N new entities), one of the two"
        )
    run_cfg, ds = run_dataset(cmd.run_dir)
    got = last_good_checkpoint(cmd.run_dir) if cmd.step is None else None
    step = got[2]["step"] if got is not None else cmd.step
    model, _, _ = load_model(cmd.run_dir, step)
    model.extend_entities(0)  # refuses a model with learned entity embeddings, naming the fix
    before = weights_sha256(model)
    base, known_new, source = base_bank(cmd, model, ds.vocab, run_cfg["model"])
    out = Path(cmd.out)
    facts = out / "facts_added.txt"
    if cmd.new_entities:
        known_new = known_new + synthetic_facts(cmd, base, ds, out)
    elif Path(cmd.facts).resolve() != facts.resolve():
        out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(cmd.facts, facts)
    added, names = parse_new_facts(
        facts.read_text().splitlines(), ds.vocab, f"facts={cmd.facts or facts}", known_new
    )
    ext_vocab = extended_vocab(ds.vocab, names)
    clash = base.slots_of(added.head, added.relation) >= 0
    if clash.any():
        i = int(clash.nonzero()[0])
        raise ValueError(
            f"{facts}: fact {i + 1}, {ext_vocab.token(int(added.head[i]))} "
            f"{ext_vocab.token(int(added.relation[i]))}, is already in the bank; a "
            "bank holds each (head, relation) once (to change a fact: build edit=)"
        )
    bank = FactBank(
        *(
            torch.cat([a, b])
            for a, b in zip(
                (base.head, base.relation, base.tail), (added.head, added.relation, added.tail)
            )
        )
    )
    check_frozen(model, bank, len(names), before)
    record = extension_record(run_cfg, ds.vocab, len(names), cmd.run_dir, step, before) | {
        "base_facts": len(base),
        "added_facts": len(added),
    }
    source |= {
        "added": str(facts),
        "added_sha256": sha256_file(facts),
        "new_seed": cmd.new_seed if cmd.new_entities else None,
        "role": cmd.role if cmd.new_entities else None,
    }
    save_bank(bank, out, ext_vocab, source, {"run_dir": str(cmd.run_dir), "step": step})
    # The manifest again with what the bank extends: until then it names a vocabulary no run
    # has, so every reader refuses it (written last, as save_bank writes its manifest last).
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["extends"] = record
    manifest["fits"] |= {
        "extends_vocab_sha256": vocab_sha256(ds.vocab),
        "entity_keys": "canonical",
        "key_seed": record["key_seed"],
    }
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=1))
    print(
        f"{len(names):,} new entities, {len(added):,} new facts: a bank of {len(bank):,} facts "
        f"over {len(ext_vocab):,} tokens written to {out.resolve()} (weights unchanged, sha256 "
        f"{before[:12]})"
    )
    return out


@torch.no_grad()
def check_frozen(model, bank: FactBank, n_new: int, before: str) -> None:
    """Let the model read the new bank and answer its facts once; every weight must be as it was."""
    model.extend_entities(n_new)
    model.memory.attach(bank)
    model(torch.stack([bank.head, bank.relation], 1)[-256:].to(next(model.parameters()).device))
    if weights_sha256(model) != before:
        raise RuntimeError(
            "a trained weight changed while the model read the new entities; no bank was written"
        )
