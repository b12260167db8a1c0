"""Typed run configuration: these dataclasses are the schemas of the Hydra tree in conf/.

The YAML files hold only what differs from the defaults here (grokloop/cli.py registers the
classes with Hydra, which then type-checks every override at compose time). Built by
`run_config_from_dict`, which rejects unknown keys and impossible values with the key's full name,
before any work. A config is never filled in place: values derived from the dataset or from other
fields come from `ModelConfig.resolved`, a new config. Library code never imports Hydra; the
entrypoints hand plain dicts to these classes."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from datagen import data_config_from_dict
from datagen.config import DataConfig


def _choice(key: str, value, options) -> None:
    if value not in options:
        raise ValueError(f"{key}={value!r} is not one of {list(options)}")


@dataclass
class ModelConfig:
    d_vocab: int = 0  # 0: taken from the dataset (resolved)
    n_ctx: int = 0  # 0: taken from the dataset (resolved)
    d_model: int = 128
    n_heads: int = 4
    d_mlp: int | None = None  # None: 4 * d_model (resolved)
    act_fn: str = "relu"
    normalization: str = "LN"
    n_prelude: int = 0
    n_core: int = 2
    n_coda: int = 0
    n_steps: int = 1
    core_sizes: list[int] | None = None  # a bank of cores of these sizes; None: [n_core]
    loops: list[list[int]] | None = None  # [[core, steps], ...]: the thinking block as loop
    # regions run in order between the entry (prelude) and the exit
    # (coda), each a core of the bank looped that many steps; e.g.
    # core_sizes [1, 1], loops [[0, 2], [1, 2]]: two loops of one
    # layer; n_steps must be their total. None: core 0, n_steps times
    injection: str = "none"
    init_state: str = "prelude"
    positional: str = "learned"  # learned | rotary | none (no position signal but the causal mask)
    alibi: bool = False  # add ALiBi's recency bias, -slope_h * distance, to attention scores
    # (with any positional): scores at distances never trained stay
    # monotone in distance, so longer inputs read as shorter ones did
    attention_window: int = 0  # > 0: a query attends to the keys less than this many positions
    # back (itself included); 0: every earlier key. With rotary
    # positions every query past the window sees the same relative
    # offsets, so positions never trained compute as trained ones do
    tied_embeddings: bool = False
    dropout: float = 0.0
    init_std: float = 0.02
    moe_experts: int = 0  # > 0: the core's MLP is a mixture of this many experts
    moe_top_k: int = 2  # experts per token
    moe_d_expert: int | None = (
        None  # None: d_mlp // moe_top_k, the dense MLP's active width (resolved)
    )
    unembed_bias: bool = True  # false: no output bias (the authors' GPT-2 head)
    feedback: str = "none"  # each step after the first adds the embedding of the state's current
    # top-1 token (argmax) or of its softmax mixture (soft), per position;
    # replace: the state at feedback_positions BECOMES its top-1 token's
    # embedding (+ that position's embedding), as if the token were input
    feedback_positions: list[int] | None = None  # where feedback acts; None: every position
    # (argmax, soft); replace needs them, e.g. [1]: the bridge slot
    feedback_keep_last: bool = False  # replace: leave a position alone in the queries that end
    # there (the next token is pad_id): an atomic fact's answer
    # is read at position 1, and is not a bridge to hand on
    pad_id: int = 0  # the padding token (composition's <pad>), read by feedback_keep_last
    layer_scale: float = 0.0  # > 0: LayerScale (Touvron et al. 2021): attention and MLP outputs
    # times learned per-channel gains starting at this value, so each
    # block (each recurrence step) starts near the identity; 0: none
    zero_init_out: bool = False  # attention W_O and MLP output weights start at zero, so every
    # layer starts as the identity on the residual stream
    memory: str = "none"  # facts: a fact memory the thinking block reads at the end of every
    # step (grokloop/memory.py); its bank is the training graph's, or
    # another attached at test time (python -m grokloop.bank)
    memory_top_k: int = 4  # slots read per position: softmax over the top-k key scores
    memory_d_key: int = 64  # key width, half from the head entity, half from the relation
    entity_keys: str = "learned"  # canonical: each entity token's embedding is a fixed random key
    # drawn from key_seed, also its unembedding (nearest-key answers),
    # so a bank can add entities no weight has seen
    # (grokloop/entity_keys.py); learned: a trained row, as before
    key_noise: float = 0.0  # canonical: training adds noise of this norm (in units of a key's)
    # to every entity key, a fresh draw each forward pass; inf: every
    # entity reads a fresh random key at each pass
    key_seed: int = 0  # canonical: the keys' seed (new entities' keys come from it too)
    key_phantoms: int = 0  # canonical, memory: in training the bank also holds the facts of
    # this many phantom entities (fresh random keys each pass, never
    # asked about): distractors at the size of the banks it will read
    entity_start: int = 2  # canonical: the first entity token id (composition: after <pad>, </a>)
    n_entities: int = 0  # canonical: how many entity tokens follow it (${data.n_entities})

    def __post_init__(self):
        # Checked before d_model % n_heads, which divides by n_heads; d_mlp (4 * d_model when
        # null) and d_head (d_model // n_heads) derive from these two, so their errors name them.
        for key in ("d_model", "n_heads"):
            if getattr(self, key) < 1:
                raise ValueError(f"model.{key}={getattr(self, key)} must be at least 1")
        if self.d_model % self.n_heads:
            raise ValueError(
                f"model.d_model={self.d_model} is not divisible by model.n_heads="
                f"{self.n_heads}; pick n_heads dividing d_model"
            )
        if self.n_steps < 1:
            raise ValueError(f"model.n_steps={self.n_steps} must be at least 1")
        if min(self.bank) < 1 and not (self.bank == [0] and self.n_steps == 1):
            raise ValueError(f"model.n_core / core_sizes={self.bank} must be at least 1 layer")
        if self.loops is not None:
            self._check_loops()
        _choice("model.act_fn", self.act_fn, ("relu", "gelu", "gelu_tanh"))
        _choice("model.feedback", self.feedback, ("none", "argmax", "soft", "replace"))
        self._check_feedback_and_scale()
        _choice("model.normalization", self.normalization, ("LN", "none"))
        _choice("model.injection", self.injection, ("none", "add", "concat"))
        _choice("model.init_state", self.init_state, ("prelude", "zeros", "random"))
        _choice("model.positional", self.positional, ("learned", "rotary", "none"))
        if self.attention_window < 0:
            raise ValueError(
                f"model.attention_window={self.attention_window} must be >= 0 (0: "
                "every earlier position)"
            )
        for key in ("d_vocab", "n_ctx"):
            if getattr(self, key) < 0:
                raise ValueError(
                    f"model.{key}={getattr(self, key)} must be >= 0 (0: from the dataset)"
                )
        for key in ("d_mlp", "moe_d_expert"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise ValueError(
                    f"model.{key}={getattr(self, key)} must be at least 1, or null "
                    "for the default width"
                )
        _choice("model.memory", self.memory, ("none", "facts"))
        if self.memory_top_k < 1:
            raise ValueError(
                f"model.memory_top_k={self.memory_top_k} must be at least 1 (slots "
                "read per position)"
            )
        if self.memory_d_key < 2 or self.memory_d_key % 2:
            raise ValueError(
                f"model.memory_d_key={self.memory_d_key} must be even and >= 2 (half "
                "the key comes from the head entity, half from the relation), e.g. 64"
            )
        if self.memory != "none" and min(self.bank) < 1:
            raise ValueError(
                f"model.memory={self.memory} is read by the last layer of the thinking "
                f"block, and model.n_core / core_sizes={self.bank} has none; set "
                "model.n_core >= 1 or model.memory=none"
            )
        _choice("model.entity_keys", self.entity_keys, ("learned", "canonical"))
        if self.key_noise < 0:
            raise ValueError(f"model.key_noise={self.key_noise} must be >= 0 (0: no noise)")
        if self.key_phantoms and (self.entity_keys != "canonical" or self.memory != "facts"):
            raise ValueError(
                f"model.key_phantoms={self.key_phantoms} adds phantom entities to a "
                "fact memory's bank in training; it needs model.entity_keys=canonical "
                "and model.memory=facts (or set it to 0)"
            )
        if self.key_phantoms < 0:
            raise ValueError(f"model.key_phantoms={self.key_phantoms} must be >= 0")
        if self.entity_keys == "canonical" and (self.n_entities < 1 or self.entity_start < 0):
            raise ValueError(
                f"model.entity_keys=canonical needs the entity tokens: model."
                f"entity_start={self.entity_start}, model.n_entities={self.n_entities}; "
                "set model.n_entities=${data.n_entities} (composition data)"
            )
        if (
            self.entity_keys == "canonical"
            and self.d_vocab
            and self.entity_start + self.n_entities > self.d_vocab
        ):
            raise ValueError(
                f"model.entity_start + n_entities = {self.entity_start + self.n_entities}"
                f" is past model.d_vocab={self.d_vocab}; set model.n_entities to the "
                "data's entity count"
            )
        if self.moe_experts < 0 or (
            self.moe_experts and not 1 <= self.moe_top_k <= self.moe_experts
        ):
            raise ValueError(
                f"model.moe_top_k={self.moe_top_k} must be between 1 and "
                f"model.moe_experts={self.moe_experts} (0 experts: a dense MLP)"
            )

    def _check_feedback_and_scale(self) -> None:
        if self.feedback_positions is not None:
            self.feedback_positions = [int(p) for p in self.feedback_positions]
        if self.feedback == "replace" and not self.feedback_positions:
            raise ValueError(
                "model.feedback=replace needs model.feedback_positions, the positions whose "
                "state becomes its decoded token's embedding, e.g. [1] (two-hop: the bridge slot)"
            )
        positions = self.feedback_positions or []
        if any(p < 0 or (self.n_ctx and p >= self.n_ctx) for p in positions):
            raise ValueError(
                f"model.feedback_positions={positions} must lie in [0, n_ctx"
                f"{'=' + str(self.n_ctx) if self.n_ctx else ''})"
            )
        if positions and self.feedback == "none":
            raise ValueError(
                f"model.feedback_positions={positions} is set but model.feedback=none; set "
                "model.feedback (argmax, soft or replace) or drop the positions"
            )
        if self.feedback_keep_last and self.feedback != "replace":
            raise ValueError(
                f"model.feedback_keep_last=true applies to model.feedback=replace, not "
                f"{self.feedback!r}; set model.feedback=replace or drop it"
            )
        if self.layer_scale < 0:
            raise ValueError(f"model.layer_scale={self.layer_scale} must be >= 0 (0: none)")

    def resolved(self, d_vocab: int = 0, n_ctx: int = 0) -> ModelConfig:
        """A new config with every derived size filled in: d_vocab and n_ctx from the dataset's
        (where they are 0), d_mlp = 4 * d_model and moe_d_expert = d_mlp // moe_top_k (where
        None). The model is built from this; resolving twice changes nothing."""
        d_mlp = self.d_mlp or 4 * self.d_model
        return dataclasses.replace(
            self,
            d_vocab=self.d_vocab or d_vocab,
            n_ctx=self.n_ctx or n_ctx,
            d_mlp=d_mlp,
            moe_d_expert=self.moe_d_expert or max(1, d_mlp // self.moe_top_k),
        )

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    @property
    def bank(self) -> list[int]:
        return list(self.core_sizes) if self.core_sizes else [self.n_core]

    def _check_loops(self) -> None:
        self.loops = [[int(x) for x in pair] for pair in self.loops]
        n_cores = len(self.bank)
        if not self.loops or any(
            len(p) != 2 or not 0 <= p[0] < n_cores or p[1] < 1 for p in self.loops
        ):
            raise ValueError(
                f"model.loops={self.loops}: give [[core, steps], ...], each core one of the "
                f"bank's 0..{n_cores - 1} (model.core_sizes={self.bank}) and steps >= 1"
            )
        total = sum(n for _, n in self.loops)
        if self.n_steps != total:
            raise ValueError(
                f"model.loops={self.loops} runs {total} steps but model.n_steps="
                f"{self.n_steps}; set model.n_steps={total}"
            )

    def default_schedule(self, n_steps: int) -> list[int]:
        """The core of each of n_steps steps: the loop regions in order (model.loops), cut
        after n_steps or continued with the last region's core (thinking longer); without
        loops, core 0 throughout."""
        if self.loops is None:
            return [0] * n_steps
        plan = [core for core, n in self.loops for _ in range(n)]
        return (plan + [plan[-1]] * n_steps)[:n_steps]

    def regions(self, n_steps: int) -> list[tuple[int, int]]:
        """(region, step within it, both 0-based) of each of n_steps steps of the default
        schedule: model.loops's entries, the last one continued past its steps."""
        if self.loops is None:
            return [(0, s) for s in range(n_steps)]
        out = [(r, i) for r, (_, n) in enumerate(self.loops) for i in range(n)]
        last, done = len(self.loops) - 1, self.loops[-1][1]
        return (out + [(last, done + i) for i in range(n_steps)])[:n_steps]


@dataclass
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 1.0
    betas: tuple[float, float] = (0.9, 0.98)
    warmup_steps: int = 10
    grad_clip: float | None = None  # None: no clipping
    decay_norms_and_biases: bool = False
    grokfast_alpha: float = 0.98  # Grokfast EMA (Lee et al. 2024), active when lambda > 0
    grokfast_lambda: float = 0.0
    perpendicular_grad: bool = False  # Prieto et al. 2025 ⊥Grad

    def __post_init__(self):
        self.betas = tuple(self.betas)  # YAML gives a list; the annotated type, not a derived value
        if self.lr <= 0:
            raise ValueError(f"optim.lr={self.lr} must be positive")
        if self.weight_decay < 0:
            raise ValueError(f"optim.weight_decay={self.weight_decay} must be >= 0")
        if not 0 <= self.grokfast_alpha < 1:
            raise ValueError(f"optim.grokfast_alpha={self.grokfast_alpha} must be in [0, 1)")


@dataclass
class TrainConfig:
    steps: int = 10_000
    batch_size: int | None = None  # None: full batch
    loss: str = "softmax"  # softmax | stablemax
    loss_on_end_token: bool = False  # also learn </a> after the answer (the authors' GPT-2 loss;
    # grokloop/losses.py answer_and_end_loss)
    float64_loss: bool = False
    depth: str = "fixed"  # fixed | random | poisson | best | soft_best (grokloop/adaptive/depth.py)
    depth_choices: list[int] = field(default_factory=list)  # random depth: uniform over these
    depth_poisson_mean: float = 4.0  # poisson depth: Poisson(mean) per batch, clipped to depth_clip
    depth_clip: list[int] = field(default_factory=lambda: [2, 8])  # poisson depth: [lo, hi]
    grad_last_k: int | None = None  # truncated backprop through the last k steps
    best_step_tol: float = 0.0  # best: losses within this of the minimum tie (fewest steps win)
    soft_best_tau: float = 1.0  # soft_best: temperature of the soft minimum over steps
    mix_cores: bool = False  # bank: each batch runs a random schedule of the bank's cores
    reveal_delay_max: int = 0  # > 0: each batch's first token (a chain's head) arrives D ~
    # U{0..max} recurrence steps late by input injection (pad stands in before), and the batch
    # unrolls D steps more: every position waits D steps longer for its bridge, as it must on
    # chains deeper than any trained (grokloop/train/step.py)
    moe_balance: float = 0.01  # weight of the MoE balance regulariser (MoE cores only)
    eval_every_min: int = 10  # log-spaced schedule: gaps grow from this ...
    eval_every_max: int = 500  # ... up to this
    eval_splits: list[str] | None = None  # None: every split the task produces
    eval_batch_size: int = 4096
    eval_precision: str = "fp32"  # fp32 | train: the evaluations during training in fp32, or
    # under the training forward's autocast (bf16 where it trains in bf16; grokloop/accelerate.py)
    checkpoint_every_max: int = 5000
    stop_at_grok: str | None = (
        None  # stop once this split (or each of 'a,b') reaches grok_threshold
    )
    grok_threshold: float = 0.99
    device: str = "auto"
    progress: bool = True  # a tqdm bar on a terminal, else a line per evaluation;
    # false: the lines only (grokloop/train/progress.py)
    logger: str = "none"  # none | tensorboard | wandb | mlflow: also log the metrics,
    # config and code version there (grokloop/tracking.py)
    report: bool = True  # the CLI writes RUN/report.html at the end (reports/)
    deterministic: bool = True  # deterministic kernels: same seed and machine, same run
    restart_if_damaged: bool = (
        False  # resume=true over a run with no readable checkpoint: start over
    )
    compile: Any = False  # true | false | auto: torch.compile the training forward
    # (grokloop/accelerate.py; auto: where measured faster)
    precision: str = "fp32"  # fp32 | bf16: autocast of the training forward where supported;
    # auto: the machine's fastest (config.json records the choice)
    init_from: str | None = None  # a run directory: start from its newest good checkpoint's weights
    init_optimizer: bool = (
        False  # with init_from: also its optimizer moments (else a fresh optimizer)
    )
    memory_address_loss: float = 0.0  # weight of the fact memory's addressing loss on atomic facts
    # (grokloop/memory.py address_loss); 0: the answer loss alone
    distill: float = 0.0  # > 0: add this weight x KL(init_from's answers || the model's) on the
    # replayed examples of a mixture (grokloop/train/distill.py)
    bank: str | None = None  # a bank directory (python -m grokloop.bank build) that the fact
    # memory reads while training, instead of the training graph's
    # atomic facts; checked against the run before any work
    bank_sha256: str | None = None  # sha256 of train.bank's facts: None is filled in when the run
    # starts, so config.json records it and a resume with other
    # facts is refused; set, the bank must hold exactly these facts

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"train.steps={self.steps} must be at least 1")
        _choice("train.loss", self.loss, ("softmax", "stablemax"))
        _choice("train.depth", self.depth, ("fixed", "random", "poisson", "best", "soft_best"))
        _choice("train.precision", self.precision, ("fp32", "bf16", "auto"))
        _choice("train.eval_precision", self.eval_precision, ("fp32", "train"))
        if self.reveal_delay_max < 0:
            raise ValueError(f"train.reveal_delay_max={self.reveal_delay_max} must be >= 0")
        if self.reveal_delay_max and (
            self.depth not in ("fixed", "random", "poisson") or self.loss_on_end_token
        ):
            raise ValueError(
                f"train.reveal_delay_max={self.reveal_delay_max} trains the answer at the last "
                f"step; it does not combine with train.depth={self.depth} or "
                "train.loss_on_end_token=true"
            )
        if self.compile not in (True, False, "auto"):
            raise ValueError(f"train.compile={self.compile!r} is not one of [true, false, auto]")
        if self.soft_best_tau <= 0:
            raise ValueError(f"train.soft_best_tau={self.soft_best_tau} must be positive")
        if self.depth == "random" and not self.depth_choices:
            raise ValueError("train.depth=random needs train.depth_choices, e.g. [1, 2, 4]")
        if any(k < 1 for k in self.depth_choices):
            raise ValueError(f"train.depth_choices={self.depth_choices} must all be >= 1")
        self.depth_clip = list(self.depth_clip)
        if len(self.depth_clip) != 2 or not 1 <= self.depth_clip[0] <= self.depth_clip[1]:
            raise ValueError(
                f"train.depth_clip={self.depth_clip} must be [lo, hi] with "
                "1 <= lo <= hi, e.g. [2, 8]"
            )
        if self.depth_poisson_mean <= 0:
            raise ValueError(f"train.depth_poisson_mean={self.depth_poisson_mean} must be positive")
        if self.loss_on_end_token and self.depth not in ("fixed", "random", "poisson"):
            raise ValueError(
                f"train.loss_on_end_token=true works with train.depth fixed, random or "
                f"poisson, not {self.depth!r}"
            )
        if self.memory_address_loss < 0:
            raise ValueError(f"train.memory_address_loss={self.memory_address_loss} must be >= 0")
        if self.distill < 0:
            raise ValueError(f"train.distill={self.distill} must be >= 0")
        if self.distill and not self.init_from:
            raise ValueError(
                f"train.distill={self.distill} distills the model train.init_from names; "
                "set train.init_from=RUN_DIR or train.distill=0"
            )
        if self.init_optimizer and not self.init_from:
            raise ValueError(
                "train.init_optimizer=true needs train.init_from=RUN_DIR, the run whose "
                "optimizer state to continue"
            )
        _choice("train.logger", self.logger, ("none", "tensorboard", "wandb", "mlflow"))
        if self.eval_batch_size < 1:
            raise ValueError(
                f"train.eval_batch_size={self.eval_batch_size} must be at least 1 "
                "(examples per evaluation forward pass)"
            )
        for key in ("eval_every_min", "eval_every_max", "checkpoint_every_max"):
            if getattr(self, key) < 1:
                raise ValueError(
                    f"train.{key}={getattr(self, key)} must be at least 1 (steps "
                    "between evaluations or checkpoints)"
                )
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"train.batch_size={self.batch_size} must be >= 1 or null")
        if self.bank_sha256 and not self.bank:
            raise ValueError(
                f"train.bank_sha256={self.bank_sha256} names the facts of train.bank, "
                "which is not set; pass train.bank=DIR (a bank directory) too"
            )


@dataclass
class RunConfig:
    data: DataConfig
    model: ModelConfig
    optim: OptimConfig
    train: TrainConfig
    experiment: str = "default"
    seed: int = 0
    data_cache: str | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class TrainCommand:
    """Schema of conf/train.yaml (`python -m grokloop.train`): a RunConfig, where to write it and
    whether to continue it. `data` is typed by its preset, which extends the task's schema
    (conf/data/*.yaml; OmegaConf cannot type a union of dataclasses)."""

    data: Any = None
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    experiment: str = "default"
    seed: int = 0
    data_cache: str | None = None
    out_dir: str = "???"  # OmegaConf's mark for a required value
    resume: bool = False

    def run_config(self) -> RunConfig:
        """The run this command trains (where it is written, and whether it resumes, aside)."""
        if self.data is None:
            raise ValueError("data is required: pass data=PRESET or experiment=NAME")
        return RunConfig(
            data=as_data_config(self.data),
            model=self.model,
            optim=self.optim,
            train=self.train,
            experiment=self.experiment,
            seed=self.seed,
            data_cache=self.data_cache,
        )


def _build(cls, d: dict, prefix: str):
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"{prefix}.{unknown[0]}: unknown key; known keys: {sorted(known)}")
    return cls(**d)


def as_data_config(data) -> DataConfig:
    """A data preset as its task's config: a typed command's `data` is already one (OmegaConf's
    to_object builds it); a dict (a saved config.json's) is built and checked here."""
    return data_config_from_dict(data) if isinstance(data, dict) else data


def run_config_from_dict(d: dict) -> RunConfig:
    d = dict(d)
    sections = {"data", "model", "optim", "train"}
    top = {f.name for f in dataclasses.fields(RunConfig)}
    unknown = sorted(set(d) - top)
    if unknown:
        raise ValueError(f"{unknown[0]}: unknown top-level key; known keys: {sorted(top)}")
    missing = sorted(sections - set(d))
    if missing:
        raise ValueError(f"config has no {missing[0]!r} section")
    return RunConfig(
        data=data_config_from_dict(d.pop("data")),
        model=_build(ModelConfig, d.pop("model"), "model"),
        optim=_build(OptimConfig, d.pop("optim"), "optim"),
        train=_build(TrainConfig, d.pop("train"), "train"),
        **d,
    )
