"""Block sizes against compute: with a bank of thinking blocks of several sizes
(`model.core_sizes=[1,2]`, trained with `train.mix_cores=true`), what each way of choosing the
next block buys per layer applied.

Every schedule here is read from one trajectory (grokloop/adaptive/rules.py `trajectory`):
- `core_C`: core C at every step (the fixed schedules: all small, all large, ...);
- `cycle`: the cores in turn, 0, 1, ..;
- `random_I`: a uniformly random core at each step, drawn once per schedule from `seed`
  (`n_random` of them; the `random` entry is their mean, each schedule scored on every fact).
Each is scored with every exit rule (`rule_exits`), so a schedule has a curve, fixed depth t
against the layers it costs, and points at the exits that do not see the answer. The selector's
own choices (stop, or continue with core c) are one more point, from its greedy episodes; its
compute is `mean_cost` in units of core `schedule[0]`'s layers (grokloop/adaptive/selector.py),
here converted to layers. Compute is always `mean_layers`: layer applications per example in the
thinking block (the prelude and coda, run once whatever the schedule, are left out).
"""

from __future__ import annotations

import torch

from grokloop.adaptive.rules import (
    core_layers,
    rule_exits,
    scheduled,
    summarize_exits,
    trajectory,
)

EXITS = ("huginn_kl<5e-4", "conf>=0.9", "max_confidence", "oracle")  # points beside the curves


def schedules(n_cores: int, n_random: int, max_steps: int, seed: int = 0) -> dict[str, list[int]]:
    """The named schedules compared (module docstring); cycled by the model when shorter than
    max_steps."""
    out = {f"core_{c}": [c] for c in range(n_cores)} | {"cycle": list(range(n_cores))}
    gen = torch.Generator().manual_seed(seed)
    for i in range(n_random):
        out[f"random_{i}"] = torch.randint(n_cores, (max_steps,), generator=gen).tolist()
    return out


def scored(traj: dict, hops: torch.Tensor, layers_per_unit: int) -> dict:
    """Every exit rule of one trajectory: summarize_exits's row plus `mean_layers`, overall and
    per hop count."""
    rows = {}
    for name, exit_step in rule_exits(traj, len(traj["correct"])).items():
        if name not in EXITS and not name.startswith("fixed_"):
            continue
        row = summarize_exits(traj, exit_step, hops, cost_all_steps=name == "max_confidence")
        spent = (
            traj["cost"][-1]
            if name == "max_confidence"
            else traj["cost"][exit_step, torch.arange(len(exit_step))]
        ) * layers_per_unit
        row["mean_layers"] = spent.mean().item()
        for key in [k for k in row if k.startswith("hops_")]:
            row[key]["mean_layers"] = spent[hops == int(key[5:])].mean().item()
        rows[name] = row
    return rows


def mean_of(rows: list[dict]) -> dict:
    """The mean of several schedules' rows, key by key (numbers only; n kept)."""
    out = {}
    for key, value in rows[0].items():
        if isinstance(value, dict):
            out[key] = mean_of([r[key] for r in rows])
        elif key == "n":
            out[key] = value
        elif isinstance(value, (int, float)):
            out[key] = sum(r[key] for r in rows) / len(rows)
    return out


@torch.no_grad()
def block_study(
    model,
    tokens,
    positions,
    answers,
    hops,
    max_steps: int,
    n_random: int = 8,
    seed: int = 0,
    batch_size: int = 4096,
) -> dict:
    """{schedule name: {"schedule": cores, "rules": {rule: row}}} for every schedule of the
    model's bank, plus "random": the mean of the random schedules' rows. The model's default
    schedule is restored afterwards."""
    layers = core_layers(model)
    out = {}
    for name, schedule in schedules(len(layers), n_random, max_steps, seed).items():
        with scheduled(model, schedule):
            parts = [
                trajectory(model, tokens[c], positions[c], answers[c], max_steps)
                for c in torch.arange(len(tokens)).split(batch_size)
            ]
        traj = {k: torch.cat([p[k] for p in parts], dim=1).cpu() for k in parts[0]}
        # trajectory's cost is in units of the schedule's first core; back to layers
        out[name] = {"schedule": schedule, "rules": scored(traj, hops, layers[schedule[0]])}
    randoms = [v["rules"] for k, v in out.items() if k.startswith("random_")]
    if randoms:
        out["random"] = {
            "schedule": None,
            "rules": {rule: mean_of([r[rule] for r in randoms]) for rule in randoms[0]},
        }
    return out
