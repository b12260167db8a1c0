"""Curricula: train one model through an ordered list of stages, each to its gate, and measure
transfer and forgetting on every stage throughout.

    python -m grokloop.curriculum curriculum=logic_to_math [seed=1] [curriculum.mode=scratch]
        [curriculum.order=reversed] [curriculum.replay=0.25] [curriculum.stage_steps=200]

A stage is a data preset (conf/data/; every stage of one curriculum shares a vocabulary) with a
gate: the stage ends when its accuracy on `valid_NAME` (held-out cells kept apart for choices)
reaches `gate`, or after its step budget; R is measured on `test_NAME` (other held-out cells, never
read by a choice). Each stage is an ordinary training run (grokloop/train/) on a mixture dataset
(datagen/mixture.py) whose training split is the stage's training cells plus `replay`, and whose
evaluation splits are EVERY stage's held-out cells, so one curve per stage shows learning and
forgetting over the whole curriculum. With `distill`, a chained stage also keeps the previous
stage's model's answers on the replayed cells (grokloop/train/distill.py). Stage k starts from stage k-1's last checkpoint (its
optimizer state too unless `reset_optimizer`). Everything a run guarantees holds per stage:
checkpoints, exact resume, the run lock; `resume=true` continues the curriculum where it stopped,
exactly, at any stage.

Modes (the baselines are the same command):
  sequential  the curriculum: stage k starts from stage k-1
  scratch     every stage from a fresh model (same seed, budget and gate)
  joint       one run on every stage's training cells at once, for the mean stage budget: each
              step sees every stage's cells, so it spends what the curriculum spends in all
              (matched examples); it stops when every stage passes its gate
`order=reversed` runs the stages backwards (mathematics to logic).

Layout: OUT/curriculum.json (the command's config), OUT/stages/NN_NAME/ (one run directory per
stage), OUT/summary.json (the accuracy matrix R, ACC, BWT, FWT, forgetting, per-stage steps and
gates, embedding spectra), OUT/report.html (the command writes the report and, through
`run_curriculum(..., spectra=)`, the spectra: both are measurements, a layer above training).

Modules: `config` (the schemas), `run` (plan and run the stages), `metrics` (R, ACC, BWT, FWT,
forgetting, the summary); `python -m grokloop.curriculum` is __main__.py.

Metrics (Lopez-Paz & Ranzato 2017, arXiv 1706.08840; forgetting: Chaudhry et al. 2018, arXiv
1801.10112), for T stages in the order run: R[i][j] is the held-out accuracy on stage j at the end
of stage i, b[j] that of the initial model.
  ACC = mean_j R[T-1][j]                  BWT = mean_{j<T-1} (R[T-1][j] - R[j][j])
  FWT = mean_{j>0} (R[j-1][j] - b[j])     forgetting[j] = max_{l<T-1} R[l][j] - R[T-1][j]
For tables, FWT is zero-shot accuracy on an operation never trained and sits near chance whatever
transfers; the transfer that matters is how much faster a stage groks, the ratio of its steps to
the gate from scratch to those in the curriculum (`reports/curriculum.py` computes it across runs).
"""

from grokloop.curriculum.config import (
    MODES,
    CurriculumCommand,
    CurriculumConfig,
    StageConfig,
    checked,
)
from grokloop.curriculum.metrics import initial_accuracy, summarize, transfer_metrics
from grokloop.curriculum.run import RESUMABLE, Stage, plan, run_curriculum

__all__ = [
    "MODES",
    "RESUMABLE",
    "CurriculumCommand",
    "CurriculumConfig",
    "Stage",
    "StageConfig",
    "checked",
    "initial_accuracy",
    "plan",
    "run_curriculum",
    "summarize",
    "transfer_metrics",
]
