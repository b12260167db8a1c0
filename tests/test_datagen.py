"""Invariants of the data generators: determinism, leak-free splits, derivable answers, phi."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

import datagen.build
import datagen.composition
from datagen import build_dataset, data_config_from_dict, load_or_build
from datagen.arithmetic import TRAIN_SAMPLE_SIZE, modular_table
from datagen.dataset import GENERATOR_VERSION, code_version
from datagen.grokked_format import read_grokked, write_grokked
from datagen.provenance import code_version as provenance_code_version
from grokloop import cli

CONF = Path(__file__).resolve().parent.parent / "conf"

SMALL = dict(
    task="composition",
    n_entities=60,
    n_relations=8,
    out_degree=6,
    ood_fraction=0.2,
    test_id_fraction=0.1,
    phi=3.0,
    eval_size=400,
    seed=1,
)


def comp(**kw):
    return build_dataset(data_config_from_dict(SMALL | kw))


def atomic_lookup(ds):
    a = ds.splits["train"][ds.hops[ds.splits["train"]] == 1]
    return {(int(ds.inputs[i, 0]), int(ds.inputs[i, 1])): int(ds.answers[i]) for i in a}


def fact_key(ds, i):
    return tuple(ds.inputs[i, : ds.answer_pos[i] + 1].tolist())


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


def preset(name):
    """A data preset composed as `python -m datagen data=NAME` composes it (defaults included)."""
    cfg = cli.compose("datagen", [f"data={name}"])
    return build_dataset(data_config_from_dict(OmegaConf.to_container(cfg.data, resolve=True)))


def held_out_prefix_leaks(ds):
    """Held-out examples (in no training split) whose query is a training fact or a prefix of one."""
    train = set(ds.splits["train"].tolist())
    prefixes = set()
    for i in train:
        key = fact_key(ds, i)
        prefixes.update(key[:j] for j in range(1, len(key) + 1))
    held = sorted({int(i) for s in ds.eval_splits for i in ds.splits[s]} - train)
    assert held, "no held-out examples to check"
    return [i for i in held if fact_key(ds, i) in prefixes]


def test_khop_preset_holds_out_no_prefix_of_a_training_fact():
    # The generator before GENERATOR_VERSION 2 leaked 275 of the 500 two-hop ID test queries.
    ds = preset("composition_khop")
    assert held_out_prefix_leaks(ds) == []
    test_id = ds.splits["test_inferred_id"]
    assert {k: int((ds.hops[test_id] == k).sum()) for k in range(2, 9)} == {
        k: 500 for k in range(2, 9)
    }
    # A held-out 3-hop query may still begin with a training 2-hop fact: that composition is tested.
    train = {fact_key(ds, i) for i in ds.splits["train"]}
    three = [i for i in test_id if ds.hops[i] == 3]
    assert sum(fact_key(ds, i)[:3] in train for i in three) > 100


@pytest.mark.parametrize(
    "hops,test_hops", [([2, 3], [4]), ([2, 3, 4], []), ([3], [2]), ([2, 4], [3, 5])]
)
@pytest.mark.parametrize("limit", [None, 50])
def test_no_held_out_query_is_a_prefix_of_a_training_fact(hops, test_hops, limit, monkeypatch):
    if limit is not None:  # force the random-walk sampler for every hop count
        monkeypatch.setattr(datagen.composition, "ENUMERATE_LIMIT", limit)
    ds = comp(hops=hops, test_hops=test_hops, phi=1.0, eval_size=150)
    assert held_out_prefix_leaks(ds) == []
    for k in hops + test_hops:
        assert (ds.hops[ds.splits["test_inferred_id"]] == k).sum() > 0, k
    n_inferred = int((ds.hops[ds.splits["train"]] > 1).sum())
    assert n_inferred == round(1.0 * ds.stats["n_id_atomic"])
    assert (
        comp(hops=hops, test_hops=test_hops, phi=1.0, eval_size=150).content_hash()
        == ds.content_hash()
    )


def test_prefix_helpers_agree_with_brute_force():
    from datagen.composition import Graph, _extends_held, _n_extending

    rng = np.random.default_rng(0)
    g = Graph(data_config_from_dict(SMALL), rng)
    sub = g.subgraph(ood=False)
    p2, p3, p4 = (g.enumerate_paths(sub, k) for k in (2, 3, 4))
    held = {2: p2[rng.choice(len(p2), 40, replace=False)]}
    free3 = p3[~_extends_held(p3, held, len(g.tail))]
    held[3] = free3[rng.choice(len(free3), 40, replace=False)]
    keys = {j: {tuple(r) for r in h.tolist()} for j, h in held.items()}
    brute = np.array([tuple(r[:2]) in keys[2] or tuple(r[:3]) in keys[3] for r in p4.tolist()])
    assert brute.any() and not brute.all()
    assert np.array_equal(_extends_held(p4, held, len(g.tail)), brute)
    assert _n_extending(g, sub, held, 4) == brute.sum()
    assert g.count_paths(sub, 4) == len(p4)


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
    ds = build_dataset(
        data_config_from_dict(
            dict(task="comparison", n_entities=40, n_attributes=3, n_values=5, phi=2.0)
        )
    )
    lab0, v0 = ds.vocab.ranges["labels"][0], ds.vocab.ranges["values"][0]
    inferred = ds.answer_pos == 4
    diff = np.sign(ds.roles["value_1"] - ds.roles["value_2"])[inferred]
    assert np.array_equal(ds.answers[inferred] - lab0, diff + 1)
    atomic = {
        (int(ds.inputs[i, 0]), int(ds.inputs[i, 1])): int(ds.answers[i])
        for i in np.flatnonzero(~inferred)
    }
    for i in np.flatnonzero(inferred)[:200]:
        assert atomic[(ds.inputs[i, 0], ds.inputs[i, 2])] == ds.roles["value_1"][i]
    train = {fact_key(ds, i) for i in ds.splits["train"]}
    assert not train & {fact_key(ds, i) for i in ds.splits["test_inferred_id"]}
    assert ds.answers.max() < len(ds.vocab) and v0 > 0


@pytest.mark.parametrize(
    "op,f",
    [
        ("add", lambda a, b: a + b),
        ("sub", lambda a, b: a - b),
        ("mul", lambda a, b: a * b),
        ("poly", lambda a, b: a * a + a * b + b * b),
    ],
)
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


@pytest.mark.parametrize(
    "bad,needle",
    [
        (dict(phi=1000.0), "largest phi possible"),
        (dict(out_degree=9), "out_degree"),
        (dict(hops=[0]), "at least 1"),
        (dict(ood_fraction=1.0), "outside [0, 1)"),
        (dict(test_id_fraction=-0.1), "outside [0, 1)"),
        (dict(n_entitys=3), "unknown key"),
        (dict(task="compostion"), "unknown"),
    ],
)
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
        assert sorted(fact_key(ds, i) + (int(ds.answers[i]),) for i in ds.splits[s]) == sorted(
            fact_key(back, i) + (int(back.answers[i]),) for i in back.splits[s]
        ), s
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
    assert [p.name for p in tmp_path.iterdir()] == [f"composition-{datagen.build.config_hash(cfg)}"]
    manifest = json.loads(next(tmp_path.iterdir()).joinpath("manifest.json").read_text())
    assert manifest["content_hash"] == ds.content_hash()
    assert manifest["generator_version"] == GENERATOR_VERSION
    assert not [p for p in next(tmp_path.iterdir()).iterdir() if ".tmp" in p.name]


def test_cache_is_keyed_by_generator_version(tmp_path, monkeypatch):
    cfg = data_config_from_dict(SMALL)
    load_or_build(cfg, tmp_path)
    old_key = datagen.build.config_hash(cfg)
    # A stale cache entry with the same config must not be reused after a generator change.
    stale = next(tmp_path.iterdir())
    np.savez(stale / "data.npz", **{k: v[:0] for k, v in np.load(stale / "data.npz").items()})
    monkeypatch.setattr(datagen.build, "GENERATOR_VERSION", GENERATOR_VERSION + 1)
    assert datagen.build.config_hash(cfg) != old_key
    fresh = load_or_build(cfg, tmp_path)
    assert len(fresh) > 0 and fresh.content_hash() == build_dataset(cfg).content_hash()
    assert len(list(tmp_path.iterdir())) == 2


def test_code_version_comes_from_provenance():
    assert code_version is provenance_code_version


@pytest.mark.parametrize(
    "cfg", [dict(task="modular", p=97), dict(task="modular", p=23), dict(task="group", n=4)]
)
def test_table_tasks_evaluate_a_seeded_training_sample(cfg):
    ds = build_dataset(data_config_from_dict(cfg))
    train, sample = ds.splits["train"], ds.splits["train_sample"]
    assert ds.eval_splits == ["test", "train_sample"]
    assert len(sample) == min(len(train), TRAIN_SAMPLE_SIZE) and len(set(sample.tolist())) == len(
        sample
    )
    assert set(sample.tolist()) <= set(train.tolist())
    assert np.array_equal(build_dataset(data_config_from_dict(cfg)).splits["train_sample"], sample)
    other = build_dataset(data_config_from_dict(cfg | {"seed": 1})).splits["train_sample"]
    assert not np.array_equal(other, sample)


def test_datagen_does_not_import_torch_or_transformer_lens():
    code = "import sys, datagen; datagen.build_dataset(datagen.data_config_from_dict(dict(task='modular', p=7))); print('torch' in sys.modules, 'transformer_lens' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_cli_prints_statistics(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "datagen", "data=composition_small", f"out_dir={tmp_path}"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "achieved phi 7.2000" in out.stdout and "content hash" in out.stdout
    assert (tmp_path / "manifest.json").exists()


def test_ood_by_hop_splits_mix_exactly_one_ood_hop_and_valid_is_held_out():
    # eval_size covers every atomic fact, so atomic_id + atomic_ood say which facts are OOD
    ds = comp(valid_fraction=0.1, eval_size=2000)
    ood = {fact_key(ds, i) for i in ds.splits["atomic_ood"]}
    idf = {fact_key(ds, i) for i in ds.splits["atomic_id"]}
    assert len(ood) + len(idf) == 60 * 6

    def hop_facts(i):
        return (int(ds.inputs[i, 0]), int(ds.inputs[i, 1])), (
            int(ds.roles["bridge_1"][i]),
            int(ds.inputs[i, 2]),
        )

    for name, first, second in (
        ("test_OI", ood, idf),
        ("test_IO", idf, ood),
        ("test_inferred_ood", ood, ood),
        ("valid", idf, idf),
    ):
        assert len(ds.splits[name]) > 20, name
        for i in ds.splits[name]:
            a, b = hop_facts(i)
            assert a in first and b in second, name
    keys = {s: {fact_key(ds, i) for i in ds.splits[s]} for s in ds.splits}
    assert not keys["valid"] & keys["test_inferred_id"] and not keys["valid"] & keys["train"]
    assert not (keys["test_OI"] | keys["test_IO"]) & keys["train"]
    # the mixed splits are drawn last: without them every other split is unchanged
    plain = comp(valid_fraction=0.1, eval_size=2000, mixed_ood=False)
    for s in plain.splits:
        assert keys[s] == {fact_key(plain, i) for i in plain.splits[s]}, s


def test_valid_ood_holds_out_each_ood_kind_apart_from_test_and_changes_nothing_else():
    ds = comp(valid_fraction=0.1, eval_size=30, valid_ood_size=20)
    plain = comp(valid_fraction=0.1, eval_size=30)
    # with eval_size 2000, atomic_ood lists every OOD fact (the graph is the same: same seed)
    big = comp(valid_fraction=0.1, eval_size=2000)
    ood = {fact_key(big, i) for i in big.splits["atomic_ood"]}
    keys = {s: {fact_key(ds, i) for i in ds.splits[s]} for s in ds.splits}
    for valid, test, first_ood, second_ood in (
        ("valid_OI", "test_OI", True, False),
        ("valid_IO", "test_IO", False, True),
        ("valid_ood", "test_inferred_ood", True, True),
    ):
        assert len(ds.splits[valid]) == 20, valid
        for i in ds.splits[valid]:
            first = (int(ds.inputs[i, 0]), int(ds.inputs[i, 1]))
            second = (int(ds.roles["bridge_1"][i]), int(ds.inputs[i, 2]))
            assert (first in ood, second in ood) == (first_ood, second_ood), valid
        others = set().union(*(keys[s] for s in ds.splits if s != valid))
        assert not keys[valid] & others, valid  # disjoint from every test split and training
    for s in plain.splits:  # drawn from what the test splits left: no other split moves
        assert np.array_equal(plain.inputs[plain.splits[s]], ds.inputs[ds.splits[s]]), s
    with pytest.raises(ValueError, match="valid_ood_size=5000: only .* paths are left"):
        comp(eval_size=30, valid_ood_size=5000)


def test_self_relation_trains_every_atomic_fact_as_a_second_hop_and_adds_nothing_else():
    ds, plain = comp(self_relation=True), comp()
    r_self = ds.vocab.id("<r_self>")
    assert r_self == len(plain.vocab) and len(ds.vocab) == len(plain.vocab) + 1
    facts = atomic_lookup(plain)
    train = ds.splits["train"]
    selfs = train[ds.inputs[train, 1] == r_self]
    identity = selfs[ds.hops[selfs] == 1]
    assert {int(ds.inputs[i, 0]) for i in identity} == set(ds.vocab.range("entities"))
    assert all(ds.answers[i] == ds.inputs[i, 0] for i in identity)
    second = selfs[ds.hops[selfs] == 2]
    as_second_hop = {
        (int(ds.inputs[i, 0]), int(ds.inputs[i, 2])): int(ds.answers[i]) for i in second
    }
    assert as_second_hop == facts  # every atomic fact, ID and OOD, once; nothing else
    assert all(ds.roles["bridge_1"][i] == ds.inputs[i, 0] for i in second)
    for s in set(plain.splits) - {"train"}:  # no draw: every other split is the same
        assert np.array_equal(plain.inputs[plain.splits[s]], ds.inputs[ds.splits[s]]), s
    old = {fact_key(plain, i) for i in plain.splits["train"]}
    assert old <= {fact_key(ds, i) for i in train}


def test_the_ood_validation_preset_is_composition_cpu_plus_its_valid_ood_splits():
    plain, ood = preset("composition_cpu"), preset("composition_cpu_ood")
    assert set(ood.splits) - set(plain.splits) == {"valid_OI", "valid_IO", "valid_ood"}
    for s in plain.splits:
        assert np.array_equal(plain.inputs[plain.splits[s]], ood.inputs[ood.splits[s]]), s
    assert all(len(ood.splits[s]) == 300 for s in ("valid_OI", "valid_IO", "valid_ood"))


def test_cpu_presets_have_a_thousand_facts_in_every_test_split():
    comp_cpu = preset("composition_cpu")
    for s in ("valid", "test_inferred_id", "test_OI", "test_IO", "test_inferred_ood"):
        assert len(comp_cpu.splits[s]) >= 1000, s
    cmp_cpu = preset("comparison_cpu")
    for s in ("valid", "test_inferred_id", "test_inferred_ood"):
        assert len(cmp_cpu.splits[s]) >= 1000, s
