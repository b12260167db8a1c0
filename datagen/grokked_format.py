"""Read and write the JSON files of the GrokkedTransformer repository (Wang et al. 2024).

Layout: train.json, valid.json, test.json, each a list of records
  {"input_text": "<e_12><r_3><r_7>", "target_text": "<e_12><r_3><r_7><e_5></a>"}
test records also carry "type". valid.json is their OOD inferred set. Composition only.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from datagen.composition import composition_vocab
from datagen.dataset import Dataset
from grokloop.provenance import atomic_write_text

TEST_TYPES = {"atomic_id": "id_atomic", "atomic_ood": "ood_atomic",
              "train_inferred": "train_inferred", "test_inferred_id": "test_inferred_iid",
              "test_inferred_ood": "test_inferred_ood", "test_OI": "test_OI", "test_IO": "test_IO",
              "valid": "valid"}
_TOKEN = re.compile(r"<[^>]+>")


def _record(ds: Dataset, i: int) -> dict:
    toks = [ds.vocab.token(t) for t in ds.inputs[i, :ds.answer_pos[i] + 1]]
    text = "".join(toks)
    return {"input_text": text, "target_text": text + ds.vocab.token(ds.answers[i]) + "</a>"}


def write_grokked(ds: Dataset, out_dir: str | Path) -> Path:
    if ds.task != "composition":
        raise ValueError(f"the GrokkedTransformer format holds composition data, not {ds.task!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train = [_record(ds, i) for i in ds.splits["train"]]
    valid = [_record(ds, i) for i in ds.splits.get("test_inferred_ood", [])]
    test = [_record(ds, i) | {"type": TEST_TYPES[s]}
            for s in TEST_TYPES if s in ds.splits for i in ds.splits[s]]
    for name, records in (("train", train), ("valid", valid), ("test", test)):
        atomic_write_text(out / f"{name}.json", json.dumps(records))
    return out


def read_grokked(path: str | Path) -> Dataset:
    """Rebuild a Dataset; bridges are recovered by chaining the atomic facts found in train."""
    path = Path(path)
    files = {n: json.loads((path / f"{n}.json").read_text()) for n in ("train", "valid", "test")}
    parsed = {}
    for recs in files.values():
        for r in recs:
            if r["input_text"] not in parsed:
                toks = _TOKEN.findall(r["target_text"])
                if toks[-1] != "</a>" or "".join(toks[:-2]) != r["input_text"]:
                    raise ValueError(f"malformed record in {path}: {r}")
                parsed[r["input_text"]] = toks[:-2] + [toks[-2]]
    ents = [int(t[3:-1]) for toks in parsed.values() for t in toks if t.startswith("<e_")]
    rels = [int(t[3:-1]) for toks in parsed.values() for t in toks if t.startswith("<r_")]
    vocab = composition_vocab(max(ents) + 1, max(rels) + 1)
    keys = list(parsed)
    index = {k: i for i, k in enumerate(keys)}
    max_hops = max(len(t) - 2 for t in parsed.values())
    N, n_ctx = len(keys), 1 + max_hops
    inputs = np.full((N, n_ctx), vocab.pad_id, dtype=np.int64)
    answers, hops = np.zeros(N, np.int64), np.zeros(N, np.int64)
    for i, k in enumerate(keys):
        ids = [vocab.id(t) for t in parsed[k]]
        inputs[i, :len(ids) - 1], answers[i], hops[i] = ids[:-1], ids[-1], len(ids) - 2
    atomic = {(inputs[i, 0], inputs[i, 1]): answers[i] for i in range(N) if hops[i] == 1}
    roles = {"head": inputs[:, 0].copy(), "answer": answers.copy()}
    roles |= {f"relation_{j}": np.where(hops >= j, inputs[:, j], -1) for j in range(1, max_hops + 1)}
    role_pos = {"head": np.zeros(N, np.int64), "answer": np.full(N, -1, np.int64)}
    role_pos |= {f"relation_{j}": np.where(hops >= j, j, -1) for j in range(1, max_hops + 1)}
    for j in range(1, max_hops):
        roles[f"bridge_{j}"], role_pos[f"bridge_{j}"] = np.full(N, -1), np.where(hops > j, j, -1)
    for i in np.flatnonzero(hops > 1):
        e = inputs[i, 0]
        for j in range(1, hops[i]):
            e = atomic.get((e, inputs[i, j]), -1)
            roles[f"bridge_{j}"][i] = e
    by_type = {v: k for k, v in TEST_TYPES.items()}
    splits = {"train": [index[r["input_text"]] for r in files["train"]]}
    for r in files["test"]:
        splits.setdefault(by_type[r["type"]], []).append(index[r["input_text"]])
    if "test_inferred_ood" not in splits and files["valid"]:
        splits["test_inferred_ood"] = [index[r["input_text"]] for r in files["valid"]]
    return Dataset("composition", vocab, inputs, hops.copy(), answers, hops,
                   {k: np.asarray(v, np.int64) for k, v in roles.items()},
                   {k: np.asarray(v, np.int64) for k, v in role_pos.items()},
                   {k: np.asarray(v, np.int64) for k, v in splits.items()},
                   {"task": "composition", "source": str(path)}, {})
