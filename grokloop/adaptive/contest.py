"""A fair contest between the learned selector and the exit rules, in FLOPs per fact.

Both sides fit on `valid`: the selector trains there (grokloop/adaptive/selector.py) and every
rule's threshold is chosen there, from the dense grids of `candidate_exits` (the oracle, which
reads the answer, is no candidate). Each comparison is then scored once on test:

- "accuracy": the rule with the highest valid accuracy among those whose valid mean compute is
  at most the selector's; the gain is the selector's test accuracy minus the rule's.
- "compute": the rule with the least valid mean compute among those whose valid accuracy is at
  least the selector's less MARGIN; the gain is the saving, 1 - selector FLOPs / rule FLOPs, on
  test. The margin is there because the selector's valid accuracy is in-sample (it trained on
  those facts, a rule only chose a threshold): without it a rule a hair more accurate on valid,
  at any cost, would be the one to beat.

Both intervals are percentile bootstraps over test facts resampled in pairs (each fact is
answered by both sides); each row also carries the other metric on test with its interval
(`acc_gain`, `compute_saving` and their `_lo`/`_hi`), so a saving bought with accuracy shows.
`n_variants` is how many rules the valid choice was made among.

A model with a bank of thinking blocks (`model.core_sizes`) gives the rules the block choice
too (`rule_schedules`): every rule runs the model's default schedule, each core throughout and
the cores in turn, each candidate named with its schedule (`cycle/conf>=0.9`), and the valid
choice is made over them all, so a selector that wins by choosing blocks is measured against
rules that may run any of those schedules.

Compute is measured, not modelled: `flops_table` runs the prelude, one step of each core and
the readout at every query length under torch's FlopCounterMode, and a fact's FLOPs are the
sum of what it ran at its own length (`rule_flops`, `selector_flops`). An adaptive exit pays a
readout at every step it looks at (a fixed depth one readout), the selector also its own
forward pass, so blocks of several sizes, longer queries and monitoring all count.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from grokloop.adaptive.rules import (
    CONFIDENCE_THRESHOLDS,
    KL_THRESHOLDS,
    argmax_stable,
    entropy_change,
    first_true,
)

# Dense threshold grids for the valid choice (the figures' coarse grids are subsets).
DENSE_CONFIDENCE = sorted(
    set(CONFIDENCE_THRESHOLDS) | {round(1 - 10 ** (-i / 4), 6) for i in range(1, 17)}
)
DENSE_KL = sorted(set(KL_THRESHOLDS) | {10 ** (i / 4) for i in range(-24, 1)})
DENSE_ENTROPY_CHANGE = [10 ** (i / 2) for i in range(-10, 1)]
ARGMAX_RUNS = range(1, 7)
MARGIN = 0.005  # the accuracy a rule may lack on valid and still count as equal (compute)
LENGTH_OFFSETS = range(-1, 5)  # exit at step k + c for a k-relation query


@torch.no_grad()
def flops_table(model, lengths: list[int], selector=None, n_features: int = 0) -> dict:
    """Measured FLOPs of one example: {"prelude": {L}, "read": {L}, "step": [{L} per core],
    "selector": per decision} for every query length L (tokens)."""

    def count(fn) -> int:
        # FlopCounterMode hooks the backward of inputs that require grad; nothing here needs it
        params = [p for m in (model, selector) if m is not None for p in m.parameters()]
        wanted = [p.requires_grad for p in params]
        try:
            for p in params:
                p.requires_grad_(False)
            with FlopCounterMode(display=False) as mode:
                fn()
        finally:
            for p, w in zip(params, wanted):
                p.requires_grad_(w)
        return int(mode.get_total_flops())

    table = {"prelude": {}, "read": {}, "step": [{} for _ in model.cores], "selector": 0}
    for L in lengths:
        tokens = torch.zeros(1, L, dtype=torch.long)
        table["prelude"][L] = count(lambda: model.enter_loop(tokens))
        e, state = model.enter_loop(tokens)
        state = model.step(state, e, 0, model.schedule[0])
        for c in range(len(model.cores)):  # step 1 (0-based): a step past the loop's entry
            table["step"][c][L] = count(lambda c=c: model.step(state, e, 1, c))
        table["read"][L] = count(lambda: model.read(state, torch.tensor([L - 1])))
    if selector is not None:
        table["selector"] = count(lambda: selector(torch.zeros(1, n_features)))
    return table


def cumulative_rule_flops(table: dict, schedule: list[int], lengths, T: int) -> torch.Tensor:
    """[T, n] FLOPs of stopping after step t (1..T) on the schedule, cycled, without readouts
    (a rule adds those: `rule_flops`)."""
    out = torch.zeros(T, len(lengths), dtype=torch.float64)
    for j, L in enumerate(lengths.tolist()):
        total = table["prelude"][L]
        for t in range(T):
            total += table["step"][schedule[t % len(schedule)]][L]
            out[t, j] = total
    return out


def rule_flops(table, cum: torch.Tensor, exit_step, lengths, monitors: bool, all_steps=False):
    """[n] FLOPs of each fact under a rule exiting at `exit_step` (0-based): the steps run, and a
    readout per step looked at (`monitors`) or one at the exit; `all_steps`: the rule ran all T."""
    T = len(cum)
    last = torch.full_like(exit_step, T - 1) if all_steps else exit_step
    steps_paid = cum[last, torch.arange(len(last))]
    reads = torch.tensor([table["read"][L] for L in lengths.tolist()], dtype=torch.float64)
    looked = (last + 1).double() if monitors else torch.ones_like(reads)
    return steps_paid + looked * reads


def selector_flops(table, out: dict, lengths) -> torch.Tensor:
    """[n] FLOPs of each selector episode: the prelude, every step at the core it chose, and a
    readout and a selector decision per step."""
    per_core = out["core_steps"].double()  # [n, n_cores]
    Ls = lengths.tolist()
    step = torch.tensor([[s[L] for s in table["step"]] for L in Ls], dtype=torch.float64)
    fixed = torch.tensor([table["prelude"][L] for L in Ls], dtype=torch.float64)
    reads = torch.tensor([table["read"][L] for L in Ls], dtype=torch.float64)
    n = out["steps"].double()
    return fixed + (per_core * step).sum(-1) + n * (reads + table["selector"])


def candidate_exits(traj: dict, n_relations: torch.Tensor) -> dict[str, tuple]:
    """Every rule the valid choice may pick: {name: (exit step [n] 0-based, monitors,
    all_steps)}. Families: fixed depth, the query's relation count plus c (a rule that reads the
    input's length, not its answer), top probability, KL and entropy change below a threshold,
    the argmax unchanged for n steps, and the most confident step."""
    T, n = traj["correct"].shape
    rules = {f"fixed_{t}": (torch.full((n,), t - 1), False, False) for t in range(1, T + 1)}
    for c in LENGTH_OFFSETS:
        rules[f"length{c:+d}"] = ((n_relations + c - 1).clamp(0, T - 1), False, False)
    for thr in DENSE_CONFIDENCE:
        rules[f"conf>={thr:g}"] = (first_true(traj["top"] >= thr), True, False)
    for thr in DENSE_KL:
        rules[f"kl<{thr:.3g}"] = (first_true(traj["kl"] < thr), True, False)
    change = entropy_change(traj["entropy"])
    for thr in DENSE_ENTROPY_CHANGE:
        rules[f"entropy_change<{thr:.3g}"] = (first_true(change < thr), True, False)
    for k in ARGMAX_RUNS:
        rules[f"argmax_{k}"] = (first_true(argmax_stable(traj["argmax"], k)), True, False)
    rules["max_confidence"] = (traj["top"].argmax(0), True, True)
    return rules


def rule_schedules(model, T: int) -> dict[str, list[int]]:
    """{name prefix: schedule} the rules run: the model's default ("", names unchanged) and, with
    a bank of cores, each core throughout ("core_C/") and the cores in turn ("cycle/"), each
    schedule once (compared over T steps, cycled)."""

    def unrolled(schedule):
        return tuple(schedule[t % len(schedule)] for t in range(T))

    out = {"": list(model.schedule)}
    n = len(model.cores)
    if n > 1:
        named = {f"core_{c}/": [c] for c in range(n)} | {"cycle/": list(range(n))}
        seen = {unrolled(model.schedule)}
        for prefix, schedule in named.items():
            if unrolled(schedule) not in seen:
                seen.add(unrolled(schedule))
                out[prefix] = schedule
    return out


def score_rules(traj, rules: dict, table, schedule, lengths) -> dict[str, dict]:
    """{rule: {"correct": [n] bool, "flops": [n], "steps": [n]}} of each candidate."""
    T, n = traj["correct"].shape
    cum = cumulative_rule_flops(table, schedule, lengths, T)
    cols = torch.arange(n)
    out = {}
    for name, (exit_step, monitors, all_steps) in rules.items():
        out[name] = {
            "correct": traj["correct"][exit_step, cols],
            "flops": rule_flops(table, cum, exit_step, lengths, monitors, all_steps),
            "steps": (torch.full_like(exit_step, T) if all_steps else exit_step + 1).double(),
        }
    return out


def choose_rule(valid: dict[str, dict], sel_acc: float, sel_flops: float, metric: str):
    """The rule chosen on valid against the selector's valid point (module docstring); None if
    no rule qualifies."""
    acc = {k: v["correct"].float().mean().item() for k, v in valid.items()}
    flops = {k: v["flops"].mean().item() for k, v in valid.items()}
    if metric == "accuracy":
        ok = [k for k in valid if flops[k] <= sel_flops * (1 + 1e-9)]
        return max(ok, key=lambda k: (acc[k], -flops[k])) if ok else None
    ok = [k for k in valid if acc[k] >= sel_acc - MARGIN - 1e-12]
    return min(ok, key=lambda k: (flops[k], -acc[k])) if ok else None


def paired_bootstrap(stat, a: dict, b: dict, n_boot: int = 2000, seed: int = 0):
    """(value, lo, hi): stat(a, b) on all facts and its 95% percentile interval over facts
    resampled in pairs; a and b are dicts of [n] tensors over the same facts."""
    g = torch.Generator().manual_seed(seed)
    n = len(next(iter(a.values())))
    idx = torch.randint(n, (n_boot, n), generator=g)
    boot = stat({k: v[idx] for k, v in a.items()}, {k: v[idx] for k, v in b.items()})
    lo, hi = torch.quantile(boot.double(), torch.tensor([0.025, 0.975], dtype=torch.float64))
    return float(stat(a, b)), lo.item(), hi.item()


def accuracy_gain(a: dict, b: dict) -> torch.Tensor:
    return a["correct"].double().mean(-1) - b["correct"].double().mean(-1)


def compute_saving(a: dict, b: dict) -> torch.Tensor:
    return 1 - a["flops"].mean(-1) / b["flops"].mean(-1)


def contest(valid_rules, test_rules, sel_valid: dict, sel_test: dict, seed: int = 0) -> list[dict]:
    """Both comparisons (module docstring): rows {metric, rule, gain, lo, hi, n, n_variants,
    the valid points the choice was made on and the test points it is scored on}."""
    sel_acc = sel_valid["correct"].float().mean().item()
    sel_flops = sel_valid["flops"].mean().item()
    rows = []
    stats = {"accuracy": ("acc_gain", accuracy_gain), "compute": ("compute_saving", compute_saving)}
    for metric in stats:
        rule = choose_rule(valid_rules, sel_acc, sel_flops, metric)
        row = {"metric": metric, "rule": rule, "n_variants": len(valid_rules), "margin": MARGIN}
        if rule is not None:
            for name, stat in stats.values():
                gain, lo, hi = paired_bootstrap(stat, sel_test, test_rules[rule], seed=seed)
                row |= {name: gain, f"{name}_lo": lo, f"{name}_hi": hi}
            name = stats[metric][0]
            row |= {"gain": row[name], "lo": row[f"{name}_lo"], "hi": row[f"{name}_hi"]}
            row |= side_by_side(sel_valid, valid_rules[rule], "valid")
            row |= side_by_side(sel_test, test_rules[rule], "test")
        rows.append(row | {"n": len(sel_test["correct"])})
    return rows


def side_by_side(sel: dict, rule: dict, split: str) -> dict:
    """The two sides' accuracy, mean steps and mean FLOPs on one split."""
    out = {}
    for who, d in (("selector", sel), ("rule", rule)):
        out[f"{split}_{who}_acc"] = d["correct"].float().mean().item()
        out[f"{split}_{who}_steps"] = d["steps"].double().mean().item()
        out[f"{split}_{who}_flops"] = d["flops"].mean().item()
    return out


def flops_by_hops(scored: dict[str, dict], hops: torch.Tensor) -> dict:
    """{method: {hops_K: {"n", "acc", "flops", "steps"}}}: compute by difficulty."""
    out = {}
    for name, d in scored.items():
        out[name] = {}
        for k in hops.unique().tolist():
            m = hops == k
            out[name][f"hops_{k}"] = {
                "n": int(m.sum()),
                "acc": d["correct"][m].float().mean().item(),
                "flops": d["flops"][m].mean().item(),
                "steps": d["steps"][m].double().mean().item(),
            }
    return out


def family(rule: str) -> str:
    """A candidate's family: its name up to the threshold (`candidate_exits`)."""
    for sep in (">=", "<", "+", "-"):
        if sep in rule:
            return rule.split(sep)[0]
    return rule.rsplit("_", 1)[0] if rule[-1].isdigit() else rule


def tuned_per_family(valid: dict[str, dict]) -> dict[str, str]:
    """{family: the rule of that family with the highest valid accuracy (fewer FLOPs on ties)}:
    every exit rule with its threshold tuned on valid."""
    best: dict[str, str] = {}
    for name, d in valid.items():
        key = (d["correct"].float().mean().item(), -d["flops"].mean().item())
        f = family(name)
        if f not in best or key > best[f][0]:
            best[f] = (key, name)
    return {f: name for f, (_, name) in best.items()}
