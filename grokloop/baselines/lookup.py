"""Exact nearest-key search and the memory of training examples.

Search is exact and brute force: scores = queries @ bank.T (+ a per-row bias), the argmax per
query, in chunks of queries x bank rows so the score block stays small (query_chunk x bank_chunk
floats; 1,024 x 16,384 = 64 MB by default). Plain torch, not faiss: faiss-cpu is not installed
here (it is on the index, `pip index versions faiss-cpu`: 1.15.1), and for an EXACT top-1 its
flat index computes the same matmul; the approximate indexes would make the control inexact;
torch is already pinned (setup.sh), runs the same code on a GPU, and the memories here (at most
the ~724k training facts of composition_paper) fit in memory as one float32 matrix.

Metrics (`KeyMemory`):
  cosine  argmax_j <q, m_j> / (|q| |m_j|) over the concatenated token keys (keys.py)
  digit   argmin_j sum_i w_i |q_i - m_ij|^2, the digit-weighted squared distance by position
          (keys.digit_weights), computed as argmax_j <2 w.q, m_j> - sum_i w_i |m_ij|^2 (the
          query's own norm is the same for every j and drops out)
Ties go to the lowest index (the earliest stored example).
"""

from __future__ import annotations

import torch

METRICS = ("cosine", "digit")


def top1(
    queries: torch.Tensor,
    bank: torch.Tensor,
    bias: torch.Tensor | None = None,
    query_chunk: int = 1024,
    bank_chunk: int = 16384,
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each query b: (max_j s_bj, argmax_j s_bj), s_bj = <queries[b], bank[j]> + bias[j],
    exactly, by chunked matmul; ties go to the lowest j."""
    B, M = len(queries), len(bank)
    if M == 0:
        raise ValueError("the bank is empty: nothing to look up")
    best = torch.full((B,), -torch.inf, dtype=queries.dtype, device=queries.device)
    arg = torch.zeros(B, dtype=torch.long, device=queries.device)
    # One score buffer reused for every full block (a fresh one per block costs page faults).
    buf = torch.empty(
        min(query_chunk, B), min(bank_chunk, M), dtype=queries.dtype, device=queries.device
    )
    for q0 in range(0, B, query_chunk):
        q = queries[q0 : q0 + query_chunk]
        b_best, b_arg = best[q0 : q0 + query_chunk], arg[q0 : q0 + query_chunk]  # views
        for m0 in range(0, M, bank_chunk):
            blk = bank[m0 : m0 + bank_chunk]
            if buf.shape == (len(q), len(blk)):
                s = torch.mm(q, blk.T, out=buf)
            else:
                s = q @ blk.T
            if bias is not None:
                s += bias[m0 : m0 + bank_chunk]
            val, idx = s.max(1)
            better = val > b_best  # strict: an earlier chunk wins ties
            b_best[better] = val[better]
            b_arg[better] = idx[better] + m0
    return best, arg


def top1_naive(queries: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """The reference: one query at a time against the whole bank (no batching, no chunks)."""
    return torch.stack([torch.argmax(bank @ q) for q in queries])


class KeyMemory:
    """Every stored example's key (rows of `keys`, [M, L*d], L positions of d) and its answer;
    `lookup` answers queries with the answer of the nearest stored key under `metric`."""

    def __init__(
        self,
        keys: torch.Tensor,
        answers: torch.Tensor,
        metric: str = "cosine",
        weights: torch.Tensor | None = None,
        query_chunk: int = 1024,
        bank_chunk: int = 16384,
    ):
        if metric not in METRICS:
            raise ValueError(f"metric={metric!r} is unknown; choose one of {list(METRICS)}")
        self.metric, self.answers = metric, torch.as_tensor(answers)
        self.chunks = dict(query_chunk=query_chunk, bank_chunk=bank_chunk)
        self.weights, self.bias = None, None
        if metric == "cosine":
            self.bank = keys / keys.norm(dim=1, keepdim=True).clamp_min(1e-12)
        else:
            if weights is None:
                raise ValueError("metric='digit' needs the per-position weights")
            self.weights = weights
            self.bank = keys
            self.bias = -self._per_position(keys).pow(2).sum(-1).mul(weights).sum(-1)

    def _per_position(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(len(x), len(self.weights), -1)  # [N, L, d]

    def nearest(self, queries: torch.Tensor) -> torch.Tensor:
        """Index of the nearest stored key for each query."""
        if self.metric == "cosine":
            q = queries / queries.norm(dim=1, keepdim=True).clamp_min(1e-12)
        else:
            q = (2 * self._per_position(queries) * self.weights[:, None]).reshape(len(queries), -1)
        return top1(q, self.bank, self.bias, **self.chunks)[1]

    def lookup(self, queries: torch.Tensor) -> torch.Tensor:
        return self.answers[self.nearest(queries)]
