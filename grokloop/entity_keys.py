"""Canonical entity keys (model.entity_keys=canonical): an entity's embedding is a fixed random
key, not a trained row, so an entity no weight has seen can still be read, stored, retrieved
and answered.

What it is. Entity ordinal n (the n-th entity token; the trained entities are 0..n_entities-1,
entities added later continue the count) has the key

    key_n = scale * g_n / |g_n|,   g_n ~ N(0, I_d) drawn from (key_seed, n // CHUNK)

where scale = init_std * sqrt(d_model) is the norm a learned embedding row starts with. Keys are
a pure function of (key_seed, n, d_model, scale): each block of CHUNK ordinals has its own
generator, so a key never depends on how many others were drawn, and `python -m grokloop.bank
add-entities` draws a new entity's key from the recorded seed alone. Every reader of an entity's
embedding reads its key: the input embedding, the fact memory's slots (grokloop/memory.py), the
feedback channel and the unembedding, whose entity columns are the keys (with no output bias),
so the answer is the entity whose key the final state is nearest to (all keys have the same
norm, so the largest dot product is the smallest distance). Relations and the other tokens keep
learned rows.

Why. A learned embedding table has a row only for the entities it trained on; a bank of facts
(grokloop/bank) can re-wire those entities but cannot add one. With fixed keys the entity is its
key, the trained maps (attention, the memory's key and value maps, the unembedding) act on keys
they never saw exactly as on the ones they did, provided the maps are generic. Key noise makes
them so: during training every entity key gets a fresh perturbation of norm key_noise * scale at
each forward pass (then renormalised), the same draw for every reader within the pass, so no
weight can memorise a particular key and the maps learn to treat any key-like vector as an entity
(noisy embeddings as in NEFTune, Jain et al. 2023, arXiv 2310.05914, used here for invariance to
the identity of the key, not for regularisation). key_noise=inf replaces every key by a fresh
random one at each pass, so nothing of a trained entity's own key reaches the weights: with
noise 4 the model still answered questions about its 100 trained entities better than about
new ones (0.97 against 0.77 with phantoms, conf/experiment/new_entities_canonical.yaml). This is the canonical-key idea of the lookup
baselines (grokloop/baselines/keys.py), made part of the model.

Extended vocabularies: `EntityKeys.extend(n_new)` appends the keys of ordinals n_entities ..
n_entities + n_new - 1 (non-persistent: a checkpoint is unchanged) for token ids d_vocab ..
d_vocab + n_new - 1, so the model reads tokens beyond its trained vocabulary.

Phantom entities (model.key_phantoms = P, training only): P more entities, ids after the
vocabulary, with fresh random keys at every pass and facts of their own (`phantom_facts`: as many
per entity as the bank's heads have, relations and tails drawn from the bank's) that join the
memory's bank while training. Nothing asks about them; they are distractors, so the memory learns
to pick a fact out of a bank as large as the ones it will read (a model trained on a 2,000-fact
bank and given 22,000 facts, most of them new entities', lost 5-8 points of retrieval at the
second hop, old entities included). Their keys are noise, so no weight can learn one.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn

CHUNK = 1024  # ordinals per generator block


def draw_keys(seed: int, first: int, count: int, d_model: int, scale: float) -> torch.Tensor:
    """The keys of entity ordinals first .. first + count - 1: float32 [count, d_model]."""
    if count <= 0:
        return torch.zeros(0, d_model)
    blocks = []
    for c in range(first // CHUNK, (first + count - 1) // CHUNK + 1):
        g = np.random.default_rng([int(seed), c]).standard_normal((CHUNK, d_model))
        lo, hi = max(first - c * CHUNK, 0), min(first + count - c * CHUNK, CHUNK)
        blocks.append(g[lo:hi])
    keys = torch.from_numpy(np.concatenate(blocks)).float()
    return keys / keys.norm(dim=1, keepdim=True) * scale


class EntityKeys(nn.Module):
    """The entity keys of one model: `key` [n_entities, d_model] (a persistent buffer: the
    checkpoint holds the keys it trained with), `new_key` [n_new, d_model] for entities added
    after training (not persistent), and the current training noise."""

    def __init__(self, cfg):
        super().__init__()
        self.start, self.count, self.seed = cfg.entity_start, cfg.n_entities, cfg.key_seed
        self.d_vocab, self.noise = cfg.d_vocab, cfg.key_noise
        self.scale = cfg.init_std * math.sqrt(cfg.d_model)
        self.register_buffer("key", draw_keys(self.seed, 0, self.count, cfg.d_model, self.scale))
        self.register_buffer("new_key", torch.zeros(0, cfg.d_model), persistent=False)
        self.phantoms = cfg.key_phantoms
        self._noise = None  # [n_entities + n_new, d_model], drawn by `resample`
        self._phantom = None  # [phantoms, d_model], drawn by `resample`

    @property
    def n_new(self) -> int:
        return len(self.new_key)

    def extend(self, n_new: int) -> None:
        """Read n_new entities beyond the trained ones, token ids d_vocab .. d_vocab + n_new - 1
        (ordinals n_entities ..): their keys from the seed. Replaces any earlier extension."""
        self.new_key = draw_keys(self.seed, self.count, n_new, self.key.shape[1], self.scale).to(
            self.key.device
        )
        self._noise = None

    @property
    def n_phantoms(self) -> int:
        """Phantom entities the embedding holds now: key_phantoms in training, else none."""
        return self.phantoms if self.training else 0

    def resample(self) -> None:
        """A fresh training perturbation (and phantom keys), used by every reader until the next."""
        d = self.key.shape[1]
        if self.noise > 0:
            self._noise = torch.randn(self.count + self.n_new, d, device=self.key.device)
            if not math.isinf(self.noise):
                self._noise *= self.noise * self.scale / math.sqrt(d)
        if self.phantoms:
            p = torch.randn(self.phantoms, d, device=self.key.device)
            self._phantom = p / p.norm(dim=1, keepdim=True) * self.scale

    def keys(self) -> torch.Tensor:
        """[n_entities + n_new (+ phantoms in training), d_model]: every key, perturbed in
        training (renormalised)."""
        k = torch.cat([self.key, self.new_key]) if self.n_new else self.key
        if self.training and self._noise is not None and len(self._noise) == len(k):
            k = self._noise if math.isinf(self.noise) else k + self._noise  # inf: fresh keys
            k = k / k.norm(dim=1, keepdim=True) * self.scale
        if self.n_phantoms:
            if self._phantom is None:
                self.resample()
            k = torch.cat([k, self._phantom])
        return k

    def compose(self, rows: torch.Tensor) -> torch.Tensor:
        """The embedding matrix [d_vocab + n_new, d_model] from the learned rows [d_vocab,
        d_model]: the entity rows replaced by their keys, the new entities' keys appended.
        Also the unembedding (transposed) of a model whose entity columns are keys."""
        k = self.keys().to(rows.dtype)
        lo, hi = self.start, self.start + self.count
        return torch.cat([rows[:lo], k[: self.count], rows[hi:], k[self.count :]])

    def is_entity(self, n_tokens: int, device=None) -> torch.Tensor:
        """bool [n_tokens]: which token ids (of the extended vocabulary) are entities."""
        ids = torch.arange(n_tokens, device=device)
        return ((ids >= self.start) & (ids < self.start + self.count)) | (ids >= self.d_vocab)


def phantom_facts(bank, first_id: int, n: int, seed: int) -> tuple[torch.Tensor, ...]:
    """(head, relation, tail) int64 of n phantom entities, ids first_id ..: each with as many
    distinct relations as the bank's heads have on average, drawn from the bank's relations, and
    tails uniform over the phantoms and the bank's entities; a pure function of (bank, seed)."""
    relations = torch.unique(bank.relation)
    entities = torch.unique(torch.cat([bank.head, bank.tail]))
    degree = min(len(relations), max(1, round(len(bank) / len(torch.unique(bank.head)))))
    g = torch.Generator().manual_seed(int(seed) + 1)
    rel = relations[torch.rand(n, len(relations), generator=g).argsort(1)[:, :degree]].flatten()
    head = first_id + torch.arange(n).repeat_interleave(degree)
    pool = torch.cat([first_id + torch.arange(n), entities])
    tail = pool[torch.randint(len(pool), (n * degree,), generator=g)]
    return head, rel, tail
