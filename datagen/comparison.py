"""Attribute comparison (Wang et al. 2024; docs/references.md).

Each entity has an ordinal value per attribute. Atomic `<attr><e>` -> `<v>`. Inferred
`<attr><q><e1><mask><e2>` -> one of <lt>, <eq>, <gt> comparing the two values. Per attribute, an
`ood_fraction` of entities is OOD; OOD x OOD pairs form the OOD test set, ID x ID pairs give the ID
test set (a `test_id_fraction`), the validation set (a `valid_fraction`) and the training
candidates; mixed pairs are discarded. Splits are by UNORDERED pair, as in the authors' data: both
orders of a pair land in the same split, so a held-out comparison is never the mirror image of a
training one.
"""

from __future__ import annotations

import numpy as np

from datagen.config import ComparisonConfig, config_dict
from datagen.dataset import Dataset, sample_eval
from datagen.vocab import Vocab

LABELS = ["<lt>", "<eq>", "<gt>"]


def _pairs(ents: np.ndarray) -> np.ndarray:
    """Unordered pairs [n, 2] (first < second) of distinct entities."""
    i, j = (x.ravel() for x in np.meshgrid(ents, ents, indexing="ij"))
    return np.stack([i[i < j], j[i < j]], 1)


def _both_orders(a: int, pairs: np.ndarray) -> np.ndarray:
    """Rows (attribute, e1, e2) for both orders of every pair."""
    both = np.concatenate([pairs, pairs[:, ::-1]])
    return np.concatenate([np.full((len(both), 1), a), both], 1)


def _comparison_queries(cfg: ComparisonConfig, is_ood: np.ndarray, rng) -> tuple:
    """Rows of (attribute, e1, e2): the training comparisons (phi x the ID atomic facts, drawn
    from ID pairs not held out), test_inferred_id, valid and test_inferred_ood (OOD x OOD), and
    the number of training candidates."""
    A = is_ood.shape[1]
    cand, test_id, valid, test_ood = [], [], [], []  # rows of (attribute, e1, e2)
    for a in range(A):
        test_ood.append(_both_orders(a, _pairs(np.flatnonzero(is_ood[:, a]))))
        pairs = _pairs(np.flatnonzero(~is_ood[:, a]))
        pairs = pairs[rng.permutation(len(pairs))]
        n_test, n_valid = (
            round(f * len(pairs)) for f in (cfg.test_id_fraction, cfg.valid_fraction)
        )
        test_id.append(_both_orders(a, pairs[:n_test]))
        valid.append(_both_orders(a, pairs[n_test : n_test + n_valid]))
        cand.append(_both_orders(a, pairs[n_test + n_valid :]))
    cand = np.concatenate(cand)
    n_id_atomic = int((~is_ood).sum())
    n_train = round(cfg.phi * n_id_atomic)
    if n_train > len(cand):
        raise ValueError(
            f"data.phi={cfg.phi} needs {n_train} training comparisons but only "
            f"{len(cand)} candidates exist; the largest phi possible here is "
            f"{len(cand) / n_id_atomic:.3f}"
        )
    train_inf = cand[rng.choice(len(cand), size=n_train, replace=False)]
    test_id = np.concatenate(test_id)
    test_id = test_id[sample_eval(np.arange(len(test_id)), cfg.eval_size, rng)]
    valid = np.concatenate(valid)
    valid = valid[sample_eval(np.arange(len(valid)), cfg.eval_size, rng)]
    test_ood = np.concatenate(test_ood)
    test_ood = test_ood[sample_eval(np.arange(len(test_ood)), cfg.eval_size, rng)]

    return train_inf, test_id, valid, test_ood, len(cand)


def _comparison_examples(vocab: Vocab, value: np.ndarray, inferred: np.ndarray) -> tuple:
    """Every atomic fact (attribute, entity -> value) then each comparison (attribute <q> e1
    <mask> e2 -> label): inputs, answers, answer positions, roles and their positions."""
    E, A = value.shape
    e0, a0, v0, l0 = (vocab.ranges[n][0] for n in ("entities", "attributes", "values", "labels"))
    ent, att = (x.ravel() for x in np.meshgrid(np.arange(E), np.arange(A), indexing="ij"))
    n_atomic = E * A
    N = n_atomic + len(inferred)
    inputs = np.zeros((N, 5), dtype=np.int64)  # <pad> is id 0
    inputs[:n_atomic, 0], inputs[:n_atomic, 1] = a0 + att, e0 + ent
    at, x, y = inferred.T
    s = slice(n_atomic, N)
    inputs[s] = np.stack(
        [
            a0 + at,
            np.full(len(at), vocab.id("<q>")),
            e0 + x,
            np.full(len(at), vocab.id("<mask>")),
            e0 + y,
        ],
        1,
    )
    vx, vy = value[x, at], value[y, at]
    answers = np.concatenate([v0 + value[ent, att], l0 + 1 + np.sign(vx - vy)])
    answer_pos = np.concatenate([np.ones(n_atomic, np.int64), np.full(len(at), 4)])
    minus = np.full(n_atomic, -1)
    roles = {
        "attribute": inputs[:, 0],
        "entity_1": inputs[:, 1].copy(),
        "entity_2": np.concatenate([minus, e0 + y]),
        "value_1": np.concatenate([v0 + value[ent, att], v0 + vx]),
        "value_2": np.concatenate([minus, v0 + vy]),
        "answer": answers,
    }
    roles["entity_1"][s] = e0 + x
    role_pos = {
        "attribute": np.zeros(N),
        "entity_1": np.concatenate([np.ones(n_atomic), np.full(len(at), 2)]),
        "entity_2": np.concatenate([minus, np.full(len(at), 4)]),
    }
    role_pos |= {
        "value_1": role_pos["entity_1"],
        "value_2": role_pos["entity_2"],
        "answer": np.full(N, -1),
    }

    return inputs, answers, answer_pos, roles, role_pos


def make_comparison(cfg: ComparisonConfig, rng: np.random.Generator) -> Dataset:
    E, A, V = cfg.n_entities, cfg.n_attributes, cfg.n_values
    vocab = Vocab.build(
        [
            ("specials", ["<pad>", "<q>", "<mask>"]),
            ("entities", [f"<e_{i}>" for i in range(E)]),
            ("attributes", [f"<a_{i}>" for i in range(A)]),
            ("values", [f"<v_{i}>" for i in range(V)]),
            ("labels", LABELS),
        ]
    )
    value = rng.integers(0, V, size=(E, A))
    n_ood = round(cfg.ood_fraction * E)
    is_ood = np.zeros((E, A), dtype=bool)
    for a in range(A):
        is_ood[rng.permutation(E)[:n_ood], a] = True

    train_inf, test_id, valid, test_ood, n_candidates = _comparison_queries(cfg, is_ood, rng)
    n_id_atomic, n_train = int((~is_ood).sum()), len(train_inf)
    inferred = np.concatenate([train_inf, test_id, valid, test_ood])
    inputs, answers, answer_pos, roles, role_pos = _comparison_examples(vocab, value, inferred)
    ent, att = (x.ravel() for x in np.meshgrid(np.arange(E), np.arange(A), indexing="ij"))
    n_atomic, N = E * A, len(inputs)
    atomic_idx = np.arange(n_atomic)
    atomic_ood = is_ood[ent, att]
    o1, o2 = n_atomic, n_atomic + len(train_inf)
    o3, o4 = o2 + len(test_id), o2 + len(test_id) + len(valid)
    train_idx = np.arange(o1, o2)
    splits = {
        "train": np.concatenate([atomic_idx, train_idx]),
        "atomic_id": sample_eval(atomic_idx[~atomic_ood], cfg.eval_size, rng),
        "atomic_ood": sample_eval(atomic_idx[atomic_ood], cfg.eval_size, rng),
        "train_inferred": sample_eval(train_idx, cfg.eval_size, rng),
        "valid": np.arange(o3, o4),
        "test_inferred_id": np.arange(o2, o3),
        "test_inferred_ood": np.arange(o4, N),
    }
    splits = {k: v.astype(np.int64) for k, v in splits.items() if k == "train" or len(v)}
    stats = {
        "n_id_atomic": n_id_atomic,
        "n_candidates": n_candidates,
        "achieved_phi": n_train / n_id_atomic,
    }
    return Dataset(
        "comparison",
        vocab,
        inputs,
        answer_pos,
        answers.astype(np.int64),
        np.ones(N, np.int64),
        {k: np.asarray(v, np.int64) for k, v in roles.items()},
        {k: np.asarray(v, np.int64) for k, v in role_pos.items()},
        splits,
        config_dict(cfg),
        stats,
    )
