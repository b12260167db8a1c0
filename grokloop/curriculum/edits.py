"""Edits to the model between two curriculum stages: the causal tests of what the earlier stages
hand on (issue 35). Applied to the previous stage's final weights, written as the next stage's
starting checkpoint (OUT/stages/NN_NAME.init), so the stage itself is an ordinary run:

  project_bits          remove from the integer tokens' embeddings the span of the 7 bit directions
                        (the single-bit Walsh components of the embedding, datagen.tables.
                        walsh_basis rows 1, 2, 4, ..., 64): the logic stages' bit features
  project_random        the same for 7 random orthonormal directions (the control, same dimension)
  rescale_matched       the integer tokens' embeddings scaled down to the norm project_bits would
                        leave, directions kept (the control for how much project_bits removes:
                        after the logic stages the bit directions hold most of that norm)
  transplant_embedding  a fresh model (the stage's own seed) that keeps only the previous model's
                        token embedding W_E (GrokTransfer, arXiv 2504.13292; Gomezjurado 2026,
                        arXiv 2604.13082): does the representation alone carry the speed-up?
  shrink_perturb        every weight w -> shrink * w + (1 - shrink) * w_fresh, w_fresh that of a
                        new model from the stage's seed (shrink and perturb, Ash & Adams 2020,
                        arXiv 1910.08475): a warm start that keeps what it learned and regains
                        the fresh model's plasticity; curriculum.shrink < 1 applies it before
                        every chained stage
"""

from __future__ import annotations

import torch

from datagen.tables import BITS, walsh_basis

EDITS = (
    "none",
    "project_bits",
    "project_random",
    "rescale_matched",
    "transplant_embedding",
    "shrink_perturb",
)
N_NUMBERS = 1 << BITS  # tokens 0..127 are the integers (datagen/tables.py)


def bit_directions(W_E: torch.Tensor) -> torch.Tensor:
    """[BITS, d_model] orthonormal rows spanning the integer embeddings' single-bit components."""
    basis = torch.from_numpy(walsh_basis()).to(W_E.dtype)
    components = basis[[1 << i for i in range(BITS)]] @ W_E[:N_NUMBERS]  # [BITS, d_model]
    return torch.linalg.qr(components.T).Q.T


def random_directions(d_model: int, k: int, seed: int) -> torch.Tensor:
    """[k, d_model] orthonormal rows drawn from `seed`."""
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(d_model, k, generator=g, dtype=torch.float64)).Q.T


def project_out(W_E: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """W_E with the integer tokens' rows projected off the span of `directions` (orthonormal)."""
    out, Q = W_E.clone(), directions.to(W_E.dtype)
    out[:N_NUMBERS] -= (out[:N_NUMBERS] @ Q.T) @ Q
    return out


def edited(edit: str, previous: dict, fresh: dict, seed: int, shrink: float = 1.0) -> dict:
    """The starting weights of a stage: `previous` (the last stage's state dict) edited; `fresh`
    is the state dict of a new model from the stage's seed (what transplant_embedding keeps and
    shrink_perturb mixes in)."""
    if edit not in EDITS:
        raise ValueError(f"curriculum.edit={edit!r} is not one of {list(EDITS)}")
    W_E = previous["W_E"].double()  # projections in float64, stored as trained
    if edit == "project_bits":
        directions = bit_directions(W_E)
    elif edit == "project_random":
        directions = random_directions(W_E.shape[1], BITS, seed)
    if edit in ("project_bits", "project_random"):
        return previous | {"W_E": project_out(W_E, directions).to(previous["W_E"].dtype)}
    if edit == "rescale_matched":
        numbers = W_E[:N_NUMBERS]
        kept = project_out(W_E, bit_directions(W_E))[:N_NUMBERS].norm() / numbers.norm()
        out = W_E.clone()
        out[:N_NUMBERS] = numbers * kept
        return previous | {"W_E": out.to(previous["W_E"].dtype)}
    if edit == "transplant_embedding":
        return fresh | {"W_E": previous["W_E"].clone()}
    if edit == "shrink_perturb":
        return {
            k: shrink * v + (1 - shrink) * fresh[k] if v.is_floating_point() else v
            for k, v in previous.items()
        }
    return dict(previous)


def removed_norm_fraction(before: torch.Tensor, after: torch.Tensor) -> float:
    """The share of the integer tokens' squared embedding norm an edit removed."""
    b, a = before[:N_NUMBERS].double(), after[:N_NUMBERS].double()
    return float(1 - (a**2).sum() / (b**2).sum())
