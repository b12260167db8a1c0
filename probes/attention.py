"""Attention patterns per virtual layer (hence per recurrence step) and head."""
from __future__ import annotations

import torch


@torch.no_grad()
def attention_patterns(model, tokens) -> dict:
    """pattern [layer, example, head, query pos, key pos] for a few chosen examples, and its mean
    over the examples; layers are `model.layer_table()` labels."""
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("attn.hook_pattern"))
    V = len(model.layer_table())
    pattern = torch.stack([cache[f"blocks.{v}.attn.hook_pattern"] for v in range(V)])
    return {"pattern": pattern.numpy(), "mean": pattern.mean(1).numpy(),
            "layers": [v.label for v in model.layer_table()]}
