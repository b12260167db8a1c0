"""Mixture-of-experts MLP for the thinking block (MoEUT-style, Csordás et al. 2024).

Each token goes to the top-k of `n_experts` small MLPs. The gate is a sigmoid per expert, not a
softmax over experts: in a block that is re-applied at every recurrence step a token's weight for
one expert should not shrink because another expert scored high, and MoEUT found sigmoid gates
without renormalisation train stably in shared-layer stacks. Only the chosen experts run, so only
they receive gradient for that token.

Routing is logged per forward (`log`, shared with the model) so the balance regulariser can be
pooled over every step that reused these weights, and exposed through hook points
`mlp.hook_router` (gate scores [batch, pos, n_experts]) and `mlp.hook_experts` (chosen expert
indices [batch, pos, k]).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from grokloop.hooks import apply_hook


class MoEMLP(nn.Module):
    def __init__(self, d_model: int, n_experts: int, d_expert: int, top_k: int, act_fn: str):
        super().__init__()
        if not 1 <= top_k <= n_experts:
            raise ValueError(
                f"model.moe_top_k={top_k} must be between 1 and model.moe_experts={n_experts}"
            )
        self.top_k = top_k
        self.W_gate = nn.Parameter(torch.empty(d_model, n_experts))
        self.W_in = nn.Parameter(torch.empty(n_experts, d_model, d_expert))
        self.b_in = nn.Parameter(torch.zeros(n_experts, d_expert))
        self.W_out = nn.Parameter(torch.empty(n_experts, d_expert, d_model))
        self.b_out = nn.Parameter(torch.zeros(d_model))
        self.act = {
            "relu": F.relu,
            "gelu": F.gelu,
            "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
        }[act_fn]
        self.log: dict[str, list[torch.Tensor]] | None = None  # set by the model
        self.key = ""  # which core/layer, for the log

    def forward(self, x: torch.Tensor, hp) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])  # [tokens, d_model]
        logits = flat @ self.W_gate  # [tokens, experts]
        if self.log is not None:
            self.log.setdefault(self.key, []).append(logits)
        gate = apply_hook(
            hp, "mlp.hook_router", torch.sigmoid(logits).view(*shape[:-1], -1)
        ).reshape(logits.shape)
        weight, chosen = gate.topk(self.top_k, dim=-1)  # [tokens, k]
        chosen = apply_hook(hp, "mlp.hook_experts", chosen.view(*shape[:-1], -1)).reshape(
            chosen.shape
        )
        out = torch.zeros_like(flat)
        for e in range(self.W_in.shape[0]):
            token, slot = (chosen == e).nonzero(as_tuple=True)
            if len(token):
                h = self.act(flat[token] @ self.W_in[e] + self.b_in[e])
                out.index_add_(0, token, (h @ self.W_out[e]) * weight[token, slot, None])
        return (out + self.b_out).view(shape)


def balance_loss(log: dict[str, list[torch.Tensor]]) -> torch.Tensor:
    """Entropy regulariser, pooled over all the steps that reused each expert set.

    For each MoE layer, the routing distribution softmax(gate logits) is averaged over every token
    of every step; the loss is log(n_experts) - H(mean usage), summed over layers: 0 when usage is
    uniform, log(n_experts) when one expert takes everything (MoEUT's entropy regulariser)."""
    total = None
    for logits in log.values():
        usage = torch.cat(logits).float().softmax(-1).mean(0)  # [experts]
        term = math.log(len(usage)) + (usage * usage.clamp_min(1e-12).log()).sum()
        total = term if total is None else total + term
    if total is None:
        raise ValueError(
            "no routing was logged: the model has no mixture-of-experts core "
            "(set model.moe_experts > 0) or has not run forward yet"
        )
    return total
