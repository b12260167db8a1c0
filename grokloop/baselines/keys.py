"""Canonical random keys and the embeddings built from them.

Token keys: one vector per vocabulary token, K[v] ~ N(0, I/d) (seeded), so |K[v]| ~ 1 and two
keys are nearly orthogonal (cosine ~ N(0, 1/d)). Nothing is learned.

Context embedding of a query (tokens x_0..x_{L-1}, the whole input row, padding included, so
queries of different lengths differ): the CONCATENATION of its tokens' keys by position,
c(x) = [K[x_0], ..., K[x_{L-1}]], shape [L*d]. Concatenation keeps order (a plain sum would
confuse `a q e1 mask e2` with its mirror `a q e2 mask e1`).

Digit weights: position i weighs w_i = base**(-i) (w_0 = 1), like the place values of a number
whose most significant digit is the first token. The digit-weighted distance between two
queries is sum_i w_i |c_i(x) - c_i(y)|^2: a mismatch at position i costs about 2 w_i (random keys
are nearly orthogonal, |K[a] - K[b]|^2 ~ 2), so with base >= 2 a query is nearer to a stored key
that agrees on an earlier position than to any that only agrees on later ones (prefix-first,
lexicographic matching); base = 1 is the plain squared Euclidean distance.

Noise: `add_noise` adds sigma * N(0, I/d) to a query embedding at lookup time, so per position the
noise has norm ~ sigma, in units of a token key's norm (sigma = 1: noise as large as a key;
sigma = 0: exact, nothing is drawn).

Scattershot (hierarchical pairwise means) of a sequence of L token keys:
  level 0:    X_0 = [K[x_0], ..., K[x_{L-1}]]                      (n_0 = L vectors)
  level l+1:  X_{l+1}[j] = (X_l[2j] + X_l[2j+1]) / 2 for 2j+1 < n_l; an odd last vector is
              carried up unchanged, X_{l+1}[(n_l-1)/2] = X_l[n_l-1]   (n_{l+1} = ceil(n_l / 2))
  ...until a level has one vector (the mean-of-means of the whole sequence; for L = 1 level 0 is
  that level). The key is the concatenation of every level, [sum_l n_l, d] flattened: L = 3 gives
  levels 3, 2, 1 (6 vectors), L = 5 gives 5, 3, 2, 1 (11), L = 9 gives 9, 5, 3, 2, 1 (20).
"""

from __future__ import annotations

import numpy as np
import torch


def canonical_keys(n_tokens: int, d: int, seed: int = 0) -> torch.Tensor:
    """[n_tokens, d] float32 keys, N(0, I/d), a pure function of (n_tokens, d, seed)."""
    g = torch.Generator().manual_seed(int(seed))
    return torch.randn(n_tokens, d, generator=g) / d**0.5


def context_embedding(tokens: np.ndarray | torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """[N, L] token ids -> [N, L*d]: the concatenated token keys by position."""
    tokens = torch.as_tensor(np.asarray(tokens), dtype=torch.long)
    return keys[tokens].reshape(len(tokens), -1)


def digit_weights(length: int, base: float = 2.0) -> torch.Tensor:
    """[length] per-position weights w_i = base**(-i) (w_0 = 1)."""
    if base <= 0:
        raise ValueError(f"digit_base={base} must be > 0 (1 gives equal weights)")
    return torch.tensor([float(base) ** -i for i in range(length)], dtype=torch.float32)


def add_noise(x: torch.Tensor, sigma: float, d: int, generator: torch.Generator) -> torch.Tensor:
    """x + sigma * N(0, I/d): sigma is the noise norm per position in units of a key's norm."""
    if sigma < 0:
        raise ValueError(f"sigma={sigma} must be >= 0")
    if sigma == 0:
        return x
    return x + sigma / d**0.5 * torch.randn(x.shape, generator=generator)


def scattershot_sizes(length: int) -> list[int]:
    """Vectors per level: [L, ceil(L/2), ..., 1] (just [1] for L = 1)."""
    sizes = [length]
    while sizes[-1] > 1:
        sizes.append((sizes[-1] + 1) // 2)
    return sizes


def scattershot_levels(tokens: np.ndarray | torch.Tensor, keys: torch.Tensor) -> list[torch.Tensor]:
    """[N, L] token ids -> the levels [N, n_l, d], l = 0.. (see the module docstring)."""
    tokens = torch.as_tensor(np.asarray(tokens), dtype=torch.long)
    levels = [keys[tokens]]  # [N, L, d]
    while levels[-1].shape[1] > 1:
        x = levels[-1]
        n = x.shape[1]
        pairs = (x[:, 0 : n - 1 : 2] + x[:, 1:n:2]) / 2  # [N, n // 2, d]
        levels.append(torch.cat([pairs, x[:, n - 1 :]], 1) if n % 2 else pairs)
    return levels


def scattershot_embedding(tokens: np.ndarray | torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """[N, L] token ids -> [N, sum_l n_l * d]: every level concatenated."""
    levels = scattershot_levels(tokens, keys)
    return torch.cat([lv.reshape(len(lv), -1) for lv in levels], 1)
