"""Fourier progress measures for modular addition (Nanda et al. 2023; docs/references.md).

Token id == number for the modular task, so row a of W_E is the embedding of a.
- Fourier norms of the embedding per frequency k = 1..(p-1)/2 (the cos and sin components
  together), their Gini coefficient (sparsity: high once a few key frequencies dominate), and the
  key frequencies (the largest norms).
- Restricted loss: the answer logits over the whole table (restricted to the p number tokens)
  projected, for each output c, onto the directions cos(w_k(a+b)) and sin(w_k(a+b)) of the key
  frequencies plus the constant; the loss of those logits over the whole table. Excluded loss:
  those directions removed, the loss on the training cells. Restricted falls and excluded rises
  as the Fourier circuit forms, before test accuracy jumps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float

from datagen.tables import walsh_basis
from grokloop.checkpoint import load_model


def fourier_basis(p: int) -> torch.Tensor:
    """Orthonormal basis [p, p] over Z_p: constant, then cos k, sin k for k = 1..(p-1)/2."""
    x = torch.arange(p, dtype=torch.float64)
    rows = [torch.ones(p, dtype=torch.float64)]
    for k in range(1, (p - 1) // 2 + 1):
        rows += [torch.cos(2 * math.pi * k * x / p), torch.sin(2 * math.pi * k * x / p)]
    basis = torch.stack(rows)
    return basis / basis.norm(dim=1, keepdim=True)


def gini(values: np.ndarray) -> float:
    """Gini coefficient of non-negative values: 0 all equal, towards 1 when one dominates."""
    v = np.sort(np.asarray(values, dtype=np.float64))
    n = len(v)
    if v.sum() == 0:
        return 0.0
    return float((2 * np.arange(1, n + 1) - n - 1) @ v / (n * v.sum()))


def check_applies(ds) -> int:
    if ds.task != "modular" or ds.config.get("op") != "add":
        raise ValueError(
            f"probe=fourier applies to modular addition only; this run's task is "
            f"{ds.task!r}{' with op ' + repr(ds.config.get('op')) if ds.task == 'modular' else ''}"
        )
    return int(ds.config["p"])


@torch.no_grad()
def embedding_spectrum(W_E: torch.Tensor, p: int) -> torch.Tensor:
    """Norm of the embedding of tokens 0..p-1 at each frequency k = 1..(p-1)/2 of Z_p (cos and
    sin together): [(p-1)/2], entry k-1 for frequency k."""
    norms = (fourier_basis(p) @ W_E[:p].double()).norm(dim=1)  # [basis, d_model] -> [basis]
    return (norms[1::2] ** 2 + norms[2::2] ** 2).sqrt()


@torch.no_grad()
def walsh_spectrum(W_E: torch.Tensor, bits: int) -> torch.Tensor:
    """Norm of the embedding of tokens 0..2^bits-1 along each non-constant character of Z_2^bits
    (the Walsh functions (-1)^popcount(s & x)), the XOR group's Fourier basis: [2^bits - 1],
    entry s-1 for character s."""
    basis = torch.from_numpy(walsh_basis(bits))  # datagen.tables: orthonormal, symmetric
    return (basis @ W_E[: len(basis)].double()).norm(dim=1)[1:]


@dataclass
class FourierMeasures:
    """Nanda et al.'s progress measures at one checkpoint: the embedding's norm per frequency
    k = 1..(p-1)/2 and its Gini coefficient, the key frequencies (largest norms), the restricted
    loss (key directions only, whole table), the excluded loss (key directions removed, training
    cells) and the ordinary training and test losses."""

    freq_norm: Float[np.ndarray, " freq"]
    gini: float
    key_freqs: list[int]
    restricted_loss: float
    excluded_loss: float
    train_loss: float
    test_loss: float


@torch.no_grad()
def fourier_measures(model, ds, n_key: int = 5) -> FourierMeasures:
    p = check_applies(ds)
    freq_norm = embedding_spectrum(model.W_E, p)
    key = (torch.argsort(freq_norm, descending=True)[:n_key] + 1).tolist()

    tokens = torch.as_tensor(ds.inputs)  # every cell, a-major: row a*p + b
    pos = torch.as_tensor(ds.answer_pos)
    logits = torch.cat(
        [
            model(tokens[i : i + 4096])[
                torch.arange(len(tokens[i : i + 4096])), pos[i : i + 4096], :p
            ]
            for i in range(0, len(tokens), 4096)
        ]
    ).double()  # [p*p, p]
    answers = torch.as_tensor(ds.answers)
    a, b = tokens[:, 0].double(), tokens[:, 2].double()
    dirs = [torch.ones(p * p, dtype=torch.float64)]
    for k in key:
        w = 2 * math.pi * k / p
        dirs += [torch.cos(w * (a + b)), torch.sin(w * (a + b))]
    D = torch.stack(dirs)
    D = D / D.norm(dim=1, keepdim=True)  # orthonormal over the table
    kept = D.T @ (D @ logits)  # [p*p, p]
    excluded = logits - kept + D[:1].T @ (D[:1] @ logits)  # remove the key directions only
    train = torch.as_tensor(ds.splits["train"])
    ce = lambda lg, idx: float(F.cross_entropy(lg[idx], answers[idx]))
    every = torch.arange(p * p)
    test = torch.as_tensor(ds.splits["test"])
    return FourierMeasures(
        freq_norm.numpy(),
        gini(freq_norm.numpy()),
        key,
        ce(kept, every),
        ce(excluded, train),
        ce(logits, train),
        ce(logits, test),
    )


def stage_spectra(run_dir) -> dict:
    """How structured the embedding of the integer tokens is in a run's last checkpoint (a
    curriculum stage's): the Gini coefficient of its Z_127 Fourier spectrum (the modular stages'
    basis; Nanda et al. 2023) and of its Walsh spectrum over Z_2^7 (the XOR group's basis), with
    the top 5 frequencies of each."""
    model, _, _ = load_model(run_dir)
    out = {}
    for basis, spec in (
        ("fourier127", embedding_spectrum(model.W_E, 127)),
        ("walsh128", walsh_spectrum(model.W_E, 7)),
    ):
        out[basis] = {
            "gini": gini(spec.numpy()),
            "top": (torch.argsort(spec, descending=True)[:5] + 1).tolist(),
        }
    return out
