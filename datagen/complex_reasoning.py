"""Complex reasoning: attribute comparison with hidden values (Wang et al. 2024, "Grokked
Transformers are Implicit Reasoners", arXiv 2405.15071, section 5; their complex_reasoning.ipynb;
REFERENCES.md section 9).

    python -m datagen data=complex_reasoning_cpu                         # counts per split
    python -m datagen data=complex_reasoning out_dir=DIR format=grokked  # the authors' files

Tokens as in datagen/comparison.py, so the model and training run unchanged: atomic
`<attr><e>` -> `<v>`, comparison `<attr><q><e1><mask><e2>` -> <lt> | <eq> | <gt>. Per attribute
an `ood_fraction` of the entities is OOD. Unlike plain comparison, an OOD entity's value is
NEVER given: training holds the ID entities' atomic facts, a `train_fraction` (3% in the paper)
of the ID x ID pairs and of the ID x OOD pairs, both orders of each pair, and no OOD x OOD pair.
What the model learns of an OOD entity comes only from its comparisons with ID entities.

Splits: train; atomic_id (a sample of the ID atomic facts); atomic_ood (every OOD atomic fact, for
probing, never trained; the authors' `ood_atomic`); train_inferred (a sample of the training
comparisons); valid and test_inferred_id (held-out ID x ID pairs); test_inferred_ood (OOD x OOD,
sampled); test_hard (below). Training and test_hard hold both orders of each of their pairs; the
other comparison splits are samples of at most eval_size rows of both-order pair sets.

test_hard: OOD x OOD comparisons that the training facts decide but the training comparisons
alone do not.
- Decided by the training facts: training has no OOD x OOD comparison, so every fact about an
  OOD entity o is unary (o < v, o = v or o > v for a known ID value v) and the values consistent
  with training are exactly an interval [lo, hi] of 0..V-1 per OOD entity, independently of the
  others. A pair is decided when hi1 < lo2 (<), lo1 > hi2 (>), or both intervals are the same
  single value (=; the only way "=" is decided).
- Decided by the comparisons alone: the training comparisons (ID x ID and ID x OOD) as a graph
  without the atomic values, x -> y when x >= y ("=" both ways). Either entity reaching the other
  decides the pair: a one-way path holds a strict edge (a path between equal values can only use
  "=" edges, which run both ways), so it proves the strict order. As in the notebook, counting
  arguments over the value range (a strict chain of V - 1 edges pins a value) are not used.
Pairs are drawn so that the three labels are as balanced as the data allows (never one above
half of the set), up to eval_size queries, both orders of each pair.

Labels are the TRUE comparison of the hidden values. The notebook labels its test_hard by
reachability instead, in the graph of the cross comparisons plus the ID entities ordered by value
(a >= b both ways reads as "="). By the argument above those labels agree with the truth wherever
reachability decides; the difference is which pairs count as decided. Reachability ignores the
strictness across an edge (o1 > e(12) and o2 < e(13) give o1 >= 13 > 12 >= o2, which no path
shows) and the ends of the range (o < e(1) means o = 0), so interval reasoning decides more pairs,
most of all "=" pairs, which reachability decides only through a chain of "=" facts.
Other choices that differ from the notebook: a share of each attribute's PAIRS trains (theirs
samples ordered records, so a pair can train in one order only); valid is held-out ID x ID pairs
(their valid.json is the OOD set); test_hard holds both orders of a pair and up to eval_size
queries (theirs: 50 per label).
"""

from __future__ import annotations

import numpy as np

from datagen.comparison import LABELS, _both_orders, _pairs
from datagen.config import ComplexReasoningConfig, config_dict
from datagen.dataset import Dataset, sample_eval
from datagen.vocab import Vocab

UNDECIDED = 2  # decided_sign's code for a pair the intervals do not decide


def _sample(rows: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """round(fraction * len(rows)) of the rows, uniformly without replacement, in row order."""
    return rows[np.sort(rng.choice(len(rows), round(fraction * len(rows)), replace=False))]


def comparison_rows(
    cfg: ComplexReasoningConfig, is_ood: np.ndarray, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Rows (attribute, e1, e2) per group: topleft / cross (training ID x ID / ID x OOD, both
    orders; the authors' train_inferred_topleft / _cross), test_id and valid (held-out ID x ID,
    both orders) and ood_pairs (every OOD x OOD pair once, e1 < e2)."""
    out: dict[str, list] = {k: [] for k in ("topleft", "cross", "test_id", "valid", "ood_pairs")}
    for a in range(cfg.n_attributes):
        ood, idd = np.flatnonzero(is_ood[:, a]), np.flatnonzero(~is_ood[:, a])
        pairs = _pairs(idd)
        pairs = pairs[rng.permutation(len(pairs))]
        n_test, n_valid = (
            round(f * len(pairs)) for f in (cfg.test_id_fraction, cfg.valid_fraction)
        )
        out["test_id"].append(_both_orders(a, pairs[:n_test]))
        out["valid"].append(_both_orders(a, pairs[n_test : n_test + n_valid]))
        out["topleft"].append(
            _both_orders(a, _sample(pairs[n_test + n_valid :], cfg.train_fraction, rng))
        )
        cross = np.stack(np.meshgrid(idd, ood, indexing="ij"), -1).reshape(-1, 2)
        out["cross"].append(_both_orders(a, _sample(cross, cfg.train_fraction, rng)))
        oo = _pairs(ood)
        out["ood_pairs"].append(np.concatenate([np.full((len(oo), 1), a), oo], 1))
    return {k: np.concatenate(v).astype(np.int64) for k, v in out.items()}


def value_intervals(
    value: np.ndarray, known: np.ndarray, train_cmp: np.ndarray, n_values: int
) -> tuple[np.ndarray, np.ndarray]:
    """lo, hi [E, A]: the values of each entity that the training facts allow. A known value
    (an ID atomic fact) is its own interval; an unknown one starts as 0..V-1 and is cut by every
    training comparison with an entity of known value (o < v: hi <= v - 1; o = v: both; o > v:
    lo >= v + 1). Exact when, as here, no training comparison joins two unknown values."""
    lo = np.where(known, value, 0)
    hi = np.where(known, value, n_values - 1)
    a, o, e = train_cmp.T
    unary = ~known[o, a] & known[e, a]  # both orders train, so each pair is seen once
    a, o, e = a[unary], o[unary], e[unary]
    v, s = value[e, a], np.sign(value[o, a] - value[e, a])  # s: the training label
    np.maximum.at(lo, (o, a), np.where(s >= 0, v + (s > 0), 0))
    np.minimum.at(hi, (o, a), np.where(s <= 0, v - (s < 0), n_values - 1))
    return lo, hi


def decided_sign(pairs: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """For rows (attribute, x, y): sign(x - y) where the intervals decide it, else UNDECIDED."""
    a, x, y = pairs.T
    l1, h1, l2, h2 = lo[x, a], hi[x, a], lo[y, a], hi[y, a]
    eq = (l1 == h1) & (l2 == h2) & (l1 == l2)
    return np.select([h1 < l2, eq, l1 > h2], [-1, 0, 1], UNDECIDED)


def comparison_reach(train_cmp: np.ndarray, value: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """For rows (attribute, x, y): whether x reaches y or y reaches x in the graph of the
    training comparisons alone (x -> y iff the training label says x >= y; "=" both ways)."""
    E, A = value.shape
    out = np.zeros(len(pairs), dtype=bool)
    for a in np.unique(pairs[:, 0]):
        rows = train_cmp[train_cmp[:, 0] == a]
        _, x, y = rows.T
        s = np.sign(value[x, a] - value[y, a])
        adj = np.zeros((E, E), dtype=np.float32)
        adj[x[s >= 0], y[s >= 0]] = 1
        adj[y[s <= 0], x[s <= 0]] = 1
        mine = pairs[:, 0] == a
        src = np.unique(pairs[mine, 1:])  # the entities of the queried pairs
        reach = np.zeros((len(src), E), dtype=np.float32)
        reach[np.arange(len(src)), src] = 1
        while True:  # breadth-first, all sources at once
            grown = np.minimum(reach + reach @ adj, 1)
            if np.array_equal(grown, reach):
                break
            reach = grown
        row = np.searchsorted(src, pairs[mine, 1:])
        ends = pairs[mine, 1:]
        out[mine] = (reach[row[:, 0], ends[:, 1]] > 0) | (reach[row[:, 1], ends[:, 0]] > 0)
    return out


def balance(n_strict: int, n_equal: int, size: int) -> tuple[int, int]:
    """(s, q): s strict pairs give s "<" and s ">" queries, q "=" pairs give 2q "=" queries.
    Thirds of `size` where the data has them; a scarce label leaves its share to the others,
    and "=" never exceeds half (q <= s)."""
    s = min(n_strict, size // 3)
    q = min(n_equal, s, (size - 2 * s) // 2)
    s = min(n_strict, (size - 2 * q) // 2)  # strict pairs fill what "=" left
    return s, q


def hard_pairs(
    pairs: np.ndarray, sign: np.ndarray, size: int, rng: np.random.Generator
) -> np.ndarray:
    """Indices into `pairs` of the chosen test_hard pairs (see balance), strict ones first."""
    strict, equal = np.flatnonzero(np.abs(sign) == 1), np.flatnonzero(sign == 0)
    s, q = balance(len(strict), len(equal), size)
    return np.concatenate(
        [
            np.sort(rng.choice(strict, s, replace=False)),
            np.sort(rng.choice(equal, q, replace=False)),
        ]
    )


def make_vocab(E: int, A: int, V: int) -> Vocab:
    """datagen/comparison.py's tokens, so a model trained on one reads the other."""
    return Vocab.build(
        [
            ("specials", ["<pad>", "<q>", "<mask>"]),
            ("entities", [f"<e_{i}>" for i in range(E)]),
            ("attributes", [f"<a_{i}>" for i in range(A)]),
            ("values", [f"<v_{i}>" for i in range(V)]),
            ("labels", LABELS),
        ]
    )


def _examples(vocab: Vocab, value: np.ndarray, rows: np.ndarray) -> dict:
    """Every atomic fact (row e * A + a) then the comparison rows, as the Dataset's arrays."""
    E, A = value.shape
    e0, a0, v0, l0 = (vocab.ranges[n][0] for n in ("entities", "attributes", "values", "labels"))
    ent, att = (x.ravel() for x in np.meshgrid(np.arange(E), np.arange(A), indexing="ij"))
    at, x, y = rows.T
    n_atomic, n_cmp = E * A, len(rows)
    inputs = np.zeros((n_atomic + n_cmp, 5), dtype=np.int64)  # <pad> is id 0
    inputs[:n_atomic, 0], inputs[:n_atomic, 1] = a0 + att, e0 + ent
    inputs[n_atomic:] = np.stack(
        [
            a0 + at,
            np.full(n_cmp, vocab.id("<q>")),
            e0 + x,
            np.full(n_cmp, vocab.id("<mask>")),
            e0 + y,
        ],
        1,
    )
    vx, vy = value[x, at], value[y, at]
    answers = np.concatenate([v0 + value[ent, att], l0 + 1 + np.sign(vx - vy)])
    minus = np.full(n_atomic, -1)
    pos_1 = np.concatenate([np.ones(n_atomic), np.full(n_cmp, 2)])
    pos_2 = np.concatenate([minus, np.full(n_cmp, 4)])
    # value roles hold the TRUE values, hidden ones included: probes read them, training never
    roles = {
        "attribute": inputs[:, 0],
        "entity_1": np.concatenate([e0 + ent, e0 + x]),
        "entity_2": np.concatenate([minus, e0 + y]),
        "value_1": np.concatenate([v0 + value[ent, att], v0 + vx]),
        "value_2": np.concatenate([minus, v0 + vy]),
        "answer": answers,
    }
    role_pos = {
        "attribute": np.zeros(len(answers)),
        "entity_1": pos_1,
        "entity_2": pos_2,
        "value_1": pos_1,
        "value_2": pos_2,
        "answer": np.full(len(answers), -1),
    }
    return {
        "inputs": inputs,
        "answers": answers,
        "answer_pos": np.concatenate([np.ones(n_atomic), np.full(n_cmp, 4)]),
        "roles": {k: np.asarray(v, np.int64) for k, v in roles.items()},
        "role_pos": {k: np.asarray(v, np.int64) for k, v in role_pos.items()},
    }


def _label_counts(sign: np.ndarray) -> dict[str, int]:
    return {lab: int((sign == s).sum()) for lab, s in zip(LABELS, (-1, 0, 1))}


def make_complex_reasoning(cfg: ComplexReasoningConfig, rng: np.random.Generator) -> Dataset:
    E, A, V = cfg.n_entities, cfg.n_attributes, cfg.n_values
    vocab = make_vocab(E, A, V)
    value = rng.integers(0, V, size=(E, A))
    is_ood = np.zeros((E, A), dtype=bool)
    for a in range(A):
        is_ood[rng.permutation(E)[: cfg.n_ood], a] = True
    g = comparison_rows(cfg, is_ood, rng)
    train_cmp = np.concatenate([g["topleft"], g["cross"]])

    # test_hard: decided by the training facts (intervals), not by the comparisons alone.
    pairs = g["ood_pairs"]
    sign = decided_sign(pairs, *value_intervals(value, ~is_ood, train_cmp, V))
    reached = comparison_reach(train_cmp, value, pairs)
    hard_sign = np.where(reached, UNDECIDED, sign)
    chosen = hard_pairs(pairs, hard_sign, cfg.eval_size, rng)

    # OOD x OOD rows: every pair in both orders (pair k is rows k and K + k); test_inferred_ood
    # samples them, test_hard takes both orders of its pairs, and only rows in use are built.
    K = len(pairs)
    both = np.concatenate([pairs, pairs[:, [0, 2, 1]]])
    ood_idx = sample_eval(np.arange(2 * K), cfg.eval_size, rng)
    hard_idx = np.concatenate([chosen, chosen + K])
    used = np.union1d(ood_idx, hard_idx)
    held = {
        k: g[k][sample_eval(np.arange(len(g[k])), cfg.eval_size, rng)] for k in ("test_id", "valid")
    }
    rows = np.concatenate([train_cmp, held["test_id"], held["valid"], both[used]])
    ex = _examples(vocab, value, rows)

    n_atomic = E * A
    o1 = n_atomic + len(train_cmp)
    o2 = o1 + len(held["test_id"])
    o3 = o2 + len(held["valid"])
    atomic_ood = is_ood.ravel()
    train_cmp_idx = np.arange(n_atomic, o1)
    splits = {
        "train": np.concatenate([np.flatnonzero(~atomic_ood), train_cmp_idx]),
        "atomic_id": sample_eval(np.flatnonzero(~atomic_ood), cfg.eval_size, rng),
        "atomic_ood": np.flatnonzero(atomic_ood),
        "train_inferred": sample_eval(train_cmp_idx, cfg.eval_size, rng),
        "valid": np.arange(o2, o3),
        "test_inferred_id": np.arange(o1, o2),
        "test_inferred_ood": o3 + np.searchsorted(used, ood_idx),
        "test_hard": o3 + np.searchsorted(used, hard_idx),
    }
    splits = {k: v.astype(np.int64) for k, v in splits.items() if k == "train" or len(v)}
    n_id_atomic = int((~atomic_ood).sum())
    stats = {
        "n_id_atomic": n_id_atomic,
        "n_train_topleft": len(g["topleft"]),
        "n_train_cross": len(g["cross"]),
        "inferred_per_atomic": len(train_cmp) / n_id_atomic,
        "ood_pairs": K,
        "ood_pairs_decided": int((sign != UNDECIDED).sum()),
        "ood_pairs_reached": int(reached.sum()),
        # queries (both orders): a strict pair gives one <lt> and one <gt>, "=" two <eq>
        "hard_candidates": _label_counts(np.concatenate([hard_sign, -hard_sign])),
        "hard_labels": _label_counts(np.concatenate([sign[chosen], -sign[chosen]])),
    }
    return Dataset(
        "complex_reasoning",
        vocab,
        ex["inputs"],
        ex["answer_pos"].astype(np.int64),
        ex["answers"].astype(np.int64),
        np.ones(len(ex["answers"]), np.int64),
        ex["roles"],
        ex["role_pos"],
        splits,
        config_dict(cfg),
        stats,
    )
