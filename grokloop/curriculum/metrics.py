"""What a curriculum measures (Lopez-Paz & Ranzato 2017; Chaudhry et al. 2018): the accuracy
matrix R, the untrained model's accuracies b, ACC, BWT, FWT, forgetting, per-stage steps to the
gate, and summary.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from datagen import load_or_build
from datagen.provenance import code_version, machine
from grokloop.config import ModelConfig, RunConfig
from grokloop.curriculum.config import CurriculumCommand, fresh_run
from grokloop.evaluate import evaluate
from grokloop.metrics_log import read_rows
from grokloop.model import LoopedTransformer
from grokloop.train import prepare


def transfer_metrics(R: np.ndarray, b: np.ndarray) -> dict:
    """ACC, BWT, FWT and forgetting per stage from the accuracy matrix R [T, T] (R[i, j]: stage j
    after stage i) and the initial accuracies b [T] (module docstring)."""
    R, b = np.asarray(R, float), np.asarray(b, float)
    T = len(R)
    last = R[T - 1]
    return {
        "ACC": float(last.mean()),
        "BWT": float(np.mean([last[j] - R[j, j] for j in range(T - 1)])) if T > 1 else None,
        "FWT": float(np.mean([R[j - 1, j] - b[j] for j in range(1, T)])) if T > 1 else None,
        "forgetting": [float(R[: T - 1, j].max() - last[j]) for j in range(T - 1)],
    }


@torch.no_grad()
def initial_accuracy(stage, names: list[str]) -> list[float]:
    """Accuracy of the untrained model (as train builds it from the seed) on every stage."""
    ds, _, cfg = prepare(fresh_run(stage.cfg))
    torch.manual_seed(cfg.seed)
    model = LoopedTransformer(cfg.model)
    data = {k: torch.as_tensor(getattr(ds, k)) for k in ("inputs", "answer_pos", "answers", "hops")}
    acc = evaluate(
        model,
        data,
        {f"test_{n}": torch.as_tensor(ds.splits[f"test_{n}"]) for n in names},
        cfg.model.n_steps,
    )
    return [acc[f"acc/test_{n}"] for n in names]


def n_train(cfg: RunConfig) -> int:
    """Training examples per step (full batch: the training split; the dataset is cached)."""
    n = len(load_or_build(cfg.data, cfg.data_cache).splits["train"])
    return min(cfg.train.batch_size or n, n)


def summarize(
    cmd: CurriculumCommand,
    stages: list,
    wall_time_s: float,
    spectra: Callable[[Path], dict] | None = None,
) -> dict:
    """summary.json of a finished curriculum (grokloop/curriculum/__init__.py); with `spectra`,
    each stage also records spectra(its run directory)."""
    cc = cmd.curriculum
    names = cc.ordered()
    rows, per_stage = [], []
    for st in stages:
        history = read_rows(st.run_dir / "metrics.jsonl")
        last, run = history[-1], json.loads((st.run_dir / "summary.json").read_text())
        rows.append([last[f"acc/test_{n}"] for n in names])
        steps_to = {
            n: next((r["step"] for r in history if r[f"acc/valid_{n}"] >= cc.gate_of(n)), None)
            for n in st.trains
        }
        per_stage.append(
            {
                "stage": st.name,
                "run_dir": str(st.run_dir.relative_to(st.run_dir.parent.parent)),
                "trains": st.trains,
                "budget": st.cfg.train.steps,
                "steps": run["steps"],
                "gate": st.cfg.train.grok_threshold,
                "passed": all(v is not None for v in steps_to.values()),
                "steps_to_gate": steps_to,
                "n_train": n_train(st.cfg),
                "wall_time_s": run["wall_time_s"],
                "n_eval": last[f"n/test_{names[0]}"],
            }
            | ({"spectra": spectra(st.run_dir)} if spectra else {})
        )
    b = initial_accuracy(stages[0], names)
    out = {
        "curriculum": cc.name,
        "mode": cc.mode,
        "order": cc.order,
        "seed": cmd.seed,
        "replay": cc.replay,
        "distill": cc.distill,
        "order_seed": cc.order_seed,
        "edit": cc.edit,
        "edit_stage": cc.edit_stage,
        "shrink": cc.shrink,
        "reset_optimizer": cc.reset_optimizer,
        "model": _model_label(cmd.model),
        "stages": names,
        "initial": b,
        "matrix": rows,
        "per_stage": per_stage,
        "wall_time_s": wall_time_s,
        "machine": machine(),
        "code_version": code_version(),
    }
    if cc.mode == "sequential":
        out |= transfer_metrics(np.array(rows), np.array(b))
    return out


def _model_label(m: ModelConfig) -> str:
    if m.n_steps == 1:
        return f"vanilla {m.n_prelude + m.n_core + m.n_coda}L"
    return f"looped {m.n_prelude}+{m.n_core}x{m.n_steps}+{m.n_coda}"
