"""Attention patterns per virtual layer (hence per recurrence step) and head."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float, Int


@dataclass
class AttentionResult:
    """Attention patterns of a few examples per virtual layer (`layers`: model.layer_table()
    labels), and their mean over the examples."""

    pattern: Float[np.ndarray, "layer batch head query key"]
    mean: Float[np.ndarray, "layer head query key"]
    layers: list[str]


@torch.no_grad()
def attention_patterns(model, tokens: Int[torch.Tensor, "batch pos"]) -> AttentionResult:
    """Every virtual layer's attention pattern on `tokens`."""
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("attn.hook_pattern"))
    V = len(model.layer_table())
    pattern = torch.stack([cache[f"blocks.{v}.attn.hook_pattern"] for v in range(V)])
    return AttentionResult(
        pattern.numpy(), pattern.mean(1).numpy(), [v.label for v in model.layer_table()]
    )
