"""Banks that hold less: only the facts a set of queries needs (a slim bank), or a random share
of them (knowledge missing, what a model should answer "I don't know" to)."""

from __future__ import annotations

import numpy as np
import torch

from grokloop.memory import FactBank


def path_facts(ds, idx) -> torch.Tensor:
    """The atomic facts (head, relation) [m, 2], distinct and sorted, on the paths of queries
    `idx` of dataset `ds`: hop 1 is (head, relation_1), hop i > 1 is (bridge_{i-1}, relation_i),
    read from the dataset's roles (so an atomic query needs its own fact)."""
    idx = np.asarray(idx, dtype=np.int64)
    pairs, i = [], 1
    while f"relation_{i}" in ds.roles:
        head = ds.roles["head" if i == 1 else f"bridge_{i - 1}"][idx]
        rel = ds.roles[f"relation_{i}"][idx]
        keep = (head >= 0) & (rel >= 0)
        pairs.append(np.stack([head[keep], rel[keep]], 1))
        i += 1
    if not pairs:
        raise ValueError(
            f"the {ds.task!r} dataset has no head/relation roles: a slim bank needs "
            "a fact task such as data=composition_cpu"
        )
    return torch.as_tensor(np.unique(np.concatenate(pairs), axis=0), dtype=torch.int64)


def slim_bank(bank: FactBank, ds, splits: list[str], vocab) -> FactBank:
    """The facts of `bank` on the query paths of `ds`'s `splits` (slot order kept); ValueError if
    a split is unknown or the bank lacks a fact the queries need."""
    bad = [s for s in splits if s not in ds.eval_splits]
    if bad:
        raise ValueError(
            f"needed_by names {bad[0]!r}, which the dataset does not have; it has {ds.eval_splits}"
        )
    idx = np.concatenate([np.asarray(ds.splits[s]) for s in splits])
    needed = path_facts(ds, idx)
    slots = bank.slots_of(needed[:, 0], needed[:, 1])
    if (slots < 0).any():
        h, r = needed[int(torch.nonzero(slots < 0)[0, 0])].tolist()
        raise ValueError(
            f"the bank lacks {int((slots < 0).sum())} of the {len(needed)} facts "
            f"that {','.join(splits)} need, e.g. ({vocab.token(h)}, "
            f"{vocab.token(r)}); build it from the graph those queries come from"
        )
    keep = torch.zeros(len(bank), dtype=torch.bool)
    keep[slots] = True
    return bank.subset(keep)


def random_share(bank: FactBank, fraction: float, seed: int) -> FactBank:
    """round(fraction * n) of the bank's facts drawn at random by `seed`, slot order kept: a bank
    that lacks some of the knowledge its queries need."""
    g = torch.Generator().manual_seed(seed)
    keep = torch.randperm(len(bank), generator=g)[: round(fraction * len(bank))].sort().values
    return bank.subset(keep)
