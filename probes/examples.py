"""Which examples a probe looks at, and the corrupted inputs causal tracing needs.

Corruption follows the paper (docs/references.md): ONE input token is replaced by a token of the
same type (same vocabulary range). Two modes (`python -m probes ... corruption=exists|free`):

  exists  the corrupted query must exist in the dataset with a different answer; its answer is
          looked up there, so this works for every task and never invents a query the task does
          not define. Examples with no such replacement are dropped and counted: at phi 7.2 only
          a fraction of two-hop queries are in the data, so corrupting r1 keeps 142 of 300.
  free    as the authors' causal_tracing_{composition,comparison}.py: any other token of the
          same type; the corrupted query need not exist. Its answer is the dataset's if it has
          the query, else (composition) the chain of atomic facts if every hop exists, else
          unknown (-1; causal tracing then compares with the corrupted run's own prediction).
          A replacement whose known answer equals the clean one is skipped (it would change
          nothing), as the authors skip them. Their scripts are narrower in places (r1 among
          the head's own relations, r2 among the bridge's, comparison entities with an adjacent
          value); free keeps only the rule "same type, answer not known to be the same".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class ProbeBatch:
    """Examples of one split as tensors: tokens [n, pos], answer_pos [n], answers [n], hops [n],
    roles/role_pos name -> [n] (-1 where absent), and their indices into the dataset."""

    split: str
    index: np.ndarray
    tokens: torch.Tensor
    answer_pos: torch.Tensor
    answers: torch.Tensor
    hops: torch.Tensor
    roles: dict[str, torch.Tensor]
    role_pos: dict[str, torch.Tensor]

    def __len__(self) -> int:
        return len(self.index)

    def subset(self, keep: np.ndarray) -> "ProbeBatch":
        k = torch.as_tensor(keep)
        return ProbeBatch(
            self.split,
            self.index[keep],
            self.tokens[k],
            self.answer_pos[k],
            self.answers[k],
            self.hops[k],
            {n: v[k] for n, v in self.roles.items()},
            {n: v[k] for n, v in self.role_pos.items()},
        )


def probe_batch(ds, split: str, n: int, seed: int = 0) -> ProbeBatch:
    """At most n examples of `split`, drawn once with `seed` (the same ones at every checkpoint)."""
    if split not in ds.splits:
        raise ValueError(f"split={split!r}: task {ds.task!r} has splits {sorted(ds.splits)}")
    idx = ds.splits[split]
    if len(idx) > n:
        idx = np.sort(np.random.default_rng(seed).choice(idx, size=n, replace=False))
    t = lambda a: torch.as_tensor(np.asarray(a)[idx], dtype=torch.long)
    return ProbeBatch(
        split,
        idx,
        t(ds.inputs),
        t(ds.answer_pos),
        t(ds.answers),
        t(ds.hops),
        {k: t(v) for k, v in ds.roles.items()},
        {k: t(v) for k, v in ds.role_pos.items()},
    )


def input_roles(batch: ProbeBatch) -> list[str]:
    """Roles that are input tokens (the token at role_pos is the role's token): what tracing can
    corrupt. Bridges are not inputs (their role_pos is where they should appear, not a token)."""
    out = []
    for name, pos in batch.role_pos.items():
        present = pos >= 0
        if present.any():
            rows = torch.nonzero(present)[:, 0]
            if (batch.tokens[rows, pos[rows]] == batch.roles[name][rows]).all():
                out.append(name)
    return out


MODES = ("exists", "free")


def _chained(ds):
    """Composition: query bytes -> answer through the atomic facts, for any k-hop query whose
    every hop is an atomic fact of the dataset (None for other tasks)."""
    if ds.task != "composition":
        return None
    atomic = {
        (int(ds.inputs[i, 0]), int(ds.inputs[i, 1])): int(ds.answers[i])
        for i in np.flatnonzero(ds.hops == 1)
    }
    pad = ds.vocab.pad_id

    def answer(row: np.ndarray):
        e = int(row[0])
        for r in row[1:]:
            if r == pad:
                break
            e = atomic.get((e, int(r)))
            if e is None:
                return None
        return e

    return answer


def corrupt(ds, batch: ProbeBatch, role: str, seed: int = 0, mode: str = "exists"):
    """(corrupted tokens [m, pos], their answers [m] (-1: unknown), kept example rows [m]): the
    token of `role` replaced by another token of its type, by `mode` (module docstring)."""
    if mode not in MODES:
        raise ValueError(f"corruption={mode!r} is not one of {list(MODES)}")
    if role not in input_roles(batch):
        raise ValueError(
            f"corrupt={role!r} is not an input role of task {ds.task!r}; "
            f"choose from {input_roles(batch)}"
        )
    answer_of = {row.tobytes(): a for row, a in zip(ds.inputs.astype(np.int64), ds.answers)}
    chained = _chained(ds) if mode == "free" else None
    ranges = list(ds.vocab.ranges.values())
    rng = np.random.default_rng(seed)
    tokens = batch.tokens.numpy().copy()
    kept, answers = [], []
    for i in range(len(batch)):
        q = int(batch.role_pos[role][i])
        if q < 0:
            continue
        original = tokens[i, q]
        lo, hi = next((lo, hi) for lo, hi in ranges if lo <= original < hi)
        row = tokens[i].copy()
        for c in rng.permutation(np.arange(lo, hi)):
            if c == original:
                continue
            row[q] = c
            answer = answer_of.get(row.tobytes())
            if answer is None and chained is not None:
                answer = chained(row[: int(batch.answer_pos[i]) + 1])
            if answer == int(batch.answers[i]) or (answer is None and mode == "exists"):
                continue
            tokens[i] = row
            kept.append(i)
            answers.append(-1 if answer is None else int(answer))
            break
    kept = np.asarray(kept, dtype=np.int64)
    return torch.as_tensor(tokens[kept]), torch.as_tensor(answers, dtype=torch.long), kept
