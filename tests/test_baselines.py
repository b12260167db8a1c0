"""The non-parametric baselines (grokloop/baselines/): exact nearest-key lookup, noise, the
scattershot construction, the symbolic lookup and the command. Tiny datasets, a few seconds."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from datagen import build_dataset
from datagen.config import (
    ComparisonConfig,
    CompositionConfig,
    ModularConfig,
    PermutationChainsConfig,
)
from grokloop.baselines.evaluate import NOISED, LookupBaselines, evaluate
from grokloop.baselines.keys import (
    canonical_keys,
    context_embedding,
    digit_weights,
    scattershot_embedding,
    scattershot_levels,
    scattershot_sizes,
)
from grokloop.baselines.lookup import KeyMemory, top1, top1_naive
from grokloop.baselines.symbolic import symbolic_answers

ROOT = Path(__file__).resolve().parent.parent
TINY_COMPOSITION = dict(
    n_entities=40, n_relations=6, out_degree=4, phi=2.0, test_id_fraction=0.2, eval_size=200
)


@pytest.fixture(scope="module")
def khop():
    return build_dataset(CompositionConfig(**TINY_COMPOSITION, hops=[2, 3], test_hops=[4]))


@pytest.fixture(scope="module")
def datasets(khop):
    return {
        "composition": khop,
        "comparison": build_dataset(
            ComparisonConfig(n_entities=30, n_attributes=3, n_values=6, phi=2.0, eval_size=200)
        ),
        "modular": build_dataset(ModularConfig(p=23, train_fraction=0.4)),
    }


@pytest.mark.parametrize("task", ["composition", "comparison", "modular"])
def test_zero_noise_lookup_retrieves_every_training_fact_exactly(datasets, task):
    ds = datasets[task]
    train = ds.splits["train"]
    lb = LookupBaselines(ds, d=32, seed=0)
    for method in NOISED:
        nearest = lb.memories[method].nearest(lb.embed(method, train))
        assert torch.equal(nearest, torch.arange(len(train))), method  # each finds itself
        assert (lb.answers(method, train) == ds.answers[train]).all(), method
    rows = evaluate(ds, NOISED, [0.0], d=32)
    trained = {"atomic_id", "atomic_ood", "train_inferred", "train_sample"}
    assert all(r["acc"] == 1.0 for r in rows if r["split"] in trained)


def test_accuracy_falls_as_noise_grows(khop):
    def acc(sigma, method):
        rows = [
            r
            for seed in (0, 1)
            for r in evaluate(khop, [method], [sigma], d=16, seed=seed, splits=["train_inferred"])
            if "hops" not in r
        ]
        return np.mean([r["acc"] for r in rows])  # over two seeds (keys and noise)

    for method in NOISED:
        accs = [acc(s, method) for s in (0.0, 1.0, 2.0, 4.0)]
        assert accs[0] == 1.0, method
        assert all(a >= b - 0.02 for a, b in zip(accs, accs[1:])), (method, accs)  # monotone
        assert accs[-1] < 0.5 < accs[1], (method, accs)  # and real


def test_noise_is_seeded_and_shared_by_the_two_context_metrics(khop):
    lb = LookupBaselines(khop, d=16, seed=3)
    idx = khop.splits["train_inferred"]
    a = lb.answers("lookup_cosine", idx, 2.0, "x")
    assert (a == LookupBaselines(khop, d=16, seed=3).answers("lookup_cosine", idx, 2.0, "x")).all()
    g1, g2 = (lb.noise_generator(m, "x", 2.0) for m in ("lookup_cosine", "lookup_digit"))
    assert torch.equal(torch.randn(5, generator=g1), torch.randn(5, generator=g2))


def test_symbolic_lookup_chains_permutation_relations_to_any_depth():
    ds = build_dataset(
        PermutationChainsConfig(
            n_entities=20,
            n_relations=3,
            hops=[2],
            test_hops=[3, 5],
            train_per_hop=100,
            eval_size=20,
            valid_size=10,
        )
    )
    idx = ds.splits["test_inferred_id"]
    assert set(ds.hops[idx]) == {2, 3, 5} and (symbolic_answers(ds, idx) == ds.answers[idx]).all()


def test_symbolic_lookup_answers_every_inferred_fact_whose_atomic_facts_trained(khop):
    ds = khop
    for split in (
        "test_inferred_id",
        "test_inferred_ood",
        "test_OI",
        "test_IO",
        "atomic_id",
        "train_inferred",
    ):
        idx = ds.splits[split]
        assert (symbolic_answers(ds, idx) == ds.answers[idx]).all(), split
    assert set(ds.hops[ds.splits["test_inferred_id"]]) == {2, 3, 4}  # k hops, test-only 4 too

    # Drop one atomic fact from training: exactly the queries that use it go unanswered.
    train = ds.splits["train"]
    atomic = train[ds.hops[train] == 1]
    gone = atomic[0]
    h, r = ds.roles["head"][gone], ds.roles["relation_1"][gone]
    held = ds.splits["test_inferred_id"]
    uses = np.zeros(len(held), dtype=bool)
    ent = ds.roles["head"][held].copy()
    for j in range(1, int(ds.hops[held].max()) + 1):
        step = ds.hops[held] >= j
        uses |= step & (ent == h) & (ds.roles[f"relation_{j}"][held] == r)
        if j < ds.hops[held].max():
            b = ds.roles.get(f"bridge_{j}")
            ent = np.where(ds.hops[held] > j, b[held], ent)
    ds2 = type(ds)(**{**ds.__dict__, "splits": {**ds.splits, "train": train[train != gone]}})
    pred = symbolic_answers(ds2, held)
    assert uses.any()
    assert (pred[uses] == -1).all() and (pred[~uses] == ds.answers[held][~uses]).all()


def test_symbolic_comparison_and_table(datasets):
    ds = datasets["comparison"]
    for split in ds.eval_splits:
        idx = ds.splits[split]
        assert (symbolic_answers(ds, idx) == ds.answers[idx]).all(), split
    mod = datasets["modular"]
    rows = {r["split"]: r for r in evaluate(mod, ["symbolic"])}
    assert rows["train_sample"]["acc"] == 1.0 and rows["train_sample"]["coverage"] == 1.0
    assert rows["test"]["coverage"] == 0.0  # a held-out cell is never in the table


def test_scattershot_levels_have_the_documented_shapes():
    assert scattershot_sizes(1) == [1]
    assert scattershot_sizes(3) == [3, 2, 1]
    assert scattershot_sizes(5) == [5, 3, 2, 1]
    assert scattershot_sizes(9) == [9, 5, 3, 2, 1]
    keys = canonical_keys(11, 8, seed=0)
    tokens = np.array([[1, 2, 3], [4, 5, 6]])
    levels = scattershot_levels(tokens, keys)
    assert [tuple(lv.shape) for lv in levels] == [(2, 3, 8), (2, 2, 8), (2, 1, 8)]
    k1, k2, k3 = keys[1], keys[2], keys[3]
    torch.testing.assert_close(levels[1][0], torch.stack([(k1 + k2) / 2, k3]))  # odd carried up
    torch.testing.assert_close(levels[2][0, 0], ((k1 + k2) / 2 + k3) / 2)
    for L in (1, 3, 5, 9):
        emb = scattershot_embedding(np.zeros((4, L), dtype=np.int64), keys)
        assert emb.shape == (4, sum(scattershot_sizes(L)) * 8)


def test_keys_embeddings_and_digit_weights():
    keys = canonical_keys(7, 64, seed=1)
    assert torch.equal(keys, canonical_keys(7, 64, seed=1))
    assert not torch.equal(keys, canonical_keys(7, 64, seed=2))
    assert keys.norm(dim=1).sub(1).abs().max() < 0.4  # ~unit norm
    emb = context_embedding(np.array([[1, 2], [2, 1]]), keys)
    assert emb.shape == (2, 128) and not torch.equal(emb[0], emb[1])  # order is kept
    torch.testing.assert_close(digit_weights(3, 2.0), torch.tensor([1.0, 0.5, 0.25]))
    with pytest.raises(ValueError):
        digit_weights(3, 0.0)


def test_exact_search_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    bank, q = torch.randn(1000, 12, generator=g), torch.randn(37, 12, generator=g)
    _, idx = top1(q, bank, query_chunk=8, bank_chunk=100)
    assert torch.equal(idx, (q @ bank.T).argmax(1)) and torch.equal(idx, top1_naive(q, bank))
    dup = torch.cat([bank[:5], bank[:5]])  # ties go to the lowest index
    assert torch.equal(top1(bank[:5], dup, bank_chunk=3)[1], torch.arange(5))
    # The digit metric is the weighted squared distance by position.
    L, d = 3, 4
    w = digit_weights(L, 3.0)
    mem = KeyMemory(bank, torch.arange(1000), "digit", w, bank_chunk=64)
    dist = ((q[:, None].reshape(37, 1, L, d) - bank.reshape(1, 1000, L, d)) ** 2).sum(-1)
    assert torch.equal(mem.nearest(q), (dist * w).sum(-1).argmin(1))
    cos = KeyMemory(bank, torch.arange(1000), "cosine")
    want = torch.nn.functional.normalize(q, dim=1) @ torch.nn.functional.normalize(bank, dim=1).T
    assert torch.equal(cos.nearest(q), want.argmax(1))


def test_cli_writes_the_results_schema(tmp_path):
    from grokloop.baselines.__main__ import main

    out = tmp_path / "b"
    main(
        [
            "lookup",
            "data=composition_small",
            "data.n_entities=40",
            "data.n_relations=6",
            "data.out_degree=4",
            "data.phi=2.0",
            "data.eval_size=100",
            "sigma=[0,3]",
            "d=32",
            f"out={out}",
            "data_cache=null",
        ]
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["data"] == "composition_small" and summary["machine"]["cpu"]
    rows = summary["rows"]
    assert {r["model"] for r in rows} == {
        "lookup_cosine",
        "lookup_digit",
        "scattershot",
        "symbolic",
    }
    for r in rows:
        assert {"model", "split", "acc", "lo", "hi", "n", "sigma", "chance"} <= set(r)
        assert r["lo"] - 1e-9 <= r["acc"] <= r["hi"] + 1e-9 and r["n"] > 0
    assert {r["sigma"] for r in rows if r["model"] != "symbolic"} == {0.0, 3.0}
    assert {r["split"] for r in rows} >= {
        "atomic_id",
        "train_inferred",
        "test_inferred_id",
        "test_OI",
        "test_IO",
    }
    sym = {r["split"]: r["acc"] for r in rows if r["model"] == "symbolic"}
    look = {r["split"]: r["acc"] for r in rows if r["model"] == "lookup_cosine" and r["sigma"] == 0}
    assert sym["test_inferred_id"] == 1.0 and look["train_inferred"] == 1.0
    assert look["test_inferred_id"] < 0.2  # memorisation does not infer
    assert "| symbolic |" in (out / "summary.md").read_text()


def test_cli_rejects_a_wrong_verb_and_an_unknown_method(tmp_path):
    from grokloop.baselines.__main__ import main

    with pytest.raises(SystemExit) as e:
        main(["search", "data=modular"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main(["lookup", "data=modular", "methods=knn", f"out={tmp_path}", "data_cache=null"])
    assert e.value.code == 2 and not (tmp_path / "summary.json").exists()


def test_lookup_benchmark_smoke(tmp_path):
    out = tmp_path / "lookup.json"
    subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_lookup.py"), "--smoke", "--out", str(out)],
        check=True,
        capture_output=True,
    )
    r = json.loads(out.read_text())
    assert r["agree"] and r["chunked_ms_median"] > 0 and r["naive_ms_extrapolated"] > 0
    assert r["machine"]["cpu"]
