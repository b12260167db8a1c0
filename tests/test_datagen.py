"""Invariants of the data generators: determinism, leak-free splits, derivable answers, phi."""
import json
import subprocess
import sys

import numpy as np
import pytest

from datagen import build_dataset, data_config_from_dict, load_or_build
from datagen.arithmetic import modular_table
from datagen.grokked_format import read_grokked, write_grokked

SMALL = dict(task="composition", n_entities=60, n_relations=8, out_degree=6, ood_fraction=0.2,
             test_id_fraction=0.1, phi=3.0, eval_size=400, seed=1)


def comp(**kw):
    return build_dataset(data_config_from_dict(SMALL | kw))


def atomic_lookup(ds):
    a = ds.splits["train"][ds.hops[ds.splits["train"]] == 1]
    return {(int(ds.inputs[i, 0]), int(ds.inputs[i, 1])): int(ds.answers[i]) for i in a}


def fact_key(ds, i):
    return tuple(ds.inputs[i, :ds.answer_pos[i] + 1].tolist())


def test_same_seed_same_bytes_different_seed_differs():
    assert comp().content_hash() == comp().content_hash()
    assert comp().content_hash() != comp(seed=2).content_hash()


@pytest.mark.parametrize("hops,test_hops", [([2], []), ([2, 3], [4, 5])])
def test_inferred_answers_chain_atomic_facts_and_bridges_are_recorded(hops, test_hops):
    ds = comp(hops=hops, test_hops=test_hops)
    atomic = atomic_lookup(ds)
    assert len(atomic) == 60 * 6  # every atomic fact is in training
    for i in np.flatnonzero(ds.hops > 1):
        e = int(ds.inputs[i, 0])
        for j in range(1, ds.hops[i] + 1):
            e = atomic[(e, int(ds.inputs[i, j]))]
            if j < ds.hops[i]:
                assert ds.roles[f"bridge_{j}"][i] == e and ds.role_pos[f"bridge_{j}"][i] == j
        assert e == ds.answers[i] == ds.roles["answer"][i]
        assert ds.answer_pos[i] == ds.hops[i]


def test_splits_are_leak_free_and_ood_uses_only_ood_facts():
    ds = comp(hops=[2, 3], test_hops=[4])
    train = {fact_key(ds, i) for i in ds.splits["train"]}
    for s in ("test_inferred_id", "test_inferred_ood"):
        assert not train & {fact_key(ds, i) for i in ds.splits[s]}, s
    ood_atomic = {fact_key(ds, i) for i in ds.splits["atomic_ood"]}
    id_atomic = {fact_key(ds, i) for i in ds.splits["train"] if ds.hops[i] == 1} - ood_atomic

    def hops_of(i):  # the atomic facts along the path of example i
        e, out = int(ds.inputs[i, 0]), []
        for j in range(1, ds.hops[i] + 1):
            out.append((e, int(ds.inputs[i, j])))
            e = ds.roles[f"bridge_{j}"][i] if j < ds.hops[i] else None
        return out

    for i in ds.splits["test_inferred_ood"]:
        assert all(h in ood_atomic for h in hops_of(i))
    for s in ("train_inferred", "test_inferred_id"):
        for i in ds.splits[s]:
            assert all(h in id_atomic for h in hops_of(i))
    train_hops = set(ds.hops[ds.splits["train"]].tolist())
    assert train_hops == {1, 2, 3} and 4 in set(ds.hops[ds.splits["test_inferred_id"]].tolist())


def test_achieved_phi_matches_request():
    ds = comp(phi=2.5)
    n_inferred = int((ds.hops[ds.splits["train"]] > 1).sum())
    assert n_inferred == round(2.5 * ds.stats["n_id_atomic"])
    assert abs(ds.stats["achieved_phi"] - 2.5) < 1 / ds.stats["n_id_atomic"]


def test_paper_scale_counts():
    ds = build_dataset(data_config_from_dict(dict(task="composition", phi=18.0)))
    assert ds.stats["n_id_atomic"] == 38_000 and ds.stats["n_ood_atomic"] == 2_000
    assert int((ds.hops[ds.splits["train"]] == 2).sum()) == 684_000
    assert len(ds.splits["train"]) == 724_000


def test_comparison_labels_follow_values():
    ds = build_dataset(data_config_from_dict(dict(task="comparison", n_entities=40,
                                                  n_attributes=3, n_values=5, phi=2.0)))
    lab0, v0 = ds.vocab.ranges["labels"][0], ds.vocab.ranges["values"][0]
    inferred = ds.answer_pos == 4
    diff = np.sign(ds.roles["value_1"] - ds.roles["value_2"])[inferred]
    assert np.array_equal(ds.answers[inferred] - lab0, diff + 1)
    atomic = {(int(ds.inputs[i, 0]), int(ds.inputs[i, 1])): int(ds.answers[i])
              for i in np.flatnonzero(~inferred)}
    for i in np.flatnonzero(inferred)[:200]:
        assert atomic[(ds.inputs[i, 0], ds.inputs[i, 2])] == ds.roles["value_1"][i]
    train = {fact_key(ds, i) for i in ds.splits["train"]}
    assert not train & {fact_key(ds, i) for i in ds.splits["test_inferred_id"]}
    assert ds.answers.max() < len(ds.vocab) and v0 > 0


@pytest.mark.parametrize("op,f", [("add", lambda a, b: a + b), ("sub", lambda a, b: a - b),
                                  ("mul", lambda a, b: a * b),
                                  ("poly", lambda a, b: a * a + a * b + b * b)])
def test_modular_tables(op, f):
    a, b, c = modular_table(13, op)
    assert np.array_equal(c, f(a, b) % 13) and len(a) == 169


def test_division_inverts_multiplication_and_split_is_by_cell():
    a, b, c = modular_table(13, "div")
    assert np.array_equal(c * b % 13, a) and (b != 0).all()
    ds = build_dataset(data_config_from_dict(dict(task="modular", p=13, op="div")))
    assert not set(ds.splits["train"]) & set(ds.splits["test"])
    assert len(ds.splits["train"]) + len(ds.splits["test"]) == 13 * 12


def test_symmetric_group_composition():
    ds = build_dataset(data_config_from_dict(dict(task="group", n=3)))
    perm = [tuple(int(ch) for ch in t[1:-1]) for t in ds.vocab.tokens[:6]]
    for i in range(len(ds)):
        x, y, z = perm[ds.inputs[i, 0]], perm[ds.inputs[i, 2]], perm[ds.answers[i]]
        assert z == tuple(x[y[k]] for k in range(3))


@pytest.mark.parametrize("bad,needle", [
    (dict(phi=1000.0), "largest phi possible"),
    (dict(out_degree=9), "out_degree"),
    (dict(hops=[0]), "at least 1"),
    (dict(ood_fraction=1.0), "outside [0, 1)"),
    (dict(test_id_fraction=-0.1), "outside [0, 1)"),
    (dict(n_entitys=3), "unknown key"),
    (dict(task="compostion"), "unknown"),
])
def test_bad_composition_input_is_named(bad, needle):
    with pytest.raises(ValueError, match=needle.replace("[", r"\[").replace(")", r"\)")):
        comp(**bad)


def test_division_needs_prime():
    with pytest.raises(ValueError, match="not prime"):
        data_config_from_dict(dict(task="modular", p=12, op="div"))


def test_grokked_format_round_trip_is_lossless(tmp_path):
    ds = comp()
    write_grokked(ds, tmp_path / "a")
    back = read_grokked(tmp_path / "a")
    for s in ds.splits:
        assert sorted(fact_key(ds, i) + (int(ds.answers[i]),) for i in ds.splits[s]) == \
            sorted(fact_key(back, i) + (int(back.answers[i]),) for i in back.splits[s]), s
    inferred = back.hops > 1
    assert (back.roles["bridge_1"][inferred] >= 0).all()
    write_grokked(back, tmp_path / "b")
    for name in ("train", "valid", "test"):
        a = json.loads((tmp_path / "a" / f"{name}.json").read_text())
        b = json.loads((tmp_path / "b" / f"{name}.json").read_text())
        assert sorted(map(json.dumps, a)) == sorted(map(json.dumps, b))


def test_save_load_and_cache(tmp_path):
    cfg = data_config_from_dict(SMALL)
    ds = load_or_build(cfg, tmp_path)
    cached = load_or_build(cfg, tmp_path)
    assert cached.content_hash() == ds.content_hash()
    assert len(list(tmp_path.iterdir())) == 1


def test_datagen_does_not_import_torch_or_transformer_lens():
    code = "import sys, datagen; datagen.build_dataset(datagen.data_config_from_dict(dict(task='modular', p=7))); print('torch' in sys.modules, 'transformer_lens' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_cli_prints_statistics(tmp_path):
    out = subprocess.run([sys.executable, "-m", "datagen", "data=composition_small",
                          f"out_dir={tmp_path}"], capture_output=True, text=True, check=True)
    assert "achieved phi 7.2000" in out.stdout and "content hash" in out.stdout
    assert (tmp_path / "manifest.json").exists()
