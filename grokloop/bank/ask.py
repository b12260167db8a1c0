"""`python -m grokloop.bank eval questions=FILE ...`: a run's model asked two-hop questions by name
(grokloop/bank/questions.py) while it reads a bank, frozen (method=bank: every weight hashed
before and after, and the rows say `frozen`) or after fine-tuning on the facts the bank added
(method=finetune, grokloop/bank/grow.py: the conventional alternative, with its cost).

Rows (results schema): per split, the answer's accuracy (model, split, acc, lo, hi, n, seed,
step, bank, frozen, chance = 1 / the entities an answer can be, and the fine-tuning's cost); per
split, hop and step the memory's retrieval (metric hopH.retrieval@S, hop, read_step); with
baselines=true, lookup_cosine and symbolic answers to the same questions.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from datagen.provenance import code_version, machine
from datagen.vocab import Vocab
from grokloop.bank.entities import weights_sha256
from grokloop.bank.evaluate import load_for_eval
from grokloop.bank.files import bank_bytes, facts_sha256
from grokloop.bank.grow import finetune_facts
from grokloop.bank.options import BankCommand
from grokloop.bank.questions import ask, baseline_answers, hop_retrieval, read_questions
from grokloop.memory import FactBank
from grokloop.stats import acc_row


def check_options(cmd: BankCommand) -> None:
    if cmd.method not in ("bank", "finetune"):
        raise ValueError(
            f"method={cmd.method!r}: choose bank (the frozen model reads the bank) "
            "or finetune (grow and train rows for the new entities first)"
        )
    if cmd.method == "finetune" and (
        cmd.finetune_steps < 0 or cmd.finetune_lr <= 0 or not cmd.bank
    ):
        raise ValueError(
            "method=finetune needs bank=DIR (a bank that adds entities), "
            "finetune_steps >= 0 (0: untrained rows) and finetune_lr > 0"
        )
    if cmd.data or cmd.splits:
        raise ValueError("questions=FILE names its own splits; leave out data= and splits=")


def evaluate_questions(cmd: BankCommand) -> dict:
    check_options(cmd)
    run_cfg, run_ds, _, manifest, model, step = load_for_eval(cmd)
    vocab = run_ds.vocab
    if manifest and "extends" in manifest:
        vocab = Vocab.from_dict(manifest["vocab"])
    questions = read_questions(
        Path(cmd.questions).read_text().splitlines(), vocab, f"questions={cmd.questions}"
    )
    bank = model.memory.bank
    before, cost = weights_sha256(model), {}
    if cmd.method == "finetune":
        added = manifest["extends"]["base_facts"]
        cost = finetune_facts(
            model,
            FactBank(bank.head[added:], bank.relation[added:], bank.tail[added:]),
            cmd.finetune_steps,
            cmd.finetune_lr,
            run_cfg["train"].get("memory_address_loss", 0.0),
            seed=run_cfg.get("seed") or 0,
        )
    t = time.perf_counter()
    metrics = ask(model, questions, cmd.batch_size)
    after = weights_sha256(model)
    if cmd.method == "bank" and after != before:
        raise RuntimeError("a weight changed while the frozen model answered; no rows written")
    n_entities = sum(
        hi - lo for name, (lo, hi) in vocab.ranges.items() if name in ("entities", "new_entities")
    )
    experiment = run_cfg.get("experiment", "model")
    name = cmd.name or f"{experiment}.{'frozen' if cmd.method == 'bank' else 'finetune'}"
    bank_name = Path(cmd.bank).name if cmd.bank else "own"
    common = {
        "model": name,
        "seed": run_cfg.get("seed"),
        "step": step,
        "bank": bank_name,
        "frozen": after == before,
        "chance": 1 / n_entities,
        **cost,
    }
    rows = []
    for s, q in questions.items():
        rows.append(acc_row(metrics[f"acc/{s}"], len(q), **common, split=s))
        for hop, per_step in enumerate(hop_retrieval(model, bank, q, cmd.batch_size) or []):
            for read_step, r in enumerate(per_step, 1):
                rows.append(
                    acc_row(
                        r,
                        len(q),
                        **common,
                        split=s,
                        hop=hop + 1,
                        metric=f"hop{hop + 1}.retrieval@{read_step}",
                        read_step=read_step,
                    )
                )
        if cmd.baselines:
            for method, pred in baseline_answers(run_ds, bank, q, len(vocab)).items():
                acc = float((pred == q[:, 3]).float().mean())
                rows.append(
                    acc_row(
                        acc,
                        len(q),
                        model=method,
                        split=s,
                        bank=bank_name,
                        seed=None,
                        chance=1 / n_entities,
                    )
                )
    return {
        "study": f"bank_eval/{name}",
        "run_dir": str(cmd.run_dir),
        "machine": machine(),
        "code_version": code_version(),
        "seconds": time.perf_counter() - t,
        "commands": ["python -m grokloop.bank " + " ".join(sys.argv[1:])],
        "bank": {
            "path": cmd.bank,
            "n_facts": len(bank),
            "bytes": bank_bytes(bank),
            "facts_sha256": facts_sha256(bank),
            "extends": (manifest or {}).get("extends"),
        },
        "questions": str(cmd.questions),
        "weights_sha256": {"before": before, "after": after},
        "n_steps": model.n_steps,
        "top_k": model.memory.top_k,
        "rows": rows,
    }
