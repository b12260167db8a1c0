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
  complex_    interval reasoning over the training facts (Wang et al. 2024, arXiv 2405.15071,
  reasoning    section 5; datagen/complex_reasoning.py): every (attribute, entity) starts at the
               values 0..V-1, a training atomic fact pins it, and the training comparisons tighten
               the bounds (x < y: hi_x <= hi_y - 1 and lo_y >= lo_x + 1; "=": both ways) until
               nothing changes. A comparison is answered when the intervals decide it (disjoint,
               or one and the same single value), an atomic query when its interval is a single
               value. Exact on that task, whose training constraints on an unknown value are all
               unary, so 1.0 on test_hard by construction.
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
    facts = FactTable(
        ds.roles["head"][atomic], ds.roles["relation_1"][atomic], ds.answers[atomic], len(ds.vocab)
    )
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
        return np.where((v1 >= 0) & (v2 >= 0), np.sign(v1 - v2), -2)  # -2: a value unknown

    # The label of each (attribute, sign), and of each sign alone, from the training comparisons.
    inferred = train[r["entity_2"][train] >= 0]
    s_train = sign(inferred)
    known = s_train > -2
    labels = FactTable(
        r["attribute"][inferred][known], s_train[known] + 1, ds.answers[inferred][known], V
    )
    by_sign = {
        s: np.bincount(ds.answers[inferred][known & (s_train == s)]).argmax()
        for s in (-1, 0, 1)
        if (known & (s_train == s)).any()
    }

    out = values.get(r["attribute"][idx], r["entity_1"][idx])  # atomic queries
    is_inf = r["entity_2"][idx] >= 0
    s = sign(idx[is_inf])
    lab = labels.get(r["attribute"][idx][is_inf], np.where(s > -2, s + 1, -1))
    for k, v in by_sign.items():
        lab[(lab < 0) & (s == k)] = v
    out[is_inf] = np.where(s > -2, lab, -1)
    return out


def label_sign(ds: Dataset, tokens: np.ndarray) -> np.ndarray:
    """sign(v1 - v2) that comparison label tokens state. Both comparison layouts order their
    label range as (<, =, >), shared (ours: <lt>, <eq>, <gt>) or per attribute (the authors'
    <attr_j_0..2>, attribute-major), so the sign is the offset modulo 3, minus 1."""
    return (np.asarray(tokens, np.int64) - ds.vocab.ranges["labels"][0]) % 3 - 1


def label_token(ds: Dataset, attributes: np.ndarray, sign: np.ndarray) -> np.ndarray:
    """The label token stating sign(v1 - v2) = sign for each attribute token (see label_sign)."""
    (l0, l1), a0 = ds.vocab.ranges["labels"], ds.vocab.ranges["attributes"][0]
    per_attribute = 3 * (np.asarray(attributes, np.int64) - a0) if l1 - l0 > 3 else 0
    return l0 + per_attribute + np.asarray(sign, np.int64) + 1


def value_bounds(ds: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """lo, hi [attribute, entity] (offsets into their vocabulary ranges): the values the
    training facts allow, by bound propagation to a fixed point (see the module docstring)."""
    r, train = ds.roles, ds.splits["train"]
    (a0, a1), (e0, e1), (v0, v1) = (
        ds.vocab.ranges[k] for k in ("attributes", "entities", "values")
    )
    top = v1 - v0 - 1
    lo = np.zeros((a1 - a0, e1 - e0), np.int64)
    hi = np.full_like(lo, top)
    atomic = train[r["entity_2"][train] < 0]
    lo[r["attribute"][atomic] - a0, r["entity_1"][atomic] - e0] = ds.answers[atomic] - v0
    hi[r["attribute"][atomic] - a0, r["entity_1"][atomic] - e0] = ds.answers[atomic] - v0
    cmp = train[r["entity_2"][train] >= 0]
    a, x, y = r["attribute"][cmp] - a0, r["entity_1"][cmp] - e0, r["entity_2"][cmp] - e0
    s = label_sign(ds, ds.answers[cmp])
    a, x, y, s = (
        np.concatenate([a, a]),
        np.concatenate([x, y]),
        np.concatenate([y, x]),
        np.concatenate([s, -s]),
    )  # each fact read from both ends
    while True:  # bounds only tighten, within 0..top: this ends
        before = lo.copy(), hi.copy()
        np.minimum.at(hi, (a, x), np.where(s <= 0, hi[a, y] + np.minimum(s, 0), top))
        np.maximum.at(lo, (a, x), np.where(s >= 0, lo[a, y] + np.maximum(s, 0), 0))
        np.clip(lo, 0, top, out=lo)  # (facts that contradict each other stop at the ends)
        np.clip(hi, 0, top, out=hi)
        if np.array_equal(before[0], lo) and np.array_equal(before[1], hi):
            return lo, hi


def _complex_reasoning(ds: Dataset, idx: np.ndarray) -> np.ndarray:
    r = ds.roles
    lo, hi = value_bounds(ds)
    a0, e0, v0 = (ds.vocab.ranges[k][0] for k in ("attributes", "entities", "values"))
    a, x = r["attribute"][idx] - a0, r["entity_1"][idx] - e0
    out = np.where(lo[a, x] == hi[a, x], v0 + lo[a, x], -1)  # atomic queries
    cmp = r["entity_2"][idx] >= 0
    a, x, y = a[cmp], x[cmp], r["entity_2"][idx][cmp] - e0
    l1, h1, l2, h2 = lo[a, x], hi[a, x], lo[a, y], hi[a, y]
    eq = (l1 == h1) & (l2 == h2) & (l1 == l2)
    sign = np.select([h1 < l2, eq, l1 > h2], [-1, 0, 1], 2)
    out[cmp] = np.where(sign < 2, label_token(ds, r["attribute"][idx][cmp], sign), -1)
    return out


def _table(ds: Dataset, idx: np.ndarray) -> np.ndarray:
    train = ds.splits["train"]
    rows = np.concatenate([ds.inputs[train], ds.inputs[idx]])
    ids = np.unique(rows, axis=0, return_inverse=True)[1].reshape(-1)
    table = np.full(ids.max() + 1, -1, np.int64)
    table[ids[: len(train)]] = ds.answers[train]
    return table[ids[len(train) :]]


# Permutation chains (khop_perm) share composition's roles and chain the same atomic facts.
SOLVERS = {
    "composition": _composition,
    "khop_perm": _composition,
    "comparison": _comparison,
    "complex_reasoning": _complex_reasoning,
    "modular": _table,
    "group": _table,
}


def symbolic_answers(ds: Dataset, idx: np.ndarray) -> np.ndarray:
    """The symbolic answer token of each example in `idx`, -1 where it cannot be answered from
    the training facts."""
    if ds.task not in SOLVERS:
        raise ValueError(f"no symbolic lookup for task {ds.task!r}; known: {sorted(SOLVERS)}")
    idx = np.asarray(idx, np.int64)
    return SOLVERS[ds.task](ds, idx) if len(idx) else np.empty(0, np.int64)
