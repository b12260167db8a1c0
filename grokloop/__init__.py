"""grokloop: looped transformers and the long-run training that makes them grok.

One module (or subpackage) per concept:

- the model: `model` (prelude, looped core, coda), `moe` (expert MLPs), `hooks`
- a run: `config` (the typed schemas of conf/), `cli` (one command-line grammar), `train`,
  `optim`, `losses`, `schedule`, `evaluate`, `checkpoint`, `runlock`, `accelerate` (bf16 and
  compiled training steps)
- `adaptive/`: adaptive thinking (depth objectives, exit rules, the halting selector)
- `baselines/`: the non-parametric controls (canonical-key lookup, the symbolic bound)
- shared: `provenance` (code version, hashes, the one atomic write), `stats` (intervals)
- `halting`, `adaptive_summary`: the documented `python -m` commands, aliases of
  grokloop.adaptive.halting and reports.adaptive

A new capability (a curriculum, knowledge banks) gets its own module or subpackage
here, beside these. Data is `datagen/`, probes `probes/`, every page and summary `reports/`.
"""
