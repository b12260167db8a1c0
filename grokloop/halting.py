"""Halting: on a frozen model, when to stop thinking and which thinking block to run next.

    python -m grokloop.halting run_dir=RUN [max_steps=12] [step_cost=0.01] [abstain_reward=0.3]

A small selector reads, after every step, the state at the answer position and three readout
statistics (entropy, top probability, KL to the previous step's readout) plus the step index, and
picks an action: stop (answer now), abstain ("I don't know"), or continue with core c of the bank.
It is trained with REINFORCE and a batch-mean baseline; reward = 1 if the answer is right, 0 if
wrong, `abstain_reward` for abstaining, minus `step_cost` per step (scaled by the block's layer
count when the bank's blocks differ in size, so the cost is per FLOP). The model never changes.

It is compared, on the same frozen model and examples, with the simple rules (docs/references.md):
fixed depth T; exit when KL(p_t || p_t-1) < threshold (Huginn); exit when the top probability
>= threshold; the most confident of all T steps; and the oracle (the fewest steps that answer
right, which needs the answer). Results per split and hop count go to RUN/halting/.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from grokloop.evaluate import answer_prefix

STOP, ABSTAIN = 0, 1          # then 2 + c: continue with core c
KL_THRESHOLDS = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0]
CONFIDENCE_THRESHOLDS = [0.5, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999]


@dataclass
class HaltingConfig:
    max_steps: int = 12           # the most steps any rule may run
    step_cost: float = 0.01       # reward cost of one step of core 0 (per layer for other sizes)
    abstain_reward: float = 0.3   # between wrong (0) and right (1)
    hidden: int = 64
    iterations: int = 1500
    batch_size: int = 512
    lr: float = 3e-3
    entropy_bonus: float = 0.01
    train_split: str = "train"
    seed: int = 0

    def __post_init__(self):
        if self.max_steps < 1:
            raise ValueError(f"max_steps={self.max_steps} must be at least 1")
        if not 0 <= self.abstain_reward <= 1:
            raise ValueError(f"abstain_reward={self.abstain_reward} must lie between the reward "
                             "of a wrong answer (0) and of a right one (1)")
        if self.step_cost < 0:
            raise ValueError(f"step_cost={self.step_cost} must be >= 0")


N_STATS = 4  # entropy, top probability, KL to the previous readout, step / max_steps


def features(state_at_answer, log_probs, prev_log_probs, step: int, max_steps: int) -> torch.Tensor:
    """[batch, d_model + 4]: the normalised state and the readout's statistics."""
    p = log_probs.exp()
    entropy = -(p * log_probs).sum(-1)
    kl = (torch.zeros_like(entropy) if prev_log_probs is None
          else (p * (log_probs - prev_log_probs)).sum(-1))
    stats = torch.stack([entropy, p.max(-1).values, kl.clamp_min(0).log1p(),
                         torch.full_like(entropy, step / max_steps)], dim=-1)
    return torch.cat([F.layer_norm(state_at_answer, state_at_answer.shape[-1:]), stats], dim=-1)


class Selector(nn.Module):
    """The halting policy: features -> logits over [stop, abstain, continue with core 0..C-1]."""

    def __init__(self, d_model: int, n_cores: int, hidden: int = 64):
        super().__init__()
        self.d_model, self.n_cores, self.hidden = d_model, n_cores, hidden
        self.net = nn.Sequential(nn.Linear(d_model + N_STATS, hidden), nn.ReLU(),
                                 nn.Linear(hidden, 2 + n_cores))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.net(feats)


def reinforce_loss(log_prob_of_actions, reward, entropy, entropy_bonus: float) -> torch.Tensor:
    """REINFORCE with the batch-mean reward as baseline: -E[(R - b) * sum_t log pi(a_t)]."""
    advantage = reward - reward.mean()
    return -(advantage.detach() * log_prob_of_actions).mean() - entropy_bonus * entropy.mean()


def core_layers(model) -> list[int]:
    return [len(core) for core in model.cores]


def rollout(model, selector, tokens, positions, answers, cfg: HaltingConfig, greedy: bool,
            generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Run the selector's episodes for a batch; the model runs under no_grad.

    Step 1 runs the model's first scheduled core; after each step the selector acts. At
    `max_steps` only stop and abstain are allowed."""
    B, T = len(tokens), cfg.max_steps
    layers = torch.tensor(core_layers(model), dtype=torch.float, device=tokens.device)
    with torch.no_grad():
        e, state = model.enter_loop(tokens)
    next_core = torch.full((B,), model.schedule[0], device=tokens.device)
    active = torch.ones(B, dtype=torch.bool, device=tokens.device)
    prev = torch.zeros(B, model.config.d_vocab, device=tokens.device)
    log_prob = torch.zeros(B, device=tokens.device)
    entropy = torch.zeros(B, device=tokens.device)
    steps, cost = torch.zeros(B, device=tokens.device), torch.zeros(B, device=tokens.device)
    correct = torch.zeros(B, dtype=torch.bool, device=tokens.device)
    abstained = torch.zeros(B, dtype=torch.bool, device=tokens.device)
    for t in range(1, T + 1):
        idx = active.nonzero().squeeze(1)
        if not len(idx):
            break
        with torch.no_grad():
            for c in range(len(model.cores)):
                rows = idx[next_core[idx] == c]
                if len(rows):
                    state[rows] = model.step(state[rows], e[rows], t - 1, c)
            logp = model.read(state[idx], positions[idx]).float().log_softmax(-1)
            at_answer = state[idx, positions[idx]]
        feats = features(at_answer, logp, prev[idx] if t > 1 else None, t, T)
        logits = selector(feats)
        if t == T:
            logits = logits.clone()
            logits[:, 2:] = float("-inf")
        dist = torch.distributions.Categorical(logits=logits)
        action = (logits.argmax(-1) if greedy else
                  torch.multinomial(dist.probs, 1, generator=generator).squeeze(1))
        log_prob = log_prob.index_add(0, idx, dist.log_prob(action))
        entropy = entropy.index_add(0, idx, dist.entropy())
        steps[idx] = t
        cost[idx] += layers[next_core[idx]] / layers[model.schedule[0]]
        done = action < 2
        correct[idx[action == STOP]] = logp[action == STOP].argmax(-1) == answers[idx[action == STOP]]
        abstained[idx[action == ABSTAIN]] = True
        next_core[idx[~done]] = action[~done] - 2
        prev[idx] = logp
        active[idx[done]] = False
    reward = torch.where(abstained, cfg.abstain_reward, correct.float()) - cfg.step_cost * cost
    return {"log_prob": log_prob, "entropy": entropy, "reward": reward, "steps": steps,
            "cost": cost, "correct": correct, "abstained": abstained}


def train_selector(model, ds, cfg: HaltingConfig, device="cpu") -> tuple[Selector, list[dict]]:
    """REINFORCE on the frozen model over `cfg.train_split`; returns the selector and its curve."""
    if cfg.train_split not in ds.splits:
        raise ValueError(f"train_split={cfg.train_split!r} is not a split of this dataset; "
                         f"its splits are {sorted(ds.splits)}")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    torch.manual_seed(cfg.seed)
    selector = Selector(model.config.d_model, len(model.cores), cfg.hidden).to(device)
    opt = torch.optim.Adam(selector.parameters(), lr=cfg.lr)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    data = _tensors(ds, device)
    pool = torch.as_tensor(ds.splits[cfg.train_split], device=device)
    tokens = answer_prefix(data["inputs"], data["answer_pos"], pool)
    curve = []
    for it in range(cfg.iterations):
        batch = pool[torch.randint(len(pool), (min(cfg.batch_size, len(pool)),), generator=gen,
                                   device=device)]
        out = rollout(model, selector, tokens[batch], data["answer_pos"][batch],
                      data["answers"][batch], cfg, greedy=False, generator=gen)
        loss = reinforce_loss(out["log_prob"], out["reward"], out["entropy"], cfg.entropy_bonus)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if it % 50 == 0 or it == cfg.iterations - 1:
            curve.append({"iteration": it, "reward": out["reward"].mean().item(),
                          "steps": out["steps"].mean().item(),
                          "abstain": out["abstained"].float().mean().item()})
    return selector.eval(), curve


def _tensors(ds, device):
    return {k: torch.as_tensor(getattr(ds, k), device=device)
            for k in ("inputs", "answer_pos", "answers", "hops")}


# --- the simple rules, from one trajectory of the default schedule ---------------------------
@torch.no_grad()
def trajectory(model, tokens, positions, answers, max_steps: int) -> dict[str, torch.Tensor]:
    """Per step t = 1..T of the model's schedule (cycled): correct, top probability, KL to t-1,
    and layers run so far. Each tensor is [T, batch]."""
    e, state = model.enter_loop(tokens)
    layers = core_layers(model)
    correct, top, kl, spent, prev, total = [], [], [], [], None, 0
    for t in range(max_steps):
        core = model.schedule[t % len(model.schedule)]
        state = model.step(state, e, t, core)
        total += layers[core]
        logp = model.read(state, positions).float().log_softmax(-1)
        correct.append(logp.argmax(-1) == answers)
        top.append(logp.max(-1).values.exp())
        kl.append(torch.full_like(top[-1], math.inf) if prev is None
                  else (logp.exp() * (logp - prev)).sum(-1))
        spent.append(torch.full_like(top[-1], total / layers[model.schedule[0]]))
        prev = logp
    return {k: torch.stack(v) for k, v in
            dict(correct=correct, top=top, kl=kl, cost=spent).items()}


def first_true(mask: torch.Tensor) -> torch.Tensor:
    """[T, batch] -> index of the first True per column, or T-1 where there is none."""
    T = len(mask)
    hit = mask.clone()
    hit[-1] = True
    return hit.float().argmax(0).clamp(max=T - 1)


def rule_exits(traj: dict[str, torch.Tensor], n_steps_trained: int) -> dict[str, torch.Tensor]:
    """Exit step index [batch] for each simple rule, keyed 'fixed_T', 'kl<thr', 'conf>=thr', ..."""
    T, B = traj["correct"].shape
    exits = {f"fixed_{t}": torch.full((B,), t - 1, dtype=torch.long) for t in range(1, T + 1)}
    exits["trained_depth"] = exits[f"fixed_{min(n_steps_trained, T)}"]
    for thr in KL_THRESHOLDS:
        exits[f"kl<{thr:g}"] = first_true(traj["kl"] < thr)
    for thr in CONFIDENCE_THRESHOLDS:
        exits[f"conf>={thr:g}"] = first_true(traj["top"] >= thr)
    exits["max_confidence"] = traj["top"].argmax(0)
    exits["oracle"] = first_true(traj["correct"])
    return exits


def summarize_exits(traj, exit_step, hops, cost_all_steps: bool = False) -> dict:
    """Accuracy and compute of one rule: overall and per hop count."""
    cols = torch.arange(exit_step.shape[0])
    right = traj["correct"][exit_step, cols].float()
    # A rule that must see every step before choosing (max_confidence) pays for all of them.
    steps = torch.full_like(right, len(traj["correct"])) if cost_all_steps else (exit_step + 1).float()
    cost = traj["cost"][-1] if cost_all_steps else traj["cost"][exit_step, cols]
    row = {"acc": right.mean().item(), "coverage": 1.0, "mean_steps": steps.mean().item(),
           "mean_cost": cost.float().mean().item()}
    for k in hops.unique().tolist():
        m = hops == k
        row[f"hops_{k}"] = {"acc": right[m].mean().item(), "mean_steps": steps[m].mean().item()}
    return row


def summarize_selector(out: dict[str, torch.Tensor], hops) -> dict:
    answered = ~out["abstained"]
    row = {"acc": out["correct"].float().mean().item(),
           "coverage": answered.float().mean().item(),
           "selective_acc": (out["correct"][answered].float().mean().item() if answered.any()
                             else None),
           "mean_steps": out["steps"].mean().item(), "mean_cost": out["cost"].mean().item()}
    for k in hops.unique().tolist():
        m = hops == k
        row[f"hops_{k}"] = {"acc": out["correct"][m].float().mean().item(),
                            "mean_steps": out["steps"][m].mean().item(),
                            "coverage": answered[m].float().mean().item()}
    return row


def coverage_curve(traj, exit_step) -> list[dict]:
    """Abstain when the chosen step's top probability is below c: coverage vs selective accuracy."""
    cols = torch.arange(exit_step.shape[0])
    top, right = traj["top"][exit_step, cols], traj["correct"][exit_step, cols]
    rows = []
    for c in [0.0, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99]:
        keep = top >= c
        rows.append({"min_confidence": c, "coverage": keep.float().mean().item(),
                     "selective_acc": right[keep].float().mean().item() if keep.any() else None})
    return rows


@torch.no_grad()
def evaluate_halting(model, ds, selector, cfg: HaltingConfig, splits: list[str], device="cpu",
                     batch_size: int = 4096) -> dict:
    """Every rule and the selector on every split: {split: {rule: row}} plus curves."""
    data = _tensors(ds, device)
    results = {}
    for split in splits:
        idx = torch.as_tensor(ds.splits[split], device=device)
        trajs, outs = [], []
        tokens = answer_prefix(data["inputs"], data["answer_pos"], idx)
        for chunk in idx.split(batch_size):
            args = (tokens[chunk], data["answer_pos"][chunk], data["answers"][chunk])
            trajs.append(trajectory(model, *args, cfg.max_steps))
            if selector is not None:
                outs.append(rollout(model, selector, *args, cfg, greedy=True))
        traj = {k: torch.cat([t[k] for t in trajs], dim=1).cpu() for k in trajs[0]}
        hops = data["hops"][idx].cpu()
        exits = rule_exits(traj, model.config.n_steps)
        rules = {name: summarize_exits(traj, ex, hops, cost_all_steps=name == "max_confidence")
                 for name, ex in exits.items()}
        if selector is not None:
            out = {k: torch.cat([o[k] for o in outs]).cpu() for k in outs[0]}
            rules["selector"] = summarize_selector(out, hops)
        results[split] = {"rules": rules, "n": len(idx),
                          "coverage_curve": coverage_curve(traj, exits["trained_depth"])}
    return results


# --- saving, the markdown table, the command line ----------------------------------------------
def halting_dir(run_dir) -> Path:
    return Path(run_dir) / "halting"


def save_selector(run_dir, selector: Selector, cfg: HaltingConfig, curve: list[dict]) -> None:
    d = halting_dir(run_dir)
    d.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().cpu().contiguous() for k, v in selector.state_dict().items()}
    save_file(weights, str(d / "selector.safetensors.tmp"))
    os.replace(d / "selector.safetensors.tmp", d / "selector.safetensors")
    meta = {"config": dataclasses.asdict(cfg), "d_model": selector.d_model,
            "n_cores": selector.n_cores, "hidden": selector.hidden, "curve": curve}
    _write_json(d / "selector.json", meta)


def load_selector(run_dir) -> tuple[Selector, HaltingConfig]:
    d = halting_dir(run_dir)
    if not (d / "selector.json").exists():
        raise FileNotFoundError(f"{d} holds no selector; train one with "
                                f"`python -m grokloop.halting run_dir={run_dir}`")
    meta = json.loads((d / "selector.json").read_text())
    selector = Selector(meta["d_model"], meta["n_cores"], meta["hidden"])
    selector.load_state_dict(load_file(str(d / "selector.safetensors")))
    return selector.eval(), HaltingConfig(**meta["config"])


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


MAIN_RULES = ["trained_depth", "fixed_{T}", "kl<0.01", "conf>=0.9", "max_confidence", "oracle",
              "selector"]


def markdown_table(results: dict, max_steps: int) -> str:
    """Per split: accuracy (mean steps) per hop count for the main rules."""
    lines = []
    for split, res in results.items():
        rules = res["rules"]
        hops = sorted({k for row in rules.values() for k in row if k.startswith("hops_")},
                      key=lambda k: int(k[5:]))
        lines += [f"### {split} (n = {res['n']})", "",
                  "| rule | acc | coverage | mean steps | " + " | ".join(h.replace("_", " ")
                                                                       for h in hops) + " |",
                  "|---" * (4 + len(hops)) + "|"]
        for name in (r.replace("{T}", str(max_steps)) for r in MAIN_RULES):
            if name not in rules:
                continue
            row = rules[name]
            cells = [f"{row[h]['acc']:.3f} ({row[h]['mean_steps']:.1f})" for h in hops]
            lines.append(f"| {name} | {row['acc']:.3f} | {row['coverage']:.2f} | "
                         f"{row['mean_steps']:.2f} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


# --- the command line: python -m grokloop.halting run_dir=RUN [key=value ...] -----------------
@dataclass
class HaltingCommand(HaltingConfig):
    """Schema of conf/halting.yaml: every HaltingConfig option, and the run to evaluate."""
    run_dir: str = "???"   # required


def main(argv: list[str] | None = None) -> None:
    from grokloop import cli

    cli.run("halting", run_halting, argv)


def run_halting(d: dict) -> None:
    """The composed HaltingCommand as a dict: train the selector, evaluate, write RUN/halting/."""
    from datagen.dataset import code_version
    from grokloop.checkpoint import list_checkpoints, load_model

    run_dir = d.pop("run_dir")
    cfg = HaltingConfig(**d)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model, ds, run_cfg = load_model(run_dir)
    selector, curve = train_selector(model, ds, cfg)
    save_selector(run_dir, selector, cfg, curve)
    results = evaluate_halting(model, ds, selector, cfg, ds.eval_splits)
    out = {"run_dir": str(run_dir), "experiment": run_cfg["experiment"],
           "checkpoint_step": list_checkpoints(run_dir)[-1], "config": dataclasses.asdict(cfg),
           "code_version": code_version(), "selector_curve": curve, "splits": results}
    _write_json(halting_dir(run_dir) / "results.json", out)
    table = markdown_table(results, cfg.max_steps)
    (halting_dir(run_dir) / "results.md").write_text(table)
    print(table)
    print(f"wrote {halting_dir(run_dir)}/results.json and results.md")


if __name__ == "__main__":
    main()
