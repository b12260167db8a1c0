"""Losses, optimiser and schedules against their formulas, computed by hand on small tensors."""

import math

import pytest
import torch

from grokloop.config import ModelConfig, OptimConfig
from grokloop.losses import cross_entropy, stablemax_log_probs
from grokloop.model import LoopedTransformer
from grokloop.optim import grokfast_ema, lr_at, make_optimizer, perpendicular_grad
from grokloop.schedule import log_schedule


# --- StableMax (Prieto et al. 2025, arXiv 2501.04697) ------------------------------------------
def test_stablemax_matches_the_formula_by_hand():
    logits = torch.tensor([[2.0, 0.0, -1.0, -3.0], [0.5, -0.5, 1.5, 0.0]])
    # s(x) = x + 1 for x >= 0, 1 / (1 - x) for x < 0
    s = [[3.0, 1.0, 1 / 2, 1 / 4], [1.5, 1 / 1.5, 2.5, 1.0]]
    want = torch.tensor([[math.log(v / sum(row)) for v in row] for row in s])
    assert torch.allclose(stablemax_log_probs(logits), want, atol=1e-6)
    targets = torch.tensor([0, 2])
    loss = cross_entropy(logits, targets, kind="stablemax", reduction="none")
    assert torch.allclose(
        loss, torch.tensor([-math.log(3 / 4.75), -math.log(2.5 / 5.6666667)]), atol=1e-6
    )
    # It is not softmax: the same logits give a different loss.
    assert not torch.allclose(loss, cross_entropy(logits, targets, reduction="none"), atol=1e-3)


def test_stablemax_is_finite_for_huge_logits_and_its_gradient_too():
    logits = torch.tensor([[1e6, -1e6, 0.0]], requires_grad=True)
    loss = cross_entropy(logits, torch.tensor([1]), kind="stablemax")
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    # Softmax collapse: at a moderate margin the float32 softmax loss is exactly 0 (no gradient
    # left), while StableMax's polynomial tails keep it positive: 1 - 21 / 22.5.
    confident, target = torch.tensor([[20.0, 0.0, -1.0]]), torch.tensor([0])
    assert cross_entropy(confident, target).item() == 0.0
    assert cross_entropy(confident, target, kind="stablemax").item() == pytest.approx(
        -math.log(21 / 22.5), rel=1e-6
    )


@pytest.mark.parametrize("kind", ["softmax", "stablemax"])
def test_float64_loss_is_computed_in_float64(kind):
    logits = torch.tensor([[30.0, 0.0, -2.0]])
    targets = torch.tensor([0])
    loss64 = cross_entropy(logits, targets, kind=kind, float64=True)
    assert loss64.dtype == torch.float64
    by_hand = (
        -torch.log(torch.tensor([31.0 / (31.0 + 1.0 + 1 / 3)], dtype=torch.float64))
        if kind == "stablemax"
        else torch.log1p(
            torch.exp(torch.tensor(-30.0, dtype=torch.float64))
            + torch.exp(torch.tensor(-32.0, dtype=torch.float64))
        )
    )
    assert loss64.item() == pytest.approx(by_hand.item(), rel=1e-12)
    if kind == "softmax":  # float32 rounds this loss to exactly 0: the collapse float64 avoids
        assert cross_entropy(logits, targets).item() == 0.0 and loss64.item() > 0


# --- Grokfast EMA (Lee et al. 2024, arXiv 2405.20233, Algorithm 2) ------------------------------
def test_grokfast_ema_after_two_calls():
    alpha, lamb = 0.9, 2.0
    p = torch.nn.Parameter(torch.zeros(3))
    q = torch.nn.Parameter(torch.zeros(2))
    g1, g2 = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([0.0, 4.0, 1.0])
    ema = {}
    p.grad, q.grad = g1.clone(), None
    grokfast_ema([p, q], ema, alpha, lamb)
    assert torch.allclose(p.grad, g1 + lamb * g1)  # the EMA starts at the first gradient
    assert q.grad is None and 1 not in ema
    p.grad = g2.clone()
    grokfast_ema([p, q], ema, alpha, lamb)
    h = alpha * g1 + (1 - alpha) * g2
    assert torch.allclose(ema[0], h)
    assert torch.allclose(p.grad, g2 + lamb * h)


# --- Warm-up -------------------------------------------------------------------------------------
def test_warmup_is_linear_then_constant():
    cfg = OptimConfig(lr=1e-3, warmup_steps=4)
    # step is the 0-based update index: the first update uses lr / warmup_steps
    assert [lr_at(s, cfg) for s in range(7)] == pytest.approx(
        [2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3, 1e-3]
    )
    assert lr_at(0, OptimConfig(lr=0.5, warmup_steps=0)) == 0.5
    assert lr_at(10_000, cfg) == 1e-3


# --- Log-spaced schedule -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "total,min_gap,max_gap,n",
    [(10_000, 10, 500, 20), (1_000, 1, 50, 10), (97, 5, 30, 20), (7, 10, 100, 20)],
)
def test_log_schedule_is_increasing_unique_and_ends_at_the_last_step(total, min_gap, max_gap, n):
    steps = log_schedule(total, min_gap, max_gap, n)
    assert steps == sorted(set(steps)) and steps[-1] == total and steps[0] >= 1
    gaps = [b - a for a, b in zip(steps, steps[1:])]
    assert all(min_gap <= g <= max_gap for g in gaps[:-1])
    assert not gaps or gaps[-1] <= max_gap
    if total >= 10 * max_gap:  # the late part is at the cap, the early part at the floor
        assert gaps[0] == min_gap and max(gaps) == max_gap


def test_log_schedule_is_about_n_per_decade_between_the_clamps():
    steps = log_schedule(10**6, 1, 10**6, 20)
    per_decade = [sum(10**d <= s < 10 ** (d + 1) for s in steps) for d in (3, 4, 5)]
    assert all(18 <= c <= 22 for c in per_decade), per_decade


def test_log_schedule_rejects_a_zero_gap():
    with pytest.raises(ValueError, match="min_gap"):
        log_schedule(100, 0, 10)


# --- Weight-decay groups -------------------------------------------------------------------------
def _model():
    torch.manual_seed(0)
    return LoopedTransformer(ModelConfig(d_vocab=11, n_ctx=4, d_model=16, n_heads=2, d_mlp=32))


def _groups(**optim):
    m = _model()
    decay, no_decay = make_optimizer(m, OptimConfig(weight_decay=0.7, **optim)).param_groups
    ids = {id(p) for p in decay["params"]}
    names = dict(m.named_parameters())
    return {n for n, p in names.items() if id(p) in ids}, set(names), decay, no_decay


def test_weight_decay_on_matrices_and_embeddings_not_on_norms_and_biases():
    decayed, names, decay, no_decay = _groups()
    assert decay["weight_decay"] == 0.7 and no_decay["weight_decay"] == 0.0
    assert {"W_E", "W_pos"} <= decayed  # embeddings are matrices: decayed
    shapes = {n: p.dim() for n, p in _model().named_parameters()}
    assert decayed == {n for n, d in shapes.items() if d >= 2}  # every matrix, nothing else
    assert {"ln_final.w", "ln_final.b", "b_U"} <= names - decayed  # LayerNorm gain/bias, bias
    assert any(n.endswith(".bias") for n in names - decayed)  # linear layers' biases


def test_decay_norms_and_biases_decays_everything():
    decayed, names, _, no_decay = _groups(decay_norms_and_biases=True)
    assert decayed == names and no_decay["params"] == []


# --- Perpendicular gradient (Prieto et al. 2025) ------------------------------------------------
def test_perpendicular_gradient_is_orthogonal_keeps_norm_and_skips_vectors():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(5, 4))
    b = torch.nn.Parameter(torch.randn(4))
    g = torch.randn(5, 4) + 3 * w.detach()  # a large component along the weights
    gb = torch.randn(4)
    w.grad, b.grad = g.clone(), gb.clone()
    perpendicular_grad([w, b])
    assert abs((w.grad * w).sum().item()) < 1e-5 * g.norm().item() * w.norm().item()
    assert torch.isclose(w.grad.norm(), g.norm())
    # by hand: remove the projection on w, rescale to the original norm
    wf, gf = w.detach().flatten(), g.flatten()
    perp = gf - (gf @ wf) / (wf @ wf) * wf
    assert torch.allclose(w.grad.flatten(), perp * gf.norm() / perp.norm(), atol=1e-5)
    assert torch.equal(b.grad, gb)  # 1-D parameters are left alone
