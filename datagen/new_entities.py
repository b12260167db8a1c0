"""New entities for a trained knowledge graph (issue 37): facts about entities no model has seen,
and two-hop questions through them, as pure seeded functions of the old graph.

Entities are counted by ordinal: the old graph's are 0 .. n_old - 1, the new ones n_old ..
n_old + n_new - 1; relations are the old graph's (a bank can add entities, not relations).

    graph   each new head gets `degree` distinct relations, each with a uniform random NEW tail
            (a graph over new entities only, beside the old one)
    links   (with link=True) each new head also gets `link_degree` further distinct relations
            with uniform random OLD tails, and each old head gets each relation it lacks (its free
            relations: the old graph gives every head out_degree of n_relations) with a uniform
            random NEW tail, so no fact of the old graph is changed

A two-hop question h r1 r2 -> t follows facts (h, r1) -> b and (b, r2) -> t; the head, the
bridge b and the answer t are each old or new, and the splits name which are new:

    test_new_all     new, new, new     (graph facts only)
    test_new_head    new, old, old     (a new -> old link, then an old fact)
    test_new_bridge  old, new, old     (an old -> new link, then a new -> old link)
    test_new_answer  old, old, new     (an old fact, then an old -> new link)

Each split is a uniform sample without replacement of every such path (at most n_questions).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SPLITS = ("test_new_all", "test_new_head", "test_new_bridge", "test_new_answer")


@dataclass(frozen=True)
class NewFacts:
    """Facts (head, relation, tail) as ordinals, int64 [n] each, and the questions per split:
    {split: int64 [n, 4] rows (head, relation_1, relation_2, answer)}."""

    n_old: int
    n_new: int
    head: np.ndarray
    relation: np.ndarray
    tail: np.ndarray
    questions: dict[str, np.ndarray]


def distinct_relations(n_heads: int, n_relations: int, k: int, rng, exclude=None) -> np.ndarray:
    """[n_heads, k] distinct relations per head, none in `exclude` [n_heads, m] (if given)."""
    scores = rng.random((n_heads, n_relations))
    if exclude is not None and exclude.size:
        np.put_along_axis(scores, exclude, np.inf, axis=1)
    return scores.argsort(axis=1)[:, :k]


def free_relations(head: np.ndarray, relation: np.ndarray, n_old: int, n_relations: int):
    """(heads, relations): every (old head, relation) pair the old graph has no fact for."""
    used = np.zeros((n_old, n_relations), dtype=bool)
    used[head, relation] = True
    return np.nonzero(~used)


def two_hop_paths(head, relation, tail, want_head, want_bridge, want_answer) -> np.ndarray:
    """Every path (h, r1, r2, t) through facts (h, r1) -> b, (b, r2) -> t whose h, b and t pass
    the three ordinal tests: [n, 4]."""
    order = np.argsort(head, kind="stable")  # facts by head: each entity's block
    start = np.searchsorted(head[order], np.arange(int(max(head.max(), tail.max())) + 2))
    first = np.flatnonzero(want_head(head) & want_bridge(tail))
    count = start[tail[first] + 1] - start[tail[first]]  # facts leaving each bridge
    rows = np.repeat(np.arange(len(first)), count)
    within = np.arange(len(rows)) - np.repeat(np.cumsum(count) - count, count)
    second = order[start[tail[first][rows]] + within]
    f = first[rows]
    paths = np.stack([head[f], relation[f], relation[second], tail[second]], axis=1)
    return paths[want_answer(tail[second])].astype(np.int64)


def new_facts(
    head: np.ndarray,
    relation: np.ndarray,
    tail: np.ndarray,
    n_old: int,
    n_relations: int,
    n_new: int,
    degree: int,
    rng: np.random.Generator,
    link: bool = False,
    link_degree: int = 4,
    n_questions: int = 1000,
) -> NewFacts:
    """The new facts over n_new entities beside the old graph (head, relation, tail ordinals) and
    the questions through them (module docstring); deterministic given `rng`."""
    if degree + (link_degree if link else 0) > n_relations:
        raise ValueError(
            f"degree={degree} + link_degree={link_degree} relations per new entity "
            f"exceed the {n_relations} relations"
        )
    new = n_old + np.arange(n_new)
    rel = distinct_relations(n_new, n_relations, degree, rng)
    heads, rels = [np.repeat(new, degree)], [rel.ravel()]
    tails = [n_old + rng.integers(0, n_new, size=n_new * degree)]
    if link:
        more = distinct_relations(n_new, n_relations, link_degree, rng, exclude=rel)
        heads.append(np.repeat(new, link_degree)), rels.append(more.ravel())
        tails.append(rng.integers(0, n_old, size=n_new * link_degree))
        free_h, free_r = free_relations(head, relation, n_old, n_relations)
        heads.append(free_h), rels.append(free_r)
        tails.append(n_old + rng.integers(0, n_new, size=len(free_h)))
    h, r, t = (np.concatenate(x).astype(np.int64) for x in (heads, rels, tails))
    all_h, all_r, all_t = (np.concatenate([a, b]) for a, b in ((head, h), (relation, r), (tail, t)))
    old, is_new = (lambda x: x < n_old), (lambda x: x >= n_old)
    tests = {
        "test_new_all": (is_new, is_new, is_new),
        "test_new_head": (is_new, old, old),
        "test_new_bridge": (old, is_new, old),
        "test_new_answer": (old, old, is_new),
    }
    questions = {}
    for split in (SPLITS if link else SPLITS[:1]) if n_questions else ():
        paths = two_hop_paths(all_h, all_r, all_t, *tests[split])
        questions[split] = paths[np.sort(rng.permutation(len(paths))[:n_questions])]
    return NewFacts(n_old, n_new, h, r, t, questions)
