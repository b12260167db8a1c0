"""The looped transformer: prelude -> core applied n_steps times (shared weights) -> coda -> unembed.

`n_steps = 1` is an ordinary transformer of n_prelude + n_core + n_coda layers; `n_steps` can be
changed at test time. Weights live in `prelude`, `cores` (a bank of one or more thinking blocks of
different sizes) and `coda`. Hook points live apart from the weights, one `VirtualBlock` per
*virtual layer* of the unrolled computation, named the TransformerLens way (`blocks.{v}.hook_...`)
so caches never overwrite one step with another and `transformer_lens.patching` and
`ActivationCache.accumulated_resid` work unchanged. `model.layer_table()` says which stage, step,
core and layer each virtual layer `v` is.

Input injection (recurrent-depth models, REFERENCES.md §4): none, add (state + e) or concat
(Linear([state, e]) -> d_model), where e is the prelude output; the initial state is e, zeros or
Gaussian noise.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformer_lens import ActivationCache, HookedRootModule
from transformer_lens.hook_points import HookPoint

from grokloop.config import ModelConfig
from grokloop.hooks import apply_hook, watched
from grokloop.moe import MoEMLP, balance_loss


@dataclass(frozen=True)
class VirtualLayer:
    index: int
    stage: str        # "prelude" | "core" | "coda"
    step: int | None  # 1-based recurrence step for core layers
    core: int | None  # which core of the bank
    layer: int        # layer index within its stage (or core)

    @property
    def label(self) -> str:
        if self.stage == "core":
            return f"s{self.step}.c{self.core}.L{self.layer}"
        return f"{self.stage}.L{self.layer}"


@dataclass(frozen=True)
class UnrolledLayer:
    """A virtual layer as something to run: its block, and what happens to the state before it."""
    block: nn.Module
    begins_loop: bool   # first core layer of step 1: the state so far becomes e, then the initial state
    starts_step: bool   # first layer of a step: input injection first


class VirtualBlock(nn.Module):
    """Hook points (no weights) for one virtual layer; names follow TransformerLens."""

    def __init__(self):
        super().__init__()
        self.hook_resid_pre = HookPoint()   # [batch, pos, d_model]
        self.hook_attn_out = HookPoint()    # [batch, pos, d_model]
        self.hook_resid_mid = HookPoint()   # [batch, pos, d_model]
        self.hook_mlp_out = HookPoint()     # [batch, pos, d_model]
        self.hook_resid_post = HookPoint()  # [batch, pos, d_model]
        self.attn = nn.Module()
        for name in ("hook_q", "hook_k", "hook_v", "hook_z",   # [batch, pos, head, d_head]
                     "hook_attn_scores", "hook_pattern"):      # [batch, head, q_pos, k_pos]
            setattr(self.attn, name, HookPoint())
        self.mlp = nn.Module()
        self.mlp.hook_post = HookPoint()    # [batch, pos, d_mlp]  (dense MLP)
        self.mlp.hook_router = HookPoint()  # [batch, pos, n_experts] gate scores (MoE)
        self.mlp.hook_experts = HookPoint() # [batch, pos, k] chosen experts (MoE)


class LayerNorm(nn.Module):
    def __init__(self, d_model: int, eps: float = 1e-5):
        super().__init__()
        self.w = nn.Parameter(torch.ones(d_model))
        self.b = nn.Parameter(torch.zeros(d_model))
        self.eps = eps
        self.hook_scale = HookPoint()       # [batch, pos, 1]
        self.hook_normalized = HookPoint()  # [batch, pos, d_model]

    def forward(self, x):
        if not (self.hook_scale._forward_hooks or self.hook_normalized._forward_hooks):
            # nobody looks inside: the fused kernel (the same function; its backward is far cheaper)
            return F.layer_norm(x, x.shape[-1:], self.w, self.b, self.eps)
        x = x - x.mean(-1, keepdim=True)
        scale = self.hook_scale((x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        return self.hook_normalized(x / scale) * self.w + self.b


def make_norm(cfg: ModelConfig) -> nn.Module:
    return LayerNorm(cfg.d_model) if cfg.normalization == "LN" else nn.Identity()


def rotary(x: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding (Su et al. 2021) on [batch, pos, head, d_head]."""
    _, n_pos, _, d = x.shape
    half = d // 2
    freq = 10000 ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)
    angle = torch.arange(n_pos, device=x.device, dtype=torch.float32)[:, None] * freq  # [pos, half]
    cos, sin = angle.cos()[None, :, None].to(x.dtype), angle.sin()[None, :, None].to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:2 * half]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos, x[..., 2 * half:]], dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.W_QKV = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.W_O = nn.Linear(cfg.d_model, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, hp, query_pos=None, from_pos: int = 0):
        B, P, _ = x.shape
        H, D = self.cfg.n_heads, self.cfg.d_head
        q, k, v = self.W_QKV(x).view(B, P, 3, H, D).unbind(2)  # each [batch, pos, head, d_head]
        if self.cfg.positional == "rotary":
            q, k = rotary(q), rotary(k)
        if from_pos:  # queries from_pos.. only, attending to every key up to themselves
            keep = torch.arange(P, device=x.device)[None] <= torch.arange(from_pos, P, device=x.device)[:, None]
            z = F.scaled_dot_product_attention(q[:, from_pos:].transpose(1, 2), k.transpose(1, 2),
                                               v.transpose(1, 2), attn_mask=keep,
                                               dropout_p=self.cfg.dropout if self.training else 0.0)
            return self.W_O(z.transpose(1, 2).reshape(B, P - from_pos, H * D))
        if query_pos is not None:  # only one query per example: [batch, 1, d_model] out
            rows = torch.arange(B, device=x.device)
            q = q[rows, query_pos][:, None]                          # [batch, 1, head, d_head]
            keep = torch.arange(P, device=x.device)[None] <= query_pos[:, None]  # causal [batch, pos]
            z = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                               attn_mask=keep[:, None, None, :],
                                               dropout_p=self.cfg.dropout if self.training else 0.0)
            return self.W_O(z.transpose(1, 2).reshape(B, 1, H * D))
        q, k, v = apply_hook(hp, "attn.hook_q", q), apply_hook(hp, "attn.hook_k", k), apply_hook(hp, "attn.hook_v", v)
        if hp is None:  # fast path: the fused kernel when nobody looks at the pattern
            z = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                               is_causal=True, dropout_p=self.cfg.dropout if self.training
                                               else 0.0).transpose(1, 2)
        else:
            scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(D)
            mask = torch.ones(P, P, dtype=torch.bool, device=x.device).triu(1)
            scores = apply_hook(hp, "attn.hook_attn_scores", scores.masked_fill(mask, float("-inf")))
            pattern = apply_hook(hp, "attn.hook_pattern", self.drop(scores.softmax(-1)))
            z = torch.einsum("bhqk,bkhd->bqhd", pattern, v)
        z = apply_hook(hp, "attn.hook_z", z)                          # [batch, pos, head, d_head]
        return self.W_O(z.reshape(B, P, H * D))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.W_in = nn.Linear(cfg.d_model, cfg.d_mlp)
        self.W_out = nn.Linear(cfg.d_mlp, cfg.d_model)
        self.act = nn.ReLU() if cfg.act_fn == "relu" else nn.GELU()

    def forward(self, x, hp):
        return self.W_out(apply_hook(hp, "mlp.hook_post", self.act(self.W_in(x))))


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(ln1(x)), then + mlp(ln2(x))."""

    def __init__(self, cfg: ModelConfig, moe: bool = False):
        super().__init__()
        self.ln1, self.ln2 = make_norm(cfg), make_norm(cfg)
        self.attn = Attention(cfg)
        self.mlp = (MoEMLP(cfg.d_model, cfg.moe_experts, cfg.moe_d_expert, cfg.moe_top_k, cfg.act_fn)
                    if moe else MLP(cfg))
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, hp=None, query_pos=None, from_pos: int = 0):
        if from_pos:
            # Positions before from_pos are known (causal tracing patches a later position): only
            # the residual at from_pos.. is computed, [batch, pos - from_pos, d_model].
            x1 = x[:, from_pos:] + self.drop(self.attn(self.ln1(x), None, from_pos=from_pos))
            return x1 + self.drop(self.mlp(self.ln2(x1), None))
        if query_pos is not None:
            # Only the residual at query_pos is needed downstream (the loss reads one position and
            # attention is causal), so the last layer computes its query and MLP there alone.
            rows = torch.arange(len(x), device=x.device)
            x1 = x[rows, query_pos][:, None] + self.drop(self.attn(self.ln1(x), None, query_pos))
            return (x1 + self.drop(self.mlp(self.ln2(x1), None)))[:, 0]   # [batch, d_model]
        x = apply_hook(hp, "hook_resid_pre", x)
        x = apply_hook(hp, "hook_resid_mid", x + apply_hook(hp, "hook_attn_out", self.drop(self.attn(self.ln1(x), hp))))
        x = x + apply_hook(hp, "hook_mlp_out", self.drop(self.mlp(self.ln2(x), hp)))
        return apply_hook(hp, "hook_resid_post", x)


class LoopedTransformer(HookedRootModule):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.W_E = nn.Parameter(torch.empty(cfg.d_vocab, cfg.d_model))
        self.W_pos = nn.Parameter(torch.empty(cfg.n_ctx, cfg.d_model)) if cfg.positional == "learned" else None
        self.prelude = nn.ModuleList(Block(cfg) for _ in range(cfg.n_prelude))
        moe = cfg.moe_experts > 0
        self.cores = nn.ModuleList(nn.ModuleList(Block(cfg, moe) for _ in range(n)) for n in cfg.bank)
        self._routing: dict[str, list[torch.Tensor]] = {}  # MoE gate logits of the last forward
        for c, core in enumerate(self.cores):
            for i, block in enumerate(core):
                if moe:
                    block.mlp.log, block.mlp.key = self._routing, f"c{c}.L{i}"
        self.coda = nn.ModuleList(Block(cfg) for _ in range(cfg.n_coda))
        self.W_inject = nn.Linear(2 * cfg.d_model, cfg.d_model) if cfg.injection == "concat" else None
        self.ln_final = LayerNorm(cfg.d_model) if cfg.normalization == "LN" else nn.Identity()
        self.W_U_own = None if cfg.tied_embeddings else nn.Parameter(torch.empty(cfg.d_model, cfg.d_vocab))
        self.b_U = nn.Parameter(torch.zeros(cfg.d_vocab))
        self.drop = nn.Dropout(cfg.dropout)
        self.hook_embed, self.hook_pos_embed = HookPoint(), HookPoint()  # [batch, pos, d_model]
        self.blocks = nn.ModuleList()   # VirtualBlocks, grown on demand
        self.steps = nn.ModuleList()    # per-step hooks: steps.{s}.hook_state
        self._init_weights()
        # A TransformerLens-style cfg view for ActivationCache and transformer_lens.patching.
        self.cfg = SimpleNamespace(
            n_layers=0, d_model=cfg.d_model, n_heads=cfg.n_heads, d_head=cfg.d_head,
            d_mlp=cfg.d_mlp, d_vocab=cfg.d_vocab, n_ctx=cfg.n_ctx, device="cpu",
            normalization_type="LN" if cfg.normalization == "LN" else None, attn_only=False,
            n_key_value_heads=None, use_split_qkv_input=False, use_attn_in=False,
            use_attn_result=False, positional_embedding_type="standard")
        self.set_schedule([0] * cfg.n_steps)

    def _init_weights(self):
        """The one place weights are initialised: GPT-2 style, output projections scaled."""
        std = self.config.init_std
        n_virtual = self.config.n_prelude + sum(self.config.bank) * self.config.n_steps + self.config.n_coda
        for name, p in self.named_parameters():
            if name.endswith(".w"):                      # LayerNorm gains
                nn.init.ones_(p)
            elif p.dim() == 1 or name.endswith(".b_in"):  # biases
                nn.init.zeros_(p)
            elif name.endswith(("W_O.weight", "W_out.weight", "mlp.W_out")):
                nn.init.normal_(p, std=std / math.sqrt(2 * max(n_virtual, 1)))
            else:
                nn.init.normal_(p, std=std)

    # --- schedule and virtual layers -------------------------------------------------------
    @property
    def W_U(self) -> torch.Tensor:
        return self.W_E.T if self.W_U_own is None else self.W_U_own

    def set_n_steps(self, n_steps: int) -> None:
        self.set_schedule([0] * n_steps)

    def set_schedule(self, schedule: list[int]) -> None:
        """Default step schedule (core index per step); grows hook points, never touches weights."""
        self._check_schedule(schedule)
        self.schedule = list(schedule)
        self.n_steps = len(schedule)
        self.cfg.n_layers = len(self.layer_table())
        self._ensure_hooks(self.cfg.n_layers, self.n_steps)

    def _check_schedule(self, schedule):
        if len(schedule) < 1:
            raise ValueError("n_steps must be at least 1")
        bad = [c for c in schedule if not 0 <= c < len(self.cores)]
        if bad:
            raise ValueError(f"schedule names core {bad[0]} but the bank has {len(self.cores)} cores")

    def _ensure_hooks(self, n_layers: int, n_steps: int) -> None:
        grew = False
        while len(self.blocks) < n_layers:
            self.blocks.append(VirtualBlock()); grew = True
        while len(self.steps) < n_steps:
            step = nn.Module(); step.hook_state = HookPoint(); self.steps.append(step); grew = True
        if grew:
            self.setup()  # register the new hook points with HookedRootModule

    def layer_table(self, schedule: list[int] | None = None) -> list[VirtualLayer]:
        schedule = self.schedule if schedule is None else schedule
        rows = [VirtualLayer(0, "prelude", None, None, i) for i in range(self.config.n_prelude)]
        for s, c in enumerate(schedule):
            rows += [VirtualLayer(0, "core", s + 1, c, i) for i in range(len(self.cores[c]))]
        rows += [VirtualLayer(0, "coda", None, None, i) for i in range(self.config.n_coda)]
        return [VirtualLayer(v, r.stage, r.step, r.core, r.layer) for v, r in enumerate(rows)]

    def _resolve(self, n_steps, schedule):
        if schedule is None:
            schedule = self.schedule if n_steps is None else [0] * n_steps
        self._check_schedule(schedule)
        n_pre = self.config.n_prelude
        self._ensure_hooks(n_pre + sum(len(self.cores[c]) for c in schedule) + self.config.n_coda,
                           len(schedule))
        return schedule

    def run_with_cache(self, *args, remove_batch_dim: bool = False, **kwargs):
        """As HookedRootModule's, but the cache is an ActivationCache (accumulated_resid etc.)."""
        out, cache = super().run_with_cache(*args, remove_batch_dim=remove_batch_dim, **kwargs)
        return out, ActivationCache(cache, self, has_batch_dim=not remove_batch_dim)

    def moe_balance_loss(self) -> torch.Tensor:
        """The MoE balance regulariser of the last forward, pooled over all its steps."""
        return balance_loss(self._routing)

    # --- forward ------------------------------------------------------------------------------
    def embed(self, tokens):
        x = self.hook_embed(self.W_E[tokens])                        # [batch, pos, d_model]
        if self.W_pos is not None:
            x = x + self.hook_pos_embed(self.W_pos[: tokens.shape[1]])
        return self.drop(x)

    def _inject(self, state, e, step_hooks):
        if self.config.injection == "add":
            state = state + e
        elif self.config.injection == "concat":
            state = self.W_inject(torch.cat([state, e], dim=-1))
        return step_hooks.hook_state(state) if step_hooks is not None else state

    def _initial_state(self, e):
        if self.config.init_state == "prelude":
            return e
        if self.config.init_state == "zeros":
            return torch.zeros_like(e)
        return torch.randn_like(e) * self.config.init_std

    def unembed(self, x):
        return self.ln_final(x) @ self.W_U + self.b_U                 # [batch, pos, d_vocab]

    def _run_stack(self, layers, x, v, hooked, query_pos=None):
        """Run `layers` from virtual layer v; with query_pos the last layer returns
        [batch, d_model] at those positions only (no hooks: the training fast path)."""
        for i, layer in enumerate(layers):
            last = query_pos is not None and i == len(layers) - 1
            hp = self.blocks[v] if hooked and not last and watched(self.blocks[v]) else None
            x = layer(x, hp, query_pos if last else None)
            v += 1
        return x, v

    def forward(self, tokens, n_steps: int | None = None, schedule: list[int] | None = None,
                grad_last_k: int | None = None, return_type: str | None = "logits"):
        """tokens [batch, pos] -> logits [batch, pos, d_vocab] (TransformerLens call shape)."""
        logits = self.readout_steps(tokens, n_steps, schedule=schedule, grad_last_k=grad_last_k,
                                    every_step=False)[-1]
        return logits if return_type == "logits" else None

    # --- the unrolled computation as a list of layers (probes: patching, surgery) -----------
    def unrolled(self, schedule: list[int] | None = None) -> list[UnrolledLayer]:
        """One entry per virtual layer, in order; `run_unrolled` runs any slice or rearrangement."""
        schedule = self._resolve(None, schedule)
        layers = [UnrolledLayer(b, False, False) for b in self.prelude]
        for s, c in enumerate(schedule):
            layers += [UnrolledLayer(b, s == 0 and i == 0, i == 0) for i, b in enumerate(self.cores[c])]
        return layers + [UnrolledLayer(b, False, False) for b in self.coda]

    def run_unrolled(self, x, layers: list[UnrolledLayer], e=None, keep_states: bool = False):
        """Run `layers` on the residual x (no hooks). `e` is the prelude output, needed when the
        layers start past the prelude. Returns x, or with keep_states the states after every
        layer as well: S[i + 1] of the slice."""
        states = []
        for layer in layers:
            if layer.begins_loop:
                e, x = x, self._initial_state(x)
            if layer.starts_step:
                x = self._inject(x, e, None)
            x = layer.block(x)
            if keep_states:
                states.append(x)
        return (x, states) if keep_states else x

    def residual_states(self, tokens, schedule: list[int] | None = None):
        """(S, e): S [n_virtual + 1, batch, pos, d_model], S[0] the embedding and S[i] the state
        after virtual layer i - 1 (before any injection); e the prelude output (the embedding
        when there is no prelude)."""
        layers = self.unrolled(schedule)
        x0 = self.embed(tokens)
        _, states = self.run_unrolled(x0, layers, keep_states=True)
        S = torch.stack([x0] + states)
        return S, S[len(self.prelude)]

    # --- one step at a time, without hooks (the halting selector's rollouts) -----------------
    def begin(self, tokens) -> tuple[torch.Tensor, torch.Tensor]:
        """(prelude output e, initial state), both [batch, pos, d_model]."""
        self._routing.clear()
        e, _ = self._run_stack(self.prelude, self.embed(tokens), 0, False)
        return e, self._initial_state(e)

    def think(self, state, e, core: int = 0) -> torch.Tensor:
        """One recurrence step with core `core` of the bank: the next state."""
        return self._run_stack(self.cores[core], self._inject(state, e, None), 0, False)[0]

    def read(self, state, positions) -> torch.Tensor:
        """The answer if the model stopped at `state`: logits [batch, d_vocab] at `positions`."""
        y, _ = self._run_stack(self.coda, state, 0, False)
        return self.unembed(y[torch.arange(len(y), device=y.device), positions])

    def readout_steps(self, tokens, n_steps: int | None = None, positions=None,
                      schedule: list[int] | None = None, grad_last_k: int | None = None,
                      every_step: bool = True, answer_only: bool = False) -> torch.Tensor:
        """Logits if the model stopped after each step: [n_steps, batch, (pos,) d_vocab].

        `positions` [batch] picks one position per example (the answer position); the coda runs
        on the whole prefix each time because its attention needs it. Only the final readout runs
        through hook points, so caches hold exactly one unrolled computation.
        `grad_last_k`: truncated backpropagation, gradients flow through the last k steps only.
        `answer_only` (needs `positions`, `every_step=False`): the final layer is computed at the
        answer positions only and skips its hook points; identical logits, much less work.
        """
        if answer_only and (positions is None or every_step):
            raise ValueError("answer_only needs positions and every_step=False")
        schedule = self._resolve(n_steps, schedule)
        self._routing.clear()
        x = self.embed(tokens)
        x, v = self._run_stack(self.prelude, x, 0, True)
        e, state = x, self._initial_state(x)
        outs = []
        for s, c in enumerate(schedule):
            if grad_last_k is not None and s == len(schedule) - grad_last_k:
                state = state.detach()
            last = s == len(schedule) - 1
            fast = answer_only and last and not self.coda
            state, v = self._run_stack(self.cores[c], self._inject(state, e, self.steps[s]), v, True,
                                       positions if fast else None)
            if every_step or last:
                y, _ = self._run_stack(self.coda, state, v, last, positions if answer_only else None)
                if positions is not None and y.dim() == 3:
                    y = y[torch.arange(len(y), device=y.device), positions]  # [batch, d_model]
                outs.append(self.unembed(y))
        return torch.stack(outs)
