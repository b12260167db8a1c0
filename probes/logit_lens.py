"""Logit lens at every virtual layer and position, and the per-step readout through the coda.

Logit lens (docs/references.md): the final norm and the unembedding applied to the residual state
S[v, pos] entering virtual layer v (`blocks.{v}.hook_resid_pre`; S[0] is the embedding) and to the
final residual S[V]: exactly TransformerLens's `cache.accumulated_resid(apply_ln=True)`. For each target role (the tokens a task
names: bridge entities, relations, the answer, comparison values) we record, at every (layer,
position), the rank of the role's token among all tokens (0 = top), the reciprocal rank and top-1.
`at_role` reads each role at its own position (the answer at the answer position), the paper's
numbers: e.g. the bridge entity's MRR at the r1 position per layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float

from probes.examples import ProbeBatch


@dataclass
class LensResult:
    """The logit lens of one batch, roles in `roles` order, states S[0..V] labelled `layers`.
    rank/mrr/top1: means over the examples that have the role; at_role_*: at each example's own
    role position (the paper's numbers); n: examples per role."""

    roles: list[str]
    layers: list[str]
    rank: Float[np.ndarray, "role layer pos"]
    mrr: Float[np.ndarray, "role layer pos"]
    top1: Float[np.ndarray, "role layer pos"]
    at_role_mrr: Float[np.ndarray, "role layer"]
    at_role_top1: Float[np.ndarray, "role layer"]
    n: Float[np.ndarray, " role"]


@dataclass
class ReadoutResult:
    """What the model answers if it stops after step t = 1..T: accuracy and the answer's MRR."""

    acc: Float[np.ndarray, " step"]
    answer_mrr: Float[np.ndarray, " step"]


def target_roles(batch: ProbeBatch) -> list[str]:
    return [name for name, tok in batch.roles.items() if (tok >= 0).any()]


@torch.no_grad()
def logit_lens(
    model, batch: ProbeBatch, roles: list[str] | None = None, chunk: int = 256
) -> LensResult:
    """The rank of each role's token under the lens at every (state, position), `roles` (default:
    every role the batch has) in order."""
    roles = roles or target_roles(batch)
    missing = [r for r in roles if r not in batch.roles]
    if missing:
        raise ValueError(
            f"role {missing[0]!r} is not a role of this task; it has {sorted(batch.roles)}"
        )
    n_layers = len(model.layer_table()) + 1
    P = batch.tokens.shape[1]
    sums = {
        k: torch.zeros(len(roles), n_layers, P, dtype=torch.float64)
        for k in ("rank", "mrr", "top1")
    }
    at = {k: torch.zeros(len(roles), n_layers, dtype=torch.float64) for k in ("mrr", "top1")}
    count = torch.zeros(len(roles), dtype=torch.float64)
    for lo in range(0, len(batch), chunk):
        rows = slice(lo, lo + chunk)
        S, _ = model.residual_states(batch.tokens[rows])
        logits = model.unembed(S)  # [layer, n, pos, vocab]
        for j, role in enumerate(roles):
            tok = batch.roles[role][rows]
            has = tok >= 0
            if not has.any():
                continue
            lg = logits[:, has]  # [layer, m, pos, vocab]
            target = lg.gather(-1, tok[has][None, :, None, None].expand(*lg.shape[:3], 1))
            rank = (lg > target).sum(-1).double()  # [layer, m, pos]
            sums["rank"][j] += rank.sum(1)
            sums["mrr"][j] += (1 / (rank + 1)).sum(1)
            sums["top1"][j] += (rank == 0).double().sum(1)
            pos = batch.role_pos[role][rows][has]
            pos = torch.where(pos >= 0, pos, batch.answer_pos[rows][has])
            own = rank[:, torch.arange(len(pos)), pos]  # [layer, m]
            at["mrr"][j] += (1 / (own + 1)).sum(1)
            at["top1"][j] += (own == 0).double().sum(1)
            count[j] += has.sum()
    denom = count.clamp(min=1)
    mean = {k: (v / denom[:, None, None]).numpy() for k, v in sums.items()}
    return LensResult(
        roles,
        ["embed"] + [v.label for v in model.layer_table()],
        **mean,
        at_role_mrr=(at["mrr"] / denom[:, None]).numpy(),
        at_role_top1=(at["top1"] / denom[:, None]).numpy(),
        n=count.numpy(),
    )


@dataclass
class HandoffResult:
    """Where two-hop answers are lost: per fact, whether the first bridge is the lens's top-1 at
    its position on the state entering the last recurrence step (what that step, and the
    feedback channel, receive), and whether the final answer is right. The answer rate given a
    right bridge measures the second hop alone."""

    n: int
    bridge_right: int
    answer_if_bridge_right: int  # facts with the bridge right whose answer is right
    answer_if_bridge_wrong: int


@torch.no_grad()
def handoff(model, batch: ProbeBatch, chunk: int = 256) -> HandoffResult | None:
    """The hand-off between the steps of a looped model on a batch with a first bridge; None
    where there is none (one step, or no bridge_1 role)."""
    last_step = max((v.step or 0) for v in model.layer_table())
    tok = batch.roles.get("bridge_1")
    if last_step < 2 or tok is None or not (tok >= 0).any():
        return None
    enter = next(v.index for v in model.layer_table() if v.step == last_step)
    counts = np.zeros(4, dtype=np.int64)  # n, bridge right, answer right with/without it
    for lo in range(0, len(batch), chunk):
        rows = slice(lo, lo + chunk)
        has = tok[rows] >= 0
        S, _ = model.residual_states(batch.tokens[rows][has])
        pos = batch.role_pos["bridge_1"][rows][has]
        at = torch.arange(len(pos))
        bridge = model.unembed(S[enter][at, pos]).argmax(-1) == tok[rows][has]
        final = model.unembed(S[-1][at, batch.answer_pos[rows][has]]).argmax(-1)
        answer = final == batch.answers[rows][has]
        counts += [len(pos), bridge.sum(), (answer & bridge).sum(), (answer & ~bridge).sum()]
    return HandoffResult(*map(int, counts))


@dataclass
class WaveResult:
    """How a chain's links resolve over the recurrence: for each hop count `hops[j]` and link i =
    1..k (bridge i at relation i's position; link k is the answer at the answer position),
    right[t, j, i-1] is the share of k-hop chains whose link i is the logit lens's top-1 at its
    position after step t + 1; ever[j, i-1] the share right after some step, first[j, i-1] the
    median first such step among those (nan: none, or i > k); n[j] the chains."""

    hops: np.ndarray  # [K]
    right: np.ndarray  # [T, K, L]
    ever: np.ndarray  # [K, L]
    first: np.ndarray  # [K, L]
    n: np.ndarray  # [K]


def link_targets(batch: ProbeBatch, rows: torch.Tensor, k: int, i: int):
    """(token, position) of link i of the k-hop chains `rows`: bridge i, or the answer (i = k)."""
    if i == k:
        return batch.answers[rows], batch.answer_pos[rows]
    return batch.roles[f"bridge_{i}"][rows], batch.role_pos[f"bridge_{i}"][rows]


@torch.no_grad()
def bridge_wave(model, batch: ProbeBatch, n_steps: int | None = None) -> WaveResult | None:
    """The logit lens of every link of every chain at the end of each step of the model's default
    schedule for `n_steps` (default: its trained number; for a bank of blocks, its first block
    throughout): where a chain deeper than any trained stops resolving (docs/findings.md).
    None where the batch has no bridges (one-hop facts, other tasks)."""
    if not any(r.startswith("bridge_") for r in batch.roles):
        return None
    schedule = model.config.default_schedule(n_steps or model.config.n_steps)
    table = model.layer_table(schedule)
    ends = [max(v.index for v in table if v.step == s) + 1 for s in range(1, len(schedule) + 1)]
    hops = np.array(sorted(k for k in batch.hops.unique().tolist() if k > 1))
    T, L = len(ends), int(hops.max()) if len(hops) else 0
    right = np.full((T, len(hops), L), np.nan)
    ever, first = np.full((len(hops), L), np.nan), np.full((len(hops), L), np.nan)
    n = np.zeros(len(hops), dtype=np.int64)
    for j, k in enumerate(hops.tolist()):
        rows = torch.nonzero(batch.hops == k)[:, 0]
        S, _ = model.residual_states(batch.tokens[rows], schedule)
        top = model.unembed(S[ends]).argmax(-1)  # [T, m, pos]
        n[j] = len(rows)
        for i in range(1, k + 1):
            tok, pos = link_targets(batch, rows, k, i)
            ok = top[:, torch.arange(len(rows)), pos] == tok  # [T, m]
            right[:, j, i - 1] = ok.double().mean(1).numpy()
            hit = ok.any(0)
            ever[j, i - 1] = hit.double().mean().item()
            if hit.any():
                steps = ok.double().argmax(0)[hit] + 1  # the first step right
                first[j, i - 1] = float(np.median(steps.numpy()))
    return WaveResult(hops, right, ever, first, n)


@torch.no_grad()
def step_readout(
    model, batch: ProbeBatch, n_steps: int | None = None, chunk: int = 1024
) -> ReadoutResult:
    """What the model would answer if it stopped after step t, for t = 1..n_steps (default: the
    trained number of steps)."""
    correct, rr = [], []
    for lo in range(0, len(batch), chunk):
        rows = slice(lo, lo + chunk)
        logits = model.readout_steps(batch.tokens[rows], n_steps, positions=batch.answer_pos[rows])
        target = logits.gather(-1, batch.answers[rows][None, :, None].expand(len(logits), -1, 1))
        rank = (logits > target).sum(-1)  # [steps, n]
        correct.append(rank == 0)
        rr.append(1 / (rank.double() + 1))
    return ReadoutResult(
        torch.cat(correct, 1).double().mean(1).numpy(), torch.cat(rr, 1).mean(1).numpy()
    )
