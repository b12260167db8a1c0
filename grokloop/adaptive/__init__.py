"""Adaptive thinking: how many times a looped model runs its thinking block, per problem.

- `depth`:    depth objectives, how a training batch decides which step counts to learn from
              (`train.depth=fixed|random|best|soft_best`; used by grokloop/train.py).
- `rules`:    one trajectory of the frozen model's default schedule, and the simple exit rules
              read from it (fixed depth, KL exit, confidence exit, Huginn's three exits, most
              confident, oracle), and abstention by a confidence threshold.
- `selector`: the learned halting policy (stop, abstain, or continue with core c), its
              REINFORCE training and its episodes on the frozen model.
- `blocks`:   with a bank of block sizes, every schedule (one core throughout, the cores in
              turn, random) against its compute in layer applications, at each depth and exit.
- `halting`:  both evaluated per split and hop count, saved to RUN/halting/; the command line

      python -m grokloop.halting run_dir=RUN [max_steps=12] [step_cost=0.01] [key=value ...]

The report across runs is `reports/adaptive.py` (`python -m reports.adaptive RUN...`).
This package imports nothing heavy, so `reports` can read MAIN_RULES without torch.
"""

# The rules the results tables show, in this order ({T} is max_steps): RUN/halting/results.md
# and reports/adaptive.py's summary.
MAIN_RULES = [
    "trained_depth",
    "fixed_{T}",
    "kl<0.01",
    "huginn_kl<5e-4",
    "huginn_entropy<1e-3",
    "huginn_argmax_5",
    "conf>=0.9",
    "max_confidence",
    "oracle",
    "selector",
]
