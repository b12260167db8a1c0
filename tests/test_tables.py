"""The shared-vocabulary curriculum tables (datagen/tables.py, issue 20): every answer recomputed
independently, cell splits, one vocabulary for every op, S_5, division, determinism."""

import itertools
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from datagen import build_dataset, data_config_from_dict
from datagen.arithmetic import TRAIN_SAMPLE_SIZE
from datagen.config import TABLE_OPS
from datagen.tables import s5_elements
from grokloop import cli

CONF = Path(__file__).resolve().parent.parent / "conf"
P = 127


@cache
def table(op: str, seed: int = 0, train_fraction: float = 0.5):
    return build_dataset(
        data_config_from_dict(dict(task="table", op=op, seed=seed, train_fraction=train_fraction))
    )


def _gf_ref(a: int, b: int) -> int:
    """Carry-less product, then the remainder of polynomial long division by x^7 + x + 1."""
    prod = 0
    for i in range(7):
        if b >> i & 1:
            prod ^= a << i
    for deg in range(13, 6, -1):
        if prod >> deg & 1:
            prod ^= 0b10000011 << (deg - 7)
    return prod


# Permutations of 0..4 sorted as tuples: lexicographic, built without itertools.permutations.
_S5 = sorted(p for p in itertools.product(range(5), repeat=5) if len(set(p)) == 5)
_S5_INDEX = {p: i for i, p in enumerate(_S5)}

REFERENCE = {
    "xor": lambda a, b: a ^ b,
    "and": lambda a, b: a & b,
    "or": lambda a, b: a | b,
    "implies": lambda a, b: sum(1 << i for i in range(7) if not (a >> i & 1) or (b >> i & 1)),
    "nand": lambda a, b: sum(1 << i for i in range(7) if not (a >> i & 1 and b >> i & 1)),
    "gfmul": _gf_ref,
    "add": lambda a, b: (a + b) % P,
    "sub": lambda a, b: (a - b) % P,
    "mul": lambda a, b: (a * b) % P,
    "div": lambda a, b: next(c for c in range(P) if c * b % P == a),
    "poly": lambda a, b: (a * a + a * b + b * b) % P,
    "s5": lambda a, b: _S5_INDEX[tuple(_S5[a][_S5[b][i]] for i in range(5))],
}
DOMAIN = {
    op: {(a, b) for a in range(128) for b in range(128)}
    for op in ("xor", "and", "or", "implies", "nand", "gfmul")
}
DOMAIN |= {op: {(a, b) for a in range(P) for b in range(P)} for op in ("add", "sub", "mul", "poly")}
DOMAIN["div"] = {(a, b) for a in range(P) for b in range(1, P)}
DOMAIN["s5"] = {(a, b) for a in range(120) for b in range(120)}
PRESETS = sorted(
    p.stem
    for p in (CONF / "data").glob("*.yaml")
    if OmegaConf.load(p).get("defaults") == ["base_table"]
)


def test_every_op_has_a_reference():
    assert set(REFERENCE) == set(TABLE_OPS) == set(DOMAIN)


@pytest.mark.parametrize("op", TABLE_OPS)
def test_every_answer_is_the_operation(op):
    ds = table(op)
    v = ds.vocab
    assert ds.task == "table" and ds.n_ctx == 4 and (ds.answer_pos == 3).all()
    assert (ds.inputs[:, 1] == v.id(f"<op_{op}>")).all() and (ds.inputs[:, 3] == v.id("=")).all()
    ref = REFERENCE[op]
    for (x, o, y, eq), c in zip(ds.inputs.tolist(), ds.answers.tolist()):
        a, b, answer = int(v.token(x)), int(v.token(y)), int(v.token(c))  # decode by meaning
        assert answer == ref(a, b), (op, a, b, answer)
    assert np.array_equal(ds.roles["answer"], ds.answers)
    assert np.array_equal(ds.roles["a"], ds.inputs[:, 0])
    assert np.array_equal(ds.roles["b"], ds.inputs[:, 2])


@pytest.mark.parametrize("op", TABLE_OPS)
@pytest.mark.parametrize("train_fraction", [0.5, 0.3])
def test_splits_are_disjoint_and_cover_the_table_by_cell(op, train_fraction):
    ds = table(op, train_fraction=train_fraction)
    cells = [(a, b) for a, b in ds.inputs[:, [0, 2]].tolist()]
    assert len(set(cells)) == len(cells) and set(cells) == DOMAIN[op]
    train, test, sample = (set(ds.splits[s].tolist()) for s in ("train", "test", "train_sample"))
    assert not train & test and train | test == set(range(len(ds)))
    assert len(train) == round(train_fraction * len(ds))
    assert ds.eval_splits == ["test", "train_sample"]
    assert sample <= train and len(sample) == min(TRAIN_SAMPLE_SIZE, len(train))
    assert ds.manifest()["counts"] == {
        "train": len(train),
        "test": len(test),
        "train_sample": len(sample),
    }


def test_one_vocabulary_with_shared_meaning_across_every_op():
    vocabs = [table(op).vocab for op in TABLE_OPS]
    assert all(v.to_dict() == vocabs[0].to_dict() for v in vocabs)
    v = vocabs[0]
    assert len(v) == 128 + 2 + len(TABLE_OPS) == 142
    assert [v.id(str(i)) for i in range(128)] == list(range(128))  # the token for 5 is id 5
    assert v.range("numbers") == range(0, 128) and v.range("specials") == range(128, 130)
    assert [v.token(i) for i in v.range("ops")] == [f"<op_{op}>" for op in TABLE_OPS]
    # The same id means the same number in every task: every answer and operand is a number.
    for op in TABLE_OPS:
        ds = table(op)
        assert ds.answers.max() < 128 and ds.inputs[:, [0, 2]].max() < 128


def test_presets_are_one_per_op_and_compose_through_the_cli():
    assert len(PRESETS) == len(TABLE_OPS)
    ops = []
    for name in PRESETS:
        d = OmegaConf.to_container(cli.compose("datagen", [f"data={name}"]).data)
        cfg = data_config_from_dict(d)
        assert cfg.task == "table" and cfg.train_fraction == 0.5 and cfg.modulus == 127
        ops.append(cfg.op)
    assert sorted(ops) == sorted(TABLE_OPS)


def test_s5_ordering_is_a_bijection_and_composition_is_associative():
    perms = s5_elements()
    assert perms == _S5 and len(set(perms)) == 120 and perms[0] == (0, 1, 2, 3, 4)
    ds = table("s5")
    t = np.full((120, 120), -1)
    t[ds.inputs[:, 0], ds.inputs[:, 2]] = ds.answers
    assert (t >= 0).all() and t.max() == 119
    assert all(sorted(row) == list(range(120)) for row in t.tolist())  # Latin square: a group
    assert (t[0] == np.arange(120)).all() and (t[:, 0] == np.arange(120)).all()  # identity
    x = np.arange(120)
    assert np.array_equal(t[t[:, :, None], x[None, None, :]], t[x[:, None, None], t[None, :, :]])
    assert not np.array_equal(t, t.T)  # non-abelian


def test_division_inverts_multiplication():
    div, mul = table("div"), table("mul")
    m = np.full((P, P), -1)
    m[mul.inputs[:, 0], mul.inputs[:, 2]] = mul.answers
    a, b, c = div.inputs[:, 0], div.inputs[:, 2], div.answers
    assert (b != 0).all() and np.array_equal(m[c, b], a)  # (a / b) * b == a
    assert len(div) == P * (P - 1)


def test_gf_multiplication_is_a_field_over_xor():
    ds = table("gfmul")
    t = np.full((128, 128), -1)
    t[ds.inputs[:, 0], ds.inputs[:, 2]] = ds.answers
    assert (t[0] == 0).all() and np.array_equal(t, t.T) and (t[1] == np.arange(128)).all()
    assert all(sorted(row) == list(range(1, 128)) for row in t[1:, 1:].tolist())  # inverses
    x = np.arange(128)
    assert np.array_equal(t[x[:, None], x[None, :] ^ 5], t[:, :] ^ t[:, [5]])  # distributes


def test_seeded_determinism():
    for op in ("xor", "div", "s5"):
        a, b = (
            table(op).content_hash(),
            build_dataset(data_config_from_dict(dict(task="table", op=op))).content_hash(),
        )
        assert a == b
        other = table(op, seed=1)
        assert other.content_hash() != a
        assert not np.array_equal(other.splits["train"], table(op).splits["train"])
        assert np.array_equal(other.answers, table(op).answers)  # same table, new split


@pytest.mark.parametrize(
    "bad,needle",
    [
        (dict(op="pow"), "unknown"),
        (dict(op="add", modulus=129), "between 2 and 128"),
        (dict(op="div", modulus=128), "not prime"),
        (dict(train_fraction=1.0), "(0, 1)"),
        (dict(p=127), "unknown key"),
    ],
)
def test_config_validation(bad, needle):
    with pytest.raises(ValueError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        data_config_from_dict(dict(task="table") | bad)
