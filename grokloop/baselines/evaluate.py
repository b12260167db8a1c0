"""Accuracy of every baseline on every evaluation split, as rows of the results schema
(reports/study.py): {"model", "split", ("hops"), "sigma", "seed", "acc", "lo", "hi", "n",
"chance", ("coverage")}, `lo`/`hi` the Wilson 95% interval (grokloop/stats.py).

A split with several hop counts (k-hop composition) gets a row per hop count and one for the whole
split. `chance` is 1 / the number of distinct answers that training examples of the split's kind
(same answer position) have: a uniform guess, e.g. 1/|entities| for composition, 1/3 for a
comparison label. Symbolic, retrieval and chance rows carry no sigma (nothing is noised); symbolic
and retrieval rows add `coverage`, the fraction of queries the training facts could answer at all
(retrieval: in one step). `chance` is a seeded uniform guess among the training answers of the
query's kind (same answer position and attribute), a measured row beside the `chance` column.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch

from datagen.dataset import Dataset
from grokloop.baselines.keys import (
    add_noise,
    canonical_keys,
    context_embedding,
    digit_weights,
    scattershot_embedding,
)
from grokloop.baselines.lookup import KeyMemory
from grokloop.baselines.retrieval import retrieval_answers
from grokloop.baselines.symbolic import symbolic_answers
from grokloop.stats import acc_row

NOISED = ("lookup_cosine", "lookup_digit", "scattershot")
METHODS = NOISED + ("symbolic",)  # what runs on a task unless `methods` names others
# The controls of complex reasoning (Wang et al. 2024, arXiv 2405.15071, section 5): one-step
# retrieval (retrieval.py) and a measured uniform guess (chance_answers).
CONTROLS = ("retrieval", "chance")
KNOWN = METHODS + CONTROLS
TASK_METHODS = {"complex_reasoning": KNOWN}


def default_methods(task: str) -> list[str]:
    """The methods a task runs unless `methods` is given."""
    return list(TASK_METHODS.get(task, METHODS))


class LookupBaselines:
    """The memories of one dataset's training examples under each lookup method, built once.

    Every stored key is a training example's query embedding (keys.py); its value is the
    example's answer token. `answers(method, idx, sigma)` embeds the queries, adds the noise and
    returns the answers of the nearest stored keys."""

    def __init__(
        self,
        ds: Dataset,
        d: int = 256,
        seed: int = 0,
        digit_base: float = 2.0,
        methods=NOISED,
        query_chunk: int = 1024,
        bank_chunk: int = 16384,
    ):
        if d < 1:
            raise ValueError(f"d={d} must be >= 1")
        unknown = sorted(set(methods) - set(KNOWN))
        if unknown:
            raise ValueError(f"methods: {unknown[0]!r} is unknown; choose from {list(KNOWN)}")
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
                self.memories["lookup_digit"] = KeyMemory(
                    ctx, answers, "digit", self.weights, **chunks
                )
        if "scattershot" in methods:
            self.memories["scattershot"] = KeyMemory(
                scattershot_embedding(ds.inputs[train], self.keys), answers, "cosine", **chunks
            )

    def embed(self, method: str, idx: np.ndarray) -> torch.Tensor:
        if method == "scattershot":
            return scattershot_embedding(self.ds.inputs[idx], self.keys)
        return context_embedding(self.ds.inputs[idx], self.keys)

    def noise_generator(self, method: str, tag: str, sigma: float) -> torch.Generator:
        """Seeded by (seed, tag, sigma, embedding kind): lookup_cosine and lookup_digit see the
        same noise, so their difference is the metric alone."""
        kind = "scattershot" if method == "scattershot" else "context"
        return torch.Generator().manual_seed(
            zlib.crc32(f"{self.seed}/{tag}/{sigma!r}/{kind}".encode())
        )

    def answers(
        self, method: str, idx: np.ndarray, sigma: float = 0.0, tag: str = ""
    ) -> np.ndarray:
        q = add_noise(
            self.embed(method, idx), sigma, self.d, self.noise_generator(method, tag, sigma)
        )
        return self.memories[method].lookup(q).numpy()


def chance(ds: Dataset, idx: np.ndarray) -> float:
    train = ds.splits["train"]
    same = np.isin(ds.answer_pos[train], np.unique(ds.answer_pos[idx]))
    k = len(np.unique(ds.answers[train][same]))
    return 1.0 / k if k else 0.0


def chance_answers(ds: Dataset, idx: np.ndarray, seed: int = 0, tag: str = "") -> np.ndarray:
    """A uniform guess per query among the distinct training answers of its kind (same answer
    position and, where the task has one, attribute), seeded by (seed, tag); -1 where training
    has no answer of that kind."""
    train = ds.splits["train"]
    attr = ds.roles.get("attribute", np.zeros(len(ds), np.int64))
    kind = ds.answer_pos * len(ds.vocab) + attr
    rng = np.random.default_rng(zlib.crc32(f"{seed}/{tag}/chance".encode()))
    out = np.full(len(idx), -1, np.int64)
    for k in np.unique(kind[idx]):
        here = kind[idx] == k
        options = np.unique(ds.answers[train][kind[train] == k])
        if len(options):
            out[here] = rng.choice(options, int(here.sum()))
    return out


def exact_answers(
    ds: Dataset, method: str, idx: np.ndarray, seed: int, tag: str
) -> tuple[np.ndarray, np.ndarray | None]:
    """(answers, answered or None) of the methods that add no noise."""
    if method == "symbolic":
        pred = symbolic_answers(ds, idx)
        return pred, pred >= 0
    if method == "retrieval":
        return retrieval_answers(ds, idx)
    return chance_answers(ds, idx, seed, tag), None


def _groups(ds: Dataset, idx: np.ndarray) -> list[tuple[dict, np.ndarray]]:
    """(extra row fields, mask over idx): the whole split, then each hop count if several."""
    hops = ds.hops[idx]
    out = [({}, np.ones(len(idx), dtype=bool))]
    if len(np.unique(hops)) > 1:
        out += [({"hops": int(k)}, hops == k) for k in np.unique(hops)]
    return out


def evaluate(
    ds: Dataset,
    methods=None,
    sigmas=(0.0,),
    d: int = 256,
    seed: int = 0,
    digit_base: float = 2.0,
    splits: list[str] | None = None,
    **chunks,
) -> list[dict]:
    """Rows for every (method, split[, hops], sigma) over the dataset's evaluation splits;
    `methods` None: the task's default_methods."""
    methods = default_methods(ds.task) if methods is None else methods
    unknown = sorted(set(methods) - set(KNOWN))
    if unknown or not methods:
        raise ValueError(f"methods={list(methods)}: choose one or more of {list(KNOWN)}")
    splits = ds.eval_splits if splits is None else splits
    lookup = (
        LookupBaselines(ds, d, seed, digit_base, [m for m in methods if m in NOISED], **chunks)
        if set(methods) & set(NOISED)
        else None
    )
    rows = []
    for split in splits:
        idx = ds.splits[split]
        truth = ds.answers[idx]
        base = {"chance": chance(ds, idx)}
        for method in methods:
            if method in NOISED:
                runs = [
                    (float(s), lookup.answers(method, idx, float(s), split), None) for s in sigmas
                ]
            else:
                runs = [(None, *exact_answers(ds, method, idx, seed, split))]
            for sigma, pred, answered in runs:
                for extra, m in _groups(ds, idx):
                    n = int(m.sum())
                    acc = float((pred[m] == truth[m]).mean()) if n else 0.0
                    seeded = sigma is not None or method == "chance"
                    fields = {
                        "model": method,
                        "split": split,
                        **extra,
                        "sigma": sigma,
                        "seed": seed if seeded else None,
                        **base,
                    }
                    if answered is not None:
                        fields["coverage"] = float(answered[m].mean()) if n else 0.0
                    rows.append(acc_row(acc, n, **fields))
    return rows
