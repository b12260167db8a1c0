"""A fact memory the thinking block reads at every recurrence step (model.memory=facts).

Why this shape: the issue's central experiment swaps the whole fact store under a frozen model
(docs/references.md: Niu 2026; memory layers, Berges et al. 2024; product keys, Lample et al.
2019). So the slots are not free parameters, which would tie every fact to the weights that
learned it: a bank is a list of atomic facts (head, relation) -> tail as token ids, and the
model's own learned maps make each slot from the model's token embedding E:

    key_i   = [K_h E[head_i] ; K_r E[relation_i]]      d_key, half per part   (W_K_head, W_K_rel)
    value_i = V E[tail_i]                              d_model                (W_V)
    query   = W_Q LN(x)                                d_key, at every position of the state x
    read    = sum over the top-k slots of softmax(q . key / sqrt(d_key)) * value

Any bank over the same vocabulary then plugs into a trained model unchanged, and editing one
fact edits one slot. The key is separable (a head part plus a relation part, the product-key
structure), which also means no slot is ever materialised: the score of fact i is
S_h[head_i] + S_r[relation_i] from two per-token tables [.., d_vocab], and since V is linear the
read is V(sum w_i E[tail_i]). So the cost per position is O(d_vocab * d_key + n_facts), and
the search is exact top-k in torch, in chunks of facts whose top-k are merged (faiss is not
installed here; for a bank of millions, Lample's product-key search over the two halves is the
next step).

Where it reads: inside the last layer of the thinking block (each core of a bank), after the
MLP and before `hook_resid_post`, so every step ends with a lookup. The core's layers first
gather the query's tokens at each position (at relation r1's position, h and r1; at r2's, the
bridge the previous step read and r2), then the read adds the tail. Every position reads, each
from its own state only: the hop-j fact is needed at relation j's position, and a position-wise
read keeps the model causal. Being part of the block, the read runs on every path that runs the
block (forward, per-step readout, the halting rollouts, causal tracing's continuation, layer
surgery), and `blocks.{v}.hook_resid_post` = `blocks.{v+1}.hook_resid_pre` still holds, so the
logit lens sees it.

Hook points per step s (on `steps.{s}.memory`, only in models with a memory; k = min(top_k,
n_facts)):
    hook_query    [batch, pos, d_key]    the query
    hook_scores   [batch, pos, k]        the top-k scores (before the softmax)
    hook_slots    [batch, pos, k]        the chosen facts, indices into the bank
    hook_weights  [batch, pos, k]        softmax over the top-k scores
    hook_read     [batch, pos, d_model]  the vector added to the stream

The bank lives in buffers (`bank_head`, `bank_relation`, `bank_tail`, int64 [n_facts]), so a
checkpoint carries the bank its model trained with and every loader gets a working model;
`attach` replaces it (any size). Bank files and their checks are grokloop/bank.py.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
from transformer_lens.hook_points import HookPoint

from grokloop.hooks import apply_hook

BANK_BUFFERS = ("bank_head", "bank_relation", "bank_tail")


@dataclass(frozen=True)
class FactBank:
    """Atomic facts (head, relation) -> tail as token ids, int64 [n_facts] each, in slot order."""
    head: torch.Tensor
    relation: torch.Tensor
    tail: torch.Tensor

    def __post_init__(self):
        for name in ("head", "relation", "tail"):
            object.__setattr__(self, name, torch.as_tensor(getattr(self, name), dtype=torch.int64)
                               .reshape(-1).cpu())
        if not len(self.head) == len(self.relation) == len(self.tail):
            raise ValueError(f"a bank's head, relation and tail hold {len(self.head)}, "
                             f"{len(self.relation)} and {len(self.tail)} ids; they must be equal")

    def __len__(self) -> int:
        return len(self.head)

    @staticmethod
    def from_dataset(ds) -> "FactBank":
        """The atomic facts a dataset trains on: the two-token training queries `h r` whose
        answer is one token (composition: every atomic fact, ID and OOD)."""
        idx = np.asarray(ds.splits["train"])
        idx = idx[(ds.hops[idx] == 1) & (ds.answer_pos[idx] == 1)]
        if not len(idx):
            raise ValueError(f"the {ds.task!r} dataset has no atomic facts (two-token training "
                             "queries `head relation` answered by one token) to put in a bank; "
                             "model.memory=facts needs a fact task such as data=composition_cpu")
        return FactBank(ds.inputs[idx, 0], ds.inputs[idx, 1], ds.answers[idx])

    def slot(self, head: int, relation: int) -> int:
        """The index of fact (head, relation); KeyError if the bank has none."""
        hit = torch.nonzero((self.head == head) & (self.relation == relation)).flatten()
        if not len(hit):
            raise KeyError(f"the bank holds no fact with head {head} and relation {relation}")
        return int(hit[0])

    def edited(self, head: int, relation: int, tail: int) -> "FactBank":
        """A new bank with fact (head, relation)'s tail replaced (appended if it is new)."""
        try:
            i = self.slot(head, relation)
        except KeyError:
            return FactBank(torch.cat([self.head, torch.tensor([head])]),
                            torch.cat([self.relation, torch.tensor([relation])]),
                            torch.cat([self.tail, torch.tensor([tail])]))
        new_tail = self.tail.clone()
        new_tail[i] = tail
        return FactBank(self.head, self.relation, new_tail)

    def ids(self) -> torch.Tensor:
        """[n_facts, 3] (head, relation, tail)."""
        return torch.stack([self.head, self.relation, self.tail], dim=1)


class MemoryHooks(nn.Module):
    """Hook points of one step's memory read (steps.{s}.memory.*)."""

    def __init__(self):
        super().__init__()
        for name in ("hook_query", "hook_scores", "hook_slots", "hook_weights", "hook_read"):
            setattr(self, name, HookPoint())


class FactMemory(nn.Module):
    """The learned maps of the fact memory and the bank it reads (buffers). `model` is the
    LoopedTransformer whose token embedding W_E makes the slots (held by reference, not as a
    submodule, so its parameters are not duplicated); `norm` is the query's LayerNorm, built by
    the model so it follows model.normalization and the model's initialisation."""

    def __init__(self, cfg, norm: nn.Module, model: nn.Module):
        super().__init__()
        self.top_k, self.d_key = cfg.memory_top_k, cfg.memory_d_key
        self.ln = norm
        self.W_Q = nn.Linear(cfg.d_model, self.d_key)
        self.W_K_head = nn.Linear(cfg.d_model, self.d_key // 2, bias=False)
        self.W_K_rel = nn.Linear(cfg.d_model, self.d_key // 2, bias=False)
        self.W_V = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        for name in BANK_BUFFERS:
            self.register_buffer(name, torch.zeros(0, dtype=torch.int64))
        self.__dict__["_model"] = model
        self.chunk = 1 << 16   # facts scored at once; their top-k are merged (exact)

    # --- the bank ---------------------------------------------------------------------------
    @property
    def bank(self) -> FactBank:
        return FactBank(self.bank_head, self.bank_relation, self.bank_tail)

    def attach(self, bank: FactBank) -> None:
        """Read `bank` from now on (the weights are untouched). Ids must be tokens of the model's
        vocabulary; grokloop/bank.py checks the vocabulary itself before calling this."""
        d_vocab = self._model.W_E.shape[0]
        ids = bank.ids()
        if len(ids) and (ids.min() < 0 or ids.max() >= d_vocab):
            raise ValueError(f"the bank holds token ids outside this model's vocabulary of "
                             f"{d_vocab}; build it with the model's vocabulary")
        device = self.W_Q.weight.device
        for name, t in zip(BANK_BUFFERS, (bank.head, bank.relation, bank.tail)):
            setattr(self, name, t.to(device))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A checkpoint's bank has its own size: take it as it is (a bank is data, not a shape).
        for name in BANK_BUFFERS:
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name],
                                                     device=self.W_Q.weight.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # --- the read -------------------------------------------------------------------------------
    def search(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact top-k facts for queries q [..., d_key]: (scores, slots) [..., k], best first.
        Scores come from the two per-token subkey tables, in chunks of facts whose top-k are
        merged, so memory is O(rows * (d_vocab + chunk)) and autograd keeps only indices."""
        n = len(self.bank_head)
        if n == 0:
            raise RuntimeError("model.memory=facts has no bank attached: train it on a fact task, "
                               "load it from a checkpoint, or attach one (python -m grokloop.bank)")
        E = self._model.W_E
        half = self.d_key // 2
        scale = 1 / math.sqrt(self.d_key)
        s_head = (q[..., :half] * scale) @ self.W_K_head(E).T     # [..., d_vocab]
        s_rel = (q[..., half:] * scale) @ self.W_K_rel(E).T       # [..., d_vocab]
        k = min(self.top_k, n)
        best = slots = None
        for lo in range(0, n, self.chunk):
            h, r = self.bank_head[lo:lo + self.chunk], self.bank_relation[lo:lo + self.chunk]
            s = s_head[..., h] + s_rel[..., r]                           # [..., chunk]
            top, idx = s.topk(min(k, s.shape[-1]), dim=-1)
            idx = idx + lo
            if best is not None:
                top, pick = torch.cat([best, top], -1).topk(k, dim=-1)
                idx = torch.cat([slots, idx], -1).gather(-1, pick)
            best, slots = top, idx
        return best, slots

    def forward(self, x: torch.Tensor, hooks: nn.Module | None = None) -> torch.Tensor:
        """The read vector [..., d_model] for states x [..., d_model] (any leading shape)."""
        q = apply_hook(hooks, "hook_query", self.W_Q(self.ln(x)))
        scores, slots = self.search(q)
        scores = apply_hook(hooks, "hook_scores", scores)
        slots = apply_hook(hooks, "hook_slots", slots)
        weights = apply_hook(hooks, "hook_weights", scores.softmax(-1))
        E = self._model.W_E
        mixed = (weights.unsqueeze(-1) * E[self.bank_tail[slots]]).sum(-2)   # [..., d_model]
        return apply_hook(hooks, "hook_read", self.W_V(mixed))
