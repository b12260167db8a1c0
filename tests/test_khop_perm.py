"""k-hop chains over permutation relations (datagen/permutation_chains.py) and the recipe of Loop,
Think & Generalize: positional none, zero-initialised output projections, Poisson loop counts,
the khop_perm_cpu preset and the hops curriculum."""

import json
import shutil

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

import datagen.permutation_chains
from datagen import build_dataset, data_config_from_dict
from grokloop import cli
from grokloop.adaptive.depth import depth_sequence
from grokloop.checkpoint import list_checkpoints
from grokloop.config import ModelConfig, TrainConfig, run_config_from_dict
from grokloop.curriculum import checked, plan
from grokloop.model import LoopedTransformer
from grokloop.train import train
from tests.test_datagen import fact_key, held_out_prefix_leaks, preset
from tests.test_train import TINY, compose_dict, rows

SMALL = dict(
    task="khop_perm",
    n_entities=30,
    n_relations=4,
    hops=[2, 3],
    test_hops=[4],
    train_per_hop=300,
    eval_size=60,
    valid_size=40,
    seed=1,
)


def perm(**kw):
    return build_dataset(data_config_from_dict(SMALL | kw))


def relations(ds):
    """The relations read back from the atomic facts: p[r][h] = the tail of (h, r)."""
    e0, r0 = ds.vocab.ranges["entities"][0], ds.vocab.ranges["relations"][0]
    atomic = ds.splits["train"][ds.hops[ds.splits["train"]] == 1]
    n_e, n_r = len(ds.vocab.range("entities")), len(ds.vocab.range("relations"))
    p = np.full((n_r, n_e), -1)
    p[ds.inputs[atomic, 1] - r0, ds.inputs[atomic, 0] - e0] = ds.answers[atomic] - e0
    return p, e0, r0


def keys(ds, split, k=None):
    idx = ds.splits[split]
    return {fact_key(ds, i) for i in idx if k is None or ds.hops[i] == k}


# --- the data -----------------------------------------------------------------------------------


def test_every_relation_is_a_permutation_and_answers_compose_them():
    ds = perm()
    p, e0, r0 = relations(ds)
    assert (np.sort(p, axis=1) == np.arange(p.shape[1])).all()  # every (h, r) once, a bijection
    for i in range(len(ds)):
        k = int(ds.hops[i])
        e = int(ds.inputs[i, 0]) - e0
        assert ds.answer_pos[i] == k and ds.roles["head"][i] == e + e0
        for j in range(1, k + 1):
            r = int(ds.inputs[i, j]) - r0
            assert ds.roles[f"relation_{j}"][i] == r + r0 and ds.role_pos[f"relation_{j}"][i] == j
            e = p[r, e]
            if j < k:
                assert ds.roles[f"bridge_{j}"][i] == e + e0 and ds.role_pos[f"bridge_{j}"][i] == j
        assert ds.answers[i] == ds.roles["answer"][i] == e + e0
        assert (ds.inputs[i, k + 1 :] == ds.vocab.pad_id).all()


@pytest.mark.parametrize("limit", [None, 100])  # 100: every chain length is sampled
def test_splits_are_disjoint_and_no_held_out_query_is_a_prefix_of_a_training_chain(
    limit, monkeypatch
):
    if limit is not None:
        monkeypatch.setattr(datagen.permutation_chains, "ENUMERATE_LIMIT", limit)
    ds = perm()
    train, valid, test = keys(ds, "train"), keys(ds, "valid"), keys(ds, "test_inferred_id")
    assert len(train) == len(ds.splits["train"]) == 30 * 4 + 2 * 300  # distinct chains
    assert not (train & valid) and not (train & test) and not (valid & test)
    assert held_out_prefix_leaks(ds) == []
    assert set(ds.splits["atomic_id"]) | set(ds.splits["train_inferred"]) <= set(ds.splits["train"])
    counts = lambda s: np.bincount(ds.hops[ds.splits[s]], minlength=5).tolist()  # noqa: E731
    assert counts("train") == [0, 120, 300, 300, 0] and counts("valid") == [0, 0, 40, 40, 40]
    assert counts("test_inferred_id") == [0, 0, 60, 60, 60] and counts("train_inferred") == [
        0,
        0,
        60,
        60,
        0,
    ]
    # a held-out 3-hop query may begin with a training 2-hop chain: that composition is tested
    assert sum(q[:3] in train for q in keys(ds, "test_inferred_id", 3)) > 0


def test_held_out_chains_depend_on_the_hop_count_only():
    """The stages of a hop curriculum (one trained hop count each) agree on every held-out chain,
    so none trains a chain, or a prefix of one, that another tests."""
    stages = [perm(hops=[k], test_hops=[]) for k in (2, 3, 4)]
    every = perm(hops=[2, 3, 4], test_hops=[])
    for k, ds in zip((2, 3, 4), stages):
        assert keys(ds, "test_inferred_id") == keys(every, "test_inferred_id", k)
        assert keys(ds, "valid") == keys(every, "valid", k)
    trained = set().union(*(keys(ds, "train") for ds in stages))
    prefixes = {q[:j] for q in trained for j in range(2, len(q) + 1)}
    held = set().union(*(keys(ds, s) for ds in stages for s in ("valid", "test_inferred_id")))
    assert held and not (held & prefixes)


def test_same_seed_same_bytes_other_seed_other_relations():
    assert perm().content_hash() == perm().content_hash()
    other = perm(seed=2)
    assert other.content_hash() != perm().content_hash()
    assert not np.array_equal(relations(other)[0], relations(perm())[0])


def test_cpu_preset_sizes():
    ds = preset("khop_perm_cpu")
    counts = {s: len(v) for s, v in ds.splits.items()}
    assert counts == {
        "train": 38_000,
        "atomic_id": 1000,
        "train_inferred": 3000,
        "valid": 5000,
        "test_inferred_id": 5000,
    }
    assert np.bincount(ds.hops[ds.splits["test_inferred_id"]]).tolist() == [0, 0] + [1000] * 5
    assert ds.n_ctx == 7 and len(ds.vocab) == 212 and ds.stats["phi"] == 18.0
    assert held_out_prefix_leaks(ds) == []


@pytest.mark.parametrize(
    "bad,needle",
    [
        (dict(hops=[2, 4], test_hops=[4]), "overlap"),
        (dict(test_hops=[1]), "test_hops=[1]"),
        (dict(hops=[0]), "data.hops=[0]"),
        (dict(eval_size=500), "data.eval_size + data.valid_size = 540"),
        (dict(train_per_hop=5000), "data.train_per_hop=5000"),
        (dict(test_hops=[40]), "overflow"),
        (dict(valid_size=-1), "data.valid_size=-1"),
        (dict(n_relations=0), "data.n_relations=0"),
        (dict(n_entites=3), "unknown key"),
    ],
)
def test_bad_config_is_named_with_its_fix(bad, needle):
    with pytest.raises(ValueError, match=needle.replace("[", r"\[").replace("+", r"\+")):
        perm(**bad)


# --- the recipe ---------------------------------------------------------------------------------

TOKENS = torch.tensor([[3, 5, 7, 1, 2], [4, 4, 4, 4, 4]])


def test_positional_none_has_no_position_parameter_hook_or_signal(make_model):
    m = make_model(n_core=1, n_steps=3, injection="add", positional="none")
    assert m.W_pos is None and not [n for n, _ in m.named_parameters() if "pos" in n]
    _, cache = m.run_with_cache(TOKENS)
    assert "hook_pos_embed" not in cache.keys() and "hook_embed" in cache.keys()
    # The same token everywhere: without a position signal every position computes the same
    # thing (causal attention averages identical values); learned positions tell them apart.
    logits = m(TOKENS[1:])[0]
    assert torch.allclose(logits, logits[:1].expand_as(logits), atol=1e-5)
    learned = make_model(n_core=1, n_steps=3, injection="add")(TOKENS[1:])[0]
    assert not torch.allclose(learned, learned[:1].expand_as(learned), atol=1e-5)
    with pytest.raises(ValueError, match="model.positional='absolute'"):
        ModelConfig(positional="absolute")


@pytest.mark.parametrize("moe", [0, 4])
def test_zero_init_zeroes_the_output_projections_and_nothing_else(make_model, moe):
    kw = dict(n_prelude=1, n_core=2, n_coda=1, n_steps=2, moe_experts=moe)
    zero, plain = make_model(zero_init_out=True, **kw), make_model(**kw)
    outputs = [
        n for n, _ in zero.named_parameters() if n.endswith(LoopedTransformer.OUTPUT_PROJECTIONS)
    ]
    assert len(outputs) == 2 * 4  # W_O and the MLP's output in each of the 4 layers
    for name, p in zero.named_parameters():
        if name in outputs:
            assert (p == 0).all() and (dict(plain.named_parameters())[name] != 0).any(), name
        else:  # the same draw from the seed as without the option
            assert torch.equal(p, dict(plain.named_parameters())[name]), name
    # every layer starts as the identity: the logits are the unembedded embedding
    no_inject = make_model(zero_init_out=True, n_core=1, n_steps=3)
    assert torch.allclose(no_inject(TOKENS), no_inject.unembed(no_inject.embed(TOKENS)), atol=1e-6)


def test_poisson_depths_lie_in_the_clip_and_come_from_the_seed():
    tc = TrainConfig(steps=4000, depth="poisson", depth_poisson_mean=4.0, depth_clip=[2, 8])
    d = depth_sequence(tc, seed=0)
    assert len(d) == 4000 and min(d) == 2 and max(d) == 8 and set(d) == set(range(2, 9))
    assert abs(np.mean(d) - 4.07) < 0.1  # E[clip(Poisson(4), 2, 8)] = 4.07
    assert d == depth_sequence(tc, seed=0) and d != depth_sequence(tc, seed=1)
    assert depth_sequence(TrainConfig(steps=100, depth="poisson"), 0) == d[:100]  # steps extend it
    assert depth_sequence(TrainConfig(steps=10, depth="fixed"), 0) == []
    # random depth draws what it drew before depth_sequence existed
    rc = TrainConfig(steps=50, depth="random", depth_choices=[1, 3, 5])
    picks = torch.randint(3, (50,), generator=torch.Generator().manual_seed(1))
    assert depth_sequence(rc, 0) == [[1, 3, 5][i] for i in picks.tolist()]


@pytest.mark.parametrize(
    "bad,needle",
    [
        (dict(depth_clip=[3, 2]), "train.depth_clip=[3, 2]"),
        (dict(depth_clip=[0, 4]), "train.depth_clip=[0, 4]"),
        (dict(depth_clip=[2]), "train.depth_clip=[2]"),
        (dict(depth_poisson_mean=0.0), "train.depth_poisson_mean=0.0"),
    ],
)
def test_bad_poisson_depth_is_named(bad, needle):
    with pytest.raises(ValueError, match=needle.replace("[", r"\[")):
        TrainConfig(depth="poisson", **bad)


def test_recipe_trains_and_resumes_exactly(tmp_path):
    """Positional none, zero init and Poisson depth in one run; a run continued from its step-25
    checkpoint (as after a kill) writes the same metrics as the uninterrupted one."""
    _, _, d = compose_dict(
        TINY
        + [
            "model=looped",
            "model.positional=none",
            "model.zero_init_out=true",
            "train.depth=poisson",
            "train.depth_clip=[1,4]",
            "train.depth_poisson_mean=2",
            "train.batch_size=16",
            f"data_cache={tmp_path / 'cache'}",
        ]
    )
    cfg = run_config_from_dict(d)
    full, cut = tmp_path / "full", tmp_path / "cut"
    train(cfg, full)
    shutil.copytree(full, cut)
    for step in list_checkpoints(cut):
        if step > 25:
            for f in (cut / "checkpoints").glob(f"step_{step:08d}.*"):
                f.unlink()
    (cut / "summary.json").unlink()
    train(cfg, cut, resume=True)
    assert json.loads((cut / "resume_log.jsonl").read_text())["step"] == 25
    assert rows(cut) == rows(full)


def test_a_late_head_is_injected_from_its_step_on_as_a_rollout_by_hand(make_model):
    """readout_steps(late=(early, D)) is the step-by-step rollout that starts from `early` and
    injects it until step D, then the real tokens; D = 0 is no delay, and a delay changes the
    answer (the head matters)."""
    m = make_model(n_core=1, n_steps=5, injection="add").eval()
    tokens = TOKENS
    early = tokens.clone()
    early[:, 0] = 0
    pos = torch.tensor([4, 4])
    got = m.readout_steps(tokens, 5, positions=pos, late=(early, 2))
    e_early, state = m.enter_loop(early)
    e_real, _ = m.enter_loop(tokens)
    for s in range(5):
        state = m.step(state, e_early if s < 2 else e_real, s)
        assert torch.allclose(got[s], m.read(state, pos), atol=1e-5), s
    plain = m.readout_steps(tokens, 5, positions=pos)
    assert torch.equal(m.readout_steps(tokens, 5, positions=pos, late=(early, 0)), plain)
    assert not torch.allclose(got[-1], plain[-1], atol=1e-3)
    with pytest.raises(ValueError, match="input injection"):
        make_model(n_core=1, n_steps=3, injection="none").readout_steps(TOKENS, 3, late=(early, 1))


def test_reveal_delays_come_from_the_seed_and_lengthen_the_unroll():
    from grokloop.train.loop import step_plan

    _, _, d = compose_dict(
        TINY + ["model=looped", "train.depth=poisson", "train.depth_clip=[1,4]", "train.steps=400"]
    )
    base = run_config_from_dict(d)
    late = run_config_from_dict(d | {"train": d["train"] | {"reveal_delay_max": 3}})
    depths, _, none = step_plan(base)
    delayed, _, delays = step_plan(late)
    assert none == [] and set(delays) == {0, 1, 2, 3}
    assert delayed == [a + b for a, b in zip(depths, delays, strict=True)]
    shorter = run_config_from_dict(d | {"train": d["train"] | {"reveal_delay_max": 3, "steps": 50}})
    assert step_plan(shorter)[2] == delays[:50]  # train.steps extends the draws
    with pytest.raises(ValueError, match="train.reveal_delay_max=2 trains the answer"):
        TrainConfig(reveal_delay_max=2, depth="best")


def test_a_run_with_late_heads_trains_and_refuses_a_model_without_injection(tmp_path):
    over = TINY + ["train.reveal_delay_max=2", f"data_cache={tmp_path / 'cache'}"]
    _, _, d = compose_dict(over + ["model=looped", "model.injection=add"])
    train(run_config_from_dict(d), tmp_path / "late")
    assert rows(tmp_path / "late")
    _, _, d = compose_dict(over + ["model=looped", "model.injection=none"])
    with pytest.raises(ValueError, match="model.injection=none; set model.injection=add"):
        train(run_config_from_dict(d), tmp_path / "none")
    assert not (tmp_path / "none").exists()


# --- the experiment and the hop curriculum ------------------------------------------------------


def test_experiment_is_the_recipe_on_the_preset():
    _, _, d = compose_dict(["experiment=khop_perm_looped"])
    cfg = run_config_from_dict(d)
    assert cfg.data.task == "khop_perm" and cfg.data.test_hops == [5, 6]
    assert (cfg.model.positional, cfg.model.zero_init_out, cfg.train.depth) == (
        "none",
        True,
        "poisson",
    )
    assert cfg.train.depth_clip == [2, 8] and cfg.optim.weight_decay == 0.01


def test_hops_curriculum_composes_gates_each_hop_and_trains_no_held_out_chain(tmp_path):
    cmd = checked(
        OmegaConf.to_object(
            cli.compose(
                "curriculum",
                [
                    "curriculum=hops",
                    f"out_dir={tmp_path / 'cur'}",
                    f"data_cache={tmp_path / 'cache'}",
                ],
            )
        )
    )
    out = tmp_path / "cur"
    stages = plan(cmd, out)
    assert [s.name for s in stages] == ["h2", "h3", "h4"]
    assert [s.cfg.train.stop_at_grok for s in stages] == ["valid_h2", "valid_h3", "valid_h4"]
    assert {s.cfg.train.grok_threshold for s in stages} == {0.95}
    assert (cmd.model.n_steps, cmd.model.positional, cmd.train.depth) == (8, "none", "poisson")
    last = stages[-1].cfg.data
    assert [p["hops"] for p in last.parts.values()] == [[2], [3], [4]]
    ds = build_dataset(last)
    for k in (2, 3, 4):  # each stage's held-out split holds its hop count only
        assert set(ds.hops[ds.splits[f"test_h{k}"]].tolist()) == {k}
    assert set(ds.hops[ds.splits["train"]].tolist()) == {1, 2, 3, 4}  # replay keeps 2 and 3
    trained = keys(ds, "train")
    prefixes = {q[:j] for q in trained for j in range(2, len(q) + 1)}
    held = set().union(*(keys(ds, f"{s}_h{k}") for k in (2, 3, 4) for s in ("test", "valid")))
    # each stage's 1,000 held-out chains, halved between test and valid (disjoint), none trained
    assert len(held) == 3000 and not (held & prefixes)
