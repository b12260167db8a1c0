"""Binary-operation tables on ONE shared vocabulary, the stages of a curriculum from logic to
mathematics (issue 20): `a <op> b =` -> c, one answer token, the answer read at the `=` position.

Vocabulary, the same for every op (so a model trained on one stage trains on the next without
resizing, and every token means the same thing in every stage):
  ids 0..127     the integers "0".."127" (token id == integer, as in the modular task)
  128, 129       "<pad>", "="
  130..141       one token per operation, "<op_xor>" .. "<op_s5>", in datagen.config.TABLE_OPS
                 order (xor, and, or, implies, nand, gfmul, add, sub, mul, div, poly, s5)

Operations (operands and answers are integer tokens):
  Logic, bitwise on 7-bit words a, b in 0..127 (128 x 128 = 16,384 cells):
    xor      a ^ b                 the group Z_2^7
    and      a & b
    or       a | b
    implies  (~a | b) & 127        bitwise (not a) or b
    nand     ~(a & b) & 127
    gfmul    a * b in GF(2^7) = F_2[x] / (x^7 + x + 1), bit i the coefficient of x^i
  Mathematics, mod `modulus` (127 by default, prime), a, b in 0..modulus-1:
    add, sub, mul   (a op b) mod modulus
    div             a * b^-1 mod modulus, b != 0 (modulus x (modulus - 1) cells)
    poly            a^2 + ab + b^2 mod modulus
    s5              composition in S_5 (120 x 120 = 14,400 cells), (a o b)(i) = a(b(i)): apply b
                    first, as in the group task. Permutation k is the k-th of
                    itertools.permutations(range(5)), i.e. lexicographic order of the tuples
                    (p(0), ..., p(4)): 0 is the identity (0,1,2,3,4), 119 is (4,3,2,1,0).

Propositional formulas. A formula in two propositional variables applied bitwise is one of the
16 two-input truth tables, so it is one of the connectives above (or a trivial/negated one)
and adds no new stage. What the bitwise ops lack is any interaction ACROSS bit positions, which
every mathematics stage needs (carries in add, everything in mul). `gfmul` is that formula stage:
output bit k is a fixed propositional formula in the 14 input bits, an XOR of ANDs a_i AND b_j
(with i + j = k, plus the terms x^7 -> x + 1 folds back), the carry-less, XOR-based analogue of
modular multiplication. It is also the bridge: GF(2^7) is a field whose addition is the xor
stage and whose 127 non-zero elements form a cyclic group of the same order as Z_127.

Splits as in datagen/arithmetic.py: by table cell, a `train_fraction` of the cells trains, the
rest are `test`; `train_sample` is a fixed seeded sample of at most TRAIN_SAMPLE_SIZE training
cells. Pure function of the config and its seed."""

from __future__ import annotations

import itertools

import numpy as np

from datagen.arithmetic import _table_dataset, modular_table
from datagen.config import TABLE_OPS, TableConfig
from datagen.dataset import Dataset
from datagen.vocab import Vocab

N_VALUES = 128  # integer tokens 0..127
BITS = 7  # logic stages act on 7-bit words
MASK = (1 << BITS) - 1
GF_POLY = 0b10000011  # x^7 + x + 1, irreducible (primitive) over F_2
LOGIC_OPS = ("xor", "and", "or", "implies", "nand", "gfmul")
MODULAR_OPS = ("add", "sub", "mul", "div", "poly")


def table_vocab() -> Vocab:
    """The one vocabulary of every table op (module docstring)."""
    return Vocab.build(
        [
            ("numbers", [str(i) for i in range(N_VALUES)]),
            ("specials", ["<pad>", "="]),
            ("ops", [f"<op_{op}>" for op in TABLE_OPS]),
        ]
    )


def gf_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Multiplication in GF(2^7) = F_2[x] / (x^7 + x + 1), elementwise (shift and xor)."""
    a, b = np.asarray(a, np.int64).copy(), np.asarray(b, np.int64).copy()
    out = np.zeros(np.broadcast(a, b).shape, np.int64)
    for _ in range(BITS):
        out ^= np.where(b & 1, a, 0)
        b >>= 1
        a <<= 1
        a = np.where(a >> BITS, a ^ GF_POLY, a)
    return out


def walsh_basis(bits: int = BITS) -> np.ndarray:
    """The characters of Z_2^bits, row s the Walsh function x -> (-1)^popcount(s & x) / sqrt(n):
    an orthonormal, symmetric [n, n] basis (n = 2^bits), the xor group's Fourier basis. Row 2^i
    is bit i's own direction: +1 where bit i of x is 0, -1 where it is 1."""
    x = np.arange(1 << bits)
    parity = np.zeros((len(x), len(x)), np.int64)
    for i in range(bits):  # popcount(s & x) mod 2, bit by bit
        parity ^= ((x[:, None] >> i) & 1) & ((x[None, :] >> i) & 1)
    return (1 - 2 * parity) / np.sqrt(len(x))


def s5_elements() -> list[tuple[int, ...]]:
    """The 120 permutations of 0..4 in lexicographic order: element k is token k."""
    return list(itertools.permutations(range(5)))


def _grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    return tuple(x.ravel() for x in np.meshgrid(np.arange(n), np.arange(n), indexing="ij"))


def op_table(op: str, modulus: int = 127) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a, b, a op b) for every cell of the op's table, row-major in (a, b)."""
    if op in MODULAR_OPS:
        return modular_table(modulus, op)
    if op == "s5":
        perms = s5_elements()
        index = {p: i for i, p in enumerate(perms)}
        a, b = _grid(len(perms))
        c = np.array([index[tuple(perms[x][perms[y][i]] for i in range(5))] for x, y in zip(a, b)])
        return a, b, c
    a, b = _grid(N_VALUES)
    c = {
        "xor": lambda: a ^ b,
        "and": lambda: a & b,
        "or": lambda: a | b,
        "implies": lambda: (~a | b) & MASK,
        "nand": lambda: ~(a & b) & MASK,
        "gfmul": lambda: gf_mul(a, b),
    }[op]()
    return a, b, c


def make_table(cfg: TableConfig, rng: np.random.Generator) -> Dataset:
    vocab = table_vocab()
    a, b, c = op_table(cfg.op, cfg.modulus)
    stats = {"op": cfg.op} | ({"modulus": cfg.modulus} if cfg.op in MODULAR_OPS else {})
    return _table_dataset(
        "table",
        vocab,
        a,
        b,
        c,
        cfg.train_fraction,
        cfg,
        rng,
        stats,
        op_id=vocab.id(f"<op_{cfg.op}>"),
    )


def is_commutative(op: str, modulus: int = 127) -> bool:
    """Whether a op b == b op a on every cell whose transpose the table also defines."""
    a, b, c = op_table(op, modulus)
    t = np.full((max(a.max(), b.max()) + 1,) * 2, -1)
    t[a, b] = c
    both = (t >= 0) & (t.T >= 0)
    return bool((t[both] == t.T[both]).all())


def table_overlap(op: str, other: str, modulus: int = 127) -> float:
    """The share of `op`'s cells (those `other` also defines) where `other` gives the same answer:
    the zero-shot accuracy a model that learned `other` gets on `op` for free (after or, xor is
    right wherever a & b == 0: (3/4)^7 of the cells). It is what FWT's R[j-1][j] is read against."""
    a, b, c = op_table(op, modulus)
    a2, b2, c2 = op_table(other, modulus)
    size = max(a.max(), a2.max()) + 1
    theirs = np.full((size, size), -1)
    theirs[a2, b2] = c2
    shared = theirs[a, b] >= 0
    return float((theirs[a, b][shared] == c[shared]).mean())
