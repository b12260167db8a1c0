"""Checkpoints: safetensors tensors plus a JSON state, written atomically, verified on load.

checkpoints/step_XXXXXXXX.safetensors        model weights
checkpoints/step_XXXXXXXX.state.safetensors  optimizer moments, Grokfast EMA, RNG states, data order
checkpoints/step_XXXXXXXX.json               step, config, scalar state, sha256 of the two files
The JSON is written last, so a checkpoint without it never happened; a checkpoint whose files do
not match their recorded hashes (truncated, corrupt) or that holds non-finite numbers is damaged:
`last_good_checkpoint` skips it with a warning, `newest_readable` also says why.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from datagen.provenance import atomic_write as _atomic
from datagen.provenance import atomic_write_text
from datagen.provenance import sha256_file as _sha


def ckpt_dir(run_dir) -> Path:
    return Path(run_dir) / "checkpoints"


def checkpoint_path(run_dir, step: int) -> Path:
    """The file that makes a checkpoint exist (its JSON, written last)."""
    return ckpt_dir(run_dir) / f"step_{step:08d}.json"


def save_checkpoint(
    run_dir, step: int, model, tensors: dict[str, torch.Tensor], state: dict
) -> Path:
    d = ckpt_dir(run_dir)
    d.mkdir(parents=True, exist_ok=True)
    stem = f"step_{step:08d}"
    weights = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    _atomic(d / f"{stem}.safetensors", lambda p: save_file(weights, str(p)))
    extra = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    _atomic(d / f"{stem}.state.safetensors", lambda p: save_file(extra, str(p)))
    meta = state | {
        "step": step,
        "sha256": {f: _sha(d / f) for f in (f"{stem}.safetensors", f"{stem}.state.safetensors")},
    }
    atomic_write_text(d / f"{stem}.json", json.dumps(meta))
    return d / f"{stem}.json"


def list_checkpoints(run_dir) -> list[int]:
    d = ckpt_dir(run_dir)
    return sorted(int(p.name[5:13]) for p in d.glob("step_*.json")) if d.exists() else []


def read_checkpoint(run_dir, step: int):
    """(weights, tensors, state) of one checkpoint; ValueError if it is damaged."""
    d = ckpt_dir(run_dir)
    stem = f"step_{step:08d}"
    try:
        state = json.loads((d / f"{stem}.json").read_text())
        for f, digest in state["sha256"].items():
            if _sha(d / f) != digest:
                raise ValueError(f"{d / f} does not match its recorded sha256")
        weights = load_file(str(d / f"{stem}.safetensors"))
        tensors = load_file(str(d / f"{stem}.state.safetensors"))
    except KeyError as e:
        raise ValueError(f"checkpoint {d / stem} is unreadable: its .json lacks {e}") from e
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"checkpoint {d / stem} is unreadable: {e}") from e
    # Written before non-finite gradients were checked, a checkpoint could hold NaN weights.
    bad = [
        k
        for k, v in (weights | tensors).items()
        if v.is_floating_point() and not v.isfinite().all()
    ]
    if bad:
        raise ValueError(f"checkpoint {d / stem} holds non-finite values in {', '.join(bad[:5])}")
    return weights, tensors, state


def newest_readable(run_dir):
    """(the newest checkpoint that verifies as (weights, tensors, state), or None; and every newer
    damaged checkpoint as (path, why))."""
    damaged = []
    for step in reversed(list_checkpoints(run_dir)):
        try:
            return read_checkpoint(run_dir, step), damaged
        except ValueError as e:
            damaged.append((checkpoint_path(run_dir, step), str(e)))
    return None, damaged


def last_good_checkpoint(run_dir, at_most: int | None = None):
    """The newest checkpoint that verifies, skipping damaged ones with a warning; None if none."""
    for step in reversed(list_checkpoints(run_dir)):
        if at_most is not None and step > at_most:
            continue
        try:
            return read_checkpoint(run_dir, step)
        except ValueError as e:
            warnings.warn(f"{e}; falling back to the previous checkpoint")
    return None


def optimizer_to_tensors(opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Optimizer state without pickle: tensors by 'opt.{param}.{name}', param groups as JSON."""
    sd = opt.state_dict()
    tensors = {
        f"opt.{i}.{k}": v.reshape(-1) if v.dim() == 0 else v
        for i, s in sd["state"].items()
        for k, v in s.items()
    }
    groups = [
        {k: list(v) if isinstance(v, tuple) else v for k, v in g.items()}
        for g in sd["param_groups"]
    ]
    return tensors, {"param_groups": groups}


def optimizer_from_tensors(opt: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        if key.startswith("opt."):
            _, i, name = key.split(".", 2)
            state.setdefault(int(i), {})[name] = v.reshape(()) if name == "step" else v
    groups = [
        {k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in meta["param_groups"]
    ]
    opt.load_state_dict({"state": state, "param_groups": groups})


def load_model(run_dir, step: int | None = None):
    """(model, dataset, config dict) from a run directory; step None = last good checkpoint."""
    from datagen import load_or_build
    from grokloop.config import RunConfig, run_config_from_dict
    from grokloop.model import LoopedTransformer

    run_dir = Path(run_dir)
    if not (run_dir / "config.json").exists():
        raise FileNotFoundError(
            f"{run_dir} is not a run directory (no config.json); "
            "train one with `python -m grokloop.train`"
        )
    cfg_dict = json.loads((run_dir / "config.json").read_text())
    got = last_good_checkpoint(run_dir) if step is None else read_checkpoint(run_dir, step)
    if got is None:
        raise FileNotFoundError(f"{run_dir} has no checkpoints; train longer or resume it")
    weights, _, state = got
    known = {f.name for f in dataclasses.fields(RunConfig)}  # drops code_version, dataset_hash
    cfg = run_config_from_dict({k: v for k, v in cfg_dict.items() if k in known})
    ds = load_or_build(cfg.data, cfg.data_cache)
    model = LoopedTransformer(cfg.model.resolved(len(ds.vocab), ds.n_ctx))  # config.json: resolved
    model.load_state_dict(weights)
    return model.eval(), ds, cfg_dict
