"""Faster training steps: torch.compile of the training forward, and bf16 autocast.

    train.compile=true      the training forward (embedding -> layers -> answer logits) compiled
                            with inductor, dynamic=False (every training batch has one shape)
    train.precision=bf16    the training forward under bfloat16 autocast where the processor
                            has bf16 matrix units (CPU: AMX-BF16 or AVX512-BF16; CUDA: any GPU
                            torch calls bf16-capable); elsewhere fp32, with a warning saying why

Both are off by default and touch the training steps only: probes and the halting selector
always run the eager fp32 model, the evaluations during training too unless
train.eval_precision=train (then under the training's autocast, eager), and the logits leave
the step in fp32, so the loss (softmax or StableMax, optionally float64) is computed exactly as
without them.

How it is wired: `accelerate_training(model, train_cfg, device)` replaces `readout_steps` on this
one model instance by a dispatcher. A call in training mode with gradients on goes to the fast
path (autocast and/or the compiled function); every other call (evaluation under no_grad, eval
mode, hooks attached) goes to the unchanged method. What it compiles, and why there: dynamo
traces `readout_steps` with its Python-side schedule logic (`_resolve`, `_unroll`, the hook
checks) without a graph break (`torch._dynamo.explain` on the training loss: 1 graph, 0 breaks),
because with no hooks attached every hook point is skipped in Python before any tensor is
touched; the schedule becomes constants guarded by n_steps. Each model gets its own code object
(`_fresh`), so several runs in one process (benchmarks, tests) do not share, and exhaust, one
dynamo cache.

    train.precision=auto    the precision `choose_mode` picks for this machine (below)
    train.compile=auto      whether to compile, likewise

`auto` is resolved when a run starts, and config.json records what it chose (fp32 or bf16, true
or false), so a resumed run keeps the numerics it started with: resuming with `auto` takes the
run's recorded mode, on any machine. The defaults stay fp32 and eager (deterministic, the
numerics every committed study was run with); `auto` is opt-in.
"""

from __future__ import annotations

import contextlib
import functools
import os
import types
import warnings
from dataclasses import dataclass

import torch

PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class Mode:
    precision: str  # fp32 | bf16
    compile: bool
    why: str  # the rule's reason, in words (the run's first line says it)

    def describe(self) -> str:
        return (
            f"{'bf16 autocast' if self.precision == 'bf16' else 'fp32'}, "
            f"{'compiled' if self.compile else 'eager'}"
        )


def choose_mode(device: torch.device | str, flags: set[str] | None = None) -> Mode:
    """The fastest mode measured to train correctly on this kind of machine (`auto`); `flags`
    the CPU's /proc/cpuinfo flags (tests fake a machine with them).

    Measured (bench/README.md, `bench_studies.py`, one thread): on a CPU with AMX-BF16, bf16
    autocast runs the study presets' steps 1.3-2.2x faster than fp32, with results within the
    tolerance tests/test_speed_modes.py checks; on CPUs without AMX no bf16 speed-up has been
    measured (AVX512-BF16 alone has no bf16 matrix unit), so fp32. torch.compile is never chosen
    on a CPU: its steps ran 0.7-0.8x eager's (inductor's CPU kernel for the ReLU mask the
    backward keeps took 12x eager's threshold_backward; bench/README.md). On a GPU: bf16 where
    it is native, eager (compile not measured on a GPU yet)."""
    device = torch.device(device)
    no_compile = (
        "compile measured slower than eager on CPUs"
        if device.type == "cpu"
        else "compile not measured on GPUs yet"
    )
    if device.type == "cuda":
        ok, why = bf16_support(device)
        return Mode("bf16" if ok else "fp32", False, f"{why}; {no_compile}")
    flags = cpu_flags() if flags is None else flags
    if device.type == "cpu" and "amx_bf16" in flags and torch.backends.mkldnn.is_available():
        return Mode("bf16", False, f"the CPU has AMX-BF16; {no_compile}")
    return Mode(
        "fp32", False, f"no AMX-BF16 on this CPU (bf16 measured faster only with it); {no_compile}"
    )


def resolve_mode(
    precision: str, compile, device: torch.device | str, saved: dict | None = None
) -> tuple[str, bool, str | None]:
    """(precision, compile, why) a run uses for train.precision / train.compile, either of
    which may be `auto`: the run's recorded mode where it continues (`saved`: config.json's
    flattened keys), else `choose_mode`'s. `why` is None when nothing was auto."""
    if precision != "auto" and compile != "auto":
        return precision, bool(compile), None
    if saved is not None:  # a run from before these keys ran fp32, eager
        rule = Mode(
            saved.get("train.precision", "fp32"),
            bool(saved.get("train.compile", False)),
            "the mode this run started with (config.json)",
        )
    else:
        rule = choose_mode(device)
    return (
        rule.precision if precision == "auto" else precision,
        rule.compile if compile == "auto" else bool(compile),
        rule.why,
    )


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            line = next(line for line in f if line.startswith("flags"))
        return set(line.split(":", 1)[1].split())
    except (OSError, StopIteration):
        return set()


def bf16_support(device: torch.device | str) -> tuple[bool, str]:
    """(whether bf16 autocast runs on native bf16 matrix units here, the reason in words)."""
    device = torch.device(device)
    if device.type == "cuda":
        ok = torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
        name = torch.cuda.get_device_name(device) if torch.cuda.is_available() else "no CUDA device"
        return ok, f"{name} {'supports' if ok else 'has no native'} bf16"
    if device.type == "cpu":
        flags = cpu_flags()
        cap = torch.backends.cpu.get_cpu_capability()
        units = [
            u for f, u in (("amx_bf16", "AMX-BF16"), ("avx512_bf16", "AVX512-BF16")) if f in flags
        ]
        if units and torch.backends.mkldnn.is_available():
            return True, f"CPU has {' and '.join(units)} (torch capability {cap}, oneDNN)"
        why = (
            "torch was built without oneDNN"
            if units
            else "the CPU has neither AMX-BF16 nor AVX512-BF16"
        )
        return (
            False,
            f"{why} (torch capability {cap}): bf16 matmuls would be emulated, slower than fp32",
        )
    return False, f"no bf16 autocast path for device type {device.type!r}"


def autocast(device: torch.device | str, precision: str):
    """The autocast context for a precision: bf16 on a device that supports it, else nothing."""
    device = torch.device(device)
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """The precision a run will use: bf16 only where `bf16_support` says so, else fp32 with a
    warning naming why."""
    if precision not in PRECISIONS:
        raise ValueError(f"train.precision={precision!r} is not one of {list(PRECISIONS)}")
    if precision == "bf16":
        ok, why = bf16_support(device)
        if not ok:
            warnings.warn(f"train.precision=bf16 falls back to fp32: {why}")
            return "fp32"
    return precision


def _hooks_attached(model) -> bool:
    return any(
        hp._forward_hooks or hp._forward_pre_hooks or hp._backward_hooks
        for hp in model.hook_dict.values()
    )


def _readout(
    model,
    tokens,
    n_steps,
    positions,
    schedule,
    grad_last_k,
    every_step,
    answer_only,
    late,
    device_type,
    bf16,
):
    # The body every compiled copy runs (see _fresh): the class's readout_steps under autocast.
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
        out = type(model).readout_steps(
            model, tokens, n_steps, positions, schedule, grad_last_k, every_step, answer_only, late
        )
    return out.float()


def _fresh(fn):
    """A copy of `fn` with its own code object, hence its own dynamo cache."""
    global _copies
    _copies += 1
    code = fn.__code__.replace(co_name=f"{fn.__name__}_{_copies}")
    return types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)


_copies = 0


def accelerate_training(model, train_cfg, device: torch.device) -> dict:
    """Route this model's training forwards through compile and/or bf16 autocast as `train_cfg`
    (train.compile, train.precision) asks; a no-op with both off. Returns what was set up:
    {"compile": bool, "precision": "fp32" | "bf16"}."""
    precision = resolve_precision(getattr(train_cfg, "precision", "fp32"), device)
    compiled = bool(getattr(train_cfg, "compile", False))
    if not compiled and precision == "fp32":
        return {"compile": False, "precision": "fp32"}
    if compiled and getattr(train_cfg, "mix_cores", False):
        warnings.warn(
            "train.compile=true with train.mix_cores: every schedule compiles anew; "
            "schedules past dynamo's recompile limit run eagerly"
        )
    bf16 = precision == "bf16"
    body = functools.partial(
        _fresh(_readout) if compiled else _readout, device_type=device.type, bf16=bf16
    )
    if compiled:
        # GROKLOOP_COMPILE_MODE=reduce-overhead: inductor with CUDA graphs (bench/gpu_suite.sh)
        body = torch.compile(
            body.func, dynamic=False, mode=os.environ.get("GROKLOOP_COMPILE_MODE") or None
        )
        body = functools.partial(body, device_type=device.type, bf16=bf16)
    eager = model.readout_steps  # the bound class method

    def readout_steps(
        tokens,
        n_steps=None,
        positions=None,
        schedule=None,
        grad_last_k=None,
        every_step=True,
        answer_only=False,
        late=None,
    ):
        args = (tokens, n_steps, positions, schedule, grad_last_k, every_step, answer_only, late)
        if not (model.training and torch.is_grad_enabled()) or _hooks_attached(model):
            return eager(*args)
        if compiled:  # grow hook points / bind weight views outside the compiled region
            model._resolve(n_steps, schedule)
        return body(model, *args)

    readout_steps.__doc__ = eager.__doc__
    model.readout_steps = readout_steps
    return {"compile": compiled, "precision": precision}
