"""Accuracy of every baseline on every evaluation split, as rows of the results schema
(reports/study.py): {"model", "split", ("hops"), "sigma", "seed", "acc", "lo", "hi", "n",
"chance", ("coverage")}, `lo`/`hi` the Wilson 95% interval (grokloop/stats.py).

A split with several hop counts (k-hop composition) gets a row per hop count and one for the whole
split. `chance` is 1 / the number of distinct answers that training examples of the split's kind
(same answer position) have: a uniform guess, e.g. 1/|entities| for composition, 1/3 for a
comparison label. Symbolic rows carry no sigma (nothing is noised) and add `coverage`, the
fraction of queries the training facts could answer at all.
"""
from __future__ import annotations

import zlib

import numpy as np
import torch

from datagen.dataset import Dataset
from grokloop.baselines.keys import (add_noise, canonical_keys, context_embedding, digit_weights,
                                     scattershot_embedding)
from grokloop.baselines.lookup import KeyMemory
from grokloop.baselines.symbolic import symbolic_answers
from grokloop.stats import acc_row

METHODS = ("lookup_cosine", "lookup_digit", "scattershot", "symbolic")
NOISED = ("lookup_cosine", "lookup_digit", "scattershot")


class LookupBaselines:
    """The memories of one dataset's training examples under each lookup method, built once.

    Every stored key is a training example's query embedding (keys.py); its value is the
    example's answer token. `answers(method, idx, sigma)` embeds the queries, adds the noise and
    returns the answers of the nearest stored keys."""

    def __init__(self, ds: Dataset, d: int = 256, seed: int = 0, digit_base: float = 2.0,
                 methods=NOISED, query_chunk: int = 1024, bank_chunk: int = 16384):
        if d < 1:
            raise ValueError(f"d={d} must be >= 1")
        unknown = sorted(set(methods) - set(METHODS))
        if unknown:
            raise ValueError(f"methods: {unknown[0]!r} is unknown; choose from {list(METHODS)}")
        self.ds, self.d, self.seed = ds, d, seed
        self.keys = canonical_keys(len(ds.vocab), d, seed)
        self.weights = digit_weights(ds.n_ctx, digit_base)
        train = ds.splits["train"]
        answers = torch.as_tensor(ds.answers[train])
        chunks = dict(query_chunk=query_chunk, bank_chunk=bank_chunk)
        self.memories = {}
        if {"lookup_cosine", "lookup_digit"} & set(methods):
            ctx = context_embedding(ds.inputs[train], self.keys)
            if "lookup_cosine" in methods:
                self.memories["lookup_cosine"] = KeyMemory(ctx, answers, "cosine", **chunks)
            if "lookup_digit" in methods:
                self.memories["lookup_digit"] = KeyMemory(ctx, answers, "digit", self.weights,
                                                          **chunks)
        if "scattershot" in methods:
            self.memories["scattershot"] = KeyMemory(
                scattershot_embedding(ds.inputs[train], self.keys), answers, "cosine", **chunks)

    def embed(self, method: str, idx: np.ndarray) -> torch.Tensor:
        if method == "scattershot":
            return scattershot_embedding(self.ds.inputs[idx], self.keys)
        return context_embedding(self.ds.inputs[idx], self.keys)

    def noise_generator(self, method: str, tag: str, sigma: float) -> torch.Generator:
        """Seeded by (seed, tag, sigma, embedding kind): lookup_cosine and lookup_digit see the
        same noise, so their difference is the metric alone."""
        kind = "scattershot" if method == "scattershot" else "context"
        return torch.Generator().manual_seed(
            zlib.crc32(f"{self.seed}/{tag}/{sigma!r}/{kind}".encode()))

    def answers(self, method: str, idx: np.ndarray, sigma: float = 0.0,
                tag: str = "") -> np.ndarray:
        q = add_noise(self.embed(method, idx), sigma, self.d,
                      self.noise_generator(method, tag, sigma))
        return self.memories[method].lookup(q).numpy()


def chance(ds: Dataset, idx: np.ndarray) -> float:
    train = ds.splits["train"]
    same = np.isin(ds.answer_pos[train], np.unique(ds.answer_pos[idx]))
    k = len(np.unique(ds.answers[train][same]))
    return 1.0 / k if k else 0.0


def _groups(ds: Dataset, idx: np.ndarray) -> list[tuple[dict, np.ndarray]]:
    """(extra row fields, mask over idx): the whole split, then each hop count if several."""
    hops = ds.hops[idx]
    out = [({}, np.ones(len(idx), dtype=bool))]
    if len(np.unique(hops)) > 1:
        out += [({"hops": int(k)}, hops == k) for k in np.unique(hops)]
    return out


def evaluate(ds: Dataset, methods=METHODS, sigmas=(0.0,), d: int = 256, seed: int = 0,
             digit_base: float = 2.0, splits: list[str] | None = None, **chunks) -> list[dict]:
    """Rows for every (method, split[, hops], sigma) over the dataset's evaluation splits."""
    unknown = sorted(set(methods) - set(METHODS))
    if unknown or not methods:
        raise ValueError(f"methods={list(methods)}: choose one or more of {list(METHODS)}")
    splits = ds.eval_splits if splits is None else splits
    lookup = LookupBaselines(ds, d, seed, digit_base, [m for m in methods if m in NOISED],
                             **chunks) if set(methods) & set(NOISED) else None
    rows = []
    for split in splits:
        idx = ds.splits[split]
        truth = ds.answers[idx]
        base = {"chance": chance(ds, idx)}
        for method in methods:
            if method == "symbolic":
                runs = [(None, symbolic_answers(ds, idx))]
            else:
                runs = [(float(s), lookup.answers(method, idx, float(s), split)) for s in sigmas]
            for sigma, pred in runs:
                for extra, m in _groups(ds, idx):
                    n = int(m.sum())
                    acc = float((pred[m] == truth[m]).mean()) if n else 0.0
                    fields = {"model": method, "split": split, **extra, "sigma": sigma,
                              "seed": seed if sigma is not None else None, **base}
                    if method == "symbolic":
                        fields["coverage"] = float((pred[m] >= 0).mean()) if n else 0.0
                    rows.append(acc_row(acc, n, **fields))
    return rows
