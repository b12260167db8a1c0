"""grokloop: looped transformers and the long-run training that makes them grok.

In a notebook:

    from grokloop import compose_run, load_run
    from grokloop.train import train             # (grokloop.train is the training package)
    cfg = compose_run("experiment=default")      # the RunConfig python -m grokloop.train trains
    train(cfg, "runs/mine")
    run = load_run("runs/mine")                  # model, dataset and config of a trained run
    logits, cache = run.model.run_with_cache(run.batch("test", n=64)[0])

docs/notebooks/quickstart.ipynb does this, then a logit lens, causal tracing and a plot.

One module (or subpackage) per concept:

- the model: `model` (prelude, looped core, coda), `moe` (expert MLPs), `memory` (the fact
  memory), `hooks`
- a run: `config` (the typed schemas of conf/), `train/` (prepare, state, step, loop, resume),
  `optim`, `losses`, `schedule`, `evaluate`, `checkpoint`, `runlock`, `accelerate` (bf16 and
  compiled steps), `run` (load_run: a trained run opened for analysis), `stats` (intervals)
- `adaptive/`: adaptive thinking (depth objectives, exit rules, the halting selector)
- `bank/`: knowledge banks a frozen memory model reads
- `curriculum/`: gated stages from logic to mathematics
- `baselines/`: the non-parametric controls (canonical-key lookup, the symbolic bound)
- `cli`: one command-line grammar; `__main__`: the `grokloop COMMAND ...` console script

Layers (pyproject.toml's import-linter contracts): datagen below, then grokloop, probes,
reports, and the commands (`__main__` modules) on top; nothing imports upward.
"""

from __future__ import annotations

import importlib

# name -> module; imported on first use, so `python -m datagen` and the other commands do not pay
# for torch and TransformerLens until they need them (PEP 562).
_EXPORTS = {
    "LoopedTransformer": "grokloop.model",
    "ModelConfig": "grokloop.config",
    "OptimConfig": "grokloop.config",
    "TrainConfig": "grokloop.config",
    "RunConfig": "grokloop.config",
    "run_config_from_dict": "grokloop.config",
    "compose_run": "grokloop.cli",
    "Run": "grokloop.run",
    "load_run": "grokloop.run",
    "FactBank": "grokloop.memory",
    "wilson": "grokloop.stats",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'grokloop' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
