"""The exact symbolic lookup over the TRAINING facts: the reasoning upper bound.

  composition  the atomic facts of training, (h, r) -> t (training examples of one hop). A
               k-hop query (h, r1, ..., rk) is answered by chaining: b1 = fact(h, r1),
               b2 = fact(b1, r2), ..., t = fact(b_{k-1}, rk) (an atomic query is the chain of
               one). A query is unanswerable when a link's atomic fact is not in training.
               Every atomic fact, ID and OOD, is in training in datagen's composition, so the
               chain answers ID, OOD and OI/IO facts alike; what is not in training (a folder
               without some atomic facts) leaves the query unanswered.
  comparison   the training atomic facts (attribute, entity) -> value; an inferred query
               (a, e1, e2) looks up both values and compares them; the label token of each
               (attribute, sign(v1 - v2)) is read off the training comparisons (per attribute,
               so the authors' per-attribute labels work; value tokens are in value order).
  modular,     the training table itself: a query is answered only if its cell (the whole
  group        input) is a training cell, so held-out cells are never answered: the symbolic
               bound of a table task is exact on training cells and says nothing about the rest.
Unanswered queries get -1 (scored wrong); `coverage` reports how many were answered.
"""
from __future__ import annotations

import numpy as np

from datagen.dataset import Dataset


class FactTable:
    """An exact map from int pairs (x, y) to an answer, vectorised (sorted keys, searchsorted)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, answer: np.ndarray, base: int):
        self.base = base
        code = np.asarray(x, np.int64) * base + np.asarray(y, np.int64)
        order = np.argsort(code, kind="stable")
        self.code, self.answer = code[order], np.asarray(answer, np.int64)[order]

    def get(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Answers for each (x, y), -1 where unknown (or where x or y is -1)."""
        x, y = np.asarray(x, np.int64), np.asarray(y, np.int64)
        out = np.full(len(x), -1, np.int64)
        if not len(self.code):
            return out
        code = x * self.base + y
        pos = np.minimum(np.searchsorted(self.code, code), len(self.code) - 1)
        hit = (self.code[pos] == code) & (x >= 0) & (y >= 0)
        out[hit] = self.answer[pos[hit]]
        return out


def _composition(ds: Dataset, idx: np.ndarray) -> np.ndarray:
    train = ds.splits["train"]
    atomic = train[ds.hops[train] == 1]
    facts = FactTable(ds.roles["head"][atomic], ds.roles["relation_1"][atomic],
                      ds.answers[atomic], len(ds.vocab))
    cur = ds.roles["head"][idx].copy()
    hops = ds.hops[idx]
    for j in range(1, int(hops.max(initial=0)) + 1):
        step = hops >= j
        cur[step] = facts.get(cur[step], ds.roles[f"relation_{j}"][idx][step])
    return cur


def _comparison(ds: Dataset, idx: np.ndarray) -> np.ndarray:
    train, r, V = ds.splits["train"], ds.roles, len(ds.vocab)
    atomic = train[r["entity_2"][train] < 0]
    values = FactTable(r["attribute"][atomic], r["entity_1"][atomic], ds.answers[atomic], V)

    def sign(i):
        v1 = values.get(r["attribute"][i], r["entity_1"][i])
        v2 = values.get(r["attribute"][i], r["entity_2"][i])
        return np.where((v1 >= 0) & (v2 >= 0), np.sign(v1 - v2), -2)   # -2: a value unknown

    # The label of each (attribute, sign), and of each sign alone, from the training comparisons.
    inferred = train[r["entity_2"][train] >= 0]
    s_train = sign(inferred)
    known = s_train > -2
    labels = FactTable(r["attribute"][inferred][known], s_train[known] + 1,
                       ds.answers[inferred][known], V)
    by_sign = {s: np.bincount(ds.answers[inferred][known & (s_train == s)]).argmax()
               for s in (-1, 0, 1) if (known & (s_train == s)).any()}

    out = values.get(r["attribute"][idx], r["entity_1"][idx])          # atomic queries
    is_inf = r["entity_2"][idx] >= 0
    s = sign(idx[is_inf])
    lab = labels.get(r["attribute"][idx][is_inf], np.where(s > -2, s + 1, -1))
    for k, v in by_sign.items():
        lab[(lab < 0) & (s == k)] = v
    out[is_inf] = np.where(s > -2, lab, -1)
    return out


def _table(ds: Dataset, idx: np.ndarray) -> np.ndarray:
    train = ds.splits["train"]
    rows = np.concatenate([ds.inputs[train], ds.inputs[idx]])
    ids = np.unique(rows, axis=0, return_inverse=True)[1].reshape(-1)
    table = np.full(ids.max() + 1, -1, np.int64)
    table[ids[:len(train)]] = ds.answers[train]
    return table[ids[len(train):]]


# Permutation chains (khop_perm) share composition's roles and chain the same atomic facts.
SOLVERS = {"composition": _composition, "khop_perm": _composition, "comparison": _comparison,
           "modular": _table, "group": _table}


def symbolic_answers(ds: Dataset, idx: np.ndarray) -> np.ndarray:
    """The symbolic answer token of each example in `idx`, -1 where it cannot be answered from
    the training facts."""
    if ds.task not in SOLVERS:
        raise ValueError(f"no symbolic lookup for task {ds.task!r}; known: {sorted(SOLVERS)}")
    idx = np.asarray(idx, np.int64)
    return SOLVERS[ds.task](ds, idx) if len(idx) else np.empty(0, np.int64)
