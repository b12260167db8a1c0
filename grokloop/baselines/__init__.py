"""Non-parametric baselines beside every trained model (issue 21, item 3): what memorising the
training set buys, and what exact symbolic reasoning over it buys.

    python -m grokloop.baselines lookup data=composition_small [sigma=0,2,4] [d=256] [seed=0]
    python -m grokloop.baselines lookup data=complex_reasoning_cpu methods=[retrieval,chance]

Modules, one concept each:
  keys.py      canonical random token keys; the context embedding of a query (concatenated
               per-position token keys), the digit weights, Gaussian query noise, and the
               hierarchical pairwise-mean ("scattershot") embedding of a whole sequence
  lookup.py    exact nearest-key search (chunked torch matmul) and the memory of every
               training example's (query key -> answer)
  symbolic.py  the exact symbolic lookup over the training facts: k-step chains of atomic facts
               (composition), value look-up and compare (comparison), the training table
               (modular, group), interval reasoning over the training facts (complex reasoning)
  retrieval.py the one-step retrieval control of complex reasoning: the training facts about the
               query's entities, no chaining (Wang et al. 2024, arXiv 2405.15071, section 5)
  evaluate.py  accuracy per (method, split[, hops], sigma) as rows of the results schema
  __main__.py  the command (schema BaselinesCommand, conf/baselines.yaml)

Methods (the `model` of a row): `lookup_cosine`, `lookup_digit`, `scattershot` (memorisation
controls: each stores every training example and answers a query with the answer of its nearest
stored key), `symbolic` (the reasoning upper bound), and complex reasoning's controls
`retrieval` and `chance` (a seeded uniform guess), which complex_reasoning runs by default.
"""
