"""A fact memory the thinking block reads at every recurrence step (model.memory=facts).

Why this shape: the issue's central experiment swaps the whole fact store under a frozen model
(docs/references.md: Niu 2026; memory layers, Berges et al. 2024; product keys, Lample et al.
2019). So the slots are not free parameters, which would tie every fact to the weights that
learned it: a bank is a list of atomic facts (head, relation) -> tail as token ids, and the
model's own learned maps make each slot from the model's token embedding E:

    key_i   = [K_h n(E[head_i]) ; K_r n(E[relation_i])]   d_key, half per part (W_K_head, W_K_rel)
    value_i = V n(E[tail_i])                              d_model              (W_V)
    query   = W_Q LN(x)                                   d_key, at every position of the state x
    read    = sum over the top-k slots of softmax(q . key / sqrt(d_key)) * value

n is a parameter-free LayerNorm of each embedding row: like attention's keys, which come from a
normalised stream, the slots then have unit-scale inputs at any embedding norm (raw embeddings,
about 0.2 long at init, made every score ~0 and the bilinear gradient of the read vanish).

Any bank over the same vocabulary then plugs into a trained model unchanged, and editing one
fact edits one slot. The key is separable (a head part plus a relation part, the product-key
structure), which also means no slot is ever materialised: the score of fact i is
S_h[head_i] + S_r[relation_i] from two per-token tables [.., d_vocab], and since V is linear the
read is V(sum w_i n(E[tail_i])) (with more slots than tokens, the weights are summed per tail
token first). The search is exact top-k in two ways with the same answer: small banks score
every fact (O(n_facts) per query, in chunks whose top-k are merged); banks of 256 facts or more
use Lample's product-key search over the two halves (the a best heads crossed with the b best
relations, each row certified exact by a bound on every pair outside the grid, else retried
larger: `product_top_k`), O((n_heads + n_relations) d_key) per query. bench/bench_bank_search.py
times both on a 1M-fact bank.

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

The read is not an attention or MLP output, so `decompose_resid` does not list it (the lens,
tracing and patching do see it through the hooks above).

Learning to address: with the answer loss alone a slot's score gets gradient only through its
softmax weight, about 1 / n_facts while scores are uniform, and on composition_cpu (2,000
facts) the memory stayed unread for 600 steps while the MLPs memorised the facts (read zeroed:
accuracy unchanged). `address_loss` (cross-entropy of the first step's scores at the relation
position of atomic training queries, target the queried fact's slot) fixes that: in a 250-step
trial with it (weight 1) the model addressed every atomic fact, and reading graph G2's bank
unchanged it answered G2's held-out two-hop queries at 0.999 (ID) and 0.998 (OOD).

The bank lives in buffers (`bank_head`, `bank_relation`, `bank_tail`, int64 [n_facts]), so a
checkpoint carries the bank its model trained with and every loader gets a working model;
`attach` replaces it (any size). Bank files and their checks are grokloop/bank/. A model with
canonical entity keys and model.key_phantoms also searches phantom entities' facts in training
(`facts()`; grokloop/entity_keys.py), after the bank's, so slot i < n_facts is the bank's fact i.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from transformer_lens.hook_points import HookPoint

from grokloop.entity_keys import phantom_facts
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
            object.__setattr__(
                self,
                name,
                torch.as_tensor(getattr(self, name), dtype=torch.int64).reshape(-1).cpu(),
            )
        if not len(self.head) == len(self.relation) == len(self.tail):
            raise ValueError(
                f"a bank's head, relation and tail hold {len(self.head)}, "
                f"{len(self.relation)} and {len(self.tail)} ids; they must be equal"
            )

    def __len__(self) -> int:
        return len(self.head)

    @staticmethod
    def from_dataset(ds) -> "FactBank":
        """The atomic facts a dataset trains on: the two-token training queries `h r` whose
        answer is one token (composition: every atomic fact, ID and OOD)."""
        idx = np.asarray(ds.splits["train"])
        idx = idx[(ds.hops[idx] == 1) & (ds.answer_pos[idx] == 1)]
        if not len(idx):
            raise ValueError(
                f"the {ds.task!r} dataset has no atomic facts (two-token training "
                "queries `head relation` answered by one token) to put in a bank; "
                "model.memory=facts needs a fact task such as data=composition_cpu"
            )
        return FactBank(ds.inputs[idx, 0], ds.inputs[idx, 1], ds.answers[idx])

    def slot(self, head: int, relation: int) -> int:
        """The index of fact (head, relation); KeyError if the bank has none."""
        hit = torch.nonzero((self.head == head) & (self.relation == relation)).flatten()
        if not len(hit):
            raise KeyError(f"the bank holds no fact with head {head} and relation {relation}")
        return int(hit[0])

    def subset(self, keep: torch.Tensor) -> "FactBank":
        """The facts selected by `keep` (a boolean mask, or indices in slot order)."""
        return FactBank(self.head[keep], self.relation[keep], self.tail[keep])

    def edited(self, head: int, relation: int, tail: int) -> "FactBank":
        """A new bank with fact (head, relation)'s tail replaced (appended if it is new)."""
        try:
            i = self.slot(head, relation)
        except KeyError:
            return FactBank(
                torch.cat([self.head, torch.tensor([head])]),
                torch.cat([self.relation, torch.tensor([relation])]),
                torch.cat([self.tail, torch.tensor([tail])]),
            )
        new_tail = self.tail.clone()
        new_tail[i] = tail
        return FactBank(self.head, self.relation, new_tail)

    def slots_of(self, head: torch.Tensor, relation: torch.Tensor) -> torch.Tensor:
        """The slot of each fact (head[i], relation[i]), -1 where the bank has none (vectorised;
        a pair held twice gives its first slot)."""
        head, relation = head.cpu(), relation.cpu()
        if not len(self):
            return torch.full_like(head, -1)
        base = int(max(self.relation.max(), relation.max())) + 1
        key, want = self.head * base + self.relation, head * base + relation
        order = torch.argsort(key, stable=True)
        found = order[torch.searchsorted(key[order], want).clamp(max=len(self) - 1)]
        return torch.where(key[found] == want, found, -1)

    def ids(self) -> torch.Tensor:
        """[n_facts, 3] (head, relation, tail)."""
        return torch.stack([self.head, self.relation, self.tail], dim=1)


@dataclass(frozen=True)
class BankIndex:
    """The product-key structure of a bank: its distinct head tokens and relation tokens, each
    fact's position in both, and (when the bank holds each pair once and the grid is affordable)
    the slot of every (head, relation) pair, -1 where the bank has none."""

    heads: torch.Tensor  # [n_heads] token ids
    relations: torch.Tensor  # [n_relations] token ids
    head_pos: torch.Tensor  # [n_facts] index into heads
    rel_pos: torch.Tensor  # [n_facts] index into relations
    table: torch.Tensor | None  # int32 [n_heads, n_relations] slots, or None

    MAX_TABLE = 1 << 25  # 128 MB of int32: a grid larger than this falls back to scoring every fact

    @staticmethod
    def build(head: torch.Tensor, relation: torch.Tensor) -> "BankIndex":
        heads, head_pos = torch.unique(head, return_inverse=True)
        relations, rel_pos = torch.unique(relation, return_inverse=True)
        table = None
        if len(heads) * len(relations) <= BankIndex.MAX_TABLE:
            flat = head_pos * len(relations) + rel_pos
            if len(torch.unique(flat)) == len(flat):  # a pair held twice needs every score
                table = torch.full(
                    (len(heads) * len(relations),), -1, dtype=torch.int32, device=head.device
                )
                table[flat] = torch.arange(len(flat), dtype=torch.int32, device=head.device)
                table = table.view(len(heads), len(relations))
        return BankIndex(heads, relations, head_pos, rel_pos, table)


def exhaustive_top_k(s_head, s_rel, ix: BankIndex, k: int, chunk: int, chunk_scores: int):
    """Top-k facts by scoring every fact (s_head [rows, n_heads], s_rel [rows, n_relations]), in
    chunks of facts whose top-k are merged (exact), so memory is O(rows * chunk) and autograd
    keeps only indices."""
    n = len(ix.head_pos)
    chunk = max(k, min(chunk, chunk_scores // max(1, len(s_head))))
    best = slots = None
    for lo in range(0, n, chunk):
        s = s_head[:, ix.head_pos[lo : lo + chunk]] + s_rel[:, ix.rel_pos[lo : lo + chunk]]
        top, idx = s.topk(min(k, s.shape[-1]), dim=-1)
        idx = idx + lo
        if best is not None:
            top, pick = torch.cat([best, top], -1).topk(k, dim=-1)
            idx = torch.cat([slots, idx], -1).gather(-1, pick)
        best, slots = top, idx
    return best, slots


GROW = 2  # each retry doubles both sides of the grid


def top_k_rows(x: torch.Tensor, k: int, width: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k (values, indices) along the last dim of x [rows, n], by group maxima: column
    i * m + j (m = n // width) is member i of group j; the k largest values lie in the k groups
    with the largest maxima (each of them lifts its group's maximum to at least the k-th value)
    or among the n - m * width columns no group holds. One strided max over x and a top-k of
    k * width candidates replace a top-k over n, which on 10,000 columns is several times
    slower. Small rows use torch.topk; ties may come in another order."""
    rows, n = x.shape
    m = n // width
    if m < 4 * k or not x.is_contiguous():
        return x.topk(k, dim=-1)
    groups = x.as_strided((rows, width, m), (n, m, 1)).amax(1).topk(k, dim=-1).indices
    member = m * torch.arange(width, device=x.device)
    cols = (groups[:, None, :] + member[None, :, None]).flatten(1)  # [rows, width k]
    if n > m * width:
        cols = torch.cat([cols, torch.arange(m * width, n, device=x.device).expand(rows, -1)], 1)
    val, pos = x.gather(1, cols).topk(k, dim=-1)
    return val, cols.gather(1, pos)


def first_grid(ix: BankIndex, k: int) -> tuple[int, int]:
    """The first grid's sides: about (2k)^2 pairs of the bank, so 2k / sqrt(density) a side."""
    side = math.ceil(2 * k / math.sqrt(len(ix.head_pos) / (len(ix.heads) * len(ix.relations))))
    return min(len(ix.heads), side), min(len(ix.relations), side)


def product_top_k(
    s_head, s_rel, ix: BankIndex, k: int, max_grid: int = 1 << 16, max_cells: int = 1 << 22
):
    """Exact top-k facts by product keys (Lample et al. 2019): a fact's score is a head part plus
    a relation part, so the best facts lie among the a best heads crossed with the b best
    relations. The a x b grid is looked up in the pair table (absent pairs score -inf), and a row
    is certified exact when its k-th best grid score is at least the best score any pair outside
    the grid can have, max(head_(a+1) + rel_1, head_1 + rel_(b+1)). Rows that fail retry with a
    grid GROW x larger per side (a sparse bank needs a larger grid to hold k facts); rows whose next
    grid would pass `max_grid` cells score every fact. Grids are built `max_cells` cells at a
    time. Cost per query: O((n_heads + n_relations) d_key + a b) instead of O(n_facts)."""
    rows, n_h, n_r = len(s_head), s_head.shape[-1], s_rel.shape[-1]
    todo = torch.arange(rows, device=s_head.device)
    a, b = first_grid(ix, k)
    done_rows, done_best, done_slots = [], [], []
    while len(todo):
        if a * b > max_grid:  # the remaining rows: score every fact
            best, slots = exhaustive_top_k(s_head[todo], s_rel[todo], ix, k, 1 << 16, 1 << 24)
            done_rows.append(todo), done_best.append(best), done_slots.append(slots)
            break
        failed, every = [], len(todo) == rows  # the first round: slices, not gathered copies
        for part in todo.split(max(1, max_cells // (a * b))):
            pick_rows = slice(int(part[0]), int(part[-1]) + 1) if every else part
            th, ih = top_k_rows(s_head[pick_rows], min(a + 1, n_h))
            tr, ir = top_k_rows(s_rel[pick_rows], min(b + 1, n_r))
            slot = ix.table[ih[:, :a, None], ir[:, None, :b]].flatten(1)  # [m, a b]
            grid = (th[:, :a, None] + tr[:, None, :b]).flatten(1).masked_fill(slot < 0, -math.inf)
            best, pick = grid.topk(k, dim=-1)
            slots = slot.gather(1, pick).long()
            outside = torch.full_like(best[:, 0], -math.inf)
            if a < n_h:
                outside = torch.maximum(outside, th[:, a] + tr[:, 0])
            if b < n_r:
                outside = torch.maximum(outside, th[:, 0] + tr[:, b])
            ok = (best[:, -1] >= outside) & (slots[:, -1] >= 0)
            done_rows.append(part[ok]), done_best.append(best[ok]), done_slots.append(slots[ok])
            failed.append(part[~ok])
        todo, a, b = torch.cat(failed), min(n_h, GROW * a), min(n_r, GROW * b)
    order = torch.cat(done_rows).argsort()
    return torch.cat(done_best)[order], torch.cat(done_slots)[order]


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
        self.chunk = 1 << 16  # at most this many facts scored at once (top-k merged: exact),
        self.chunk_scores = 1 << 24  # and at most this many scores (64 MB) per chunk
        # Banks of this many facts or more use the product-key search: at 2,000 facts (200 x 10,
        # every pair) a forward and backward of 512 x 7 queries takes 35 ms against 176 ms for
        # scoring every fact (bench/bench_bank_search.py, 2 threads); a few dozen facts are
        # scored directly.
        self.product_min_facts = 256
        # Inference with more than chunk_scores head scores (queries x head tokens) searches the
        # queries in chunks of this many scores (16 MB, within the last-level cache: chunks of
        # 4M scores took 87 ms of CPU at 10,000 heads, against 162 ms for 16M and 208 ms for 256K,
        # whose per-chunk overhead dominates); training scores all at once.
        self.cache_scores = 1 << 22
        self._index = None  # (stamp of the bank buffers, BankIndex)
        self._subkeys = None  # (index, stamp, sub-key tables) of a frozen model
        self._normed = None  # (stamp, normalised embeddings) of a frozen model
        self._phantom = None  # (stamp, the bank with phantom facts after it), training only

    # --- the bank ---------------------------------------------------------------------------
    @property
    def bank(self) -> FactBank:
        return FactBank(self.bank_head, self.bank_relation, self.bank_tail)

    def _bank_tensors(self) -> tuple[torch.Tensor, ...]:
        return tuple(getattr(self, name) for name in BANK_BUFFERS)

    def facts(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(head, relation, tail) the read searches, in slot order: the bank, and in training
        with model.key_phantoms the phantom entities' facts after it (grokloop/entity_keys.py)."""
        keys = self._model.entity_keys
        if keys is None or not keys.n_phantoms or not len(self.bank_head):
            return self.bank_head, self.bank_relation, self.bank_tail
        stamp = tuple((t.data_ptr(), t._version, len(t)) for t in self._bank_tensors()) + (
            self._model.vocab_size,
        )
        if self._phantom is None or self._phantom[0] != stamp:
            extra = phantom_facts(self.bank, self._model.vocab_size, keys.n_phantoms, keys.seed)
            self._phantom = (
                stamp,
                tuple(torch.cat([t, x.to(t.device)]) for t, x in zip(self._bank_tensors(), extra)),
            )
        return self._phantom[1]

    def attach(self, bank: FactBank) -> None:
        """Read `bank` from now on (the weights are untouched). Ids must be tokens of the model's
        vocabulary; grokloop/bank.py checks the vocabulary itself before calling this."""
        d_vocab = self._model.vocab_size
        ids = bank.ids()
        if len(ids) and (ids.min() < 0 or ids.max() >= d_vocab):
            raise ValueError(
                f"the bank holds token ids outside this model's vocabulary of "
                f"{d_vocab}; build it with the model's vocabulary"
            )
        device = self.W_Q.weight.device
        for name, t in zip(BANK_BUFFERS, (bank.head, bank.relation, bank.tail)):
            setattr(self, name, t.to(device))
        self._index = None

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A checkpoint's bank has its own size: take it as it is (a bank is data, not a shape).
        for name in BANK_BUFFERS:
            if prefix + name in state_dict:
                setattr(
                    self,
                    name,
                    torch.empty_like(state_dict[prefix + name], device=self.W_Q.weight.device),
                )
        self._index = None
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # --- the read -------------------------------------------------------------------------------
    def embeddings(self) -> torch.Tensor:
        """n(E): the model's token embeddings, each row normalised (no parameters); with
        canonical entity keys an entity's row is its key (grokloop/entity_keys.py)."""
        frozen = not (self.training or torch.is_grad_enabled())
        stamp = self._stamp()
        if frozen and self._normed is not None and self._normed[0] == stamp:
            return self._normed[1]
        E = self._model.embedding_matrix()
        E = F.layer_norm(E, E.shape[-1:])
        self._normed = (stamp, E) if frozen else None
        return E

    def _stamp(self) -> tuple:
        """What the slots are made from: the embeddings (and keys) and the key maps, each by
        storage and version, so a cached table is used only while none of them changed."""
        keys = self._model.entity_keys
        tensors = [self._model.W_E, self.W_K_head.weight, self.W_K_rel.weight]
        tensors += [keys.key, keys.new_key] if keys is not None else []
        return tuple((t.data_ptr(), t._version, t.shape) for t in tensors)

    def index(self) -> BankIndex:
        """The bank's BankIndex, rebuilt only when the bank changes (attach, load, in-place edit)."""
        head, relation, _ = self.facts()
        stamp = tuple((t.data_ptr(), t._version, len(t)) for t in (head, relation))
        if self._index is None or self._index[0] != stamp:
            self._index = (stamp, BankIndex.build(head, relation))
        return self._index[1]

    def subkeys(self, ix: BankIndex) -> tuple[torch.Tensor, torch.Tensor]:
        """The sub-keys of the bank's head tokens [n_heads, d_key / 2] and relation tokens
        [n_relations, d_key / 2]. Without gradients in eval mode they are kept until the bank,
        the key maps or the embeddings change (a frozen model computes them once per bank)."""
        frozen = not (self.training or torch.is_grad_enabled())
        stamp = self._stamp()
        if (
            frozen
            and self._subkeys is not None
            and self._subkeys[0] is ix
            and self._subkeys[1] == stamp
        ):
            return self._subkeys[2]
        E = self.embeddings()
        keys = self.W_K_head(E[ix.heads]), self.W_K_rel(E[ix.relations])
        self._subkeys = (ix, stamp, keys) if frozen else None
        return keys

    def subkey_scores(self, q: torch.Tensor, ix: BankIndex) -> tuple[torch.Tensor, torch.Tensor]:
        """The two halves of every score for queries q [..., d_key]: against each head token of
        the bank [..., n_heads] and each relation token [..., n_relations]; fact i scores
        s_head[head_pos[i]] + s_rel[rel_pos[i]]."""
        K_head, K_rel = self.subkeys(ix)
        half, scale = self.d_key // 2, 1 / math.sqrt(self.d_key)
        return (q[..., :half] * scale) @ K_head.T, (q[..., half:] * scale) @ K_rel.T

    def search(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact top-k facts for queries q [..., d_key]: (scores, slots) [..., k], best first.
        Banks of at least `product_min_facts` facts (distinct pairs) use the product-key search;
        smaller ones, or banks holding a pair twice, score every fact. Both are exact: they
        differ only in which of two equal scores comes first."""
        n = len(self.facts()[0])
        if n == 0:
            raise RuntimeError(
                "model.memory=facts has no bank attached: train it on a fact task, "
                "load it from a checkpoint, or attach one (python -m grokloop.bank)"
            )
        ix, k = self.index(), min(self.top_k, n)
        lead = q.shape[:-1]
        product = ix.table is not None and n >= self.product_min_facts
        if (
            product
            and not torch.is_grad_enabled()
            and q[..., 0].numel() * len(ix.heads) > self.chunk_scores
        ):
            # Inference on a bank with many heads: the queries in chunks whose head scores stay
            # in cache (product_top_k on all of them at once would write and re-read
            # n_queries x n_heads scores from memory, most of the time at 10,000 heads).
            rows = max(1, self.cache_scores // len(ix.heads))
            parts = [
                product_top_k(*self.subkey_scores(part, ix), ix, k)
                for part in q.reshape(-1, q.shape[-1]).split(rows)
            ]
            best, slots = torch.cat([b for b, _ in parts]), torch.cat([s for _, s in parts])
            return best.reshape(*lead, k), slots.reshape(*lead, k)
        s_head, s_rel = self.subkey_scores(q, ix)
        s_head, s_rel = s_head.reshape(-1, s_head.shape[-1]), s_rel.reshape(-1, s_rel.shape[-1])
        if product:
            best, slots = product_top_k(s_head, s_rel, ix, k)
        else:
            best, slots = exhaustive_top_k(s_head, s_rel, ix, k, self.chunk, self.chunk_scores)
        return best.reshape(*lead, k), slots.reshape(*lead, k)

    def all_scores(self, q: torch.Tensor) -> torch.Tensor:
        """Scores of every fact for queries q [..., d_key]: [..., n_facts] (what `search` ranks)."""
        ix = self.index()
        s_head, s_rel = self.subkey_scores(q, ix)
        return s_head[..., ix.head_pos] + s_rel[..., ix.rel_pos]

    def forward(self, x: torch.Tensor, hooks: nn.Module | None = None) -> torch.Tensor:
        """The read vector [..., d_model] for states x [..., d_model] (any leading shape)."""
        q = apply_hook(hooks, "hook_query", self.W_Q(self.ln(x)))
        scores, slots = self.search(q)
        scores = apply_hook(hooks, "hook_scores", scores)
        slots = apply_hook(hooks, "hook_slots", slots)
        weights = apply_hook(hooks, "hook_weights", scores.softmax(-1))
        E = self.embeddings()
        tails = self.facts()[2][slots]  # [..., k]
        if tails.shape[-1] <= len(E):  # k embeddings per position, weighted and summed
            # in one kernel, no [..., k, d_model] copy: read fwd + bwd 4.5x faster at the
            # k-hop presets' shape than gathering E[tails] (bench/README.md, studies)
            k = tails.shape[-1]
            mixed = F.embedding_bag(
                tails.reshape(-1, k),
                E,
                mode="sum",
                per_sample_weights=weights.reshape(-1, k).to(E.dtype),
            )
            mixed = mixed.view(*tails.shape[:-1], E.shape[-1])  # [..., d_model]
        else:  # many slots: sum the weights per tail token first, d_vocab * d_model
            per_token = weights.new_zeros(*weights.shape[:-1], len(E))
            mixed = per_token.scatter_add(-1, tails, weights) @ E
        return apply_hook(hooks, "hook_read", self.W_V(mixed))


def address_loss(model, tokens: torch.Tensor) -> torch.Tensor:
    """The addressing loss of atomic queries `h r` (tokens [n, 2]): cross-entropy, over every
    slot of the bank, of the first step's memory scores at the relation's position, the target
    being the slot of fact (h, r). Queries whose fact the bank lacks are skipped.

    Why: the answer loss alone reaches a slot's score only through the softmax weight of that
    slot, about 1 / n_facts while the scores are uniform, so a 2,000-fact bank stays unread for
    hundreds of steps and the model memorises the facts in its MLPs instead (seen at 300-600
    steps of composition_cpu). Atomic facts are training data anyway, so telling the memory
    which slot answers `h r` adds no information the model is not trained on; the two-hop
    composition is still learned from the answer loss alone."""
    target = model.memory.bank.slots_of(tokens[:, 0], tokens[:, 1])
    keep = target >= 0
    if not keep.any():
        return tokens.new_zeros((), dtype=model.W_E.dtype)
    q = {}
    # Only the first step runs: the loss reads its query, and the other steps and the readout
    # were a full forward whose output nobody used (7/8 of the work at 8 steps).
    model.ensure_step_hooks(1)
    e, state = model.enter_loop(tokens[keep])
    with model.hooks(
        fwd_hooks=[("steps.0.memory.hook_query", lambda a, hook: q.__setitem__(0, a))]
    ):
        model.step(state, e, 0, hooked=True)
    scores = model.memory.all_scores(q[0][:, 1])  # [n, n_facts]
    return F.cross_entropy(scores.float(), target[keep])
