"""Probes: correctness on hand-built and random models, agreement with transformer_lens.patching,
the batched tracing equal to the one-cell-per-pass loop, and the CLI on a trained run."""

import json
import math

import numpy as np
import pytest
import torch
from transformer_lens import patching

from grokloop.config import run_config_from_dict
from grokloop.train import train
from probes import causal_tracing as ct
from probes.__main__ import main as probes_main
from probes.examples import ProbeBatch
from probes.fourier import fourier_measures, gini
from probes.logit_lens import bridge_wave, handoff, logit_lens, step_readout
from probes.surgery import accuracy, layer_loop_surgery, repeat_range
from tests.test_train import TINY, compose_dict

N, P = 30, 5


def batch_of(tokens, roles=None, answer_pos=None, answers=None):
    n = len(tokens)
    answer_pos = torch.full((n,), P - 1) if answer_pos is None else answer_pos
    answers = torch.zeros(n, dtype=torch.long) if answers is None else answers
    roles = roles or {"answer": answers}
    role_pos = {k: torch.full((n,), -1) for k in roles}
    return ProbeBatch(
        "x",
        np.arange(n),
        tokens,
        answer_pos,
        answers,
        torch.ones(n, dtype=torch.long),
        roles,
        role_pos,
    )


def clean_and_corrupted(seed=0, at=1):
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, 23, (N, P), generator=g)
    bad = clean.clone()
    bad[:, at] = (clean[:, at] + 1 + torch.randint(0, 21, (N,), generator=g)) % 23
    return clean, bad, torch.full((N,), P - 1)


def test_logit_lens_at_the_last_layer_is_the_models_answer(make_model):
    m = make_model(n_prelude=1, n_core=1, n_steps=3, n_coda=1, injection="concat")
    clean, _, ap = clean_and_corrupted()
    logits = m(clean)[torch.arange(N), ap]
    answers = logits.argsort(-1, descending=True)[:, 2]  # the model's 3rd choice
    lens = logit_lens(m, batch_of(clean, answers=answers))
    assert lens.layers[-1] == "coda.L0" and len(lens.layers) == 6
    assert np.allclose(lens.rank[0, -1, P - 1], 2) and np.allclose(lens.at_role_mrr[0, -1], 1 / 3)
    readout = step_readout(m, batch_of(clean, answers=logits.argmax(-1)))
    assert readout.acc[-1] == 1.0 and readout.acc.shape == (3,)


def test_handoff_splits_answers_by_whether_the_bridge_reached_the_last_step(make_model):
    m = make_model(n_core=1, n_steps=2, feedback="argmax")
    clean, _, ap = clean_and_corrupted()
    _, cache = m.run_with_cache(clean)
    decoded = m.unembed(cache["steps.1.hook_state"][:, 1]).argmax(-1)  # what step 2 receives
    final = m(clean)[torch.arange(N), ap].argmax(-1)
    bridge = torch.where(torch.arange(N) < 20, decoded, (decoded + 1) % 23)  # 20 right
    answers = torch.where(torch.arange(N) % 2 == 0, final, (final + 1) % 23)  # evens right
    batch = batch_of(clean, roles={"answer": answers, "bridge_1": bridge}, answers=answers)
    batch.role_pos["bridge_1"][:] = 1
    h = handoff(m, batch, chunk=7)
    assert (h.n, h.bridge_right, h.answer_if_bridge_right, h.answer_if_bridge_wrong) == (
        30,
        20,
        10,
        5,
    )
    assert handoff(make_model(n_core=1, n_steps=1), batch) is None  # no step to hand on to


def test_the_wave_finds_each_link_right_after_the_step_it_was_planted_at(make_model):
    """Two-hop chains whose bridge is what the lens reads at position 1 after step 2 and whose
    answer is what it reads at the answer position after step 1 (from the hooks, not the
    residual states the wave reads): right there for every chain, so ever 1, first at most."""
    m = make_model(n_core=1, n_steps=3)
    clean, _, ap = clean_and_corrupted()
    _, cache = m.run_with_cache(clean)
    after = lambda t: m.unembed(cache[f"steps.{t}.hook_state"]).argmax(-1)  # step t's state
    bridge, answer = after(2)[:, 1], after(1)[:, P - 1]
    batch = batch_of(clean, roles={"answer": answer, "bridge_1": bridge}, answers=answer)
    batch.role_pos["bridge_1"][:] = 1
    batch.hops[:] = 2
    w = bridge_wave(m, batch)
    assert w.right.shape == (3, 1, 2) and list(w.hops) == [2] and list(w.n) == [N]
    assert w.right[1, 0, 0] == 1.0 and w.right[0, 0, 1] == 1.0
    assert (w.ever == 1.0).all() and w.first[0, 0] <= 2 and w.first[0, 1] == 1
    assert bridge_wave(m, batch_of(clean)) is None  # no bridges: nothing to follow


def test_logit_lens_finds_a_hand_placed_token_at_its_layer(make_model):
    # One-hot embeddings, tied unembedding, every block silent except layer 2's MLP, which writes
    # token 7's direction everywhere: the lens must see the input token up to S[2] and 7 from S[3].
    m = make_model(
        n_core=4, n_steps=1, d_model=32, d_vocab=23, tied_embeddings=True, normalization="none"
    )
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
        m.W_E[:, :23] = torch.eye(23) * 5
        m.cores[0][2].mlp.W_out.bias[7] = 20.0
    tokens = torch.randint(0, 23, (N, P))
    tokens[tokens == 7] = 8
    lens = logit_lens(
        m, batch_of(tokens, roles={"seven": torch.full((N,), 7), "input_at_0": tokens[:, 0]})
    )
    seven, own = lens.top1[0], lens.top1[1]
    assert (seven[:3] == 0).all() and (seven[3:] == 1).all()
    assert (own[:3, 0] == 1).all() and (own[3:, 0] == 0).all()


def test_patching_clean_into_clean_is_zero_and_corrupted_into_corrupted_is_full(make_model):
    # init_std 0.1: a random model at the default 0.02 is too smooth for one token to flip it
    m = make_model(n_prelude=1, n_core=2, n_steps=2, n_coda=1, injection="add", init_std=0.1)
    clean, bad, ap = clean_and_corrupted()
    rows = torch.arange(N)
    clean_pred, bad_pred = m(clean)[rows, ap].argmax(-1), m(bad)[rows, ap].argmax(-1)
    same = ct.patched_logits(m, clean, clean, ap).argmax(-1)  # [V + 1, pos, n]
    assert (same == clean_pred).all()
    full = ct.patched_logits(m, bad, bad, ap).argmax(-1)
    assert (full == bad_pred).all() and (full != clean_pred).any()
    res = ct.causal_trace(m, clean, bad, ap, clean_pred, bad_pred)
    assert res.strength[:, 0].max() == 0  # before the corrupted token
    assert res.strength[-1, -1] == pytest.approx(res.full_effect)  # the last cell is everything


@pytest.mark.parametrize(
    "kw",
    [
        dict(n_core=3, n_steps=1),
        dict(n_prelude=1, n_core=1, n_steps=3, n_coda=1, injection="concat", positional="rotary"),
    ],
)
def test_batched_tracing_equals_the_one_cell_per_pass_loop(make_model, kw):
    m = make_model(**kw)
    clean, bad, ap = clean_and_corrupted(at=2)
    rows = torch.arange(N)
    res = ct.causal_trace(
        m, clean, bad, ap, m(clean)[rows, ap].argmax(-1), m(bad)[rows, ap].argmax(-1)
    )
    assert (torch.as_tensor(res.flip) == ct.trace_loop(m, clean, bad, ap)).all()
    assert res.strength.max() > 0


def test_causal_tracing_agrees_with_transformer_lens_patching(make_model):
    m = make_model(n_core=3, n_steps=1)  # a plain stack: resid_pre of block i is S[i]
    clean, bad, ap = clean_and_corrupted()
    rows = torch.arange(N)
    clean_ans, bad_ans = m(clean)[rows, ap].argmax(-1), m(bad)[rows, ap].argmax(-1)
    res = ct.causal_trace(m, clean, bad, ap, clean_ans, bad_ans)
    _, bad_cache = m.run_with_cache(bad)
    flips = lambda logits: (logits[rows, ap].argmax(-1) != clean_ans).float().mean()
    ld = lambda logits: (logits[rows, ap, clean_ans] - logits[rows, ap, bad_ans]).mean()
    tl_strength = patching.get_act_patch_resid_pre(m, clean, bad_cache, flips)
    tl_ld = patching.get_act_patch_resid_pre(m, clean, bad_cache, ld)
    assert np.allclose(res.strength[:3], tl_strength.numpy())
    assert np.allclose(res.logit_diff[:3], tl_ld.numpy(), atol=1e-5)
    maps = ct.patching_maps(m, clean, bad, ap, clean_ans, bad_ans)
    assert maps.resid_pre.shape == (3, P) and maps.head_out.shape == (3, 4)
    assert maps.resid_pre[0, 1] == pytest.approx(1.0, abs=1e-4)  # the corrupted token, restored


def test_surgery_repeating_the_last_step_equals_one_more_step(make_model):
    m = make_model(n_core=1, n_steps=3, injection="add", init_std=0.1)  # steps must matter
    tokens, _, ap = clean_and_corrupted()
    four = m.readout_steps(tokens, 4, positions=ap)[-1].argmax(-1)
    layers = m.unrolled()
    assert accuracy(m, repeat_range(layers, 2, 2, 1), tokens, ap, four) == 1.0
    assert accuracy(m, layers, tokens, ap, four) < 1.0
    res = layer_loop_surgery(
        m, {"x": batch_of(tokens, answers=four, answer_pos=ap)}, repeats=(1, 2)
    )
    assert res.acc["x"].shape == (2, 3, 3) and res.acc["x"][0, 2, 2] == 1.0
    assert np.isnan(res.acc["x"][0, 2, 0])


def test_fourier_measures_find_a_planted_frequency(make_model):
    p = 13
    _, _, d = compose_dict(TINY + ["data.p=13"])
    cfg = run_config_from_dict(d)
    from datagen import load_or_build

    ds = load_or_build(cfg.data, None)
    m = make_model(d_vocab=len(ds.vocab), n_ctx=4, n_core=1)
    with torch.no_grad():
        a = torch.arange(p, dtype=torch.float64)
        m.W_E[:p] = 0
        m.W_E[:p, 0] = torch.cos(2 * math.pi * 4 * a / p).float()
        m.W_E[:p, 1] = torch.sin(2 * math.pi * 4 * a / p).float()
    res = fourier_measures(m, ds)
    assert res.key_freqs[0] == 4 and res.gini > 0.8
    assert all(np.isfinite([res.restricted_loss, res.excluded_loss, res.test_loss]))
    assert gini(np.ones(6)) == 0 and gini(np.eye(6)[0]) > 0.8


def test_abstention_signals_score_each_step_and_hop_count(make_model):
    from grokloop.adaptive.rules import auroc, coverage_at_accuracy, selective_curve, trajectory
    from probes.signals import abstention_signals

    m = make_model(n_core=1, n_steps=2, injection="add")
    gen = torch.Generator().manual_seed(0)
    tokens, pos = torch.randint(0, 23, (48, 5), generator=gen), torch.full((48,), 4)
    traj = trajectory(m, tokens, pos, torch.zeros(48, dtype=torch.long), 3)
    answers = traj["argmax"][-1].clone()  # right at step 3, except every third
    answers[::3] = (answers[::3] + 1) % 23
    hops = torch.tensor([2, 3] * 24)
    groups = abstention_signals(m, tokens, pos, answers, hops, 3, trained_hops=[2])
    assert sorted(groups) == ["all", "deeper_than_trained", "hops_2", "hops_3", "trained_hops"]
    res = groups["all"]
    assert res.signals == ["top_probability", "neg_entropy"] and res.auroc.shape == (2, 3)
    traj = trajectory(m, tokens, pos, answers, 3)
    for t in range(3):
        assert res.auroc[0, t] == pytest.approx(auroc(traj["top"][t], traj["correct"][t]))
        assert res.acc[t] == pytest.approx(traj["correct"][t].double().mean().item())
        cover = coverage_at_accuracy(selective_curve(traj["top"][t], traj["correct"][t]), 0.9)
        assert res.coverage[0, t] == pytest.approx(np.nan if cover is None else cover, nan_ok=True)
    assert groups["hops_3"].n == 24 and groups["deeper_than_trained"].n == 24
    three = hops == 3
    assert groups["hops_3"].auroc[1, 2] == pytest.approx(
        auroc(-traj["entropy"][2, three], traj["correct"][2, three])
    )
    every = abstention_signals(m, tokens, pos, traj["argmax"][-1], hops, 3)["all"]
    assert np.isnan(every.auroc[:, 2]).all()  # all right at step 3: nothing to rank
    assert (every.coverage[:, 2] == 1).all()  # and every answer kept


def test_the_combination_of_signals_learns_from_one_split_what_ranks_another():
    # Right answers are those whose step-2 answer agrees with the last and whose last top
    # probability is high; no one signal says both. Fitted on one sample, the combination
    # ranks a fresh sample almost perfectly, above the top probability alone.
    from grokloop.adaptive.rules import auroc
    from probes.signals import Combination, episode_features

    def sample(seed, n=2000, T=3):
        g = torch.Generator().manual_seed(seed)
        top = torch.rand(T, n, generator=g)
        argmax = torch.randint(0, 2, (T, n), generator=g)
        traj = {"top": top, "entropy": torch.rand(T, n, generator=g), "argmax": argmax}
        right = (argmax[1] == argmax[-1]) & (top[-1] > 0.3)
        return traj, right

    fit, right = sample(0)
    assert episode_features(fit).shape == (2000, 3 * 3)
    combination = Combination(episode_features(fit), right)
    test, right = sample(1)
    combined = auroc(combination(episode_features(test)), right)
    assert combined > 0.95 and combined > auroc(test["top"][-1], right) + 0.1
    with pytest.raises(ValueError, match="all right or all wrong"):
        Combination(episode_features(fit), torch.ones(2000, dtype=torch.bool))


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("probe_run")
    _, _, d = compose_dict(
        [
            "experiment=composition_small_looped",
            "train.steps=40",
            "train.progress=false",
            "model.d_model=32",
            "model.n_heads=2",
            "model.d_mlp=64",
            "train.batch_size=128",
            "train.checkpoint_every_max=20",
            f"data_cache={tmp / 'cache'}",
        ]
    )
    train(run_config_from_dict(d), tmp / "run")
    return tmp / "run"


def test_probes_cli_writes_every_probe_for_every_checkpoint(trained_run):
    probes_main(
        [f"run_dir={trained_run}", "checkpoints=all", "n=40", "patching_examples=5", "repeats=1"]
    )
    out = trained_run / "probes"
    record = json.loads((out / "causal_tracing.json").read_text())
    steps = record["checkpoints"]
    assert len(steps) >= 2 and record["code_version"] and record["run_config"]["experiment"]
    for probe in ("logit_lens", "causal_tracing", "attention", "surgery", "signals", "wave"):
        rows = [json.loads(line) for line in (out / f"{probe}.jsonl").read_text().splitlines()]
        assert {r["checkpoint"] for r in rows} == set(steps)
        assert len(list((out / probe).glob("step_*.npz"))) == len(steps)
    lens = np.load(out / "logit_lens" / f"step_{steps[-1]:08d}.npz")
    assert lens["train_inferred/at_role_mrr"].shape[1] == 5  # embed + 2 layers x 2 steps
    n_rows = len((out / "surgery.jsonl").read_text().splitlines())
    probes_main(
        [f"run_dir={trained_run}", f"checkpoints={steps[-1]}", "probe=surgery", "n=40", "repeats=1"]
    )
    assert len((out / "surgery.jsonl").read_text().splitlines()) == n_rows  # replaced, not appended


def test_signals_probe_scores_a_combination_fitted_on_another_split(trained_run):
    probes_main(
        [
            f"run_dir={trained_run}",
            "probe=signals",
            "split=test_inferred_ood",
            "fit_split=train_inferred",
            "n=200",
        ]
    )
    rows = [
        json.loads(line)
        for line in (trained_run / "probes" / "signals.jsonl").read_text().splitlines()
    ]
    combined = [r for r in rows if r["signal"] == "combined_fit_train_inferred"]
    n_steps = max(r["step"] for r in rows)
    assert combined and all(
        r["step"] == n_steps and r["split"] == "test_inferred_ood" for r in combined
    )
    assert all("coverage_at_0.9" in r for r in rows)
    record = json.loads((trained_run / "probes" / "signals.json").read_text())
    assert record["options"]["fit_split"] == "train_inferred"


@pytest.mark.parametrize(
    "args, needle",
    [
        (["run_dir=/nonexistent/run"], "no such directory"),
        (["probe=fourier"], "modular addition only"),
        (["corrupt=bridge_1"], "not an input role"),
        (["checkpoints=999999"], "has no checkpoint"),
        (["probe=lens"], "unknown"),
        (["probe=signals", "steps=-1"], "steps=-1: give the recurrence steps"),
        (
            ["probe=signals", "split=test_inferred_ood", "fit_split=test_inferred_ood"],
            "also a split scored",
        ),
        (["probe=signals", "fit_split=nosuch"], "fit_split='nosuch'"),
        (["probe=surgery", "fit_split=train_inferred"], "signals probe only"),
        (["colour=red"], "unknown option"),
    ],
)
def test_probes_cli_errors_name_the_problem(trained_run, args, needle):
    argv = args if args[0].startswith("run_dir") else [f"run_dir={trained_run}"] + args
    with pytest.raises(SystemExit, match=needle):
        probes_main(argv)


def test_probes_cli_on_a_run_without_checkpoints(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(SystemExit, match="no checkpoints"):
        probes_main([f"run_dir={tmp_path}"])
