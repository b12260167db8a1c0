"""k-hop chains over permutation relations (Loop, Think & Generalize; docs/references.md).

Each of the `n_relations` relations is a uniform random permutation of the entities, so every
chain (h, r1, ..., rk) is defined and its answer is the entity reached, p_rk(...p_r1(h)). Atomic
facts (h, r) -> p_r(h), all n_entities * n_relations of them, always train. A k-hop query is the
head entity then k relation tokens; the answer is read at the last relation (answer_pos = k), as
in datagen/composition.py, whose vocabulary, roles and split names this task shares (atomic_id,
train_inferred, valid, test_inferred_id; there is no OOD split, every atomic fact trains).

A chain is an integer code, h * R^k + r1 * R^(k-1) + ... + rk, so its j-hop prefix is
code // R^(k-j). Per hop count k >= 2 a generator seeded by (the dataset's seed, k) first draws
the `eval_size + valid_size` held-out chains H_k (the first eval_size test, the rest valid), for
EVERY k up to the deepest one, trained or not (so valid, like test, has the deeper lengths):
the held-out chains of a length depend only on the seed, the sizes and the length, never on
`hops`, so the stages of a hop curriculum (presets with hops [2], [3], [4]) agree on them and
none is trained in another stage. Then the training chains
of a trained length k are drawn from the k-hop chains that are not in H_k and do not extend a
held-out shorter chain (no j-hop prefix in H_j, 2 <= j < k): the model is causal, so a training
chain trains the state at the end of each of its prefixes, and a held-out query must not be one
(a held-out 3-hop query may start with a training 2-hop chain: that composition is what is
tested). Lengths with at most ENUMERATE_LIMIT chains are enumerated and shuffled; longer ones are
sampled uniformly without replacement among the allowed chains by rejection.
"""

from __future__ import annotations

import numpy as np

from datagen.composition import composition_vocab, lay_out_chains
from datagen.config import PermutationChainsConfig, config_dict
from datagen.dataset import Dataset, sample_eval

ENUMERATE_LIMIT = 4_000_000


def decode(codes: np.ndarray, k: int, n_relations: int) -> tuple[np.ndarray, np.ndarray]:
    """k-hop chain codes -> (heads [n], relations [n, k])."""
    rels = np.empty((len(codes), k), dtype=np.int64)
    rest = codes.copy()
    for i in range(k - 1, -1, -1):
        rest, rels[:, i] = np.divmod(rest, n_relations)
    return rest, rels


def follow(perms: np.ndarray, heads: np.ndarray, rels: np.ndarray) -> np.ndarray:
    """[n, k + 1] entities along each chain: the head, then the entity after each relation."""
    path = [heads]
    for i in range(rels.shape[1]):
        path.append(perms[rels[:, i], path[-1]])
    return np.stack(path, axis=1)


def _allowed(codes: np.ndarray, k: int, R: int, held: dict[int, np.ndarray]) -> np.ndarray:
    """Bool mask over k-hop codes: not held out and no held-out j-hop prefix (2 <= j < k)."""
    ok = ~np.isin(codes, held[k])
    for j in range(2, k):
        ok &= ~np.isin(codes // R ** (k - j), held[j])
    return ok


def _train_chains(
    k: int, n: int, R: int, total: int, held: dict[int, np.ndarray], rng: np.random.Generator
) -> np.ndarray:
    """n distinct allowed k-hop codes, uniformly at random."""
    if total <= ENUMERATE_LIMIT:
        codes = np.arange(total, dtype=np.int64)
        codes = codes[_allowed(codes, k, R, held)]
        if len(codes) < n:  # the config's bound makes this unreachable; kept as a guard
            raise ValueError(
                f"data.train_per_hop={n}: only {len(codes)} {k}-hop chains are free "
                "of held-out chains; lower train_per_hop"
            )
        return codes[rng.permutation(len(codes))[:n]]
    found = np.empty(0, dtype=np.int64)
    for _ in range(50):
        draw = rng.integers(0, total, size=2 * (n - len(found)) + 64)
        found = np.concatenate([found, draw[_allowed(draw, k, R, held)]])
        _, first = np.unique(found, return_index=True)
        found = found[np.sort(first)]  # distinct, in the order drawn
        if len(found) >= n:
            return found[:n]
    raise ValueError(
        f"data.train_per_hop={n}: sampling found only {len(found)} {k}-hop chains "
        "free of held-out chains; lower train_per_hop"
    )


def make_permutation_chains(cfg: PermutationChainsConfig, rng: np.random.Generator) -> Dataset:
    E, R = cfg.n_entities, cfg.n_relations
    perms = np.stack([rng.permutation(E) for _ in range(R)])  # [R, E]: p_r(e)
    base = int(rng.integers(2**62))  # per-length generators, so lengths never share draws
    vocab = composition_vocab(E, R)
    train_hops = sorted({k for k in cfg.hops if k >= 2})
    all_hops = sorted(set(train_hops) | set(cfg.test_hops))
    deepest = max([1] + all_hops)

    held, blocks, stats = {}, [], {"n_atomic": E * R, "paths": {}}
    streams = {k: np.random.default_rng([base, k]) for k in range(2, deepest + 1)}
    for k in range(2, deepest + 1):  # every length: the held-out chains, trained or not
        held[k] = streams[k].choice(E * R**k, size=cfg.n_held, replace=False).astype(np.int64)
    for k in all_hops:
        # valid holds every length too: a halting selector tuned on it meets chains deeper than
        # the network was trained on, and can learn when to say "I don't know" to them
        blocks += [
            ("test_inferred_id", k, held[k][: cfg.eval_size]),
            ("valid", k, held[k][cfg.eval_size :]),
        ]
        if k in train_hops:
            train = _train_chains(k, cfg.train_per_hop, R, E * R**k, held, streams[k])
            blocks.append(("train_inferred", k, train))
        stats["paths"][str(k)] = {
            "total": E * R**k,
            "test": cfg.eval_size,
            "valid": cfg.valid_size,
            "train": cfg.train_per_hop if k in train_hops else 0,
        }

    # Examples: every atomic fact (code h * R + r), then each block of chains.
    pieces = []
    for name, k, codes in [("atomic", 1, np.arange(E * R, dtype=np.int64))] + blocks:
        heads, rels = decode(codes, k, R)
        pieces.append((name, k, heads, rels, follow(perms, heads, rels)[:, 1:]))
    inputs, hops, roles, role_pos, index = lay_out_chains(vocab, pieces, deepest)
    answers = roles["answer"].copy()
    answer_pos = hops.copy()  # the last relation sits at position k

    empty = [np.empty(0, np.int64)]
    atomic = np.concatenate(index["atomic"])
    train_inferred = np.concatenate(index.get("train_inferred", empty))
    splits = {
        "train": np.concatenate([atomic, train_inferred]),
        "atomic_id": sample_eval(atomic, cfg.eval_size, rng),
        "train_inferred": np.concatenate(
            [
                sample_eval(train_inferred[hops[train_inferred] == k], cfg.eval_size, rng)
                for k in train_hops
            ]
            or empty
        ),
    }
    for name in ("valid", "test_inferred_id"):
        splits[name] = np.sort(np.concatenate(index.get(name, empty)))
    splits = {k: v.astype(np.int64) for k, v in splits.items() if k == "train" or len(v)}
    # phi as composition defines it (inferred / atomic training facts); not "achieved_phi", which
    # the datagen CLI compares with a requested data.phi that this task does not have
    stats["phi"] = len(train_inferred) / (E * R)
    return Dataset(
        "khop_perm",
        vocab,
        inputs,
        answer_pos,
        answers,
        hops,
        {k: v.astype(np.int64) for k, v in roles.items()},
        {k: v.astype(np.int64) for k, v in role_pos.items()},
        splits,
        config_dict(cfg),
        stats,
    )
