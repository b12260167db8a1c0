"""Build a dataset from its config (seeded), or load it from the on-disk cache keyed by the config
and the generator version (datagen.dataset.GENERATOR_VERSION). An imported folder (data=grokked)
is read every time instead: its content can change under the same config."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np

from datagen.arithmetic import make_group, make_modular
from datagen.comparison import make_comparison
from datagen.complex_reasoning import make_complex_reasoning
from datagen.composition import make_composition
from datagen.config import DataConfig, config_dict
from datagen.dataset import GENERATOR_VERSION, Dataset
from datagen.grokked_format import read_grokked
from datagen.mixture import make_mixture
from datagen.permutation_chains import make_permutation_chains
from datagen.tables import make_table


def read_folder(cfg, rng=None) -> Dataset:
    """data=grokked: the folder, which must hold training data to train on."""
    if cfg.path in ("", "???"):
        raise ValueError(
            "data.path is required: the folder of train/valid/test.json (pass data.path=DIR)"
        )
    ds = read_grokked(cfg.path)
    if not len(ds.splits["train"]):
        raise ValueError(
            f"data.path={cfg.path} has no training records (train.json is missing or "
            "empty): nothing to train on"
        )
    return ds


BUILDERS = {
    "composition": make_composition,
    "comparison": make_comparison,
    "complex_reasoning": make_complex_reasoning,
    "khop_perm": make_permutation_chains,
    "modular": make_modular,
    "group": make_group,
    "table": make_table,
    "grokked": read_folder,
    "mixture": make_mixture,
}


def build_dataset(cfg: DataConfig) -> Dataset:
    """Pure: the same config (seed included) gives the same bytes."""
    return BUILDERS[cfg.task](cfg, np.random.default_rng(getattr(cfg, "seed", 0)))


def config_hash(cfg: DataConfig) -> str:
    """Cache key: the config and the generator version, so a generator change never reuses stale
    data built from the same config. A mixture's parts are stacked in their order, which the
    sorted JSON would lose (a reversed curriculum's stage would load the forward one's data,
    replaying the wrong stages): the order is part of the key."""
    key = {"config": config_dict(cfg), "generator_version": GENERATOR_VERSION}
    if cfg.task == "mixture":
        key["part_order"] = list(cfg.parts)
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def load_or_build(cfg: DataConfig, cache_dir: str | Path | None) -> Dataset:
    """Reuse a cached dataset so sweeps do not regenerate it; the cache is written atomically."""
    if cache_dir is None or cfg.task == "grokked":
        return build_dataset(cfg)
    path = Path(cache_dir) / f"{cfg.task}-{config_hash(cfg)}"
    if (path / "manifest.json").exists():
        return Dataset.load(path)
    ds = build_dataset(cfg)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    ds.save(tmp)
    try:
        os.replace(tmp, path)
    except OSError:  # another process won the race; its copy is identical
        shutil.rmtree(tmp, ignore_errors=True)
    return ds
