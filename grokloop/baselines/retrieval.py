"""The retrieval baseline of complex reasoning: the non-parametric control of Wang et al. 2024
("Grokked Transformers are Implicit Reasoners", arXiv 2405.15071, section 5), where an LLM is given
the retrieved facts about the query's entities (33.3% on their hard queries, chance 33.3%).

    python -m grokloop.baselines lookup data=complex_reasoning_cpu methods=[retrieval]

Each query retrieves the training facts that mention its entities and answers with ONE step, no
chaining through a third entity:
  atomic (a, e)           the training value of (a, e) if there is one
  comparison (a, x, y)    both training values known: compare them; else a training comparison
                          of exactly x and y (either order): its label; else nothing
Unanswered queries get the most frequent training answer of their kind (the attribute's most
frequent value, or label), so the row's accuracy is that of a guess there; `coverage` is the
fraction a retrieved fact answered. On test_hard (OOD x OOD: no value known, no comparison
between them trained) nothing is retrieved, so it scores the share of the majority label, about
1/3 on a balanced set. Both comparison layouts (ours and the authors', datagen/grokked_format.py).
"""

from __future__ import annotations

import numpy as np

from datagen.dataset import Dataset
from grokloop.baselines.symbolic import FactTable, label_sign, label_token

TASKS = ("comparison", "complex_reasoning")


def majority(keys: np.ndarray, answers: np.ndarray) -> dict[int, int]:
    """The most frequent answer per key (ties: the lowest answer token)."""
    return {int(k): int(np.bincount(answers[keys == k]).argmax()) for k in np.unique(keys)}


def retrieval_answers(ds: Dataset, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(answer token per query in `idx`, whether a retrieved fact answered it)."""
    if ds.task not in TASKS:
        raise ValueError(f"no retrieval baseline for task {ds.task!r}; known: {list(TASKS)}")
    r, train, n_vocab = ds.roles, ds.splits["train"], len(ds.vocab)
    idx = np.asarray(idx, np.int64)
    atomic, cmp = (train[r["entity_2"][train] < 0], train[r["entity_2"][train] >= 0])
    values = FactTable(r["attribute"][atomic], r["entity_1"][atomic], ds.answers[atomic], n_vocab)
    pair = FactTable(
        r["attribute"][cmp],
        r["entity_1"][cmp] * n_vocab + r["entity_2"][cmp],
        ds.answers[cmp],
        n_vocab * n_vocab,
    )
    guess = {
        True: majority(r["attribute"][cmp], ds.answers[cmp]),
        False: majority(r["attribute"][atomic], ds.answers[atomic]),
    }

    a, x, y = r["attribute"][idx], r["entity_1"][idx], r["entity_2"][idx]
    is_cmp = y >= 0
    v1, v2 = values.get(a, x), values.get(a, y)
    direct = pair.get(a, np.where(is_cmp, x * n_vocab + y, -1))
    mirror = pair.get(a, np.where(is_cmp, y * n_vocab + x, -1))
    out = np.select(
        [~is_cmp, (v1 >= 0) & (v2 >= 0), direct >= 0, mirror >= 0],
        [
            v1,
            label_token(ds, a, np.sign(v1 - v2)),
            direct,
            label_token(ds, a, -label_sign(ds, mirror)),
        ],
        -1,
    )
    answered = out >= 0
    for i in np.flatnonzero(~answered):
        out[i] = guess[bool(is_cmp[i])].get(int(a[i]), -1)
    return out, answered
