"""Adaptive thinking: best-step choice, gradient through the chosen path only, MoE routing, the
halting selector's policy gradient, and a frozen model under selector training."""
import pytest
import torch

from grokloop.adaptive.depth import choose_best_step, depth_loss
from grokloop.adaptive.halting import evaluate_halting
from grokloop.adaptive.rules import first_true, rule_exits
from grokloop.adaptive.selector import (ABSTAIN, STOP, HaltingConfig, Selector, reinforce_loss,
                                        rollout, train_selector)
from grokloop.losses import cross_entropy

TOKENS = torch.randint(0, 23, (8, 5), generator=torch.Generator().manual_seed(1))
POS = torch.full((8,), 4)
TARGETS = torch.randint(0, 23, (8,), generator=torch.Generator().manual_seed(2))


def test_best_step_picks_lowest_loss_and_fewest_steps_on_ties():
    losses = torch.tensor([[0.9, 0.2, 0.5, 0.3],
                           [0.4, 0.2, 0.15, 0.3],
                           [0.4, 0.2, 0.1, 0.30001]])   # [steps, batch]
    # Lowest loss; exact ties (columns 0, 1 and 3) go to the fewest steps.
    assert choose_best_step(losses).tolist() == [1, 0, 2, 0]
    # Within a tolerance, near-ties count as ties: column 2's 0.15 is within 0.1 of 0.1.
    assert choose_best_step(losses, tol=0.1).tolist() == [1, 0, 1, 0]


def test_best_step_gradient_flows_only_through_the_chosen_path(make_model):
    m = make_model(n_core=1, n_coda=1, n_steps=4, injection="add").train()
    tokens, pos, target = TOKENS[:1], POS[:1], TARGETS[:1]
    with torch.no_grad():
        per_step = cross_entropy(m.readout_steps(tokens, positions=pos), target.expand(4, -1),
                                 reduction="none")
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
    logits = m.readout_steps(TOKENS, 3, positions=POS)                     # [steps, batch, vocab]
    per_step = torch.stack([torch.nn.functional.cross_entropy(logits[t], TARGETS, reduction="none")
                            for t in range(3)])                             # [steps, batch]
    w = torch.exp(-per_step.detach() / tau)
    w = w / w.sum(0)                                                        # by hand, per example
    assert torch.allclose(share, w.mean(1), atol=1e-6)
    assert torch.allclose(loss, (w * per_step).sum(0).mean(), atol=1e-6)
    assert not torch.allclose(w, torch.full_like(w, 1 / 3), atol=1e-3)      # not trivially uniform
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
        chosen = cache[f"blocks.{v}.mlp.hook_experts"]                    # [batch, pos, k]
        assert chosen.shape == (8, 5, 2)
        assert (chosen[..., 0] != chosen[..., 1]).all() and chosen.max() < 4
    # The MLP output equals the gate-weighted sum over the chosen experts alone.
    mlp = m.cores[0][0].mlp
    x = torch.randn(3, 32)
    gate = torch.sigmoid(x @ mlp.W_gate)
    w, idx = gate.topk(2)
    manual = torch.stack([sum(w[i, j] * (torch.relu(x[i] @ mlp.W_in[e] + mlp.b_in[e]) @ mlp.W_out[e])
                              for j, e in enumerate(idx[i].tolist())) for i in range(3)]) + mlp.b_out
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
    logits = torch.zeros(3, requires_grad=True)       # a one-state policy over 3 actions
    opt = torch.optim.SGD([logits], lr=0.5)
    for _ in range(50):
        dist = torch.distributions.Categorical(logits=logits.expand(256, 3))
        action = dist.sample()
        reward = (action == 2).float()                 # only action 2 pays
        loss = reinforce_loss(dist.log_prob(action), reward, dist.entropy(), 0.0)
        opt.zero_grad(); loss.backward(); opt.step()
    assert logits.softmax(0)[2] > 0.9


def test_selector_training_leaves_the_frozen_model_unchanged(make_model, tmp_path):
    from datagen import build_dataset
    from datagen.config import ModularConfig

    ds = build_dataset(ModularConfig(p=7, train_fraction=0.5))
    m = make_model(d_vocab=len(ds.vocab), n_ctx=ds.n_ctx, n_core=1, n_steps=2, injection="add")
    before = {k: v.clone() for k, v in m.state_dict().items()}
    cfg = HaltingConfig(max_steps=3, iterations=5, batch_size=16)
    selector, curve = train_selector(m, ds, cfg)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert len(curve) >= 1 and all(p.grad is not None for p in selector.parameters())
    res = evaluate_halting(m, ds, selector, cfg, ["test"])
    rules = res["test"]["rules"]
    # By hand: correctness of the readout after each of 1..3 steps, per example.
    idx = torch.as_tensor(ds.splits["test"])
    with torch.no_grad():
        logits = m.readout_steps(torch.as_tensor(ds.inputs)[idx], 3,
                                 positions=torch.as_tensor(ds.answer_pos)[idx])   # [3, n, vocab]
    correct = logits.argmax(-1) == torch.as_tensor(ds.answers)[idx]              # [3, n]
    for t in (1, 2, 3):
        assert rules[f"fixed_{t}"]["acc"] == pytest.approx(correct[t - 1].float().mean().item())
    assert rules["oracle"]["acc"] == pytest.approx(correct.any(0).float().mean().item())
    first = torch.where(correct.any(0), correct.float().argmax(0), torch.tensor(2)) + 1
    assert rules["oracle"]["mean_steps"] == pytest.approx(first.float().mean().item())
    assert 1 <= rules["selector"]["mean_steps"] <= 3


def test_rollout_stops_at_max_steps_and_exit_rules_pick_first_hits(make_model):
    m = make_model(n_core=1, n_steps=2, injection="add")
    selector = Selector(32, 1)
    with torch.no_grad():                    # continue while allowed, then stop
        selector.net[-1].bias.copy_(torch.tensor([0.0, -50.0, 50.0]))
    out = rollout(m, selector, TOKENS, POS, TARGETS, HaltingConfig(max_steps=4), greedy=True)
    assert out["steps"].tolist() == [4] * 8 and not out["abstained"].any()
    hits = torch.tensor([[0, 0, 1], [1, 0, 1], [1, 0, 0]], dtype=torch.bool)  # [T, batch]
    assert first_true(hits).tolist() == [1, 2, 0]
    traj = {"correct": hits, "top": torch.rand(3, 3), "kl": torch.rand(3, 3), "cost": torch.ones(3, 3)}
    assert rule_exits(traj, 2)["oracle"].tolist() == [1, 2, 0]
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


@pytest.mark.parametrize("extra", [
    ["train.depth=best", "train.best_step_tol=0.01"],
    ["train.depth=soft_best", "model.moe_experts=4", "model.moe_top_k=2"],
    ["model.core_sizes=[1,2]", "train.mix_cores=true", "train.depth=best"],
])
def test_adaptive_training_runs_and_records_the_chosen_steps(tmp_path, extra):
    import json

    from grokloop.config import run_config_from_dict
    from grokloop.train import train
    from tests.test_train import TINY, compose_dict

    _, _, d = compose_dict(TINY + ["model=looped", "model.d_model=16", "model.n_heads=2",
                                   "model.d_mlp=32", "model.n_steps=3", *extra])
    train(run_config_from_dict(d), tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    shares = [[r[f"depth/chosen_step/{t}"] for t in (1, 2, 3)] for r in rows]
    assert all(abs(sum(s) - 1) < 1e-5 for s in shares)
    assert all(r["loss/train"] == r["loss/train"] for r in rows)   # finite (not NaN)


def test_mix_cores_needs_a_bank():
    from grokloop.config import run_config_from_dict
    from grokloop.train import prepare
    from tests.test_train import TINY, compose_dict

    _, _, d = compose_dict(TINY + ["train.mix_cores=true"])
    with pytest.raises(ValueError, match="core_sizes"):
        prepare(run_config_from_dict(d))


@pytest.mark.slow  # ~18 s; fast: test_selector_training_leaves_the_frozen_model_unchanged
def test_halting_cli_and_summary_on_a_trained_run(tmp_path):
    import json
    import subprocess
    import sys

    from grokloop.adaptive.halting import load_selector
    from grokloop.adaptive_summary import main as summary_main

    run = tmp_path / "run"
    subprocess.run([sys.executable, "-m", "grokloop.train", "experiment=khop_best", "train.steps=4",
                    "train.progress=false", f"out_dir={run}", f"data_cache={tmp_path / 'cache'}"],
                   check=True, capture_output=True, cwd=tmp_path)
    r = subprocess.run([sys.executable, "-m", "grokloop.halting", f"run_dir={run}", "iterations=3",
                        "max_steps=7"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    res = json.loads((run / "halting" / "results.json").read_text())
    rules = res["splits"]["test_inferred_id"]["rules"]
    assert {"fixed_7", "kl<0.01", "conf>=0.9", "max_confidence", "oracle", "selector"} <= set(rules)
    assert set(rules["oracle"]) >= {f"hops_{k}" for k in range(2, 9)}
    selector, cfg = load_selector(run)
    assert cfg.max_steps == 7 and selector.n_cores == 1
    summary_main([str(run), f"out={tmp_path / 'sum'}"])
    md = (tmp_path / "sum" / "summary.md").read_text()
    assert "| khop_best | oracle |" in md and "8 hops" in md
    assert "Plotly" in (tmp_path / "sum" / "figures.html").read_text()[:4_000_000]


@pytest.mark.parametrize("published", ["adaptive_2026-11-23", "adaptive_two_hop_2026-11-23"])
def test_adaptive_report_renders_the_published_summaries(published):
    import json
    from pathlib import Path

    from reports.adaptive import figures_html, markdown

    d = Path(__file__).resolve().parent.parent / "docs" / "archive" / published
    summary = json.loads((d / "summary.json").read_text())
    assert markdown(summary) == (d / "summary.md").read_text()   # unchanged by the move
    page = figures_html(summary)
    assert 'data-figures="1"' in page and "2-hop OOD" in page and "Plotly" in page


@pytest.mark.parametrize("alias, module, command", [
    ("grokloop.halting", "grokloop.adaptive.halting", "python -m grokloop.halting run_dir=RUN"),
    ("grokloop.adaptive_summary", "reports.adaptive", "python -m grokloop.adaptive_summary RUN"),
])
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

    r = subprocess.run([sys.executable, "-m", "grokloop.halting", f"run_dir={tmp_path}", "max_step=3"],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "max_step" in r.stderr


def test_moe_expert_biases_are_not_weight_decayed(make_model):
    from grokloop.config import OptimConfig
    from grokloop.optim import make_optimizer

    m = make_model(n_core=1, n_steps=2, moe_experts=4, moe_top_k=2)
    decay, no_decay = make_optimizer(m, OptimConfig(weight_decay=1.0)).param_groups
    b_in = [p for n, p in m.named_parameters() if n.endswith(".b_in")]
    assert b_in and all(any(p is q for q in no_decay["params"]) for p in b_in)
    assert decay["weight_decay"] == 1.0 and no_decay["weight_decay"] == 0.0
