"""Several tasks on one shared vocabulary as one dataset: a curriculum stage (grokloop/curriculum.py)
or the joint baseline, where some parts train and every part is evaluated.

The parts are built by their own generators (each keeps its seed, split and hash) and stacked in
`parts` order. Splits:
  train         the training cells of the parts in `train_on`, plus replay examples
  train_sample  a seeded sample of at most TRAIN_SAMPLE_SIZE training examples
  test_NAME     for EVERY part: a seeded sample of at most `eval_size` of its held-out split
                (`held_out`: "test" for the tables, e.g. test_inferred_id for composition)
  valid_NAME    for EVERY part: at most `eval_size` more of the held-out split, disjoint from
                test_NAME, where a curriculum's gate is read (choices on valid, R on test).
                A part holding out fewer than 2 x eval_size cells splits them in half.
Replay draws, evenly over the parts that come before the first trained part, training cells of
those parts, as many as make them the fraction `replay` of the training split (0.25 with 8,192
stage cells adds 2,731 replayed ones). The draw is a fixed sample, a function of the seed.
`stats.parts` records each part's offset, size and its own content hash.
"""

from __future__ import annotations

import numpy as np

from datagen.arithmetic import TRAIN_SAMPLE_SIZE
from datagen.config import MixtureConfig, config_dict, data_config_from_dict
from datagen.dataset import Dataset, sample_eval


def eval_size_of(n_held: int, size: int) -> int:
    """Cells test_NAME and valid_NAME each take from a held-out split of n_held cells: at most
    `size`, half of them where fewer than 2 * size are held out (test the larger half if odd)."""
    return size if n_held >= 2 * size else (n_held + 1) // 2


def make_mixture(cfg: MixtureConfig, rng: np.random.Generator) -> Dataset:
    from datagen.build import build_dataset  # build imports this module

    parts = {name: build_dataset(data_config_from_dict(d)) for name, d in cfg.parts.items()}
    first_name, first = next(iter(parts.items()))
    for name, ds in parts.items():
        if ds.vocab.tokens != first.vocab.tokens:
            raise ValueError(
                f"mixture part {name!r} ({ds.task}) has another vocabulary than "
                f"{first_name!r} ({first.task}); a mixture's parts must share one "
                "vocabulary, e.g. the table presets logic_* and math_*"
            )
        if cfg.held_out not in ds.splits:
            raise ValueError(
                f"mixture part {name!r} ({ds.task}) has no split {cfg.held_out!r} to "
                f"hold out; set data.held_out to one of {ds.eval_splits}"
            )
    # Parts of different lengths (e.g. chains of 2 and 4 hops) are right-padded to the longest;
    # the model is causal and reads each answer at its own answer_pos, so padding changes nothing.
    n_ctx, pad = max(ds.n_ctx for ds in parts.values()), first.vocab.id("<pad>")
    padded = lambda ds: np.pad(
        ds.inputs,
        ((0, 0), (0, n_ctx - ds.n_ctx)),  # noqa: E731
        constant_values=pad,
    )

    # Roles a part lacks (a 2-hop chain has no bridge_2) are -1 there, as within one task.
    roles = list(dict.fromkeys(k for ds in parts.values() for k in ds.roles))
    role = lambda k, field: (
        lambda ds: getattr(ds, field).get(  # noqa: E731
            k, np.full(len(ds), -1, np.int64)
        )
    )

    offsets, n = {}, 0
    for name, ds in parts.items():
        offsets[name], n = n, n + len(ds)
    cat = lambda get: np.concatenate([get(ds) for ds in parts.values()])  # noqa: E731

    train = [parts[p].splits["train"] + offsets[p] for p in cfg.train_on]
    n_trained = sum(len(t) for t in train)
    earlier = list(parts)[: list(parts).index(cfg.train_on[0])]
    replayed = {}
    if cfg.replay:
        n_replay = round(cfg.replay / (1 - cfg.replay) * n_trained)
        for i, p in enumerate(earlier):  # evenly; the first parts take the remainder
            k = n_replay // len(earlier) + (i < n_replay % len(earlier))
            pool = parts[p].splits["train"] + offsets[p]
            replayed[p] = np.sort(rng.choice(pool, size=min(k, len(pool)), replace=False))
    train_idx = np.sort(np.concatenate(train + list(replayed.values())))
    splits = {"train": train_idx, "train_sample": sample_eval(train_idx, TRAIN_SAMPLE_SIZE, rng)}
    held = {p: ds.splits[cfg.held_out] for p, ds in parts.items()}
    size = {p: eval_size_of(len(h), cfg.eval_size) for p, h in held.items()}
    for p in parts:  # every test sample first: they are those of mixtures before valid existed
        splits[f"test_{p}"] = sample_eval(held[p], size[p], rng) + offsets[p]
    for p in parts:
        rest = np.setdiff1d(held[p] + offsets[p], splits[f"test_{p}"])
        splits[f"valid_{p}"] = sample_eval(rest, size[p], rng)

    stats = {
        "parts": {
            p: {
                "offset": offsets[p],
                "size": len(ds),
                "task": ds.task,
                "content_hash": ds.content_hash(),
                "stats": ds.stats,
            }
            for p, ds in parts.items()
        },
        "n_trained": n_trained,
        "n_replayed": {p: len(v) for p, v in replayed.items()},
    }
    return Dataset(
        "mixture",
        first.vocab,
        cat(padded),
        cat(lambda d: d.answer_pos),
        cat(lambda d: d.answers),
        cat(lambda d: d.hops),
        {k: cat(role(k, "roles")) for k in roles},
        {k: cat(role(k, "role_pos")) for k in roles},
        {k: v.astype(np.int64) for k, v in splits.items()},
        config_dict(cfg),
        stats,
    )
