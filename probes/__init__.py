"""Probes: which circuit a model uses, at which recurrence step, and when during training.

Each probe is a function of (model, inputs) returning arrays; `python -m probes` runs them on a
run's checkpoints and stores the results in the run directory; plotting lives in `reports/`.
Virtual layers (prelude layers, each core layer of each step, coda layers) are the unit
throughout: S[i] is the residual state after virtual layer i - 1, S[0] the embedding.
"""
