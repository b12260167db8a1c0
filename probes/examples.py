"""Which examples a probe looks at, and the corrupted inputs causal tracing needs.

Corruption follows the paper (docs/references.md): ONE input token is replaced by a token of the
same type (same vocabulary range) chosen so that the answer changes. "The answer" of a corrupted
input is looked up in the dataset itself, so this works for every task the generators make and
never invents a query the task does not define; examples with no such replacement are dropped
and counted.
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
        return ProbeBatch(self.split, self.index[keep], self.tokens[k], self.answer_pos[k],
                          self.answers[k], self.hops[k], {n: v[k] for n, v in self.roles.items()},
                          {n: v[k] for n, v in self.role_pos.items()})


def probe_batch(ds, split: str, n: int, seed: int = 0) -> ProbeBatch:
    """At most n examples of `split`, drawn once with `seed` (the same ones at every checkpoint)."""
    if split not in ds.splits:
        raise ValueError(f"split={split!r}: task {ds.task!r} has splits {sorted(ds.splits)}")
    idx = ds.splits[split]
    if len(idx) > n:
        idx = np.sort(np.random.default_rng(seed).choice(idx, size=n, replace=False))
    t = lambda a: torch.as_tensor(np.asarray(a)[idx], dtype=torch.long)
    return ProbeBatch(split, idx, t(ds.inputs), t(ds.answer_pos), t(ds.answers), t(ds.hops),
                      {k: t(v) for k, v in ds.roles.items()},
                      {k: t(v) for k, v in ds.role_pos.items()})


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


def corrupt(ds, batch: ProbeBatch, role: str, seed: int = 0):
    """(corrupted tokens [m, pos], their answers [m], kept example rows [m]): the token of `role`
    replaced by a same-type token for which the dataset holds the corrupted input with a
    different answer."""
    if role not in input_roles(batch):
        raise ValueError(f"corrupt={role!r} is not an input role of task {ds.task!r}; "
                         f"choose from {input_roles(batch)}")
    answer_of = {row.tobytes(): a for row, a in zip(ds.inputs.astype(np.int64), ds.answers)}
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
            row[q] = c
            answer = answer_of.get(row.tobytes())
            if c != original and answer is not None and answer != int(batch.answers[i]):
                tokens[i] = row
                kept.append(i)
                answers.append(answer)
                break
    kept = np.asarray(kept, dtype=np.int64)
    return torch.as_tensor(tokens[kept]), torch.as_tensor(answers, dtype=torch.long), kept
