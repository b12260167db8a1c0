"""Binary-operation tables: `a op b mod p` (Power et al. 2022; Nanda et al. 2023) and composition
in the symmetric group S_n. Input `a op b =`, answer at the `=` position. The split is by table
cell: a `train_fraction` of the cells train, the rest test. `train_sample`, a fixed seeded sample of
at most `TRAIN_SAMPLE_SIZE` training cells, is an evaluation split so every run has a training
accuracy curve."""

from __future__ import annotations

import itertools

import numpy as np

from datagen.config import GroupConfig, ModularConfig, config_dict
from datagen.dataset import Dataset, sample_eval
from datagen.vocab import Vocab

TRAIN_SAMPLE_SIZE = 2000
OP_SYMBOL = {"add": "+", "sub": "-", "mul": "*", "div": "/", "poly": "x^2+xy+y^2"}


def modular_table(p: int, op: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a, b, a op b mod p) for every cell; division skips b = 0."""
    a, b = (x.ravel() for x in np.meshgrid(np.arange(p), np.arange(p), indexing="ij"))
    if op == "div":
        a, b = a[b != 0], b[b != 0]
        c = a * np.array([pow(int(x), -1, p) for x in b]) % p  # modular inverse (p prime)
    else:
        c = {"add": a + b, "sub": a - b, "mul": a * b, "poly": a * a + a * b + b * b}[op] % p
    return a, b, c


def _table_dataset(task, vocab, a, b, c, train_fraction, cfg, rng, stats, op_id=None) -> Dataset:
    """`a op b =` -> c, split by cell. `op_id`: the operation's token (default: the first "ops")."""
    n = len(a)
    op_id = vocab.range("ops")[0] if op_id is None else op_id
    inputs = np.stack([a, np.full(n, op_id), b, np.full(n, vocab.id("="))], 1)
    order = rng.permutation(n)
    n_train = round(train_fraction * n)
    splits = {"train": np.sort(order[:n_train]), "test": np.sort(order[n_train:])}
    splits["train_sample"] = sample_eval(splits["train"], TRAIN_SAMPLE_SIZE, rng)
    roles = {"a": a, "op": inputs[:, 1], "b": b, "answer": c}
    role_pos = {
        "a": np.zeros(n, np.int64),
        "op": np.ones(n, np.int64),
        "b": np.full(n, 2),
        "answer": np.full(n, -1),
    }
    return Dataset(
        task,
        vocab,
        inputs.astype(np.int64),
        np.full(n, 3, np.int64),
        c.astype(np.int64),
        np.ones(n, np.int64),
        {k: np.asarray(v, np.int64) for k, v in roles.items()},
        {k: np.asarray(v, np.int64) for k, v in role_pos.items()},
        {k: v.astype(np.int64) for k, v in splits.items()},
        config_dict(cfg),
        stats | {"table_size": n, "train_fraction": n_train / n},
    )


def make_modular(cfg: ModularConfig, rng: np.random.Generator) -> Dataset:
    # Numbers first so that token id == number, which keeps Fourier probes index-free.
    vocab = Vocab.build(
        [
            ("numbers", [str(i) for i in range(cfg.p)]),
            ("specials", ["<pad>", "="]),
            ("ops", [OP_SYMBOL[cfg.op]]),
        ]
    )
    a, b, c = modular_table(cfg.p, cfg.op)
    return _table_dataset("modular", vocab, a, b, c, cfg.train_fraction, cfg, rng, {"p": cfg.p})


def make_group(cfg: GroupConfig, rng: np.random.Generator) -> Dataset:
    perms = list(itertools.permutations(range(cfg.n)))
    index = {p: i for i, p in enumerate(perms)}
    vocab = Vocab.build(
        [
            ("perms", ["[" + "".join(map(str, p)) + "]" for p in perms]),
            ("specials", ["<pad>", "="]),
            ("ops", ["o"]),
        ]
    )
    m = len(perms)
    a, b = (x.ravel() for x in np.meshgrid(np.arange(m), np.arange(m), indexing="ij"))
    # (a o b)(i) = a(b(i)): apply b first, then a.
    c = np.array([index[tuple(perms[x][perms[y][i]] for i in range(cfg.n))] for x, y in zip(a, b)])
    return _table_dataset("group", vocab, a, b, c, cfg.train_fraction, cfg, rng, {"order": m})
