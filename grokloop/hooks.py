"""Calling a hook point by name on a VirtualBlock, or doing nothing when running without hooks."""

from __future__ import annotations

import torch


def apply_hook(hp, name: str, x: torch.Tensor) -> torch.Tensor:
    """Apply hook point `name` (e.g. "attn.hook_z") of VirtualBlock `hp`; identity if hp is None."""
    if hp is None:
        return x
    obj = hp
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj(x)


def watched(hp) -> bool:
    """Whether any hook point of VirtualBlock `hp` has a hook attached. A block nobody watches
    runs without its hook points, on fused kernels (scaled_dot_product_attention, layer_norm)."""
    return any(
        m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
        for m in hp.modules()
        if m is not hp
    )
