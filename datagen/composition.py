"""Knowledge-graph composition: atomic facts (h, r) -> t and k-hop inferred facts.

Construction (Wang et al. 2024; docs/references.md, "Grokked transformers are implicit
reasoners"): every head gets `out_degree` distinct relations, each with a uniform random tail. The
ID/OOD split is by atomic FACT. An inferred fact (h, r1, ..., rk) -> t follows a path of k atomic
facts; a path whose hops are all ID is a training candidate, an ID test fact (test_inferred_id) or
a validation fact (valid); a path whose hops are all OOD is an OOD test fact (test_inferred_ood).
Mixed two-hop paths are the OOD-by-hop splits test_OI (first hop OOD) and test_IO (second hop
OOD), as in the authors' released files; longer mixed paths are not built. ID paths are
enumerated in the subgraph of ID facts and OOD paths in the subgraph of OOD facts. When a subgraph has more than `ENUMERATE_LIMIT` k-paths (k >= 3
at paper scale) the paths are sampled as random walks in that subgraph (each next fact uniform
among the current tail's facts) and de-duplicated; a query (h, r1..rk) determines its path, so
distinct paths are distinct facts.

Held-out queries are never prefixes of training facts (the model is causal, so its state at the
end of a prefix is trained by every training fact that extends it). The rule is per path and
closed under extension: hop counts are processed in increasing order, and a k-hop ID path is a
candidate (for training or for `test_inferred_id`) only if none of its proper prefixes of 2 or
more hops was held out at a shorter hop count. The candidates are shuffled; the first ones (a
`test_id_fraction`, at most `eval_size`; every candidate up to `eval_size` for a test-only hop
count) are held out as `test_inferred_id`, the next ones train. So a held-out 2-hop query h r1 r2
never begins a training 3-hop fact, while a held-out 3-hop query may begin with a training 2-hop
fact (that composition is what the split tests). OOD queries start with an OOD atomic fact, which
no ID path does, so they are never prefixes of training inferred facts. With `hops: [2]` only the
2-hop level exists and the rule changes nothing.
"""

from __future__ import annotations

import numpy as np

from datagen.config import CompositionConfig, config_dict
from datagen.dataset import Dataset, sample_eval
from datagen.vocab import Vocab

ENUMERATE_LIMIT = 4_000_000


def lay_out_chains(vocab: Vocab, pieces, deepest: int):
    """The examples of chain queries `head r_1 .. r_k` (answer read at r_k's position), right-padded
    to `deepest` relations, with their roles. `pieces` lists (split name, k, heads [n],
    relations [n, k], entities [n, k]: the entity each hop reaches, the last being the answer),
    entity and relation ids counted from 0. Returns (inputs, hops, roles, role_pos, index), index
    mapping each split name to the example indices of its pieces. Shared by composition and
    permutation chains, so both lay out and label their examples alike."""
    N = sum(len(heads) for _, _, heads, _, _ in pieces)
    e0, r0 = vocab.ranges["entities"][0], vocab.ranges["relations"][0]
    inputs = np.full((N, 1 + deepest), vocab.pad_id, dtype=np.int64)
    hops = np.zeros(N, dtype=np.int64)
    roles = {"head": np.full(N, -1), "answer": np.full(N, -1)}
    roles |= {f"relation_{i}": np.full(N, -1) for i in range(1, deepest + 1)}
    roles |= {f"bridge_{i}": np.full(N, -1) for i in range(1, deepest)}
    role_pos = {name: np.full(N, -1) for name in roles}
    index, start = {}, 0
    for name, k, heads, relations, entities in pieces:
        s = slice(start, start + len(heads))
        index.setdefault(name, []).append(np.arange(s.start, s.stop))
        inputs[s, 0] = e0 + heads
        roles["head"][s], role_pos["head"][s] = inputs[s, 0], 0
        for j in range(k):
            inputs[s, 1 + j] = r0 + relations[:, j]
            roles[f"relation_{j + 1}"][s], role_pos[f"relation_{j + 1}"][s] = (
                inputs[s, 1 + j],
                1 + j,
            )
            if j < k - 1:  # the bridge reached after hop j+1, probed at that relation's position
                roles[f"bridge_{j + 1}"][s], role_pos[f"bridge_{j + 1}"][s] = (
                    e0 + entities[:, j],
                    1 + j,
                )
        roles["answer"][s] = e0 + entities[:, -1]
        hops[s] = k
        start = s.stop
    return inputs, hops, roles, role_pos, index


SELF_RELATION = "<r_self>"


def composition_vocab(n_entities: int, n_relations: int, self_relation: bool = False) -> Vocab:
    # Token spellings follow the GrokkedTransformer repository so files convert losslessly; the
    # identity relation (data.self_relation) comes last, so every other token keeps its id.
    relations = [f"<r_{i}>" for i in range(n_relations)] + [SELF_RELATION] * self_relation
    return Vocab.build(
        [
            ("specials", ["<pad>", "</a>"]),
            ("entities", [f"<e_{i}>" for i in range(n_entities)]),
            ("relations", relations),
        ]
    )


class Graph:
    """Atomic facts in head order: fact f has head f // out_degree."""

    def __init__(self, cfg: CompositionConfig, rng: np.random.Generator):
        E, R, D = cfg.n_entities, cfg.n_relations, cfg.out_degree
        self.E, self.D = E, D
        self.head = np.repeat(np.arange(E), D)  # [F]
        self.relation = rng.random((E, R)).argsort(axis=1)[:, :D].ravel()  # distinct per head
        self.tail = rng.integers(0, E, size=E * D)  # [F]
        n_ood = round(cfg.ood_fraction * E * D)
        self.is_ood = np.zeros(E * D, dtype=bool)
        self.is_ood[rng.permutation(E * D)[:n_ood]] = True

    def subgraph(self, ood: bool):
        """CSR of the facts with is_ood == ood: facts sorted by head, count and offset per head."""
        facts = np.flatnonzero(self.is_ood == ood)
        counts = np.bincount(self.head[facts], minlength=self.E)
        offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
        return facts, counts, offsets

    def paths_from(self, sub, m: int) -> np.ndarray:
        """[E] number of m-paths in a subgraph starting at each entity (m = 0: one, the empty
        path), by dynamic programming over the tail entity."""
        facts, _, _ = sub
        per_entity = np.ones(self.E)
        for _ in range(m):
            per_fact = per_entity[self.tail[facts]]  # paths continuing after each fact
            per_entity = np.bincount(self.head[facts], weights=per_fact, minlength=self.E)
        return per_entity

    def count_paths(self, sub, k: int) -> int:
        """Number of k-paths in a subgraph."""
        return int(round(self.paths_from(sub, k).sum()))

    def enumerate_paths(self, sub, k: int, first: np.ndarray | None = None) -> np.ndarray:
        """Every k-path in a subgraph; with `first`, paths whose first fact is from `first` and
        whose later facts are in the subgraph (the mixed OOD-by-hop paths)."""
        facts, counts, offsets = sub
        paths = (facts if first is None else first)[:, None]  # [n, 1] fact indices
        for _ in range(k - 1):
            ent = self.tail[paths[:, -1]]
            c = counts[ent]
            rows = np.repeat(np.arange(len(paths)), c)
            within = np.arange(len(rows)) - np.repeat(np.cumsum(c) - c, c)
            nxt = facts[offsets[ent[rows]] + within]
            paths = np.concatenate([paths[rows], nxt[:, None]], axis=1)
        return paths

    def sample_paths(self, sub, k: int, n: int, rng: np.random.Generator, keep=None) -> np.ndarray:
        """About n distinct k-paths by random walks (fewer if the subgraph has fewer); `keep`, if
        given, maps an [m, k] array of paths to a bool mask of the ones that may be returned."""
        facts, counts, offsets = sub
        found = np.empty((0, k), dtype=np.int64)
        for _ in range(20):
            m = 2 * (n - len(found)) + 64
            walk = rng.choice(facts, size=m)[:, None]
            alive = np.ones(m, dtype=bool)
            for _ in range(k - 1):
                ent = self.tail[walk[:, -1]]
                c = counts[ent]
                alive &= c > 0
                pick = offsets[ent] + np.floor(rng.random(m) * np.maximum(c, 1)).astype(np.int64)
                walk = np.concatenate([walk, facts[np.minimum(pick, len(facts) - 1)][:, None]], 1)
            new = walk[alive]
            if keep is not None:
                new = new[keep(new)]
            found = np.unique(np.concatenate([found, new]), axis=0)
            if len(found) >= n:
                break
        return found[rng.permutation(len(found))[:n]]


def _rows_in(x: np.ndarray, y: np.ndarray, base: int) -> np.ndarray:
    """Bool mask over the rows of x: which also occur as rows of y (int arrays, values < base)."""
    both = np.concatenate([x, y])
    key = both[:, 0]
    for c in range(1, both.shape[1]):  # dense row ids, one column at a time (no overflow)
        key = np.unique(key * base + both[:, c], return_inverse=True)[1].reshape(-1)
    return np.isin(key[: len(x)], key[len(x) :])


def _extends_held(paths: np.ndarray, held: dict[int, np.ndarray], n_facts: int) -> np.ndarray:
    """Bool mask over k-paths: which have a proper prefix among the held-out j-paths (j < k)."""
    out = np.zeros(len(paths), dtype=bool)
    for j, h in held.items():
        if j < paths.shape[1] and len(h):
            out |= _rows_in(paths[:, :j], h, n_facts)
    return out


def _n_extending(graph: Graph, sub, held: dict[int, np.ndarray], k: int) -> int:
    """Number of k-paths in the subgraph that extend a held-out path. Held-out paths never
    extend one another, so the sets of their extensions are disjoint and the counts add up."""
    return int(
        round(
            sum(
                graph.paths_from(sub, k - j)[graph.tail[h[:, -1]]].sum()
                for j, h in held.items()
                if j < k and len(h)
            )
        )
    )


def _paths(
    graph: Graph, sub, k: int, n_wanted: int, rng, held: dict[int, np.ndarray] | None = None
) -> tuple[np.ndarray, int]:
    """Shuffled k-paths of the subgraph that extend no held-out path (all of them when they are
    few enough to enumerate, else about n_wanted sampled), and the total number of k-paths."""
    held = {j: h for j, h in (held or {}).items() if j < k and len(h)}
    n_facts = len(graph.tail)
    total = graph.count_paths(sub, k)
    if total <= ENUMERATE_LIMIT:
        paths = graph.enumerate_paths(sub, k)
        paths = paths[rng.permutation(len(paths))]
        return (paths[~_extends_held(paths, held, n_facts)] if held else paths), total
    n_free = total - _n_extending(graph, sub, held, k)
    keep = (lambda p: ~_extends_held(p, held, n_facts)) if held else None
    return graph.sample_paths(sub, k, min(n_wanted, n_free), rng, keep), total


def _per_hop(cfg: CompositionConfig, n_id_atomic: int, train_hops: list[int]) -> dict[int, int]:
    """Training inferred facts per hop count: phi x the ID atomic facts, split evenly."""
    n_train_total = round(cfg.phi * n_id_atomic)
    if n_train_total and not train_hops:
        raise ValueError(
            f"data.phi={cfg.phi} asks for inferred facts but data.hops={cfg.hops} "
            "has no hop count >= 2; add 2 to data.hops or set phi=0"
        )
    return {
        k: n_train_total // len(train_hops) + (i < n_train_total % len(train_hops))
        for i, k in enumerate(train_hops)
    }


def _inferred_blocks(cfg, graph, per_hop, rng, stats) -> list[tuple]:
    """(split, hop count, paths) of every inferred split, each split's size planned from exact
    path counts before anything is drawn. Hop counts go in increasing order so that held-out
    queries are known before longer paths are split."""
    id_sub, ood_sub = graph.subgraph(ood=False), graph.subgraph(ood=True)
    n_id_atomic = stats["n_id_atomic"]
    blocks, held = [], {}  # held: hop count -> the held-out ID paths (test_inferred_id)
    for k in sorted(set(per_hop) | {k for k in cfg.test_hops if k >= 2}):
        total_id = graph.count_paths(id_sub, k)
        n_cand = total_id - _n_extending(graph, id_sub, held, k)
        n_test = round(cfg.test_id_fraction * n_cand) if k in per_hop else n_cand
        n_test = min(n_test, cfg.eval_size)
        n_valid = min(round(cfg.valid_fraction * n_cand), cfg.eval_size) if k in per_hop else 0
        n_test += n_valid  # held out together: test first, then valid
        n_train = per_hop.get(k, 0)
        if n_train > n_cand - n_test:
            largest = (n_cand - n_test) * len(per_hop) / n_id_atomic
            raise ValueError(
                f"data.phi={cfg.phi} needs {n_train} {k}-hop training facts but only "
                f"{n_cand - n_test} candidates exist; the largest phi possible "
                f"here is {largest:.3f}"
            )
        id_paths, _ = _paths(graph, id_sub, k, n_test + n_train, rng, held)
        if len(id_paths) < n_test + n_train and n_train:
            raise ValueError(
                f"sampling found only {len(id_paths)} of the {n_test + n_train} "
                f"{k}-hop paths needed; lower data.phi"
            )
        n_valid_ood = cfg.valid_ood_size if k == 2 else 0
        ood_paths, total_ood = _paths(graph, ood_sub, k, cfg.eval_size + n_valid_ood, rng)
        held[k] = id_paths[:n_test]
        blocks += [
            ("test_inferred_id", k, id_paths[: n_test - n_valid]),
            ("valid", k, id_paths[n_test - n_valid : n_test]),
            ("train_inferred", k, id_paths[n_test : n_test + n_train]),
            ("test_inferred_ood", k, ood_paths[: cfg.eval_size]),
            ("valid_ood", k, _after_test(ood_paths, cfg, "test_inferred_ood", n_valid_ood)),
        ]
        stats["paths"][k] = {
            "id": total_id,
            "ood": total_ood,
            "candidates": n_cand,
            "train": n_train,
            "test_id": len(held[k]) - n_valid,
            "valid": n_valid,
        }
    return blocks


def _mixed_ood_blocks(cfg, graph, rng, stats) -> list[tuple]:
    """OOD by hop (Ye et al. 2025): two-hop queries whose first hop is OOD and second ID
    (test_OI) or the reverse (test_IO), named as in the authors' released files. Drawn after
    every other split, so adding them changes no other split."""
    if not (cfg.mixed_ood and 2 in set(cfg.hops) | set(cfg.test_hops)):
        return []
    blocks = []
    for name, first_ood in (("test_OI", True), ("test_IO", False)):
        first = np.flatnonzero(graph.is_ood == first_ood)
        rest = graph.subgraph(ood=not first_ood)
        paths = graph.enumerate_paths(rest, 2, first=first)
        paths = paths[rng.permutation(len(paths))]
        blocks.append((name, 2, paths[: cfg.eval_size]))
        valid = _after_test(paths, cfg, name, cfg.valid_ood_size)
        blocks.append((name.replace("test", "valid"), 2, valid))
        stats["paths"][f"2_{name}"] = {"total": min(len(paths), cfg.eval_size)}
    return blocks


def _after_test(paths: np.ndarray, cfg, name: str, n: int) -> np.ndarray:
    """The n paths that follow test split `name`'s in the same shuffle (no new draw, so every
    other split is what it was without them), disjoint from it by construction."""
    held = paths[cfg.eval_size : cfg.eval_size + n]
    if len(held) < n:
        raise ValueError(
            f"data.valid_ood_size={n}: only {len(held)} {name} paths are "
            f"left after the test split's {cfg.eval_size}; lower data.valid_ood_size or "
            "data.eval_size"
        )
    return held


def _self_relation_blocks(cfg, graph) -> list[tuple]:
    """data.self_relation: `e <r_self>` -> e for every entity, and every atomic fact (e, r) -> t
    as `e <r_self> r` -> t (datagen/config.py says why). Deterministic: no draw, so every other
    split is what it was without them."""
    if not cfg.self_relation:
        return []
    r_self = cfg.n_relations  # the relation id after the real ones (composition_vocab)
    entities = np.arange(cfg.n_entities)
    identity = (entities, np.full((len(entities), 1), r_self), entities[:, None])
    relations = np.stack([np.full(len(graph.tail), r_self), graph.relation], axis=1)
    second_hop = (graph.head, relations, np.stack([graph.head, graph.tail], axis=1))
    return [("train_self", 1, *identity), ("train_self", 2, *second_hop)]


VALID_AND_TEST = (
    "valid",
    "valid_OI",
    "valid_IO",
    "valid_ood",
    "test_inferred_id",
    "test_inferred_ood",
    "test_OI",
    "test_IO",
)


def _composition_splits(cfg, graph, index, hops, train_hops, rng) -> dict[str, np.ndarray]:
    atomic = np.concatenate(index["atomic"])
    train_inferred = np.concatenate(index.get("train_inferred", [np.empty(0, np.int64)]))
    splits = {
        "train": np.concatenate([atomic, train_inferred]),
        "atomic_id": sample_eval(atomic[~graph.is_ood], cfg.eval_size, rng),
        "atomic_ood": sample_eval(atomic[graph.is_ood], cfg.eval_size, rng),
        "train_inferred": np.concatenate(
            [
                sample_eval(train_inferred[hops[train_inferred] == k], cfg.eval_size, rng)
                for k in train_hops
            ]
            or [np.empty(0, np.int64)]
        ),
    }
    train_self = index.get("train_self", [])
    splits["train"] = np.concatenate([splits["train"], *train_self])
    for name in VALID_AND_TEST:
        splits[name] = np.sort(np.concatenate(index.get(name, [np.empty(0, np.int64)])))
    return {k: v.astype(np.int64) for k, v in splits.items() if k == "train" or len(v)}


def make_composition(cfg: CompositionConfig, rng: np.random.Generator) -> Dataset:
    graph = Graph(cfg, rng)
    vocab = composition_vocab(cfg.n_entities, cfg.n_relations, cfg.self_relation)
    n_id_atomic = int((~graph.is_ood).sum())
    train_hops = sorted(k for k in set(cfg.hops) if k >= 2)
    per_hop = _per_hop(cfg, n_id_atomic, train_hops)
    stats = {"n_id_atomic": n_id_atomic, "n_ood_atomic": int(graph.is_ood.sum()), "paths": {}}
    blocks = _inferred_blocks(cfg, graph, per_hop, rng, stats)
    blocks += _mixed_ood_blocks(cfg, graph, rng, stats)

    # Examples: all atomic facts first (as 1-hop paths), then each inferred block.
    all_facts = np.arange(len(graph.tail))[:, None]
    pieces = [
        (name, k, graph.head[paths[:, 0]], graph.relation[paths], graph.tail[paths])
        for name, k, paths in [("atomic", 1, all_facts)] + blocks
        if len(paths)
    ]
    pieces += _self_relation_blocks(cfg, graph)
    max_hops = max([1] + list(cfg.hops) + list(cfg.test_hops))
    inputs, hops, roles, role_pos, index = lay_out_chains(vocab, pieces, max_hops)
    answers = roles["answer"].copy()
    answer_pos = hops.copy()  # the last relation sits at position k
    splits = _composition_splits(cfg, graph, index, hops, train_hops, rng)
    n_train_inferred = sum(len(x) for x in index.get("train_inferred", []))
    stats["achieved_phi"] = n_train_inferred / n_id_atomic
    stats["paths"] = {str(k): v for k, v in stats["paths"].items()}
    return Dataset(
        "composition",
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
