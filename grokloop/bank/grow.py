"""The conventional alternative to adding entities through canonical keys: grow the embedding
table by a row per new entity and fine-tune (`eval questions=FILE method=finetune`).

A model with learned entity embeddings has no row for an entity it never saw. The usual remedy
is to append rows to the token embedding and the unembedding, drawn as training draws them
(N(0, init_std^2), zero output bias; seeded), and train on the new facts: every weight (they all
change; the cost is recorded), on the atomic queries `h r` -> t of the facts the bank added,
with the run's own losses (the answer's cross-entropy after the last step, plus the memory's
addressing loss; grokloop/memory.py), the memory reading the extended bank. finetune_steps=0 is
the grown model untrained: what a learned table holds for a new entity, the control beside the
canonical keys. A canonical-key model needs no rows (it reads keys); fine-tuning it trains the
same way.
"""

from __future__ import annotations

import dataclasses
import time

import torch
import torch.nn.functional as F

from grokloop.memory import BANK_BUFFERS, FactBank, address_loss
from grokloop.model import LoopedTransformer


def grow(model, n_new: int, seed: int = 0):
    """A copy of learned-embedding `model` with n_new more tokens (ids d_vocab ..): new rows of
    W_E and columns of W_U drawn at initialisation from `seed`, every other weight copied."""
    cfg = dataclasses.replace(model.config, d_vocab=model.config.d_vocab + n_new)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        grown = LoopedTransformer(cfg)
    old, new = model.state_dict(), grown.state_dict()
    for name, value in old.items():
        if name.split(".")[-1] in BANK_BUFFERS:
            continue
        if name in ("W_E", "b_U"):
            new[name][: len(value)] = value
        elif name == "W_U_own":
            new[name][:, : value.shape[1]] = value
        else:
            new[name] = value
    grown.load_state_dict(
        {k: v for k, v in new.items() if k.split(".")[-1] not in BANK_BUFFERS}, strict=False
    )
    grown.set_schedule(list(model.schedule))
    return grown.to(next(model.parameters()).device).eval()


def finetune_facts(
    model,
    facts: FactBank,
    steps: int,
    lr: float,
    address_weight: float,
    batch_size: int = 512,
    weight_decay: float = 0.1,
    seed: int = 0,
) -> dict:
    """Train every weight of `model` for `steps` AdamW steps on the atomic queries of `facts`
    (batches of batch_size drawn with replacement from `seed`); returns the cost."""
    device = next(model.parameters()).device
    tokens = torch.stack([facts.head, facts.relation], 1).to(device)
    target, pos = facts.tail.to(device), torch.ones(len(facts), dtype=torch.long, device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    g = torch.Generator().manual_seed(seed)
    t, loss = time.perf_counter(), torch.zeros(())
    model.train()
    with torch.enable_grad():
        for _ in range(steps):
            idx = torch.randint(len(facts), (batch_size,), generator=g).to(device)
            logits = model.readout_steps(
                tokens[idx], model.n_steps, positions=pos[idx], every_step=False
            )[-1]
            loss = F.cross_entropy(logits.float(), target[idx])
            if address_weight:
                loss = loss + address_weight * address_loss(model, tokens[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()
    return {
        "finetune_steps": steps,
        "finetune_lr": lr,
        "finetune_seconds": time.perf_counter() - t,
        "finetune_examples": steps * batch_size,
        "finetune_loss": float(loss.detach()),
        "parameters_trained": sum(p.numel() for p in model.parameters()),
    }
