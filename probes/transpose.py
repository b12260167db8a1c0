"""Does a model answer a commutative table by looking up the transposed cell? For a table op with
a op b == b op a, about half of the held-out cells (a, b) have their transpose (b, a) among the
training cells; a model that memorised the training cells and learned only the symmetry is right
on those and at chance on the rest, and its held-out accuracy sits at that share (issue 35: the
polynomial stage plateaus there). Splits the stage's held-out accuracy by that criterion."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from datagen import data_config_from_dict, load_or_build
from grokloop.checkpoint import load_model


def transpose_accuracy(run_dir: str | Path, split: str, data_cache: str | None = None) -> dict:
    """Accuracy on the split's cells whose transpose was trained ("mirrored") and on the rest,
    with their counts, for the model in run_dir's newest checkpoint (the data its config.json
    names; rows are `a op b =` tables)."""
    run_dir = Path(run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    ds = load_or_build(data_config_from_dict(config["data"]), data_cache)
    model, _, _ = load_model(run_dir)
    model.eval()

    def cells(idx):  # the operand tokens a, b of each row
        return ds.inputs[idx][:, [0, 2]]

    trained = {tuple(c) for c in cells(ds.splits["train"]).tolist()}
    idx = ds.splits[split]
    mirrored = np.array([(b, a) in trained for a, b in cells(idx).tolist()])
    with torch.no_grad():
        logits = model(torch.as_tensor(ds.inputs[idx]))
    guess = logits[torch.arange(len(idx)), torch.as_tensor(ds.answer_pos[idx])].argmax(-1)
    right = guess.numpy() == ds.answers[idx]
    return {
        "mirrored": float(right[mirrored].mean()) if mirrored.any() else None,
        "n_mirrored": int(mirrored.sum()),
        "rest": float(right[~mirrored].mean()) if (~mirrored).any() else None,
        "n_rest": int((~mirrored).sum()),
    }
