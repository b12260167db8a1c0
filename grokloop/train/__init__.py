"""Training: one explicit loop, data on the device, loss on the answer token.

    python -m grokloop.train experiment=composition_small [key=value ...] [resume=true]

`train(cfg, out_dir)` is the pure entry; `python -m grokloop.train` (__main__.py) is the thin
Hydra command, which also writes the run's report. The pieces, one module each: `prepare`
(every check before a file is written), `rundir` (what the run directory holds: a run, or a
failed start to replace), `state` (the resident data and what a step changes), `step` (one
update), `loop` (start or resume, evaluate, checkpoint, stop), `resume` (the saved config and
what a resume may change), `stop` (SIGTERM/SIGINT), `progress` (a bar or a line per
evaluation); trackers are grokloop/tracking.py. docs/running.md tells how runs fail, stop and
recover. A fact-memory model
(model.memory=facts) reads the training graph's atomic facts, or with train.bank=DIR that bank
directory (python -m grokloop.bank build), checked against the run before any work; config.json
records its path and facts' sha256 (train.bank_sha256). A run directory holds
config.json (written once, when the run starts, with the code version and the dataset's content
hash), metrics.jsonl (one row per evaluation), summary.json, checkpoints/, resume_log.jsonl (one
event per resume) and, while a process trains there, .lock (grokloop/runlock.py).

Runs you can trust:
  - resume=true compares the config with the saved one before touching anything; only the keys
    in RESUMABLE may change (recorded in resume_log.jsonl), any other difference is refused;
  - one process per run directory (RUN/.lock);
  - train.deterministic=true (default): same seed, config and machine give the same metrics and
    weights, multithreaded (see `deterministic_algorithms`);
  - no resume from a run whose checkpoints are all damaged, unless train.restart_if_damaged=true;
  - a non-finite loss or gradient stops the run before the update, so no checkpoint holds NaN;
  - a run that stopped before its first checkpoint does not hold its directory: the next start
    replaces it (and says so);
  - SIGTERM or Ctrl-C checkpoints the step the run reached and releases the lock; resume=true
    continues from exactly there;
  - a torn last line of metrics.jsonl (a crash mid-append) is dropped with a warning.
"""

from grokloop.train.loop import deterministic_algorithms, init_from, summarize, train
from grokloop.train.prepare import grok_splits, prepare, resolve_device, training_bank
from grokloop.train.resume import (
    BOOKKEEPING,
    RESUMABLE,
    config_diff,
    current_config,
    finished_summary,
    flatten,
    resume_changes,
)

__all__ = [
    "BOOKKEEPING",
    "RESUMABLE",
    "config_diff",
    "current_config",
    "deterministic_algorithms",
    "finished_summary",
    "flatten",
    "grok_splits",
    "init_from",
    "prepare",
    "resolve_device",
    "resume_changes",
    "summarize",
    "train",
    "training_bank",
]
