"""Adaptive thinking: best-step choice, gradient through the chosen path only, MoE routing, the
halting selector's policy gradient, and a frozen model under selector training."""

from pathlib import Path

import pytest
import torch

from grokloop.adaptive.depth import choose_best_step, depth_loss
from grokloop.adaptive.halting import abstention, evaluate_halting
from grokloop.adaptive.rules import (
    auroc,
    coverage_at_accuracy,
    coverage_curve,
    first_true,
    rule_exits,
    selective_curve,
    threshold_at_coverage,
    trajectory,
)
from grokloop.adaptive.selector import (
    ABSTAIN,
    STOP,
    HaltingConfig,
    Selector,
    reinforce_loss,
    rollout,
    train_selector,
)
from grokloop.losses import cross_entropy

TOKENS = torch.randint(0, 23, (8, 5), generator=torch.Generator().manual_seed(1))
POS = torch.full((8,), 4)
TARGETS = torch.randint(0, 23, (8,), generator=torch.Generator().manual_seed(2))


def tiny_composition():
    """A composition dataset with held-out valid facts (2 hops trained, 3 hops test-only)."""
    from datagen import build_dataset
    from datagen.config import CompositionConfig

    return build_dataset(
        CompositionConfig(
            n_entities=30,
            n_relations=5,
            out_degree=5,
            phi=2.0,
            hops=[2],
            test_hops=[3],
            eval_size=40,
            valid_fraction=0.1,
            test_id_fraction=0.1,
        )
    )


def hand_traj(correct, top, kl=None, entropy=None, argmax=None) -> dict:
    """A trajectory dict [T, batch] from hand-made columns (unused columns filled in)."""
    correct = torch.as_tensor(correct, dtype=torch.bool)
    full = lambda x, fill: (
        torch.full(correct.shape, fill) if x is None else torch.as_tensor(x, dtype=torch.float)
    )
    return {
        "correct": correct,
        "top": full(top, 0.5),
        "kl": full(kl, 1.0),
        "entropy": full(entropy, 1.0),
        "argmax": (
            torch.arange(correct.numel()).view(correct.shape)
            if argmax is None
            else torch.as_tensor(argmax)
        ),
        "cost": torch.ones(correct.shape),
    }


def test_best_step_picks_lowest_loss_and_fewest_steps_on_ties():
    losses = torch.tensor(
        [[0.9, 0.2, 0.5, 0.3], [0.4, 0.2, 0.15, 0.3], [0.4, 0.2, 0.1, 0.30001]]
    )  # [steps, batch]
    # Lowest loss; exact ties (columns 0, 1 and 3) go to the fewest steps.
    assert choose_best_step(losses).tolist() == [1, 0, 2, 0]
    # Within a tolerance, near-ties count as ties: column 2's 0.15 is within 0.1 of 0.1.
    assert choose_best_step(losses, tol=0.1).tolist() == [1, 0, 1, 0]


def test_best_step_gradient_flows_only_through_the_chosen_path(make_model):
    m = make_model(n_core=1, n_coda=1, n_steps=4, injection="add").train()
    tokens, pos, target = TOKENS[:1], POS[:1], TARGETS[:1]
    with torch.no_grad():
        per_step = cross_entropy(
            m.readout_steps(tokens, positions=pos), target.expand(4, -1), reduction="none"
        )
    chosen = int(choose_best_step(per_step))
    loss, share = depth_loss(m, tokens, pos, target, "best", 4)
    assert share.tolist() == [float(t == chosen) for t in range(4)]
    grads = torch.autograd.grad(loss, list(m.parameters()))
    direct = cross_entropy(m.readout_steps(tokens, chosen + 1, positions=pos)[-1], target)
    expected = torch.autograd.grad(direct, list(m.parameters()))
    for g, e in zip(grads, expected):
        assert torch.allclose(g, e, atol=1e-6)


def test_soft_best_is_the_softmax_of_minus_loss_over_tau_held_constant(make_model):
    m = make_model(n_core=1, n_steps=3, injection="add")
    tau = 0.5
    loss, share = depth_loss(m, TOKENS, POS, TARGETS, "soft_best", 3, tau=tau)
    logits = m.readout_steps(TOKENS, 3, positions=POS)  # [steps, batch, vocab]
    per_step = torch.stack(
        [torch.nn.functional.cross_entropy(logits[t], TARGETS, reduction="none") for t in range(3)]
    )  # [steps, batch]
    w = torch.exp(-per_step.detach() / tau)
    w = w / w.sum(0)  # by hand, per example
    assert torch.allclose(share, w.mean(1), atol=1e-6)
    assert torch.allclose(loss, (w * per_step).sum(0).mean(), atol=1e-6)
    assert not torch.allclose(w, torch.full_like(w, 1 / 3), atol=1e-3)  # not trivially uniform
    # The weights are constants: the gradient is the weighted sum of the per-step gradients.
    params = [p for p in m.parameters() if p.requires_grad]
    got = torch.autograd.grad(loss, params, allow_unused=True)
    want = torch.autograd.grad((w * per_step).sum(0).mean(), params, allow_unused=True)
    for g, e in zip(got, want):
        assert (g is None) == (e is None) and (g is None or torch.allclose(g, e, atol=1e-6))


def test_moe_sends_each_token_to_k_experts_and_only_they_compute(make_model):
    m = make_model(n_core=1, n_steps=3, injection="add", moe_experts=4, moe_top_k=2)
    _, cache = m.run_with_cache(TOKENS)
    for v in range(m.cfg.n_layers):
        chosen = cache[f"blocks.{v}.mlp.hook_experts"]  # [batch, pos, k]
        assert chosen.shape == (8, 5, 2)
        assert (chosen[..., 0] != chosen[..., 1]).all() and chosen.max() < 4
    # The MLP output equals the gate-weighted sum over the chosen experts alone.
    mlp = m.cores[0][0].mlp
    x = torch.randn(3, 32)
    gate = torch.sigmoid(x @ mlp.W_gate)
    w, idx = gate.topk(2)
    manual = (
        torch.stack(
            [
                sum(
                    w[i, j] * (torch.relu(x[i] @ mlp.W_in[e] + mlp.b_in[e]) @ mlp.W_out[e])
                    for j, e in enumerate(idx[i].tolist())
                )
                for i in range(3)
            ]
        )
        + mlp.b_out
    )
    assert torch.allclose(mlp(x, None), manual, atol=1e-5)
    # An expert no token chose gets no gradient.
    m.zero_grad()
    y = mlp(x[:1], None).sum()
    y.backward()
    unchosen = sorted(set(range(4)) - set(idx[0].tolist()))
    assert (mlp.W_in.grad[unchosen] == 0).all() and (mlp.W_in.grad[idx[0]] != 0).any()


def test_moe_balance_regulariser_is_pooled_over_steps_and_finite(make_model):
    m = make_model(n_core=2, n_steps=3, injection="add", moe_experts=4, moe_top_k=1)
    m(TOKENS)
    assert {k: len(v) for k, v in m._routing.items()} == {"c0.L0": 3, "c0.L1": 3}
    reg = m.moe_balance_loss()
    assert torch.isfinite(reg) and 0 <= reg.item() <= 2 * torch.log(torch.tensor(4.0)).item()
    dense = make_model(n_core=1)
    dense(TOKENS)
    with pytest.raises(ValueError, match="moe_experts"):
        dense.moe_balance_loss()


def test_policy_gradient_raises_the_probability_of_the_rewarded_action():
    torch.manual_seed(0)
    logits = torch.zeros(3, requires_grad=True)  # a one-state policy over 3 actions
    opt = torch.optim.SGD([logits], lr=0.5)
    for _ in range(50):
        dist = torch.distributions.Categorical(logits=logits.expand(256, 3))
        action = dist.sample()
        reward = (action == 2).float()  # only action 2 pays
        loss = reinforce_loss(dist.log_prob(action), reward, dist.entropy(), 0.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert logits.softmax(0)[2] > 0.9


def test_selector_training_leaves_the_frozen_model_unchanged(make_model, tmp_path):
    ds = tiny_composition()
    m = make_model(d_vocab=len(ds.vocab), n_ctx=ds.n_ctx, n_core=1, n_steps=2, injection="add")
    before = {k: v.clone() for k, v in m.state_dict().items()}
    cfg = HaltingConfig(max_steps=3, iterations=5, batch_size=16)  # trains on valid
    selector, curve = train_selector(m, ds, cfg)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert len(curve) >= 1 and all(p.grad is not None for p in selector.parameters())
    res = evaluate_halting(m, ds, selector, cfg, ["test_inferred_id"])["test_inferred_id"]
    rules = res["rules"]
    # By hand: correctness of the readout after each of 1..3 steps, per example.
    idx = torch.as_tensor(ds.splits["test_inferred_id"])
    with torch.no_grad():
        logits = m.readout_steps(
            torch.as_tensor(ds.inputs)[idx], 3, positions=torch.as_tensor(ds.answer_pos)[idx]
        )  # [3, n, vocab]
    correct = logits.argmax(-1) == torch.as_tensor(ds.answers)[idx]  # [3, n]
    for t in (1, 2, 3):
        assert rules[f"fixed_{t}"]["acc"] == pytest.approx(correct[t - 1].float().mean().item())
    assert rules["oracle"]["acc"] == pytest.approx(correct.any(0).float().mean().item())
    first = torch.where(correct.any(0), correct.float().argmax(0), torch.tensor(2)) + 1
    assert rules["oracle"]["mean_steps"] == pytest.approx(first.float().mean().item())
    assert 1 <= rules["selector"]["mean_steps"] <= 3
    # Per-hop counts come from the examples; the Huginn rules and the abstention are there.
    hops = torch.as_tensor(ds.hops)[idx]
    for rule in ("fixed_1", "huginn_kl<5e-4", "huginn_entropy<1e-3", "huginn_argmax_5", "selector"):
        assert {k: rules[rule][f"hops_{k}"]["n"] for k in (2, 3)} == {
            k: int((hops == k).sum()) for k in (2, 3)
        }
    groups = res["abstention"]["groups"]
    assert res["abstention"]["exit"] == res["coverage_curve_exit"] == "huginn_kl<5e-4"
    assert set(groups) == {"all", "hops_2", "hops_3", "trained_hops", "deeper_than_trained"}
    assert groups["deeper_than_trained"]["n"] == groups["hops_3"]["n"]
    assert groups["all"]["selector"]["coverage"] == pytest.approx(rules["selector"]["coverage"])


def test_selector_refuses_a_training_split_and_trains_on_valid_by_default(make_model, monkeypatch):
    from datagen import build_dataset
    from datagen.config import ModularConfig
    from grokloop.adaptive import halting

    ds = tiny_composition()
    m = make_model(d_vocab=len(ds.vocab), n_ctx=ds.n_ctx, n_core=1, n_steps=2, injection="add")
    assert HaltingConfig().train_split == "valid"
    for split in ("train", "train_inferred"):  # training facts, all or a sample of them
        with pytest.raises(
            ValueError, match=f"train_split='{split}' shares .* use train_split=valid"
        ):
            train_selector(m, ds, HaltingConfig(train_split=split, iterations=1))
    with pytest.raises(ValueError, match="'nope' is not a split.*use train_split=valid"):
        train_selector(m, ds, HaltingConfig(train_split="nope", iterations=1))
    modular = build_dataset(ModularConfig(p=7, train_fraction=0.5))  # no valid split
    with pytest.raises(ValueError, match="'valid' is not a split.*valid_fraction"):
        train_selector(m, modular, HaltingConfig(iterations=1))
    # The command refuses before any work: nothing trains, nothing is written.
    import grokloop.checkpoint

    monkeypatch.setattr(grokloop.checkpoint, "load_model", lambda run_dir: (m, ds, {}))
    monkeypatch.setattr(halting, "train_selector", lambda *a: pytest.fail("trained"))
    with pytest.raises(ValueError, match="shares"):
        halting.run_halting(halting.HaltingCommand(run_dir="nowhere", train_split="train"))
    # The default trains on valid: the batches come from the valid split only.
    from grokloop.adaptive import selector as S

    seen, real_rollout = [], S.rollout

    def rollout_spy(model, selector, tokens, *args, **kw):
        seen.append(tokens)
        return real_rollout(model, selector, tokens, *args, **kw)

    monkeypatch.setattr(S, "rollout", rollout_spy)
    train_selector(m, ds, HaltingConfig(iterations=2, batch_size=8, max_steps=2))
    rows = lambda split, width: {tuple(r) for r in ds.inputs[ds.splits[split], :width].tolist()}
    width = seen[0].shape[1]
    assert all(tuple(r) in rows("valid", width) for t in seen for r in t.tolist())
    assert not rows("valid", width) & rows("train", width)


def test_huginn_rules_exit_where_hand_made_trajectories_say():
    inf = float("inf")
    # 8 steps, 4 examples. KL: below 5e-4 first at step 3 / never (5e-4 itself is not below) /
    # at step 2 / never.
    kl = [[inf, inf, inf, inf], [1e-2, 5e-4, 4e-4, 1.0], [4e-4, 5e-4, 1.0, 1.0]] + [[1.0] * 4] * 5
    # Entropy: |change| < 1e-3 first at step 3 / at step 2 / never / at step 8.
    entropy = [
        [2.0, 1.0, 1.0, 3.0],
        [1.5, 1.0005, 2.0, 2.0],
        [1.4995, 3.0, 3.0, 1.0],
        [0.0, 1.0, 1.0, 2.0],
        [1.0, 1.5, 2.0, 1.0],
        [0.0, 1.0, 1.0, 2.0],
        [1.0, 2.0, 2.0, 1.0],
        [1.0, 2.0, 1.0, 1.0005],
    ]
    # Argmax: constant from step 1 (exits at step 6, Huginn's counter reaching 5) / constant from
    # step 2 (step 7) / changes at step 6 (never: step 8) / constant from step 3 (step 8).
    argmax = [
        [3, 1, 1, 1],
        [3, 2, 1, 2],
        [3, 2, 1, 4],
        [3, 2, 1, 4],
        [3, 2, 1, 4],
        [3, 2, 2, 4],
        [3, 2, 2, 4],
        [3, 2, 2, 4],
    ]
    traj = hand_traj(torch.zeros(8, 4), None, kl, entropy, argmax)
    exits = rule_exits(traj, 2)
    assert exits["huginn_kl<5e-4"].tolist() == [2, 7, 1, 7]  # step indices (step - 1)
    assert exits["huginn_entropy<1e-3"].tolist() == [2, 1, 7, 7]
    assert exits["huginn_argmax_5"].tolist() == [5, 6, 7, 7]
    # None of them reads the answer.
    flipped = rule_exits(traj | {"correct": torch.ones(8, 4, dtype=torch.bool)}, 2)
    assert all(
        torch.equal(exits[r], flipped[r])
        for r in ("huginn_kl<5e-4", "huginn_entropy<1e-3", "huginn_argmax_5")
    )


def test_trajectory_records_entropy_and_argmax(make_model):
    m = make_model(n_core=1, n_steps=2, injection="add")
    traj = trajectory(m, TOKENS, POS, TARGETS, 3)
    with torch.no_grad():
        logp = (
            m.readout_steps(TOKENS, 3, positions=POS).float().log_softmax(-1)
        )  # [3, batch, vocab]
    assert torch.allclose(traj["entropy"], -(logp.exp() * logp).sum(-1), atol=1e-5)
    assert torch.equal(traj["argmax"], logp.argmax(-1))
    assert torch.equal(traj["correct"], traj["argmax"] == TARGETS)


def test_coverage_curve_and_coverage_at_accuracy_on_a_hand_made_case():
    top = torch.tensor([0.95, 0.9, 0.8, 0.6, 0.6, 0.3])
    right = torch.tensor([1, 1, 0, 1, 0, 0], dtype=torch.bool)
    traj = hand_traj(torch.stack([~right, right]), torch.stack([1 - top, top]))
    exit_step = torch.ones(6, dtype=torch.long)  # read at step 2
    curve = coverage_curve(traj, exit_step, thresholds=[0.0, 0.5, 0.85, 0.99])
    assert [r["min_confidence"] for r in curve] == [0.99, 0.85, 0.5, 0.0]
    assert [r["coverage"] for r in curve] == pytest.approx([0, 2 / 6, 5 / 6, 1])
    assert [r["selective_acc"] for r in curve] == pytest.approx([None, 1, 3 / 5, 3 / 6])
    assert len(coverage_curve(traj, exit_step)) > 20  # the default, finer grid
    exact = selective_curve(top, right)  # every distinct confidence
    assert [r["coverage"] for r in exact] == pytest.approx([1 / 6, 2 / 6, 3 / 6, 5 / 6, 1])
    assert coverage_at_accuracy(exact) == pytest.approx(2 / 6)  # 90%: the two most confident
    assert coverage_at_accuracy(exact, 0.6) == pytest.approx(5 / 6)
    assert coverage_at_accuracy(exact, 1.01) is None
    # The threshold closest to a coverage without exceeding it (the tied 0.6s move together).
    assert threshold_at_coverage(exact, 4 / 6)["min_confidence"] == pytest.approx(0.8)
    assert threshold_at_coverage(exact, 1.0)["coverage"] == 1.0
    assert threshold_at_coverage(exact, 0.1) == {
        "min_confidence": None,
        "coverage": 0.0,
        "selective_acc": None,
    }
    assert coverage_at_accuracy([{"coverage": 0.4, "selective_acc": 0.95}]) == 0.4  # one point
    assert coverage_at_accuracy([{"coverage": 0.4, "selective_acc": 0.85}]) is None


def test_abstention_compares_selector_and_threshold_at_equal_coverage():
    # 8 examples read at step 1: hops 2 (trained) and 3 (deeper).
    top = torch.tensor([0.99, 0.9, 0.7, 0.5, 0.95, 0.8, 0.6, 0.4])
    right = torch.tensor([1, 1, 0, 0, 1, 0, 1, 0], dtype=torch.bool)
    hops = torch.tensor([2, 2, 2, 2, 3, 3, 3, 3])
    traj = hand_traj(right[None], top[None])
    out = {
        "abstained": torch.tensor([0, 0, 1, 1, 0, 1, 0, 1], dtype=torch.bool),
        "correct": torch.tensor([1, 1, 0, 0, 1, 0, 1, 0], dtype=torch.bool),
    }
    ab = abstention(traj, torch.zeros(8, dtype=torch.long), hops, out, trained_hops=[2])
    g = ab["groups"]
    assert set(g) == {"all", "hops_2", "hops_3", "trained_hops", "deeper_than_trained"}
    assert g["all"]["selector"] == {
        "coverage": 0.5,
        "selective_acc": 1.0,
        "coverage_at_target": 0.5,
    }
    # The threshold at the selector's coverage (4 of 8): top >= 0.8 answers 0.99, 0.95, 0.9, 0.8.
    assert g["all"]["threshold"] == pytest.approx(
        {"min_confidence": 0.8, "coverage": 0.5, "selective_acc": 0.75}
    )
    assert g["all"]["threshold_coverage_at_target"] == pytest.approx(3 / 8)
    # Deeper facts: the selector answers 0.95 (right) and 0.6 (right); the threshold at 2 of 4
    # answers 0.95 and 0.8 (one wrong), and never reaches 90% beyond the single most confident.
    deep = g["deeper_than_trained"]
    assert deep["n"] == 4 and deep["selector"]["coverage_at_target"] == 0.5
    assert deep["threshold"]["selective_acc"] == pytest.approx(0.5)
    assert deep["threshold_coverage_at_target"] == pytest.approx(0.25)
    assert g["hops_3"] == deep and g["trained_hops"] == g["hops_2"]
    assert (
        "selector" not in abstention(traj, torch.zeros(8, dtype=torch.long), hops)["groups"]["all"]
    )
    # With its curve (episodes at several abstain offsets) the selector's coverage at the target
    # is the curve's largest, as the threshold's is: here the offset -1 episodes also answer the
    # deeper 0.8 fact wrongly (5 of 8 answered, 4 right: 0.8) and offset -2 answers everything;
    # neither reaches 90%, so offset 0's 0.5 stands; with a target of 0.75, offset -1's 5/8.
    looser = {
        "abstained": torch.tensor([0, 0, 1, 1, 0, 0, 0, 1], dtype=torch.bool),
        "correct": torch.tensor([1, 1, 0, 0, 1, 0, 1, 0], dtype=torch.bool),
    }
    every = {"abstained": torch.zeros(8, dtype=torch.bool), "correct": right}
    offsets = {-2.0: every, -1.0: looser, 0.0: out}
    g = abstention(
        traj, torch.zeros(8, dtype=torch.long), hops, out, trained_hops=[2], offsets=offsets
    )["groups"]
    assert [p["abstain_offset"] for p in g["all"]["selector_curve"]] == [-2.0, -1.0, 0.0]
    assert [p["coverage"] for p in g["all"]["selector_curve"]] == [1.0, 5 / 8, 0.5]
    assert g["all"]["selector"]["coverage"] == 0.5  # the operating point: offset 0
    assert g["all"]["selector"]["coverage_at_target"] == 0.5
    g75 = abstention(
        traj,
        torch.zeros(8, dtype=torch.long),
        hops,
        out,
        trained_hops=[2],
        target=0.75,
        offsets=offsets,
    )["groups"]
    assert g75["all"]["selector"]["coverage_at_target"] == pytest.approx(5 / 8)


def test_rollout_stops_at_max_steps_and_exit_rules_pick_first_hits(make_model):
    m = make_model(n_core=1, n_steps=2, injection="add")
    selector = Selector(32, 1)
    with torch.no_grad():  # continue while allowed, then stop
        selector.net[-1].bias.copy_(torch.tensor([0.0, -50.0, 50.0]))
    out = rollout(m, selector, TOKENS, POS, TARGETS, HaltingConfig(max_steps=4), greedy=True)
    assert out["steps"].tolist() == [4] * 8 and not out["abstained"].any()
    # an episode's answers are the trajectory's at the same step (the episode once wrote its
    # states into the input embedding that injection re-adds, and answered otherwise)
    traj_answers = trajectory(m, TOKENS, POS, TARGETS, 4)["argmax"][-1]
    assert rollout(m, selector, TOKENS, POS, traj_answers, HaltingConfig(max_steps=4), greedy=True)[
        "correct"
    ].all()
    hits = torch.tensor([[0, 0, 1], [1, 0, 1], [1, 0, 0]], dtype=torch.bool)  # [T, batch]
    assert first_true(hits).tolist() == [1, 2, 0]
    assert rule_exits(hand_traj(hits, torch.rand(3, 3)), 2)["oracle"].tolist() == [1, 2, 0]
    # Action STOP answers at once with the step-1 readout; ABSTAIN answers nothing.
    with torch.no_grad():
        first = m.readout_steps(TOKENS, 1, positions=POS)[-1].argmax(-1) == TARGETS
    for action in (STOP, ABSTAIN):
        bias = torch.full((3,), -50.0)
        bias[action] = 50.0
        with torch.no_grad():
            selector.net[-1].bias.copy_(bias)
        out = rollout(m, selector, TOKENS, POS, TARGETS, HaltingConfig(max_steps=4), greedy=True)
        assert out["steps"].tolist() == [1] * 8
        assert out["abstained"].tolist() == [action == ABSTAIN] * 8
        assert out["correct"].tolist() == (first.tolist() if action == STOP else [False] * 8)
    # The abstain offset (the selector's coverage curve) moves only the abstain logit: from a
    # policy that stops at once, +100 makes it abstain everywhere, -100 changes nothing.
    bias = torch.tensor([50.0, -50.0, -50.0])
    with torch.no_grad():
        selector.net[-1].bias.copy_(bias)
    cfg = HaltingConfig(max_steps=4)
    base = rollout(m, selector, TOKENS, POS, TARGETS, cfg, greedy=True)
    up = rollout(m, selector, TOKENS, POS, TARGETS, cfg, greedy=True, abstain_offset=200.0)
    down = rollout(m, selector, TOKENS, POS, TARGETS, cfg, greedy=True, abstain_offset=-100.0)
    assert up["abstained"].all() and not base["abstained"].any()
    assert all(torch.equal(base[k], down[k]) for k in ("steps", "correct", "abstained"))
    # abstain_at=max_steps: a policy that abstains at once can abstain only at the last step
    # (the steps between it continues, its next most likely action), never before.
    with torch.no_grad():
        selector.net[-1].bias.copy_(torch.tensor([-50.0, 50.0, 0.0]))
    assert rollout(m, selector, TOKENS, POS, TARGETS, cfg, greedy=True)["steps"].tolist() == [1] * 8
    late = rollout(
        m,
        selector,
        TOKENS,
        POS,
        TARGETS,
        HaltingConfig(max_steps=4, abstain_at="max_steps"),
        greedy=True,
    )
    assert late["steps"].tolist() == [4] * 8 and late["abstained"].all()
    with pytest.raises(ValueError, match="abstain_at='never'"):
        HaltingConfig(abstain_at="never")
    # read_state=False: the policy reads the 4 readout statistics only, and acts on them
    blind = Selector(32, 1, read_state=False)
    assert blind.net[0].in_features == 4
    with torch.no_grad():
        blind.net[-1].bias.copy_(torch.tensor([0.0, -50.0, 50.0]))
    assert rollout(m, blind, TOKENS, POS, TARGETS, cfg, greedy=True)["steps"].tolist() == [4] * 8


def test_expected_last_choice_learns_the_final_answer_or_abstain_exactly(make_model):
    # A policy that runs to max_steps: with expected_last_choice the last choice (answer or
    # abstain) is not sampled into REINFORCE but carries its expected reward, so its gradient
    # raises abstaining where the answer is wrong and lowers it where it is right, every time.
    m = make_model(n_core=1, n_steps=2, injection="add")
    final = trajectory(m, TOKENS, POS, TARGETS, 3)["argmax"][-1]
    cfg = HaltingConfig(max_steps=3, abstain_reward=0.5, expected_last_choice=True)
    for answers, sign, value in ((final, -1, 0.75), ((final + 1) % 23, 1, 0.25)):  # right; wrong
        selector = Selector(32, 1, read_state=False)
        with torch.no_grad():
            selector.net[-1].weight.zero_()
            selector.net[-1].bias.copy_(torch.tensor([0.0, 0.0, 30.0]))  # continue until the end
        out = rollout(m, selector, TOKENS, POS, answers, cfg, greedy=False)
        assert out["at_end"].all() and out["log_prob"].abs().max() < 1e-6  # nothing sampled counts
        assert out["last_value"].detach() == pytest.approx(torch.full((8,), value))
        (-out["last_value"].mean()).backward()
        grad = selector.net[-1].bias.grad
        assert sign * grad[ABSTAIN] < 0 and grad[ABSTAIN] == pytest.approx(-grad[STOP])


def test_exact_selector_curve_is_the_rollouts_at_each_abstain_offset(make_model):
    # A selector that abstains only at max_steps: its coverage curve, read from one set of
    # episodes (`abstention(abstains_at_end=True)`), is point for point what a greedy rollout
    # with each abstain offset gives.
    from grokloop.adaptive.rules import selective_point

    m = make_model(n_core=1, n_steps=2, injection="add")
    gen = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, 23, (64, 5), generator=gen)
    pos = torch.full((64,), 4)
    answers = trajectory(m, tokens, pos, torch.zeros(64, dtype=torch.long), 4)["argmax"][-1]
    answers[::3] = torch.randint(0, 23, (len(answers[::3]),), generator=gen)  # some wrong
    torch.manual_seed(4)
    selector = Selector(32, 1)
    with torch.no_grad():
        selector.net[-1].weight.mul_(20)  # spread the actions: some stop early, some run on
    cfg = HaltingConfig(max_steps=4, abstain_at="max_steps")
    out = rollout(m, selector, tokens, pos, answers, cfg, greedy=True)
    assert 0 < (out["steps"] == 4).sum() < 64
    traj = trajectory(m, tokens, pos, answers, 4)
    g = abstention(
        traj, torch.zeros(64, dtype=torch.long), torch.full((64,), 2), out, abstains_at_end=True
    )["groups"]["all"]
    coverages = set()
    for p in g["selector_curve"]:
        o = rollout(
            m, selector, tokens, pos, answers, cfg, greedy=True, abstain_offset=p["abstain_offset"]
        )
        point = selective_point(o["correct"], ~o["abstained"])
        assert p["coverage"] == pytest.approx(point["coverage"])
        assert p["selective_acc"] == pytest.approx(point["selective_acc"])
        coverages.add(p["coverage"])
    assert len(coverages) > 2
    assert g["selector"]["auroc"] == auroc(-out["abstain_margin"], out["right_at_end"])


def test_auroc_ranks_right_above_wrong_with_ties_counting_half():
    right = torch.tensor([1, 0, 1, 0], dtype=torch.bool)
    assert auroc(torch.tensor([0.9, 0.8, 0.7, 0.6]), right) == 0.75  # 3 of 4 pairs in order
    assert auroc(torch.tensor([0.6, 0.7, 0.8, 0.9]), right) == 0.25
    assert auroc(torch.tensor([1.0, 1.0, float("inf"), 0.5]), right) == 0.875  # a tie: half
    assert auroc(torch.tensor([0.3, 0.2]), torch.tensor([True, True])) is None


def test_largest_coverage_is_the_exact_curves_and_the_gain_interval_is_paired():
    from grokloop.adaptive.rules import (
        coverage_at_accuracy,
        coverage_gain_interval,
        largest_coverage,
        selective_curve,
    )

    g = torch.Generator().manual_seed(0)
    for _ in range(100):  # ties, all right, none reaching the target: as the exact curve says
        n = int(torch.randint(1, 40, (1,), generator=g))
        score = torch.randint(0, 6, (n,), generator=g).float()
        right = torch.rand(n, generator=g) < 0.8
        for target in (0.5, 0.9):
            exact = coverage_at_accuracy(selective_curve(score, right), target) or 0.0
            assert largest_coverage(score, right, target).item() == pytest.approx(exact)
    batch = torch.rand(3, 50, generator=g)
    rights = torch.rand(3, 50, generator=g) < 0.7
    assert torch.equal(
        largest_coverage(batch, rights),
        torch.stack([largest_coverage(b, r) for b, r in zip(batch, rights)]),
    )
    # a score that knows which answers are right keeps far more than one that does not
    right = torch.rand(2000, generator=g) < 0.6
    knows, blind = (
        right.float() + 0.1 * torch.rand(2000, generator=g),
        torch.rand(2000, generator=g),
    )
    lo, hi = coverage_gain_interval(knows, right, blind, right)
    assert 0.4 < lo <= hi < 0.7
    assert coverage_gain_interval(blind, right, blind, right) == (0.0, 0.0)


def test_block_study_scores_each_schedule_by_the_layers_it_applies(make_model):
    from grokloop.adaptive.blocks import block_study, schedules

    m = make_model(core_sizes=[1, 2], n_steps=2, injection="add")
    m.set_schedule([0, 1])
    hops = torch.tensor([2, 2, 3, 3, 2, 3, 2, 3])
    study = block_study(m, TOKENS, POS, TARGETS, hops, max_steps=3, n_random=2, seed=0)
    assert m.schedule == [0, 1]  # restored
    assert set(study) == {"core_0", "core_1", "cycle", "random_0", "random_1", "random"}
    assert study["random_0"]["schedule"] == schedules(2, 2, 3, 0)["random_0"]
    # fixed depth t with one core throughout: the model's own readout, t * (layers of the core)
    with torch.no_grad():
        right = m.readout_steps(TOKENS, schedule=[1, 1, 1], positions=POS)[1].argmax(-1) == TARGETS
    row = study["core_1"]["rules"]["fixed_2"]
    assert row["acc"] == pytest.approx(right.float().mean().item()) and row["mean_layers"] == 4
    assert (
        row["hops_3"]["mean_layers"] == 4 and study["cycle"]["rules"]["fixed_3"]["mean_layers"] == 4
    )
    assert study["core_0"]["rules"]["max_confidence"]["mean_layers"] == 3  # pays for every step
    for rule in ("fixed_1", "oracle", "huginn_kl<5e-4"):
        mean = study["random"]["rules"][rule]
        parts = [study[f"random_{i}"]["rules"][rule] for i in range(2)]
        assert mean["acc"] == pytest.approx(sum(p["acc"] for p in parts) / 2)
        assert mean["mean_layers"] == pytest.approx(sum(p["mean_layers"] for p in parts) / 2)
    oracle = study["core_0"]["rules"]["oracle"]
    assert oracle["mean_layers"] == oracle["mean_steps"]  # one layer per step


def test_halting_on_a_bank_adds_the_block_study_and_the_selector_layers(make_model):
    ds = tiny_composition()
    m = make_model(
        d_vocab=len(ds.vocab), n_ctx=ds.n_ctx, core_sizes=[1, 2], n_steps=2, injection="add"
    )
    cfg = HaltingConfig(max_steps=3, iterations=3, batch_size=16)
    selector, _ = train_selector(m, ds, cfg)
    res = evaluate_halting(m, ds, selector, cfg, ["test_inferred_id"])["test_inferred_id"]
    assert {"core_0", "core_1", "cycle", "random"} <= set(res["blocks"])
    sel = res["rules"]["selector"]
    assert (
        1 <= sel["mean_layers"] <= 2 * 3 and sel["mean_layers"] == sel["mean_cost"]
    )  # core 0: 1 layer
    assert sel["hops_2"]["mean_layers"] >= 1


@pytest.mark.parametrize(
    "extra",
    [
        ["train.depth=best", "train.best_step_tol=0.01"],
        ["train.depth=soft_best", "model.moe_experts=4", "model.moe_top_k=2"],
        ["model.core_sizes=[1,2]", "train.mix_cores=true", "train.depth=best"],
    ],
)
def test_adaptive_training_runs_and_records_the_chosen_steps(tmp_path, extra):
    import json

    from grokloop.config import run_config_from_dict
    from grokloop.train import train
    from tests.test_train import TINY, compose_dict

    _, _, d = compose_dict(
        TINY
        + [
            "model=looped",
            "model.d_model=16",
            "model.n_heads=2",
            "model.d_mlp=32",
            "model.n_steps=3",
            *extra,
        ]
    )
    train(run_config_from_dict(d), tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    shares = [[r[f"depth/chosen_step/{t}"] for t in (1, 2, 3)] for r in rows]
    assert all(abs(sum(s) - 1) < 1e-5 for s in shares)
    assert all(r["loss/train"] == r["loss/train"] for r in rows)  # finite (not NaN)


def test_mix_cores_needs_a_bank():
    from grokloop.config import run_config_from_dict
    from grokloop.train import prepare
    from tests.test_train import TINY, compose_dict

    _, _, d = compose_dict(TINY + ["train.mix_cores=true"])
    with pytest.raises(ValueError, match="core_sizes"):
        prepare(run_config_from_dict(d))


@pytest.mark.slow  # ~30 s; fast: test_selector_training_leaves_the_frozen_model_unchanged
def test_halting_cli_and_summary_on_a_trained_run(tmp_path):
    import json
    import subprocess
    import sys

    from grokloop.adaptive.halting import load_selector
    from reports.adaptive import main as summary_main

    run = tmp_path / "run"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grokloop.train",
            "experiment=khop_best",
            "train.steps=4",
            "data.valid_fraction=0.05",  # held-out facts for the selector (train_split=valid)
            "train.progress=false",
            f"out_dir={run}",
            f"data_cache={tmp_path / 'cache'}",
        ],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    r = subprocess.run(
        [sys.executable, "-m", "grokloop.halting", f"run_dir={run}", "iterations=3", "max_steps=7"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    res = json.loads((run / "halting" / "results.json").read_text())
    rules = res["splits"]["test_inferred_id"]["rules"]
    assert {
        "fixed_7",
        "kl<0.01",
        "conf>=0.9",
        "max_confidence",
        "oracle",
        "selector",
        "huginn_kl<5e-4",
        "huginn_entropy<1e-3",
        "huginn_argmax_5",
    } <= set(rules)
    assert set(rules["oracle"]) >= {f"hops_{k}" for k in range(2, 9)}
    assert "valid" not in res["splits"] and res["config"]["train_split"] == "valid"
    # the contest: rules tuned on valid, the selector scored once on test, per-fact arrays beside
    contest = res["contest"]
    assert [r["metric"] for r in contest["rows"]] == ["accuracy", "compute"]
    assert contest["tuned_on"] == "valid" and contest["split"] == "test_inferred_id"
    assert (run / "halting" / "contest.npz").is_file()
    assert "deeper_than_trained" in res["splits"]["test_inferred_id"]["abstention"]["groups"]
    selector, cfg, _ = load_selector(run)
    assert cfg.max_steps == 7 and selector.n_cores == 1
    # reuse=true evaluates the saved selector again, untouched; other options are refused
    weights = (run / "halting" / "selector.safetensors").read_bytes()
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "grokloop.halting",
            f"run_dir={run}",
            "iterations=3",
            "max_steps=7",
            "reuse=true",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert (run / "halting" / "selector.safetensors").read_bytes() == weights
    assert json.loads((run / "halting" / "results.json").read_text())["splits"] == res["splits"]
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "grokloop.halting",
            f"run_dir={run}",
            "iterations=3",
            "max_steps=6",
            "reuse=true",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert r.returncode != 0 and "max_steps: saved 7, given 6" in r.stderr
    summary_main([str(run), f"out={tmp_path / 'sum'}"])
    md = (tmp_path / "sum" / "summary.md").read_text()
    assert "| khop_best | oracle |" in md and "8 hops" in md
    rows = json.loads((tmp_path / "sum" / "summary.json").read_text())["rows"]
    assert {r.get("hops") for r in rows if r["split"] == "test_inferred_id"} >= set(range(2, 9))
    assert "Plotly" in (tmp_path / "sum" / "figures.html").read_text()[:4_000_000]
    # a second selector of the same run, side by side (tag=), and the summary reads its folder
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "grokloop.halting",
            f"run_dir={run}",
            "iterations=3",
            "max_steps=7",
            "abstain_reward=0.8",
            "tag=abstain_0.8",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    tagged = json.loads((run / "halting" / "abstain_0.8" / "results.json").read_text())
    assert tagged["config"]["abstain_reward"] == 0.8 and res == json.loads(
        (run / "halting" / "results.json").read_text()
    )  # the first one untouched
    summary_main(
        [
            str(run),
            str(run / "halting" / "abstain_0.8"),
            f"out={tmp_path / 'sum2'}",
            "names=[plain,abstaining]",
        ]
    )
    rows = json.loads((tmp_path / "sum2" / "summary.json").read_text())["rows"]
    assert {r["model"] for r in rows} == {"plain", "abstaining"}
    bad = subprocess.run(
        [sys.executable, "-m", "grokloop.halting", f"run_dir={run}", "tag=../x"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert bad.returncode != 0 and "plain folder name" in bad.stderr


def halting_runs(make_model, names_seeds, core_sizes=(1,)) -> tuple[list[dict], object]:
    """Run dicts as reports.adaptive.load_halting returns them, from evaluate_halting on a tiny
    model with an untrained selector per seed (no files)."""
    ds = tiny_composition()
    m = make_model(
        d_vocab=len(ds.vocab),
        n_ctx=ds.n_ctx,
        core_sizes=list(core_sizes),
        n_steps=2,
        injection="add",
    )
    cfg = HaltingConfig(max_steps=3)
    runs = []
    for name, seed in names_seeds:
        torch.manual_seed(seed)
        selector = Selector(m.config.d_model, len(core_sizes))
        with torch.no_grad():
            selector.net[-1].bias[ABSTAIN] += 0.3  # some abstentions
        splits = evaluate_halting(
            m, ds, selector, cfg, ["atomic_id", "test_inferred_id", "test_inferred_ood"]
        )
        runs.append(
            {
                "name": name,
                "seed": seed,
                "trained_hops": [2],
                "train_steps": 10,
                "wall_time_s": 1.0,
                "checkpoint": 10,
                "chosen_step_last_interval": {},
                "halting": {
                    "run_dir": f"runs/{name}_{seed}",
                    "checkpoint_step": 10,
                    "config": {"max_steps": 3, "train_split": "valid"},
                    "splits": splits,
                },
            }
        )
    return runs, ds


def test_summary_rows_carry_hops_rule_intervals_and_pooled_seeds(make_model, tmp_path, monkeypatch):
    import json

    from grokloop.stats import wilson
    from reports import adaptive as A

    runs, ds = halting_runs(make_model, [("m", 0), ("m", 1), ("k", 0)])
    summary = A.build(runs)
    assert {"study", "machine", "commands", "rows"} <= set(summary) and summary[
        "study"
    ] == "adaptive"
    rows = summary["rows"]
    for r in rows:
        assert {"model", "split", "rule", "seed", "acc", "lo", "hi", "n"} <= set(r), r
        assert r["lo"] <= r["acc"] <= r["hi"] and isinstance(r.get("hops", 0), int)
        assert (r["lo"], r["hi"]) == pytest.approx(wilson(round(r["acc"] * r["n"]), r["n"]))
    # One row per (run, split, hops, rule); per-hop n is the count of that hop in the split.
    per_run = [r for r in rows if r["seed"] != "pooled"]
    keys = [(r["model"], r["seed"], r["split"], r.get("hops"), r["rule"]) for r in per_run]
    assert len(keys) == len(set(keys))
    hops = torch.as_tensor(ds.hops)[torch.as_tensor(ds.splits["test_inferred_id"])]
    for k in (2, 3):
        got = {r["n"] for r in per_run if r["split"] == "test_inferred_id" and r.get("hops") == k}
        assert got == {int((hops == k).sum())}
    rules = {r["rule"] for r in per_run}
    assert {
        "huginn_kl<5e-4",
        "huginn_entropy<1e-3",
        "huginn_argmax_5",
        "selector",
        A.THRESHOLD_RULE,
        "oracle",
        "fixed_3",
    } <= rules
    # The selector and the threshold at its coverage sit side by side, per split and hop count.
    for sel in (r for r in per_run if r["rule"] == "selector"):
        thr = next(
            r
            for r in per_run
            if r["rule"] == A.THRESHOLD_RULE
            and all(r.get(f) == sel.get(f) for f in ("model", "seed", "split", "hops"))
        )
        assert thr["coverage"] <= sel["coverage"] + 1e-12 and thr["exit"] == "huginn_kl<5e-4"
        assert "coverage_at_90" in sel and "coverage_at_90" in thr
        assert sel["acc"] == pytest.approx(sel["coverage"] * (sel["selective_acc"] or 0))
    # Seeds pooled for m (two seeds), not for k (one).
    pooled = [r for r in rows if r["seed"] == "pooled"]
    assert pooled and {r["model"] for r in pooled} == {"m"} and all(r["seeds"] == 2 for r in pooled)
    p = next(
        r
        for r in pooled
        if r["split"] == "test_inferred_id" and r.get("hops") == 3 and r["rule"] == "selector"
    )
    seeds = [
        r
        for r in per_run
        if r["model"] == "m"
        and r["split"] == "test_inferred_id"
        and r.get("hops") == 3
        and r["rule"] == "selector"
    ]
    assert p["n"] == sum(r["n"] for r in seeds)
    assert p["acc"] == pytest.approx(sum(r["acc"] * r["n"] for r in seeds) / p["n"])
    assert p["mean_steps"] == pytest.approx(sum(r["mean_steps"] for r in seeds) / 2)
    # The tables and figures render from the rows.
    md = A.markdown(summary)
    assert "| m | huginn_kl<5e-4 |" in md and "| k | oracle |" in md and "3 hops" in md
    assert "deeper_than_trained" in md and "python -m grokloop.halting run_dir=runs/m_0" in md
    assert "Inferred hop counts in training: 2." in md
    # Abstention at 90%: per model, test split and group, a value per seed from each curve.
    section = md[md.index("## Abstention at 90%") :]
    entry = next(
        e
        for e in summary["abstention"]
        if e["model"] == "m"
        and e["seed"] == 0
        and e["split"] == "test_inferred_id"
        and e["facts"] == "deeper_than_trained"
    )
    assert "selector_curve" in entry and "| m | test_inferred_id | deeper_than_trained |" in section
    assert "| m | atomic_id |" not in section and "| k | test_inferred_ood | all |" in section
    # the gain column: selector minus threshold with its interval, where one was measured
    assert A.gain_cell(entry) == "-"
    entry = entry | {
        "selector": entry["selector"]
        | {"coverage_at_target": 0.6, "coverage_gain_interval": [0.01, 0.09]},
        "threshold_coverage_at_target": 0.55,
    }
    assert A.gain_cell(entry) == "+0.050 [+0.010, +0.090]"
    page = A.figures_html(summary)
    assert 'data-figures="2"' in page and "deeper than trained" in page
    # The command line: a name per run, the study's commands; one model and seed twice is refused.
    monkeypatch.setattr(A, "load_halting", lambda d: dict(runs[int(d)]))
    A.main(["0", "1", "2", f"out={tmp_path}", "names=[a,a,b]", "commands=[python -m x]"])
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written["commands"] == ["python -m x"]
    assert {r["model"] for r in written["rows"]} == {"a", "b"}
    with pytest.raises(SystemExit, match="names="):
        A.main(["0", "0", f"out={tmp_path}"])


def test_summary_of_a_bank_has_schedule_rows_a_blocks_table_and_figure(make_model):
    from reports import adaptive as A

    runs, _ = halting_runs(make_model, [("b", 0), ("b", 1)], core_sizes=(1, 2))
    summary = A.build(runs)
    blocks = [r for r in summary["rows"] if r.get("schedule")]
    assert {r["schedule"] for r in blocks} == {"core_0", "core_1", "cycle", "random"}
    assert {r["split"] for r in blocks} == {"test_inferred_id", "test_inferred_ood"}
    keys = [(r["seed"], r["split"], r.get("hops"), r["rule"], r["schedule"]) for r in blocks]
    assert len(keys) == len(set(keys))  # pooled apart by schedule, too
    one = next(
        r
        for r in blocks
        if r["seed"] == "pooled"
        and r["schedule"] == "core_1"
        and r["rule"] == "fixed_2"
        and "hops" not in r
        and r["split"] == "test_inferred_id"
    )
    assert one["mean_layers"] == 4 and one["seeds"] == 2
    # the hop table still reads the default schedule's rows only
    assert all(
        "schedule" not in r
        for r in A.shown_rows(summary["rows"])
        if r["rule"] == "fixed_2" and r["split"] == "atomic_id"
    )
    md = A.markdown(summary)
    assert "| b | core_1 | huginn_kl<5e-4 |" in md and "| b | selector's choice | selector |" in md
    assert 'data-figures="3"' in A.figures_html(summary)


@pytest.mark.parametrize("published", ["adaptive_2026-11-23", "adaptive_two_hop_2026-11-23"])
def test_adaptive_report_renders_the_published_summaries(published):
    import json
    from pathlib import Path

    from reports.adaptive import figures_html, markdown

    d = Path(__file__).resolve().parent.parent / "docs" / "archive" / published
    summary = json.loads((d / "summary.json").read_text())
    assert markdown(summary) == (d / "summary.md").read_text()  # unchanged by the move
    page = figures_html(summary)
    assert 'data-figures="1"' in page and "2-hop OOD" in page and "Plotly" in page


# --- the committed summary on disk: rows shortened, curves in summary_curves.json.gz ------------
PUBLISHED = Path(__file__).resolve().parent.parent / "docs" / "results" / "adaptive"


def test_shortened_floats_print_the_same_in_every_format():
    from reports import adaptive as A

    for x in (0.00049999999999, 0.9994999999, 0.12345678901234, 1 / 3, 2.5e-7, 17.04999999):
        y = A.shorten(x)
        assert all(format(y, f) == format(x, f) for f in A.PRINTED), x
    assert A.shorten(1 / 3) == 0.333333 and A.shorten([0.5, 1, "a"]) == [0.5, 1, "a"]
    # a fixed point: 0.19255050 needs 8 digits, and its 8-digit form then prints as 0.192551
    x = 0.1925504999
    assert A.shorten(A.shorten(x)) == A.shorten(x)
    assert all(format(A.shorten(x), f) == format(x, f) for f in A.PRINTED)


@pytest.fixture(scope="module")
def published():
    from reports import adaptive as A

    return A.load_summary(PUBLISHED)


def test_the_published_summary_reads_back_whole_and_writes_the_same_bytes(published, tmp_path):
    from reports import adaptive as A

    assert A.markdown(published) == (PUBLISHED / "summary.md").read_text()
    entries = published["abstention"]
    assert entries and all("curve" in e for e in entries)
    assert any("selector_curve" in e for e in entries)
    assert A.write_summary(tmp_path, published) == published  # committed: already shortened
    for name in ("summary.json", A.CURVES_FILE, A.FRONTIER_FILE):  # the writer's: a fixed point
        assert (tmp_path / name).read_bytes() == (PUBLISHED / name).read_bytes(), name


def test_a_curves_file_of_other_entries_is_refused(published, tmp_path):
    import json

    from reports import adaptive as A

    small = published | {"rows": published["rows"][:3], "abstention": published["abstention"][:2]}
    A.write_summary(tmp_path, small)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert all("curve" not in e for e in summary["abstention"])
    (tmp_path / "summary.json").write_text(
        json.dumps(summary | {"abstention": [summary["abstention"][1], summary["abstention"][0]]})
    )
    with pytest.raises(ValueError, match="does not match"):
        A.load_summary(tmp_path)


@pytest.mark.parametrize(
    "alias, module, command",
    [
        ("grokloop.halting", "grokloop.adaptive.halting", "python -m grokloop.halting run_dir=RUN"),
    ],
)
def test_old_entry_points_are_aliases_with_the_same_help(alias, module, command, capsys):
    import importlib

    helps = []
    for name in (alias, module):
        with pytest.raises(SystemExit) as e:
            importlib.import_module(name).main(["--help"])
        assert e.value.code == 0, name
        helps.append(capsys.readouterr().out)
    assert command in helps[0] and helps[0] == helps[1]


def test_halting_cli_rejects_unknown_options(tmp_path):
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-m", "grokloop.halting", f"run_dir={tmp_path}", "max_step=3"],
        capture_output=True,
        text=True,
    )
    assert r.returncode != 0 and "max_step" in r.stderr


def test_moe_expert_biases_are_not_weight_decayed(make_model):
    from grokloop.config import OptimConfig
    from grokloop.optim import make_optimizer

    m = make_model(n_core=1, n_steps=2, moe_experts=4, moe_top_k=2)
    decay, no_decay = make_optimizer(m, OptimConfig(weight_decay=1.0)).param_groups
    b_in = [p for n, p in m.named_parameters() if n.endswith(".b_in")]
    assert b_in and all(any(p is q for q in no_decay["params"]) for p in b_in)
    assert decay["weight_decay"] == 1.0 and no_decay["weight_decay"] == 0.0
