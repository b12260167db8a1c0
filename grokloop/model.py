"""The looped transformer: prelude -> core applied n_steps times (shared weights) -> coda -> unembed.

`n_steps = 1` is an ordinary transformer of n_prelude + n_core + n_coda layers, for every input
injection mode; `n_steps` can be changed at test time. Weights live in `prelude`, `cores` (a bank
of one or more thinking blocks of different sizes) and `coda`.

The computation is a list of *virtual layers* (`model.unrolled()`): the prelude layers, every
layer of every recurrence step, the coda. One function runs any list of them (`run_layers`), and
everything calls it: the forward pass, the per-step readout, the step-at-a-time primitives of the
halting selector (`enter_loop`, `step`, `read`) and the probes (`residual_states`, `before_layer`).

Between virtual layers the only thing that happens to the state is `before_layer`: at the loop's
entry the state so far becomes e (the prelude output) and the initial state is made from it; at
the start of each step after the first, the optional feedback channel adds the embedding of the
token the state decodes to, and input injection mixes e back in (none, add: state + e, concat:
Linear([state, e])). Step 1 does not inject when the initial state is e itself, so
`n_steps = 1` is the plain stack (docs/references.md: recurrent depth, Geiping et al. 2025).

With model.memory=facts the last layer of each core also reads a fact memory after its MLP
(grokloop/memory.py), so every recurrence step ends with a lookup; the read is part of that
block, so every path that runs the block reads it. With model.memory=none nothing changes.

Hooks live apart from the weights, one `VirtualBlock` per virtual layer, named the TransformerLens
way, and no hook point fires twice in a forward (table in README.md, "Hook points"):
    hook_embed, hook_pos_embed                  the embedding                [batch, pos, d_model]
    blocks.{v}.hook_resid_pre                   S[v], the state entering virtual layer v, before
                                                its loop entry / injection (= resid_post of v - 1)
    steps.{s}.hook_state                        the state entering step s (0-based) after loop entry
    steps.{s}.hook_injected                     ... after input injection: what the core reads
    blocks.{v}.ln1.hook_scale / hook_normalized  (and ln2) LayerNorm of virtual layer v
    blocks.{v}.attn.hook_q/k/v/z/attn_scores/pattern, hook_attn_out, hook_resid_mid,
    blocks.{v}.mlp.hook_post (or hook_router / hook_experts), hook_mlp_out, hook_resid_post
    ln_final.hook_scale / hook_normalized
    steps.{s}.memory.hook_query/scores/slots/weights/read   the fact memory's read at the end of
                                                step s (model.memory=facts only; grokloop/memory.py)
So `ActivationCache.accumulated_resid()` is exactly the logit lens's S[0..V].
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformer_lens import ActivationCache, HookedRootModule
from transformer_lens.hook_points import HookPoint

from grokloop.config import ModelConfig
from grokloop.entity_keys import EntityKeys
from grokloop.hooks import apply_hook, watched
from grokloop.memory import FactMemory, MemoryHooks
from grokloop.moe import MoEMLP, balance_loss


@dataclass(frozen=True)
class VirtualLayer:
    index: int
    stage: str  # "prelude" | "core" | "coda"
    step: int | None  # 1-based recurrence step for core layers
    core: int | None  # which core of the bank
    layer: int  # layer index within its stage (or core)
    region: int | None = None  # model.loops: which loop region (0-based) the step belongs to

    @property
    def label(self) -> str:
        if self.stage == "core":
            where = "" if self.region is None else f"r{self.region}."
            return f"{where}s{self.step}.c{self.core}.L{self.layer}"
        return f"{self.stage}.L{self.layer}"


@dataclass(frozen=True)
class UnrolledLayer:
    """A virtual layer as something to run: its block, and what happens to the state before it."""

    block: nn.Module
    index: int  # virtual layer v (its hook points are blocks.{v})
    step: int | None  # 0-based recurrence step of a core layer (its hooks are steps.{step})
    begins_loop: (
        bool  # first core layer of step 1: the state so far becomes e, then the initial state
    )
    starts_step: bool  # first layer of a step
    injects: bool  # input injection before this layer


# --- hook points, one set per virtual layer ---------------------------------------------------
class NormHooks(nn.Module):
    def __init__(self):
        super().__init__()
        self.hook_scale = HookPoint()  # [batch, pos, 1]
        self.hook_normalized = HookPoint()  # [batch, pos, d_model]


class AttnHooks(nn.Module):
    """Attention hook points of one virtual layer, and TransformerLens's per-head weight views
    (W_Q/W_K/W_V [head, d_model, d_head], W_O [head, d_head, d_model]) onto the weights that
    virtual layer runs, for QK/OV circuit analysis."""

    def __init__(self):
        super().__init__()
        for name in (
            "hook_q",
            "hook_k",
            "hook_v",
            "hook_z",  # [batch, pos, head, d_head]
            "hook_attn_scores",
            "hook_pattern",
        ):  # [batch, head, q_pos, k_pos]
            setattr(self, name, HookPoint())
        self.__dict__["_attn"] = None  # the weight module; not a submodule (no duplicate params)

    def _weights(self) -> "Attention":
        a = self.__dict__["_attn"]
        if a is None:
            raise RuntimeError("this virtual layer is not part of the current schedule")
        return a

    def _qkv(self, i: int, bias: bool):
        a = self._weights()
        H, D, d = a.cfg.n_heads, a.cfg.d_head, a.cfg.d_model
        if bias:
            return a.W_QKV.bias[i * d : (i + 1) * d].view(H, D)
        return a.W_QKV.weight[i * d : (i + 1) * d].T.reshape(d, H, D).permute(1, 0, 2)

    W_Q = property(lambda self: self._qkv(0, False))
    W_K = property(lambda self: self._qkv(1, False))
    W_V = property(lambda self: self._qkv(2, False))
    b_Q = property(lambda self: self._qkv(0, True))
    b_K = property(lambda self: self._qkv(1, True))
    b_V = property(lambda self: self._qkv(2, True))

    @property
    def W_O(self) -> torch.Tensor:
        a = self._weights()
        return a.W_O.weight.T.reshape(a.cfg.n_heads, a.cfg.d_head, a.cfg.d_model)

    @property
    def b_O(self) -> torch.Tensor:
        return self._weights().W_O.bias


class VirtualBlock(nn.Module):
    """Hook points (no weights) for one virtual layer; names follow TransformerLens."""

    def __init__(self):
        super().__init__()
        self.hook_resid_pre = HookPoint()  # [batch, pos, d_model]
        self.hook_attn_out = HookPoint()  # [batch, pos, d_model]
        self.hook_resid_mid = HookPoint()  # [batch, pos, d_model]
        self.hook_mlp_out = HookPoint()  # [batch, pos, d_model]
        self.hook_resid_post = HookPoint()  # [batch, pos, d_model]
        self.ln1, self.ln2 = NormHooks(), NormHooks()
        self.attn = AttnHooks()
        self.mlp = nn.Module()
        self.mlp.hook_post = HookPoint()  # [batch, pos, d_mlp]  (dense MLP)
        self.mlp.hook_router = HookPoint()  # [batch, pos, n_experts] gate scores (MoE)
        self.mlp.hook_experts = HookPoint()  # [batch, pos, k] chosen experts (MoE)

    def bind(self, block: "Block") -> None:
        self.attn.__dict__["_attn"] = block.attn


class StepHooks(nn.Module):
    def __init__(self, memory: bool = False):
        super().__init__()
        self.hook_state = HookPoint()  # [batch, pos, d_model] entering the step
        self.hook_injected = HookPoint()  # [batch, pos, d_model] after input injection
        if memory:  # only models with a memory have these hook points
            self.memory = MemoryHooks()  # steps.{s}.memory.hook_query/scores/slots/weights/read


# --- the layers ----------------------------------------------------------------------------------
class LayerNorm(nn.Module):
    def __init__(self, d_model: int, eps: float = 1e-5, own_hooks: bool = False):
        super().__init__()
        self.w = nn.Parameter(torch.ones(d_model))
        self.b = nn.Parameter(torch.zeros(d_model))
        self.eps = eps
        if own_hooks:  # ln_final runs once per forward, so its hook points can live on it
            self.hook_scale = HookPoint()  # [batch, pos, 1]
            self.hook_normalized = HookPoint()  # [batch, pos, d_model]

    def forward(self, x, hooks: nn.Module | None = None):
        if hooks is None or not watched(hooks):
            # nobody looks inside: the fused kernel (the same function; its backward is far cheaper)
            return F.layer_norm(x, x.shape[-1:], self.w, self.b, self.eps)
        x = x - x.mean(-1, keepdim=True)
        scale = hooks.hook_scale((x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        return hooks.hook_normalized(x / scale) * self.w + self.b


class NoNorm(nn.Identity):
    def forward(self, x, hooks=None):
        return x


def make_norm(cfg: ModelConfig, own_hooks: bool = False) -> nn.Module:
    return LayerNorm(cfg.d_model, own_hooks=own_hooks) if cfg.normalization == "LN" else NoNorm()


def activation(name: str) -> nn.Module:
    """relu, gelu (exact) or gelu_tanh (the tanh approximation GPT-2 and the authors' code use)."""
    return {"relu": nn.ReLU(), "gelu": nn.GELU(), "gelu_tanh": nn.GELU(approximate="tanh")}[name]


def rotary(
    x: torch.Tensor, positions: torch.Tensor | None = None, n_pos: int | None = None
) -> torch.Tensor:
    """Rotary position embedding (Su et al. 2021) on [batch, pos, head, d_head]: each pair
    (x1_i, x2_i) = (x[i], x[i + d/2]) rotated by position * 10000^(-i / (d/2)) (an odd d's last
    feature left as it is). With `positions` [batch] (< n_pos), x [batch, 1, head, d_head] holds
    each example's vector at its position. For even d written as x * [cos, cos] + roll(x, d/2) *
    [-sin, sin], bit for bit the pairwise formula (negating is exact, adding commutes) with no
    slices, whose backward fills zeros: 1.9x faster forward and backward at the k-hop shape."""
    d = x.shape[-1]
    half = d // 2
    cos, sin = rotary_tables(x.shape[1] if positions is None else n_pos, half, x.device, x.dtype)
    if positions is not None:  # [1, pos, 1, 2 half] -> [batch, 1, 1, 2 half]
        cos, sin = cos[0, positions][:, None], sin[0, positions][:, None]
    if d % 2 == 0:
        return x * cos + x.roll(half, -1) * sin
    cos, sin = cos[..., :half], sin[..., half:]
    x1, x2 = x[..., :half], x[..., half : 2 * half]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos, x[..., 2 * half :]], dim=-1)


@functools.lru_cache(maxsize=64)  # every attention call of every step asks for the same few
def rotary_tables(n_pos: int, half: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """([cos, cos], [-sin, sin]) [1, pos, 1, 2 half] for `rotary`. Cached and shared: callers
    must not modify them in place. Built outside inference mode, so a table cached there is one
    a training step may save for backward."""
    with torch.inference_mode(False):
        freq = 10000 ** (-torch.arange(half, device=device, dtype=torch.float32) / half)
        angle = torch.arange(n_pos, device=device, dtype=torch.float32)[:, None] * freq
        cos, sin = angle.cos().to(dtype), angle.sin().to(dtype)  # [pos, half]
        return torch.cat([cos, cos], -1)[None, :, None], torch.cat([-sin, sin], -1)[None, :, None]


@functools.lru_cache(maxsize=64)  # every attention call of every step asks for the same few
def attention_bias(n_heads: int, n_pos: int, alibi: bool, window: int, device=None) -> torch.Tensor:
    """[head, query, key] additive attention bias: -inf above the diagonal (causal) and, with
    `window` > 0, at keys `window` or more positions back; with `alibi`, ALiBi's -m_h * (query -
    key) elsewhere, slopes m_h = 2^(-8 h / n_heads), h = 1..n_heads (Press et al., "Train short,
    test long", arXiv 2108.12409). Cached and shared: callers must not modify it in place."""
    pos = torch.arange(n_pos, device=device)
    distance = (pos[:, None] - pos[None]).float()
    slopes = 2.0 ** (-8.0 * torch.arange(1, n_heads + 1, device=device) / n_heads)
    bias = (
        -slopes[:, None, None] * distance
        if alibi
        else torch.zeros(n_heads, n_pos, n_pos, device=device)
    )
    masked = (distance < 0) | ((distance >= window) if window else False)
    return bias.masked_fill(masked, float("-inf"))


def fused_attention_pays(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether scaled_dot_product_attention's fused kernel beats the explicit softmax(QK^T)V in
    a training step (forward and backward). It does on a GPU, and on the CPU in fp32 (within 7%
    up to 16 positions, faster beyond). On the CPU in bf16 its flash kernel was 1.6-6.4x slower
    than the explicit path at every length from 4 to 256 positions (`python
    bench/bench_attention.py`, bench/README.md); in a bf16 training step of the small
    composition shape it had taken half the time."""
    return device.type != "cpu" or dtype != torch.bfloat16


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.W_QKV = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.W_O = nn.Linear(cfg.d_model, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)

    def bias(self, n_pos: int, device, dtype) -> torch.Tensor | None:
        """The causal mask as an additive bias [head, query, key] when ALiBi or a window change
        it; else None, and callers pass boolean masks, which let the fused kernel skip the
        masked half."""
        if not (self.cfg.alibi or self.cfg.attention_window):
            return None
        return attention_bias(
            self.cfg.n_heads, n_pos, self.cfg.alibi, self.cfg.attention_window, device
        ).to(dtype)

    def one_query(self, x, query_pos) -> torch.Tensor:
        """Attention output [batch, 1, d_model] at one position per example, query_pos [batch]
        (the training fast path's last layer): keys and values at every position, the query
        projected at query_pos alone, as nobody reads the others (on a 1-layer full-batch
        curriculum stage a third of its QKV projection and the backward of a gather)."""
        B, P, d = x.shape
        H, D = self.cfg.n_heads, self.cfg.d_head
        rows = torch.arange(B, device=x.device)
        W, b = self.W_QKV.weight, self.W_QKV.bias
        q = F.linear(x[rows, query_pos], W[:d], b[:d]).view(B, 1, H, D)  # [batch, 1, head, d_head]
        k, v = F.linear(x, W[d:], b[d:]).view(B, P, 2, H, D).unbind(2)  # each [batch, pos, ...]
        if self.cfg.positional == "rotary":
            q, k = rotary(q, query_pos, P), rotary(k)
        bias = self.bias(P, x.device, q.dtype)
        keep = torch.arange(P, device=x.device)[None] <= query_pos[:, None]  # causal [batch, pos]
        keep = (
            keep[:, None, None, :]
            if bias is None
            else bias[:, query_pos].transpose(0, 1)[:, :, None]
        )
        z = self.attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), keep)
        return self.W_O(z.transpose(1, 2).reshape(B, 1, H * D))

    def attend(self, q, k, v, mask=None) -> torch.Tensor:
        """softmax(q k^T / sqrt(d_head) + mask) v over [batch, head, pos, d_head], with dropout
        on the pattern in training; `mask` as scaled_dot_product_attention takes it (bool: True
        attends; float: added; None: causal). The fused kernel where it is the faster one
        (`fused_attention_pays`), else the same computation written out."""
        p_drop = self.cfg.dropout if self.training else 0.0
        if fused_attention_pays(q.device, q.dtype):
            return F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=mask is None, dropout_p=p_drop
            )
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        if mask is None:  # causal, as is_causal above
            mask = attention_bias(q.shape[1], scores.shape[-1], False, 0, q.device).to(scores.dtype)
        scores = (
            scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
        )
        return self.drop(scores.softmax(-1)) @ v

    def forward(self, x, hp, query_pos=None, from_pos: int = 0):
        B, P, _ = x.shape
        H, D = self.cfg.n_heads, self.cfg.d_head
        if query_pos is not None and not from_pos:
            return self.one_query(x, query_pos)
        q, k, v = self.W_QKV(x).view(B, P, 3, H, D).unbind(2)  # each [batch, pos, head, d_head]
        if self.cfg.positional == "rotary":
            q, k = rotary(q), rotary(k)
        bias = self.bias(P, x.device, q.dtype)
        if from_pos:  # queries from_pos.. only, attending to every key up to themselves
            keep = (
                torch.arange(P, device=x.device)[None]
                <= torch.arange(from_pos, P, device=x.device)[:, None]
            )
            keep = keep if bias is None else bias[:, from_pos:]
            z = self.attend(
                q[:, from_pos:].transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), keep
            )
            return self.W_O(z.transpose(1, 2).reshape(B, P - from_pos, H * D))
        q, k, v = (
            apply_hook(hp, "attn.hook_q", q),
            apply_hook(hp, "attn.hook_k", k),
            apply_hook(hp, "attn.hook_v", v),
        )
        if hp is None:  # nobody looks at the pattern
            z = self.attend(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), bias
            ).transpose(1, 2)
        else:
            scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(D)
            causal = attention_bias(H, P, False, 0, x.device) if bias is None else bias
            scores = scores + causal.to(scores.dtype)
            scores = apply_hook(hp, "attn.hook_attn_scores", scores)
            pattern = apply_hook(hp, "attn.hook_pattern", self.drop(scores.softmax(-1)))
            z = torch.einsum("bhqk,bkhd->bqhd", pattern, v)
        z = apply_hook(hp, "attn.hook_z", z)  # [batch, pos, head, d_head]
        return self.W_O(z.reshape(B, P, H * D))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.W_in = nn.Linear(cfg.d_model, cfg.d_mlp)
        self.W_out = nn.Linear(cfg.d_mlp, cfg.d_model)
        self.act = activation(cfg.act_fn)

    def forward(self, x, hp):
        return self.W_out(apply_hook(hp, "mlp.hook_post", self.act(self.W_in(x))))


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(ln1(x)), then + mlp(ln2(x)), then, in the last layer
    of a core of a model with a fact memory, + the memory's read. `hp` is the VirtualBlock
    whose hook points this application fires (None: no hooks, fused kernels); `memory_hooks`
    the step's memory hook points (None: none fire)."""

    def __init__(self, cfg: ModelConfig, moe: bool = False):
        super().__init__()
        self.ln1, self.ln2 = make_norm(cfg), make_norm(cfg)
        self.attn = Attention(cfg)
        self.mlp = (
            MoEMLP(cfg.d_model, cfg.moe_experts, cfg.moe_d_expert, cfg.moe_top_k, cfg.act_fn)
            if moe
            else MLP(cfg)
        )
        self.drop = nn.Dropout(cfg.dropout)
        self.__dict__["memory"] = (
            None  # the model's FactMemory, read after the MLP; not a submodule
        )
        # LayerScale (model.layer_scale > 0): learned per-channel gains on what attention and the
        # MLP write, starting small, so every block (and so every recurrence step) starts close
        # to the identity on the residual stream. Filled in by LoopedTransformer._init_weights.
        scaled = cfg.layer_scale > 0
        self.ls_attn = nn.Parameter(torch.empty(cfg.d_model)) if scaled else None
        self.ls_mlp = nn.Parameter(torch.empty(cfg.d_model)) if scaled else None

    def _attn(self, x, hp, query_pos=None, from_pos: int = 0):
        out = self.attn(x, hp, query_pos, from_pos)
        return self.drop(out if self.ls_attn is None else out * self.ls_attn)

    def _mlp(self, x, hp):
        out = self.mlp(x, hp)
        return self.drop(out if self.ls_mlp is None else out * self.ls_mlp)

    def _read(self, x, memory_hooks=None):
        memory = self.__dict__["memory"]
        return x if memory is None else x + memory(x, memory_hooks)

    def forward(self, x, hp=None, query_pos=None, from_pos: int = 0, memory_hooks=None):
        if from_pos:
            # Positions before from_pos are known (causal tracing patches a later position): only
            # the residual at from_pos.. is computed, [batch, pos - from_pos, d_model].
            x1 = x[:, from_pos:] + self._attn(self.ln1(x), None, from_pos=from_pos)
            return self._read(x1 + self._mlp(self.ln2(x1), None))
        if query_pos is not None:
            # Only the residual at query_pos is needed downstream (the loss reads one position and
            # attention is causal), so the last layer computes its query and MLP there alone.
            rows = torch.arange(len(x), device=x.device)
            x1 = x[rows, query_pos][:, None] + self._attn(self.ln1(x), None, query_pos)
            return self._read(x1 + self._mlp(self.ln2(x1), None))[:, 0]  # [batch, d_model]
        ln1, ln2 = (None, None) if hp is None else (hp.ln1, hp.ln2)
        attn_out = apply_hook(hp, "hook_attn_out", self._attn(self.ln1(x, ln1), hp))
        x = apply_hook(hp, "hook_resid_mid", x + attn_out)
        x = x + apply_hook(hp, "hook_mlp_out", self._mlp(self.ln2(x, ln2), hp))
        return apply_hook(hp, "hook_resid_post", self._read(x, memory_hooks))


# --- the model -----------------------------------------------------------------------------------
class LoopedTransformer(HookedRootModule):
    def __init__(self, cfg: ModelConfig):
        """Build the model of `cfg`. Sizes derived from others (d_mlp, moe_d_expert) are filled
        in here; the two a dataset gives (d_vocab, n_ctx: 0 in an unresolved config) must be
        set, e.g. `cfg.resolved(len(ds.vocab), ds.n_ctx)` or `load_run(RUN).model`."""
        super().__init__()
        missing = [k for k in ("d_vocab", "n_ctx") if getattr(cfg, k) < 1]
        if missing:
            raise ValueError(
                f"ModelConfig.{' and '.join(missing)} = 0 means 'from the dataset', "
                "and this model has none: pass ModelConfig(d_vocab=..., n_ctx=...) or "
                "cfg.resolved(len(dataset.vocab), dataset.n_ctx)"
            )
        cfg = cfg.resolved()
        self.config = cfg
        self.W_E = nn.Parameter(torch.empty(cfg.d_vocab, cfg.d_model))
        # model.entity_keys=canonical: entity tokens read fixed keys instead of W_E's rows (and
        # the unembedding's entity columns are those keys); learned: None, nothing changes.
        self.entity_keys = EntityKeys(cfg) if cfg.entity_keys == "canonical" else None
        self.W_pos = (
            nn.Parameter(torch.empty(cfg.n_ctx, cfg.d_model))
            if cfg.positional == "learned"
            else None
        )
        self.prelude = nn.ModuleList(Block(cfg) for _ in range(cfg.n_prelude))
        moe = cfg.moe_experts > 0
        self.cores = nn.ModuleList(
            nn.ModuleList(Block(cfg, moe) for _ in range(n)) for n in cfg.bank
        )
        self._routing: dict[str, list[torch.Tensor]] = {}  # MoE gate logits of the last forward
        for c, core in enumerate(self.cores):
            for i, block in enumerate(core):
                if moe:
                    block.mlp.log, block.mlp.key = self._routing, f"c{c}.L{i}"
        self.coda = nn.ModuleList(Block(cfg) for _ in range(cfg.n_coda))
        self.W_inject = (
            nn.Linear(2 * cfg.d_model, cfg.d_model) if cfg.injection == "concat" else None
        )
        self.ln_final = make_norm(cfg, own_hooks=True)
        self.W_U_own = (
            None if cfg.tied_embeddings else nn.Parameter(torch.empty(cfg.d_model, cfg.d_vocab))
        )
        if cfg.unembed_bias:
            self.b_U = nn.Parameter(torch.zeros(cfg.d_vocab))
        else:  # a fixed zero, so every reader of b_U works unchanged
            self.register_buffer("b_U", torch.zeros(cfg.d_vocab))
        self.drop = nn.Dropout(cfg.dropout)
        self.hook_embed, self.hook_pos_embed = HookPoint(), HookPoint()  # [batch, pos, d_model]
        self.blocks = nn.ModuleList()  # VirtualBlocks, grown on demand
        self.steps = nn.ModuleList()  # StepHooks: steps.{s}.hook_state / hook_injected
        # The fact memory, registered last so its parameters are drawn after every other (and
        # built without touching the RNG, which nn.Linear's own init would advance): a model
        # with a memory has the same other weights as the same seed's model without.
        self.memory = None
        if cfg.memory == "facts":
            with torch.random.fork_rng(devices=[]):
                self.memory = FactMemory(cfg, make_norm(cfg), self)
            for core in self.cores:  # the last layer of each core reads it
                core[-1].__dict__["memory"] = self.memory
        self._init_weights()
        # A TransformerLens-style cfg view for ActivationCache and transformer_lens.patching.
        self.cfg = SimpleNamespace(
            n_layers=0,
            d_model=cfg.d_model,
            n_heads=cfg.n_heads,
            d_head=cfg.d_head,
            d_mlp=cfg.d_mlp,
            d_vocab=cfg.d_vocab,
            n_ctx=cfg.n_ctx,
            device="cpu",
            normalization_type="LN" if cfg.normalization == "LN" else None,
            attn_only=False,
            n_key_value_heads=None,
            use_split_qkv_input=False,
            use_attn_in=False,
            use_attn_result=False,
            positional_embedding_type="standard" if self.W_pos is not None else "rotary",
        )
        self.set_schedule(cfg.default_schedule(cfg.n_steps))

    @classmethod
    def from_run(
        cls,
        run_dir: str | Path,
        step: int | None = None,
        device=None,
        bank: str | Path | None = None,
    ) -> "LoopedTransformer":
        """The model of a training run (step None: its last good checkpoint), in eval mode. A
        memory model reads the bank its checkpoint holds (the training graph's), or the bank
        directory `bank` (checked against the run's vocabulary first; grokloop/bank.py)."""
        from grokloop.checkpoint import load_model

        model, ds, _ = load_model(run_dir, step)
        if bank is not None:
            from grokloop.bank import attach_bank

            attach_bank(model, bank, ds.vocab)
        if device is not None:
            model.to(device)
            model.cfg.device = str(device)
        return model

    # attention W_O, dense MLP W_out, MoE experts' W_out, the memory's value map: what writes
    # into the residual stream
    OUTPUT_PROJECTIONS = ("W_O.weight", "W_out.weight", "mlp.W_out", "memory.W_V.weight")

    def _init_weights(self):
        """The one place weights are initialised: GPT-2 style, output projections scaled (or zero,
        model.zero_init_out). Zeroing comes after the draw, so the other weights are those of the
        same seed without it: the option changes the output projections and nothing else."""
        std = self.config.init_std
        n_virtual = (
            self.config.n_prelude + sum(self.config.bank) * self.config.n_steps + self.config.n_coda
        )
        for name, p in self.named_parameters():
            if name.endswith(".w"):  # LayerNorm gains
                nn.init.ones_(p)
            elif name.endswith((".ls_attn", ".ls_mlp")):  # LayerScale gains
                nn.init.constant_(p, self.config.layer_scale)
            elif p.dim() == 1 or name.endswith(".b_in"):  # biases
                nn.init.zeros_(p)
            elif name.endswith(self.OUTPUT_PROJECTIONS):
                nn.init.normal_(p, std=std / math.sqrt(2 * max(n_virtual, 1)))
                if self.config.zero_init_out:
                    nn.init.zeros_(p)
            else:
                nn.init.normal_(p, std=std)
        if self.entity_keys is not None:  # rows and columns the keys replace: unused, zero
            with torch.no_grad():
                lo, hi = self.config.entity_start, self.config.entity_start + self.config.n_entities
                self.W_E[lo:hi] = 0
                self.b_U[lo:hi] = 0
                if self.W_U_own is not None:
                    self.W_U_own[:, lo:hi] = 0

    # --- schedule and virtual layers -------------------------------------------------------
    @property
    def W_U(self) -> torch.Tensor:
        """[d_model, tokens]; with canonical entity keys the entity columns are the keys."""
        W_U = self.W_E.T if self.W_U_own is None else self.W_U_own
        return W_U if self.entity_keys is None else self.entity_keys.compose(W_U.T).T

    @property
    def vocab_size(self) -> int:
        """Tokens the model reads: d_vocab, plus the entities added to it (extend_entities)."""
        return len(self.W_E) + (self.entity_keys.n_new if self.entity_keys is not None else 0)

    def embedding_matrix(self) -> torch.Tensor:
        """[vocab_size, d_model]: the embedding each token reads (W_E, or with canonical entity
        keys W_E's learned rows and every entity's key). The fact memory makes its slots from it."""
        return self.W_E if self.entity_keys is None else self.entity_keys.compose(self.W_E)

    def output_bias(self) -> torch.Tensor:
        """[vocab_size]: b_U; with canonical keys zero on every entity (a new one has no bias)."""
        if self.entity_keys is None:
            return self.b_U
        b = torch.cat(
            [self.b_U, self.b_U.new_zeros(self.entity_keys.n_new + self.entity_keys.n_phantoms)]
        )
        return b.masked_fill(self.entity_keys.is_entity(len(b), b.device), 0)

    def extend_entities(self, n_new: int) -> None:
        """Read n_new entities beyond the trained vocabulary, token ids d_vocab .. d_vocab +
        n_new - 1, by their canonical keys (grokloop/entity_keys.py); no weight changes."""
        if self.entity_keys is None:
            raise ValueError(
                "this model has learned entity embeddings (model.entity_keys="
                "learned): a new entity has no embedding in it; train with "
                "model.entity_keys=canonical to add entities"
            )
        self.entity_keys.extend(n_new)
        self.cfg.d_vocab = self.vocab_size

    def set_n_steps(self, n_steps: int) -> None:
        self.set_schedule(self.config.default_schedule(n_steps))

    def set_schedule(self, schedule: list[int]) -> None:
        """Default step schedule (core index per step); grows hook points, never touches weights."""
        self.schedule = self._resolve(None, list(schedule))
        self.n_steps = len(schedule)
        self.cfg.n_layers = len(self.layer_table())

    def _check_schedule(self, schedule):
        if len(schedule) < 1:
            raise ValueError("n_steps must be at least 1")
        bad = [c for c in schedule if not 0 <= c < len(self.cores)]
        if bad:
            raise ValueError(
                f"schedule names core {bad[0]} but the bank has {len(self.cores)} cores"
            )

    def _resolve(self, n_steps, schedule):
        """The schedule a call runs; grows hook points for it and binds each virtual layer's
        weight views to the block it runs."""
        if schedule is None:
            schedule = self.schedule if n_steps is None else self.config.default_schedule(n_steps)
        self._check_schedule(schedule)
        layers = self._unroll(schedule)
        grew = len(self.blocks) < len(layers) or len(self.steps) < len(schedule)
        while len(self.blocks) < len(layers):
            self.blocks.append(VirtualBlock())
        while len(self.steps) < len(schedule):
            self.steps.append(StepHooks(memory=self.memory is not None))
        if grew:
            self.setup()  # register the new hook points with HookedRootModule
        for layer in layers:
            self.blocks[layer.index].bind(layer.block)
        return schedule

    def layer_table(self, schedule: list[int] | None = None) -> list[VirtualLayer]:
        schedule = self.schedule if schedule is None else schedule
        # model.loops: each step's region, where the schedule is the loops' own (a schedule
        # given by hand has no regions)
        regions = (
            [r for r, _ in self.config.regions(len(schedule))]
            if self.config.loops is not None
            and schedule == self.config.default_schedule(len(schedule))
            else [None] * len(schedule)
        )
        rows = [VirtualLayer(0, "prelude", None, None, i) for i in range(self.config.n_prelude)]
        for s, c in enumerate(schedule):
            rows += [
                VirtualLayer(0, "core", s + 1, c, i, regions[s]) for i in range(len(self.cores[c]))
            ]
        rows += [VirtualLayer(0, "coda", None, None, i) for i in range(self.config.n_coda)]
        return [
            VirtualLayer(v, r.stage, r.step, r.core, r.layer, r.region) for v, r in enumerate(rows)
        ]

    def _unroll(self, schedule: list[int]) -> list[UnrolledLayer]:
        # Step 1 injects only when its initial state is not e itself (zeros, noise): injecting e
        # into e would double the embedding and make n_steps = 1 differ from the plain stack.
        inject_first = self.config.init_state != "prelude"
        plan = [(b, None, False, False, False) for b in self.prelude]  # (block, step, flags)
        for s, c in enumerate(schedule):
            for i, b in enumerate(self.cores[c]):
                first = i == 0
                plan.append((b, s, s == 0 and first, first, first and (s > 0 or inject_first)))
        plan += [(b, None, False, False, False) for b in self.coda]
        return [UnrolledLayer(b, v, *rest) for v, (b, *rest) in enumerate(plan)]

    def unrolled(self, schedule: list[int] | None = None) -> list[UnrolledLayer]:
        """One entry per virtual layer, in order; `run_layers` runs any slice or rearrangement."""
        return self._unroll(self._resolve(None, schedule))

    def run_with_cache(self, *args, remove_batch_dim: bool = False, **kwargs):
        """As HookedRootModule's, but the cache is an ActivationCache (accumulated_resid etc.)."""
        out, cache = super().run_with_cache(*args, remove_batch_dim=remove_batch_dim, **kwargs)
        return out, ActivationCache(cache, self, has_batch_dim=not remove_batch_dim)

    def moe_balance_loss(self) -> torch.Tensor:
        """The MoE balance regulariser of the last forward, pooled over all its steps."""
        return balance_loss(self._routing)

    # --- the computation: embed, what happens between layers, layers, unembed -------------------
    def embed(self, tokens):
        self._remember_query_ends(tokens)
        if self.entity_keys is None:
            x = self.hook_embed(self.W_E[tokens])  # [batch, pos, d_model]
        else:  # every pass starts here: one key-noise draw per pass in training
            if self.training:
                self.entity_keys.resample()
            x = self.hook_embed(self.embedding_matrix()[tokens])
        if self.W_pos is not None:
            x = x + self.hook_pos_embed(self.W_pos[: tokens.shape[1]].expand(len(tokens), -1, -1))
        return self.drop(x)

    def _remember_query_ends(self, tokens) -> None:
        """model.feedback_keep_last: which rows continue past each feedback position (the next
        token is not padding); every pass starts at embed, so feedback reads this pass's."""
        if not self.config.feedback_keep_last:
            return
        nxt = [p + 1 for p in self.feedback_at(tokens.shape[1])]
        padded = F.pad(tokens, (0, 1), value=self.config.pad_id)  # a last position ends its query
        self._continues = padded[:, nxt] != self.config.pad_id  # [batch, n_positions]

    def initial_state(self, e):
        if self.config.init_state == "prelude":
            return e
        if self.config.init_state == "zeros":
            return torch.zeros_like(e)
        return torch.randn_like(e) * self.config.init_std

    def inject(self, state, e):
        if self.config.injection == "add":
            return state + e
        if self.config.injection == "concat":
            return self.W_inject(torch.cat([state, e], dim=-1))
        return state

    def feedback(self, x) -> torch.Tensor:
        """The discrete feedback channel (DiscoLoop; docs/references.md), the new state: each
        position (model.feedback_positions, else all) reads the token its state decodes to
        through the final norm and unembedding, so a bridge entity decoded after one step
        re-enters as that entity's token. argmax: adds the top-1 token's embedding (no gradient
        through the choice); soft: adds the probability-weighted mixture of embeddings
        (differentiable); replace: the state becomes the top-1 token's embedding plus the
        position's, exactly what the embedding gives that token input there (with
        feedback_keep_last, not where the query ends: its answer is read there)."""
        positions = self.config.feedback_positions
        if positions is not None:
            positions = self.feedback_at(x.shape[1])
            if not positions:
                return x
        at = x if positions is None else x[:, positions]
        logits = self.unembed(at)  # [batch, pos, d_vocab]
        E = self.embedding_matrix()
        if self.config.feedback == "soft":
            fed = at + logits.softmax(-1) @ E
        elif self.config.feedback == "argmax":
            fed = at + E[logits.argmax(-1)]
        else:
            fed = E[logits.argmax(-1)]
            if self.W_pos is not None:
                fed = fed + self.W_pos[positions]
            if self.config.feedback_keep_last:  # a query's last position keeps its state
                fed = torch.where(self._continues[..., None], fed, at)
        if positions is None:
            return fed
        x = x.clone()
        x[:, positions] = fed
        return x

    def feedback_at(self, n_pos: int) -> list[int]:
        """model.feedback_positions within an input of n_pos positions: a batch cut after its
        deepest answer (k-hop chains) lacks the later ones."""
        return [p for p in self.config.feedback_positions if p < n_pos]

    def before_layer(self, layer: UnrolledLayer, x, e, hooked: bool = False):
        """What happens to the state x before virtual layer `layer` runs: (x, e). At the loop's
        entry x becomes e and the initial state is made from it; a step that injects mixes e
        back in. Every path through the model (forward, readout, rollouts, probes) calls this."""
        if layer.begins_loop:
            e, x = x, self.initial_state(x)
        if layer.starts_step:
            hooks = self.steps[layer.step] if hooked else None
            x = apply_hook(hooks, "hook_state", x)
            if layer.step and self.config.feedback != "none":
                x = self.feedback(x)
            if layer.injects:
                x = self.inject(x, e)
            x = apply_hook(hooks, "hook_injected", x)
        elif layer.injects:  # a rearranged list (surgery) may inject mid-step
            x = self.inject(x, e)
        return x, e

    def run_layers(
        self,
        x,
        layers: list[UnrolledLayer],
        e=None,
        hooked: bool = False,
        query_pos=None,
        keep_states: bool = False,
    ):
        """Run virtual layers in order on the residual x [batch, pos, d_model]: (x, e), or with
        keep_states (x, e, states) where states[i] is S of layers[i] (its resid_pre).

        `e` is the prelude output, needed when the layers start past the loop's entry. With
        `query_pos` [batch] the last layer computes only those positions and returns
        [batch, d_model] (the training fast path; it fires no hooks)."""
        states = []
        for i, layer in enumerate(layers):
            last = query_pos is not None and i == len(layers) - 1
            hp = (
                self.blocks[layer.index]
                if hooked and not last and watched(self.blocks[layer.index])
                else None
            )
            x = apply_hook(hp, "hook_resid_pre", x)
            if keep_states:
                states.append(x)
            x, e = self.before_layer(layer, x, e, hooked)
            if self.memory is not None and hooked and not last and layer.step is not None:
                x = layer.block(x, hp, None, memory_hooks=self.steps[layer.step].memory)
            else:
                x = layer.block(x, hp, query_pos if last else None)
        return (x, e, states) if keep_states else (x, e)

    def unembed(self, x, hooked: bool = False):
        return self.ln_final(x, self.ln_final if hooked else None) @ self.W_U + self.output_bias()

    # --- one step at a time (the halting selector's rollouts) ---------------------------------
    def enter_loop(self, tokens) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the prelude: (e, state) both [batch, pos, d_model]; the state that step 0 reads
        before its loop entry (so `step(state, e, 0)` makes the initial state from it)."""
        self._routing.clear()
        x, _ = self.run_layers(self.embed(tokens), self._unroll([0])[: len(self.prelude)])
        return x, x

    def step(self, state, e, s: int, core: int = 0, hooked: bool = False) -> torch.Tensor:
        """Recurrence step s (0-based) with core `core` of the bank: the next state. hooked:
        through step s's hook points (`ensure_step_hooks` first), e.g. to read its memory."""
        layers = [layer for layer in self._unroll([core] * (s + 1)) if layer.step == s]
        return self.run_layers(state, layers, e, hooked)[0]

    def ensure_step_hooks(self, n_steps: int) -> None:
        """Make the hook points of steps 0..n_steps-1 exist (they grow with the longest schedule
        run so far), so hooks can be attached before a step-by-step rollout; sized for the
        bank's largest core, so any core may run at any of those steps."""
        largest = max(range(len(self.cores)), key=lambda c: len(self.cores[c]))
        self._resolve(None, [largest] * n_steps)

    def read(self, state, positions) -> torch.Tensor:
        """The answer if the model stopped at `state`: logits [batch, d_vocab] at `positions`."""
        layers = self._unroll([0])
        y, _ = self.run_layers(state, layers[len(layers) - len(self.coda) :])
        return self.unembed(y[torch.arange(len(y), device=y.device), positions])

    # --- whole passes -----------------------------------------------------------------------------
    def forward(
        self,
        tokens,
        n_steps: int | None = None,
        schedule: list[int] | None = None,
        grad_last_k: int | None = None,
        return_type: str | None = "logits",
    ):
        """tokens [batch, pos] -> logits [batch, pos, d_vocab] (TransformerLens call shape).
        return_type: "logits", "loss" (mean next-token cross-entropy, TransformerLens's
        convention), "both" ((logits, loss)) or None."""
        if return_type not in ("logits", "loss", "both", None):
            raise ValueError(f"return_type={return_type!r}: choose logits, loss, both or None")
        logits = self.readout_steps(
            tokens, n_steps, schedule=schedule, grad_last_k=grad_last_k, every_step=False
        )[-1]
        if return_type in (None, "logits"):
            return logits if return_type else None
        logp = logits[:, :-1].float().log_softmax(-1)
        loss = -logp.gather(-1, tokens[:, 1:, None])[..., 0].mean()
        return loss if return_type == "loss" else (logits, loss)

    def residual_states(self, tokens, schedule: list[int] | None = None):
        """(S, e): S [n_virtual + 1, batch, pos, d_model], S[v] the state entering virtual layer
        v (blocks.{v}.hook_resid_pre; S[0] the embedding) and S[-1] the final residual; e the
        prelude output. The logit lens reads S; it equals `cache.accumulated_resid()`."""
        x, e, states = self.run_layers(
            self.embed(tokens), self.unrolled(schedule), keep_states=True
        )
        return torch.stack(states + [x]), e

    def readout_steps(
        self,
        tokens,
        n_steps: int | None = None,
        positions=None,
        schedule: list[int] | None = None,
        grad_last_k: int | None = None,
        every_step: bool = True,
        answer_only: bool = False,
        late: tuple[torch.Tensor, int] | None = None,
    ) -> torch.Tensor:
        """Logits if the model stopped after each step: [n_steps, batch, (pos,) d_vocab].

        `positions` [batch] picks one position per example (the answer position); the coda runs
        on the whole prefix each time because its attention needs it. Only the final readout runs
        through hook points, so caches hold exactly one unrolled computation.
        `grad_last_k`: truncated backpropagation, gradients flow through the last k steps only.
        `answer_only` (needs `positions`, `every_step=False`): the final layer is computed at the
        answer positions only and skips its hook points; identical logits, much less work.
        `late` (early_tokens, step): the loop starts from `early_tokens` and injects them until
        recurrence step `step` (0-based), from which it injects `tokens`: information that
        arrives late, so the other positions wait for it (train.reveal_delay_max).
        """
        if answer_only and (positions is None or every_step):
            raise ValueError("answer_only needs positions and every_step=False")
        schedule = self._resolve(n_steps, schedule)
        layers = self._unroll(schedule)
        n_pre = len(self.prelude)
        coda = layers[len(layers) - len(self.coda) :]
        self._routing.clear()
        early, reveal = late if late is not None and late[1] > 0 else (tokens, 0)
        if reveal and self.config.injection == "none":
            raise ValueError("late tokens arrive by input injection; this model has none")
        state, e = self.run_layers(self.embed(early), layers[:n_pre], hooked=True)
        revealed = self.run_layers(self.embed(tokens), layers[:n_pre])[0] if reveal else None
        outs = []
        for s in range(len(schedule)):
            if s == reveal and revealed is not None:
                e = revealed
            if grad_last_k is not None and s == len(schedule) - grad_last_k:
                state = state.detach()
            last = s == len(schedule) - 1
            step_layers = [layer for layer in layers if layer.step == s]
            fast = answer_only and last and not self.coda
            state, e = self.run_layers(state, step_layers, e, True, positions if fast else None)
            if every_step or last:
                y, _ = self.run_layers(
                    state, coda, e, last, positions if answer_only and coda else None
                )
                if positions is not None and y.dim() == 3:
                    y = y[torch.arange(len(y), device=y.device), positions]  # [batch, d_model]
                outs.append(self.unembed(y, hooked=last))
        return torch.stack(outs)
