"""A bank's files: bank.safetensors (the facts as token ids) and manifest.json (format, names,
vocabulary, provenance), written atomically; reading one back, checking that it fits a run,
attaching it to a model; parsing facts by name."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from datagen.dataset import read_json
from datagen.provenance import atomic_write, atomic_write_text, code_version, sha256_file
from grokloop.memory import FactBank

FORMAT = "grokloop.bank/1"
MAX_NAMED = 10_000  # the manifest names every fact of a bank up to this size


def vocab_sha256(vocab) -> str:
    """The vocabulary's identity: sha256 of its tokens and named ranges."""
    return hashlib.sha256(json.dumps(vocab.to_dict(), sort_keys=True).encode()).hexdigest()


def fact_names(bank: FactBank, vocab) -> list[str]:
    return [" ".join(vocab.token(int(i)) for i in row) for row in bank.ids()]


def facts_sha256(bank: FactBank) -> str:
    return hashlib.sha256(bank.ids().numpy().tobytes()).hexdigest()


def save_bank(
    bank: FactBank, out: str | Path, vocab, source: dict, built_for: dict | None = None
) -> Path:
    """Write bank directory `out` (tensors, then the manifest); returns it."""
    out = Path(out)
    tensors = {
        "head": bank.head.contiguous(),
        "relation": bank.relation.contiguous(),
        "tail": bank.tail.contiguous(),
    }
    atomic_write(out / "bank.safetensors", lambda p: save_file(tensors, str(p)))
    manifest = {
        "format": FORMAT,
        "schema": "head relation -> tail",
        "n_facts": len(bank),
        "facts_sha256": facts_sha256(bank),
        "facts": fact_names(bank, vocab) if len(bank) <= MAX_NAMED else None,
        "vocab": {"sha256": vocab_sha256(vocab), "size": len(vocab), **vocab.to_dict()},
        "fits": {"model.memory": "facts", "vocab_sha256": vocab_sha256(vocab)},
        "source": source,
        "built_for": built_for,
        "bank_sha256": sha256_file(out / "bank.safetensors"),
        "code_version": code_version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=1))
    return out


def read_manifest(path: str | Path) -> dict:
    path = Path(path)
    if not (path / "manifest.json").exists():
        raise FileNotFoundError(
            f"bank={path} is not a bank (no manifest.json); write one with "
            "`python -m grokloop.bank build ... out=DIR`"
        )
    manifest = read_json(
        path / "manifest.json", "rebuild the bank with `python -m grokloop.bank build ... out=DIR`"
    )
    found = manifest.get("format") if isinstance(manifest, dict) else None
    if found != FORMAT:
        raise ValueError(
            f"bank={path} has format {found!r}, this code reads "
            f"{FORMAT!r}; rebuild it with `python -m grokloop.bank build`"
        )
    return manifest


def check_fits(manifest: dict, path, vocab, model=None) -> None:
    """ValueError, naming what differs and the fix, unless bank `manifest` fits the vocabulary
    (and `model`, if given)."""
    if model is not None and getattr(model, "memory", None) is None:
        raise ValueError(
            f"bank={path}: this model has no memory to read a bank "
            f"(model.memory={model.config.memory}); train one with "
            "model.memory=facts"
        )
    want, have = manifest["fits"]["vocab_sha256"], vocab_sha256(vocab)
    if want != have:
        theirs = manifest.get("vocab", {})
        raise ValueError(
            f"bank={path} was built for another vocabulary ({theirs.get('size')} "
            f"tokens, sha256 {want[:12]}) than this model's ({len(vocab)} tokens, "
            f"sha256 {have[:12]}); build the bank with the run's vocabulary "
            "(python -m grokloop.bank build run_dir=RUN ...)"
        )


def load_bank(path: str | Path, vocab, model=None) -> tuple[FactBank, dict]:
    """(bank, manifest) of bank directory `path`, after checking that it fits `vocab` (and
    `model`) and that its tensors are the ones the manifest recorded."""
    manifest = read_manifest(path)
    check_fits(manifest, path, vocab, model)
    f = Path(path) / "bank.safetensors"
    if sha256_file(f) != manifest["bank_sha256"]:
        raise ValueError(
            f"{f} does not match the sha256 its manifest recorded (damaged or "
            "changed by hand); rebuild the bank"
        )
    t = load_file(str(f))
    return FactBank(t["head"], t["relation"], t["tail"]), manifest


def attach_bank(model, path: str | Path, vocab) -> dict:
    """Check bank `path` against the model and vocabulary, then make the model read it (the
    weights are untouched); returns its manifest."""
    bank, manifest = load_bank(path, vocab, model)
    model.memory.attach(bank)
    return manifest


def bank_option(
    path: str | Path, vocab, memory: str, key: str = "bank", model=None
) -> tuple[FactBank, dict]:
    """The bank that the option `key=path` names (train.bank, or bank= of probes and halting),
    for a run with model.memory=`memory` over `vocab`: (bank, manifest), after the run is checked
    to have a memory and every check of `load_bank` (a bank directory, built for this
    vocabulary, its tensors the ones recorded); attached to `model` too, if one is given. Each
    refusal is one line that names the option and the fix; nothing is attached then."""
    if memory == "none":
        raise ValueError(
            f"{key}={path}: this run has no memory to read a bank (model.memory="
            "none); only a model.memory=facts model reads one: set model.memory="
            f"facts, or leave out {key}="
        )
    try:
        bank, manifest = load_bank(path, vocab)
    except (ValueError, FileNotFoundError) as e:
        if key == "bank":
            raise
        raise type(e)(str(e).replace(f"bank={path}", f"{key}={path}", 1)) from None
    if model is not None:
        model.memory.attach(bank)
    return bank, manifest


def bank_results(path: str | Path, bank: FactBank, manifest: dict) -> tuple[str, dict]:
    """Where a command that read bank `path` instead of the run's own writes its results (the
    subfolder bank_NAME, NAME the bank directory's name, so the run's own results stay), and the
    record of the bank those results carry."""
    return (
        f"bank_{Path(path).resolve().name}",
        {
            "path": str(path),
            "n_facts": len(bank),
            "facts_sha256": facts_sha256(bank),
            "source": manifest["source"],
        },
    )


def parse_facts(lines: list[str], vocab, where: str) -> FactBank:
    """Facts written as token names (`<e_3>` or `e_3`), one `head relation tail` a line
    (# comments, blank lines skipped), to a bank over `vocab`."""
    ids = []
    for n, line in enumerate(lines, 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        if len(words) != 3:
            raise ValueError(f"{where} line {n}: {line.strip()!r} is not `head relation tail`")
        try:  # <e_3> or e_3 (angle brackets do not pass Hydra's override lexer)
            ids.append([vocab.id(w if w in vocab._index else f"<{w}>") for w in words])
        except KeyError as e:
            raise ValueError(
                f"{where} line {n}: token {e.args[0]!r} is not in the vocabulary "
                f"(e.g. {vocab.tokens[min(2, len(vocab) - 1)]!r})"
            ) from None
    if not ids:
        raise ValueError(f"{where} holds no facts")
    t = torch.tensor(ids)
    return FactBank(t[:, 0], t[:, 1], t[:, 2])


def bank_bytes(bank: FactBank) -> int:
    """The size in bytes of bank.safetensors for `bank` (what `save_bank` writes; 24 a fact plus
    the header), also for a bank held only in a checkpoint."""
    from safetensors.torch import save

    return len(
        save(
            {
                "head": bank.head.contiguous(),
                "relation": bank.relation.contiguous(),
                "tail": bank.tail.contiguous(),
            }
        )
    )
