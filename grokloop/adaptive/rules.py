"""The simple exit rules, read from one trajectory of the frozen model's default schedule.

`trajectory` runs the schedule (cycled) for T steps and records, per step and example, whether
the readout is right, its argmax, top probability and entropy, the KL to the previous step's
readout and the compute spent; `rule_exits` turns that into an exit step per rule: fixed depth
t, exit when KL(p_t || p_t-1) < threshold, exit when the top probability >= threshold, the most
confident of all T steps, Huginn's three exits (below), and the oracle (the fewest steps that
answer right, the only rule that needs the answer). `summarize_exits` scores one rule; the
abstention functions (`selective_curve`, `coverage_curve`, `coverage_at_accuracy`,
`threshold_at_coverage`) score answering only above a confidence threshold. No training here:
these run inside `python -m grokloop.halting run_dir=RUN` (grokloop/adaptive/halting.py).

Huginn (Geiping et al. 2025, arXiv 2502.05171; `generate_with_adaptive_compute` in
seal-rg/recurrent-pretraining, recpre/raven_modeling_minimal.py) exits at its default thresholds:
- `huginn_kl<5e-4`: KL between successive steps' readouts < 5e-4. Huginn computes KL(p_t-1 || p_t)
  (F.kl_div(log p_t, log p_t-1, log_target=True)); this one column is KL(p_t || p_t-1), the
  same to second order in the change, so only differences near the threshold can move an exit.
- `huginn_entropy<1e-3`: |H_t - H_t-1| < 1e-3 (entropy in nats).
- `huginn_argmax_5`: the argmax unchanged for 5 steps, counted as Huginn counts: its counter
  rises by one at each step whose argmax equals the previous step's and resets otherwise, and
  exits when it reaches 5, so the argmax of step t equals that of the 5 steps before it (six
  equal readouts; the first possible exit is step 6).
None can exit at step 1 (no previous readout; Huginn compares step 1 with a uniform distribution
or an entropy of 100, which never passes); without an exit a rule answers at step T.
"""

from __future__ import annotations

import contextlib
import math

import torch

KL_THRESHOLDS = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0]
CONFIDENCE_THRESHOLDS = [0.5, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999]
HUGINN_KL, HUGINN_ENTROPY, HUGINN_ARGMAX = 5e-4, 1e-3, 5  # Huginn's default thresholds
HUGINN_RULES = ["huginn_kl<5e-4", "huginn_entropy<1e-3", "huginn_argmax_5"]
# Abstention: the thresholds of the stored coverage curves (figures), the exit whose top
# probability the confidence threshold reads, and the selective accuracy the target is set at.
COVERAGE_THRESHOLDS = [i / 20 for i in range(19)] + [
    0.9,
    0.92,
    0.94,
    0.96,
    0.97,
    0.98,
    0.99,
    0.995,
    0.999,
    0.9999,
]
ABSTAIN_EXIT = "huginn_kl<5e-4"
TARGET_SELECTIVE_ACC = 0.9


def core_layers(model) -> list[int]:
    """Layers in each core of the model's bank (the compute of one step of that core)."""
    return [len(core) for core in model.cores]


def per_hop(hops: torch.Tensor, **columns: torch.Tensor) -> dict:
    """{'hops_K': {'n': examples with K hops, name: mean of column over them}} for every K."""
    return {
        f"hops_{k}": {"n": int((hops == k).sum())}
        | {name: col[hops == k].float().mean().item() for name, col in columns.items()}
        for k in hops.unique().tolist()
    }


def readout_stats(log_probs: torch.Tensor, prev_log_probs: torch.Tensor | None) -> dict:
    """Of one readout [batch, vocab] (log-probabilities): entropy (nats), top probability and
    KL(p || p_prev) to the previous readout (None without one). The one definition of each,
    shared by the exit rules and the selector's features."""
    p = log_probs.exp()
    return {
        "entropy": -(p * log_probs).sum(-1),
        "top": p.max(-1).values,
        "kl": None if prev_log_probs is None else (p * (log_probs - prev_log_probs)).sum(-1),
    }


def retrieval_margin(scores: torch.Tensor) -> torch.Tensor:
    """A memory read's [batch, pos, k] top-k scores -> [batch, pos]: how far the best slot
    stands above the next (the best score itself when k = 1). A query whose fact is in the bank
    matches its slot exactly; one whose fact is missing matches several slots in part, so a
    small margin says "I do not know this fact", which the answer's confidence often does not
    (a missing fact is answered with the nearest slot's tail; README, Adaptive thinking)."""
    top = scores.topk(min(2, scores.shape[-1]), dim=-1).values
    return top[..., 0] - top[..., 1] if top.shape[-1] > 1 else top[..., 0]


@contextlib.contextmanager
def memory_reads(model, n_steps: int):
    """Within it, each step run with hooked=True leaves its memory's top-k scores [batch, pos,
    k] in the yielded dict's "scores": one hook for a whole episode of up to n_steps steps."""
    got = {}
    model.ensure_step_hooks(n_steps)
    with model.hooks(
        fwd_hooks=[
            (lambda name: name.endswith("memory.hook_scores"), lambda x, hook: got.update(scores=x))
        ]
    ):
        yield got


@contextlib.contextmanager
def scheduled(model, schedule: list[int]):
    """Within it the model runs `schedule` (cycled) by default; its own is restored after."""
    saved = list(model.schedule)
    model.set_schedule(schedule)
    try:
        yield model
    finally:
        model.set_schedule(saved)


@torch.no_grad()
def trajectory(
    model, tokens, positions, answers, max_steps: int, margins: bool = False
) -> dict[str, torch.Tensor]:
    """Per step t = 1..T of the model's schedule (cycled): correct, argmax, top probability,
    entropy, KL to t-1 (inf at t = 1) and layers run so far. Each tensor is [T, batch].
    `margins` (a model with a fact memory): also "margin" [T, batch, pos], the memory's
    `retrieval_margin` at every input position."""
    e, state = model.enter_loop(tokens)
    layers = core_layers(model)
    cols = {
        k: []
        for k in ("correct", "argmax", "top", "entropy", "kl", "cost")
        + (("margin",) if margins else ())
    }
    prev, total = None, 0
    with memory_reads(model, max_steps) if margins else contextlib.nullcontext({}) as got:
        for t in range(max_steps):
            core = model.schedule[t % len(model.schedule)]
            state = model.step(state, e, t, core, hooked=margins)
            total += layers[core]
            logp = model.read(state, positions).float().log_softmax(-1)
            stats = readout_stats(logp, prev)
            cols["argmax"].append(logp.argmax(-1))
            cols["correct"].append(cols["argmax"][-1] == answers)
            cols["top"].append(stats["top"])
            cols["entropy"].append(stats["entropy"])
            cols["kl"].append(
                torch.full_like(stats["top"], math.inf) if prev is None else stats["kl"]
            )
            cols["cost"].append(torch.full_like(stats["top"], total / layers[model.schedule[0]]))
            if margins:
                cols["margin"].append(retrieval_margin(got["scores"]).float())
            prev = logp
    return {k: torch.stack(v) for k, v in cols.items()}


def first_true(mask: torch.Tensor) -> torch.Tensor:
    """[T, batch] -> index of the first True per column, or T-1 where there is none."""
    T = len(mask)
    hit = mask.clone()
    hit[-1] = True
    return hit.float().argmax(0).clamp(max=T - 1)


def entropy_change(entropy: torch.Tensor) -> torch.Tensor:
    """[T, batch] -> |H_t - H_t-1|, inf at t = 1."""
    return torch.cat([torch.full_like(entropy[:1], math.inf), (entropy[1:] - entropy[:-1]).abs()])


def argmax_stable(argmax: torch.Tensor, n: int) -> torch.Tensor:
    """[T, batch] -> True at step t when the argmax has equalled the previous step's at each of
    the last n steps (Huginn's counter >= n: steps t-n..t share one argmax)."""
    run, out = torch.zeros_like(argmax[0]), [torch.zeros_like(argmax[0], dtype=torch.bool)]
    for t in range(1, len(argmax)):
        run = torch.where(argmax[t] == argmax[t - 1], run + 1, torch.zeros_like(run))
        out.append(run >= n)
    return torch.stack(out)


def rule_exits(traj: dict[str, torch.Tensor], n_steps_trained: int) -> dict[str, torch.Tensor]:
    """Exit step index [batch] for each simple rule, keyed 'fixed_T', 'kl<thr', 'conf>=thr',
    the Huginn rules (HUGINN_RULES), 'max_confidence', 'oracle'."""
    T, B = traj["correct"].shape
    exits = {f"fixed_{t}": torch.full((B,), t - 1, dtype=torch.long) for t in range(1, T + 1)}
    exits["trained_depth"] = exits[f"fixed_{min(n_steps_trained, T)}"]
    for thr in KL_THRESHOLDS:
        exits[f"kl<{thr:g}"] = first_true(traj["kl"] < thr)
    for thr in CONFIDENCE_THRESHOLDS:
        exits[f"conf>={thr:g}"] = first_true(traj["top"] >= thr)
    kl_rule, entropy_rule, argmax_rule = HUGINN_RULES
    exits[kl_rule] = first_true(traj["kl"] < HUGINN_KL)
    exits[entropy_rule] = first_true(entropy_change(traj["entropy"]) < HUGINN_ENTROPY)
    exits[argmax_rule] = first_true(argmax_stable(traj["argmax"], HUGINN_ARGMAX))
    exits["max_confidence"] = traj["top"].argmax(0)
    exits["oracle"] = first_true(traj["correct"])
    return exits


def at_exit(traj, exit_step) -> tuple[torch.Tensor, torch.Tensor]:
    """(top probability, correct) of each example at its exit step."""
    cols = torch.arange(exit_step.shape[0])
    return traj["top"][exit_step, cols], traj["correct"][exit_step, cols]


def summarize_exits(traj, exit_step, hops, cost_all_steps: bool = False) -> dict:
    """Accuracy and compute of one rule: overall and per hop count (each with its n)."""
    cols = torch.arange(exit_step.shape[0])
    right = at_exit(traj, exit_step)[1].float()
    # A rule that must see every step before choosing (max_confidence) pays for all of them.
    steps = (
        torch.full_like(right, len(traj["correct"])) if cost_all_steps else (exit_step + 1).float()
    )
    cost = traj["cost"][-1] if cost_all_steps else traj["cost"][exit_step, cols]
    return {
        "acc": right.mean().item(),
        "n": len(right),
        "coverage": 1.0,
        "mean_steps": steps.mean().item(),
        "mean_cost": cost.float().mean().item(),
        **per_hop(hops, acc=right, mean_steps=steps),
    }


# --- abstention: answer only where the top probability reaches a threshold ------------------
def selective_point(correct: torch.Tensor, answered: torch.Tensor) -> dict:
    """{coverage: share answered, selective_acc: accuracy over the answered (None if none)}."""
    return {
        "coverage": answered.float().mean().item() if len(answered) else 0.0,
        "selective_acc": correct[answered].float().mean().item() if answered.any() else None,
    }


def selective_curve(top: torch.Tensor, right: torch.Tensor, thresholds=None) -> list[dict]:
    """Answer where top >= c, for each threshold c: rows {min_confidence, coverage,
    selective_acc}, by decreasing c. thresholds=None: every distinct top probability (the exact
    curve, each coverage reachable by a threshold)."""
    n = len(top)
    if thresholds is None:
        thresholds = top.unique().flip(0).tolist()
    if not n:
        return [
            {"min_confidence": c, "coverage": 0.0, "selective_acc": None}
            for c in sorted(thresholds, reverse=True)
        ]
    order = top.argsort(descending=True)
    hits = [0.0] + right[order].double().cumsum(0).tolist()  # right among the k most confident
    cs = sorted(thresholds, reverse=True)
    # answered at c: the examples with top >= c (c compared in top's dtype, as `top >= c` would)
    ks = (n - torch.searchsorted(top.sort().values, torch.tensor(cs, dtype=top.dtype))).tolist()
    return [
        {"min_confidence": c, "coverage": k / n, "selective_acc": hits[k] / k if k else None}
        for c, k in zip(cs, ks)
    ]


def coverage_curve(traj, exit_step, thresholds=COVERAGE_THRESHOLDS) -> list[dict]:
    """Abstain when the top probability at the given exit is below c: coverage vs selective
    accuracy, rows {min_confidence, coverage, selective_acc} (`selective_curve`)."""
    return selective_curve(*at_exit(traj, exit_step), thresholds)


def auroc(score: torch.Tensor, right: torch.Tensor) -> float | None:
    """How well a score ranks right answers above wrong ones: the chance that a random right
    answer scores above a random wrong one, ties counting half (Mann-Whitney); 0.5 is no better
    than chance, and it is the same whatever the coverage. None without both right and wrong."""
    pos, neg = score[right.bool()].double(), score[~right.bool()].double().sort().values
    if not len(pos) or not len(neg):
        return None
    below = torch.searchsorted(neg, pos, right=False).double()
    tied = torch.searchsorted(neg, pos, right=True).double() - below
    return ((below + tied / 2).sum() / (len(pos) * len(neg))).item()


def coverage_at_accuracy(curve: list[dict], target: float = TARGET_SELECTIVE_ACC) -> float | None:
    """The largest coverage of a curve (or of one operating point, [point]) whose selective
    accuracy is at least `target`; None if no point reaches it."""
    ok = [
        r["coverage"]
        for r in curve
        if r["selective_acc"] is not None
        and r["selective_acc"] >= target - 1e-12
        and r["coverage"] > 0
    ]
    return max(ok) if ok else None


def largest_coverage(
    score: torch.Tensor, right: torch.Tensor, target: float = TARGET_SELECTIVE_ACC
) -> torch.Tensor:
    """`coverage_at_accuracy` of the exact curve `selective_curve(score, right)`, for a batch of
    them at once ([..., n] -> [...]) and 0 where no threshold reaches the target: answer the k
    highest scores, for each k a threshold can cut at (between distinct scores, or all)."""
    n = score.shape[-1]
    order = score.argsort(-1, descending=True)
    ranked = score.gather(-1, order)
    hits = right.gather(-1, order).double().cumsum(-1)
    k = torch.arange(1, n + 1, dtype=torch.double, device=score.device)
    cut = torch.ones_like(ranked, dtype=torch.bool)
    cut[..., :-1] = ranked[..., :-1] > ranked[..., 1:]
    ok = cut & (hits / k >= target - 1e-12)
    return torch.where(ok, k / n, torch.zeros_like(k)).amax(-1)


def coverage_gain_interval(
    score_a,
    right_a,
    score_b,
    right_b,
    target: float = TARGET_SELECTIVE_ACC,
    n_boot: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """95% percentile bootstrap interval of largest_coverage(a) - largest_coverage(b) over the
    same facts (resampled in pairs, as each fact has both scores): whether one abstention rule
    keeps more facts at the target than another beyond the luck of which facts were drawn."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(score_a), (n_boot, len(score_a)), generator=g)
    gain = largest_coverage(score_a[idx], right_a[idx], target) - largest_coverage(
        score_b[idx], right_b[idx], target
    )
    lo, hi = torch.quantile(gain, torch.tensor([0.025, 0.975], dtype=gain.dtype)).tolist()
    return lo, hi


def threshold_at_coverage(curve: list[dict], coverage: float) -> dict:
    """The curve's point whose coverage is closest to `coverage` without exceeding it (the
    highest threshold answers nothing when every point covers more)."""
    below = [r for r in curve if r["coverage"] <= coverage + 1e-12]
    if not below:
        return {"min_confidence": None, "coverage": 0.0, "selective_acc": None}
    return max(below, key=lambda r: (r["coverage"], r["min_confidence"]))
