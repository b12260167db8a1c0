"""A training run opened for analysis: `load_run(run_dir)` gives the model at a checkpoint, the
dataset it trained on and its typed config in one object.

    from grokloop import load_run
    run = load_run("runs/default/seed0")          # the last good checkpoint (or step=N)
    tokens, positions, answers = run.batch("test", n=256)
    logits = run.model(tokens)                    # [batch, pos, d_vocab]
    logits, cache = run.model.run_with_cache(tokens)
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Int

from datagen import Dataset, load_or_build
from grokloop.checkpoint import last_good_checkpoint, list_checkpoints, read_checkpoint
from grokloop.config import RunConfig, run_config_from_dict
from grokloop.evaluate import answer_prefix
from grokloop.metrics_log import read_rows
from grokloop.model import LoopedTransformer


@dataclass
class Run:
    """A run directory's model (eval mode, at checkpoint `step`), dataset and config."""

    path: Path
    config: RunConfig
    model: LoopedTransformer
    dataset: Dataset
    step: int

    @property
    def metrics(self) -> list[dict]:
        """metrics.jsonl: one row per evaluation (step, loss/train, acc/SPLIT, n/SPLIT, ...)."""
        return read_rows(self.path / "metrics.jsonl")

    @property
    def steps(self) -> list[int]:
        """The steps that have a checkpoint (load_run(path, step=S) opens one)."""
        return list_checkpoints(self.path)

    def batch(
        self, split: str, n: int | None = None, seed: int = 0
    ) -> tuple[
        Int[torch.Tensor, "batch pos"], Int[torch.Tensor, "batch"], Int[torch.Tensor, "batch"]
    ]:
        """(tokens, answer positions, answers) of `n` examples of `split` (all if None, else a
        seeded sample), cut after the last answer position (the model is causal)."""
        if split not in self.dataset.splits:
            raise ValueError(
                f"split={split!r}: this run's dataset has {sorted(self.dataset.splits)}"
            )
        idx = np.asarray(self.dataset.splits[split])
        if n is not None and n < len(idx):
            idx = np.sort(np.random.default_rng(seed).choice(idx, size=n, replace=False))
        device = next(self.model.parameters()).device
        idx = torch.as_tensor(idx, device=device)
        inputs = torch.as_tensor(self.dataset.inputs, device=device)
        positions = torch.as_tensor(self.dataset.answer_pos, device=device)
        tokens = answer_prefix(inputs, positions, idx)[idx]
        return tokens, positions[idx], torch.as_tensor(self.dataset.answers, device=device)[idx]


def load_run(run_dir: str | Path, step: int | None = None, device: str | None = None) -> Run:
    """Open the run in `run_dir` at checkpoint `step` (None: the newest that verifies). The
    dataset is rebuilt from the run's config (or read from its cache) and checked against the
    content hash the run recorded."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise FileNotFoundError(
            f"{run_dir} is not a run directory (no config.json); train one "
            "with `python -m grokloop.train`"
        )
    saved = json.loads((run_dir / "config.json").read_text())
    known = {f.name for f in dataclasses.fields(RunConfig)}  # drops code_version, dataset_hash
    cfg = run_config_from_dict({k: v for k, v in saved.items() if k in known})
    got = last_good_checkpoint(run_dir) if step is None else read_checkpoint(run_dir, step)
    if got is None:
        raise FileNotFoundError(f"{run_dir} has no readable checkpoint; train longer or resume it")
    weights, _, state = got
    ds = load_or_build(cfg.data, cfg.data_cache)
    if saved.get("dataset_hash") not in (None, ds.content_hash()):
        raise ValueError(
            f"{run_dir}: the dataset built from its config differs from the one it "
            "trained on (content hash); the data generator changed since"
        )
    model = LoopedTransformer(cfg.model.resolved(len(ds.vocab), ds.n_ctx))
    model.load_state_dict(weights)
    if device is not None:
        model.to(device)
        model.cfg.device = str(device)
    return Run(run_dir, cfg, model.eval(), ds, int(state["step"]))
