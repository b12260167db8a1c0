"""Read and write the data folders of the GrokkedTransformer repository (Wang et al. 2024).

    python -m datagen data=composition out_dir=DIR format=grokked   # export ours
    python -m datagen data=grokked data.path=DIR                     # read one, print its counts
    python -m grokloop.train data=grokked data.path=DIR ...          # train on one

The layout, as the authors' notebooks write it and their loader reads it (composition.ipynb,
comparison.ipynb, main.py and simpletransformers/seq2seq of github.com/OSU-NLP-Group/
GrokkedTransformer; `read_data_source_target` makes a DataFrame with the FIRST record's keys, so
every record of a file must carry the same keys):

  train.json  list of {"input_text", "target_text"}; comparison records (every file) also carry
              "type" (in train.json: id_atomic | ood_atomic | train_inferred)
  valid.json  the same records as test.json's test_inferred_ood (their evaluation during training)
  test.json   records with "type": id_atomic, ood_atomic, train_inferred, test_inferred_iid,
              test_inferred_ood, and in newer composition files test_OI / test_IO (two-hop, first
              hop OOD and second ID / the reverse)
  complex reasoning (complex_reasoning.ipynb; datagen/complex_reasoning.py) types its training
              comparisons train_inferred_topleft (ID x ID) and train_inferred_cross (ID x OOD),
              in train.json and in test.json's samples of them, and adds test_hard; train.json
              holds no ood_atomic (those values are never trained), test.json all of them
  vocab.json  a JSON list of the tokens `--add_tokens` adds to the GPT-2 tokenizer:
              composition  <e_i>..., <r_i>..., <mask>, <sep>, <a>, </a>, <q>, </q>
              comparison   <e_i>..., <attr_j>..., <k> (values 0..), those six, then per
                           attribute <attr_j_0>, <attr_j_1>, <attr_j_2> (value1 <, =, > value2)

  composition  input "<e_12><r_3><r_7>"            target input + "<e_5></a>"
  comparison   atomic "<e_4><attr_2>"              target input + "<13></a>"
               inferred "<attr_2><q><e_4><mask><e_9>"  target input + "<attr_2_0></a>"

Reading detects the task from the tokens (<r_*>: composition, <attr_*>: comparison) and builds a
Dataset in the file's own tokens (a comparison folder keeps the authors' <e><attr> order and
per-attribute labels). Roles the files do not state are recovered from the atomic facts:
composition bridges by chaining (h, r) -> t, comparison values by (entity, attribute) -> value.
Unknown test types become splits of their own (with a warning). Writing converts our comparison
layout (<a_j><e_i> -> <v_k>, shared <lt>/<eq>/<gt>) to theirs and writes vocab.json. A folder
with any complex-reasoning type reads as task complex_reasoning; both of its training types
become our split train_inferred. Their complex-reasoning notebook also wraps atomic queries as
`<q><e><attr><mask></q>`, comparisons in `...</q>` and answers in `<a>...</a>`; we write and
read the comparison records above (the same facts), not that wrapping.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from pathlib import Path

import numpy as np

from datagen.composition import composition_vocab
from datagen.dataset import Dataset, read_json
from datagen.provenance import atomic_write_text
from datagen.vocab import Vocab

# our split name -> the authors' "type"
TEST_TYPES = {
    "atomic_id": "id_atomic",
    "atomic_ood": "ood_atomic",
    "train_inferred": "train_inferred",
    "test_inferred_id": "test_inferred_iid",
    "test_inferred_ood": "test_inferred_ood",
    "test_OI": "test_OI",
    "test_IO": "test_IO",
    "valid": "valid",
}
# complex reasoning's own types (test.json) -> our split
COMPLEX_TYPES = {
    "train_inferred_topleft": "train_inferred",
    "train_inferred_cross": "train_inferred",
    "test_hard": "test_hard",
}
COMPARISON_TASKS = ("comparison", "complex_reasoning")  # the attribute-comparison layout
SPECIALS = ["<mask>", "<sep>", "<a>", "</a>", "<q>", "</q>"]  # the authors' vocab.json specials
FILES = ("train", "valid", "test")
_TOKEN = re.compile(r"<[^<>]+>")
_INDEXED = re.compile(r"<(e|r|attr)_(\d+)>|<(\d+)>|<attr_(\d+)_([012])>")
_OUR_LABELS = ["<lt>", "<eq>", "<gt>"]  # datagen.comparison.LABELS


# --- writing -------------------------------------------------------------------------------------


def _ours_comparison(ds: Dataset) -> bool:
    """True for our comparison layout (<a_j><e_i>, shared labels), False for the authors'."""
    return ds.task in COMPARISON_TASKS and "<lt>" in ds.vocab.tokens


def authors_tokens(ds: Dataset, i: int) -> tuple[list[str], str]:
    """Example i as the authors write it: (query tokens, answer token)."""
    toks = [ds.vocab.token(t) for t in ds.inputs[i, : ds.answer_pos[i] + 1]]
    answer = ds.vocab.token(ds.answers[i])
    if _ours_comparison(ds):
        attr = f"<attr_{toks[0][3:-1]}>"  # <a_2> -> <attr_2>
        if len(toks) == 2:  # atomic: <a_2><e_4> -> <e_4><attr_2>
            return [toks[1], attr], f"<{answer[3:-1]}>"  # <v_13> -> <13>
        return [attr] + toks[1:], f"<attr_{toks[0][3:-1]}_{_OUR_LABELS.index(answer)}>"
    return toks, answer


def authors_vocab(ds: Dataset) -> list[str]:
    """vocab.json: every token the files use and the authors' specials, in their order."""
    n = {name: len(ds.vocab.range(name)) for name in ds.vocab.ranges}
    ents = [f"<e_{i}>" for i in range(n["entities"])]
    if ds.task == "composition":
        return ents + [f"<r_{i}>" for i in range(n["relations"])] + SPECIALS
    if ds.task in COMPARISON_TASKS:
        A = n["attributes"]
        return (
            ents
            + [f"<attr_{j}>" for j in range(A)]
            + [f"<{k}>" for k in range(n["values"])]
            + SPECIALS
            + [f"<attr_{j}_{c}>" for j in range(A) for c in range(3)]
        )
    raise ValueError(
        f"the GrokkedTransformer format holds composition, comparison and "
        f"complex_reasoning data, not {ds.task!r}"
    )


def _record(ds: Dataset, i: int, kind: str | None = None) -> dict:
    query, answer = authors_tokens(ds, i)
    text = "".join(query)
    return {"input_text": text, "target_text": text + answer + "</a>"} | (
        {"type": kind} if kind else {}
    )


def _train_types(ds: Dataset) -> dict[int, str]:
    """Comparison train.json carries a type per record. An atomic fact is ood_atomic if it is in
    the atomic_ood split or, outside the sampled atomic splits, if its (entity, attribute) is in
    no training comparison (the authors' causal tracing calls exactly those 'train atomic')."""
    train = ds.splits["train"]
    inferred = train[ds.answer_pos[train] > 1]
    seen = {
        (int(ds.roles[e][i]), int(ds.roles["attribute"][i]))
        for i in inferred
        for e in ("entity_1", "entity_2")
    }
    ood, idd = (
        set(ds.splits.get("atomic_ood", []).tolist()),
        set(ds.splits.get("atomic_id", []).tolist()),
    )
    out = {}
    for i in train.tolist():
        if ds.answer_pos[i] > 1:
            out[i] = "train_inferred"
        elif i in ood or i in idd:
            out[i] = "ood_atomic" if i in ood else "id_atomic"
        else:
            key = (int(ds.roles["entity_1"][i]), int(ds.roles["attribute"][i]))
            out[i] = "id_atomic" if key in seen else "ood_atomic"
    return out


def _complex_train_types(ds: Dataset) -> dict[int, str]:
    """Complex reasoning: every training atomic fact is id_atomic; a training comparison is
    train_inferred_topleft when both its (entity, attribute) have a training atomic fact (both
    ID), else train_inferred_cross."""
    train, r = ds.splits["train"], ds.roles
    atomic = ds.answer_pos[train] == 1
    known = {
        (int(e), int(a))
        for e, a in zip(r["entity_1"][train[atomic]], r["attribute"][train[atomic]])
    }
    out = {int(i): "id_atomic" for i in train[atomic]}
    for i in train[~atomic].tolist():
        a = int(r["attribute"][i])
        both = (int(r["entity_1"][i]), a) in known and (int(r["entity_2"][i]), a) in known
        out[i] = "train_inferred_topleft" if both else "train_inferred_cross"
    return out


def write_grokked(ds: Dataset, out_dir: str | Path) -> Path:
    """train.json, valid.json, test.json and vocab.json of `ds`, each written atomically."""
    vocab = authors_vocab(ds)  # refuses tasks the format does not hold
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    complex_ = ds.task == "complex_reasoning"
    kinds = (
        _complex_train_types(ds)
        if complex_
        else _train_types(ds)
        if ds.task == "comparison"
        else {}
    )
    train = [_record(ds, i, kinds.get(i)) for i in ds.splits["train"].tolist()]
    valid_type = "test_inferred_ood" if ds.task in COMPARISON_TASKS else None  # as theirs
    valid = [_record(ds, i, valid_type) for i in ds.splits.get("test_inferred_ood", [])]
    test = [
        _record(ds, i, kinds[i] if complex_ and s == "train_inferred" else TEST_TYPES.get(s, s))
        for s in ds.eval_splits
        for i in ds.splits[s].tolist()
    ]
    for name, obj in (("train", train), ("valid", valid), ("test", test), ("vocab", vocab)):
        atomic_write_text(out / f"{name}.json", json.dumps(obj))
    return out


# --- reading -------------------------------------------------------------------------------------


def _parse(record: dict, where: str) -> tuple[tuple[str, ...], str]:
    """(query tokens, answer token) of one record; a malformed record names its file."""
    try:
        q, t = record["input_text"], record["target_text"]
    except (KeyError, TypeError):
        raise ValueError(f"{where}: a record without input_text/target_text: {record!r}") from None
    toks = _TOKEN.findall(t)
    if "".join(toks) != t or len(toks) < 3 or toks[-1] != "</a>" or "".join(toks[:-2]) != q:
        raise ValueError(
            f"{where}: malformed record (want target_text = input_text + answer + </a>): {record!r}"
        )
    return tuple(toks[:-2]), toks[-2]


def _sizes(tokens) -> dict[str, int]:
    """Number of entities, relations, attributes, values: from vocab.json when there is one
    (tokens the data never uses still count), else the largest index the data uses, plus one."""
    n = {"e": 0, "r": 0, "attr": 0, "value": 0}
    for tok in tokens:
        m = _INDEXED.fullmatch(tok)
        if m and m.group(1):
            n[m.group(1)] = max(n[m.group(1)], int(m.group(2)) + 1)
        elif m and m.group(3):
            n["value"] = max(n["value"], int(m.group(3)) + 1)
        elif m:
            n["attr"] = max(n["attr"], int(m.group(4)) + 1)
    return n


def _file_hashes(path: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.glob("*.json"))
        if p.stem in FILES + ("vocab",)
    }


def read_grokked(path: str | Path) -> Dataset:
    """A Dataset from a folder of the authors' format (see the module docstring).

    Without train.json the dataset has an empty train split (it can be evaluated and probed, not
    trained on) and the roles that need the atomic facts (composition bridges, comparison values)
    are known only where test.json's sampled id_atomic/ood_atomic records give them; a warning
    says how many are unknown (-1). Without test.json a warning says that valid.json's split is
    the only one evaluated (training needs one of the two). Without vocab.json the vocabulary is
    what the records use. A file that is not JSON is an error naming it."""
    path = Path(path)
    files, vocab_list, missing = _read_files(path)
    parsed, splits = _examples(path, files)
    tokens = {t for q, a in parsed.items() for t in q + (a,)}
    task = _task(path, files, tokens)
    if vocab_list is not None:
        absent = sorted((tokens | {"</a>"}) - set(vocab_list))
        if absent:
            raise ValueError(
                f"{path / 'vocab.json'} lacks {len(absent)} tokens the records use, e.g. "
                f"{absent[:5]}; the authors' tokenizer would split them"
            )
    n = _sizes(vocab_list if vocab_list is not None else tokens)
    ds = (
        _composition(n, parsed, splits)
        if task == "composition"
        else _comparison(n, parsed, splits, task)
    )
    ds.config.update(
        {"source": str(path.resolve()), "files": _file_hashes(path), "missing_files": missing}
    )
    return ds


def _read_files(path: Path) -> tuple[dict[str, list], list[str] | None, list[str]]:
    """The folder's record files by name, its vocabulary (None without vocab.json) and the
    files it lacks; each gap warned about once, each unreadable file an error naming it."""
    if not path.is_dir():
        raise FileNotFoundError(
            f"{path}: no such folder (want train.json, valid.json, test.json "
            "and vocab.json of the GrokkedTransformer format)"
        )
    fix = "export it again (python -m datagen ... format=grokked) or copy it whole"
    files = {n: read_json(path / f"{n}.json", fix) for n in FILES if (path / f"{n}.json").exists()}
    for n, records in files.items():
        if not isinstance(records, list):
            raise ValueError(
                f"{path / n}.json holds a JSON {type(records).__name__}, not the list "
                "of records of the GrokkedTransformer format"
            )
    if not any(files.values()):
        raise FileNotFoundError(
            f"{path} holds none of train.json, valid.json, test.json (or only "
            "empty ones): nothing to build a dataset from"
        )
    vocab_file = path / "vocab.json"
    vocab_list = read_json(vocab_file, fix) if vocab_file.exists() else None
    if vocab_list is not None and not (
        isinstance(vocab_list, list) and all(isinstance(t, str) for t in vocab_list)
    ):
        raise ValueError(
            f"{vocab_file}: want a JSON list of token strings (what --add_tokens adds)"
        )
    missing = [f"{n}.json" for n in FILES + ("vocab",) if not (path / f"{n}.json").exists()]
    if "train.json" in missing:
        warnings.warn(
            f"{path} has no train.json: the dataset has no training split, and the "
            "atomic facts that give composition bridges / comparison values come only "
            "from test.json's id_atomic/ood_atomic samples (see the count of unknown "
            "roles below)"
        )
    if "test.json" in missing:
        warnings.warn(
            f"{path} has no test.json: "
            + (
                "valid.json's test_inferred_ood is the only split to evaluate (no atomic, "
                "train_inferred or ID test split)"
                if "valid" in files
                else "no split to evaluate (training needs test.json or valid.json)"
            )
        )
    if vocab_list is None:
        warnings.warn(
            f"{path} has no vocab.json: the vocabulary is the tokens the records use "
            "(entities etc. up to the largest index seen); the authors' --add_tokens "
            "needs one, and write_grokked writes it"
        )

    return files, vocab_list, missing


def _examples(path: Path, files: dict[str, list]) -> tuple[dict[tuple, str], dict[str, list]]:
    """One example per distinct query, in file order (query -> answer), and the splits that
    index them (test.json's record types named as grokloop's splits)."""
    parsed: dict[tuple, str] = {}
    splits: dict[str, list[tuple]] = {}
    unknown_types = set()
    by_type = {v: k for k, v in TEST_TYPES.items()} | COMPLEX_TYPES
    for name, records in files.items():
        for r in records:
            query, answer = _parse(r, f"{path / name}.json")
            if parsed.setdefault(query, answer) != answer:
                raise ValueError(
                    f"{path}: query {''.join(query)} has two answers, {parsed[query]} and {answer}"
                )
            if name == "test":
                kind = r.get("type")
                if kind is None:
                    raise ValueError(f"{path / 'test.json'}: a record without 'type': {r!r}")
                if kind not in by_type:
                    unknown_types.add(kind)
                split = by_type.get(kind, kind)
            else:
                split = {"train": "train", "valid": "valid.json"}[name]
            splits.setdefault(split, []).append(query)
    if unknown_types:
        warnings.warn(
            f"{path}: unknown test types {sorted(unknown_types)} are kept as splits of "
            f"their own; known: {sorted(by_type)}"
        )
    # valid.json repeats test.json's test_inferred_ood; it is a split only when it differs.
    if "valid.json" in splits:
        v = splits.pop("valid.json")
        if "test_inferred_ood" not in splits:
            splits["test_inferred_ood"] = v
        elif set(v) != set(splits["test_inferred_ood"]):
            splits["valid_json"] = v
            warnings.warn(
                f"{path}: valid.json differs from test.json's test_inferred_ood; kept as "
                "split valid_json"
            )
    splits.setdefault("train", [])
    return parsed, splits


def _task(path: Path, files: dict[str, list], tokens: set[str]) -> str:
    if any(t.startswith("<r_") for t in tokens):
        return "composition"
    if any(t.startswith("<attr_") for t in tokens):
        types = {r.get("type") for records in files.values() for r in records}
        return "complex_reasoning" if types & set(COMPLEX_TYPES) else "comparison"
    raise ValueError(
        f"{path}: cannot tell the task: no <r_*> (composition) or <attr_*> "
        f"(comparison) tokens among {sorted(tokens)[:8]}..."
    )


def _arrays(vocab: Vocab, parsed: dict, n_ctx: int):
    keys = list(parsed)
    inputs = np.full((len(keys), n_ctx), vocab.pad_id, dtype=np.int64)
    try:
        for i, q in enumerate(keys):
            inputs[i, : len(q)] = [vocab.id(t) for t in q]
        answers = np.array([vocab.id(parsed[q]) for q in keys], dtype=np.int64)
    except KeyError as e:
        raise ValueError(
            f"token {e.args[0]} is not one of this task's tokens ({', '.join(vocab.ranges)})"
        ) from None
    return keys, inputs, answers


def _finish(task, vocab, keys, inputs, answer_pos, answers, hops, roles, role_pos, splits, n):
    index = {q: i for i, q in enumerate(keys)}
    split_idx = {s: np.array([index[q] for q in qs], dtype=np.int64) for s, qs in splits.items()}
    return Dataset(
        task,
        vocab,
        inputs,
        answer_pos.astype(np.int64),
        answers,
        hops.astype(np.int64),
        {k: np.asarray(v, np.int64) for k, v in roles.items()},
        {k: np.asarray(v, np.int64) for k, v in role_pos.items()},
        split_idx,
        {"task": task, "format": "grokked", "sizes": n},
        {},
    )


def _warn_unknown(name: str, unknown: int, total: int) -> None:
    if unknown:
        warnings.warn(
            f"{name} is unknown (-1) for {unknown} of {total} examples: the atomic facts "
            "that give it are not in the folder (train.json holds them)"
        )


def _composition(n, parsed, splits) -> Dataset:
    vocab = composition_vocab(n["e"], n["r"])
    max_hops = max(len(q) - 1 for q in parsed)
    keys, inputs, answers = _arrays(vocab, parsed, 1 + max_hops)
    N = len(keys)
    hops = np.array([len(q) - 1 for q in keys], dtype=np.int64)
    atomic = {
        (int(inputs[i, 0]), int(inputs[i, 1])): int(answers[i]) for i in range(N) if hops[i] == 1
    }
    roles = {"head": inputs[:, 0].copy(), "answer": answers.copy()}
    role_pos = {"head": np.zeros(N), "answer": np.full(N, -1)}
    for j in range(1, max_hops + 1):
        roles[f"relation_{j}"] = np.where(hops >= j, inputs[:, j], -1)
        role_pos[f"relation_{j}"] = np.where(hops >= j, j, -1)
    for j in range(1, max_hops):  # the bridge after hop j, probed at relation j's position
        roles[f"bridge_{j}"], role_pos[f"bridge_{j}"] = np.full(N, -1), np.full(N, -1)
    for i in np.flatnonzero(hops > 1):
        e = int(inputs[i, 0])
        for j in range(1, hops[i]):
            e = atomic.get((e, int(inputs[i, j])), -1)
            if e < 0:
                break
            roles[f"bridge_{j}"][i], role_pos[f"bridge_{j}"][i] = e, j
    for j in range(1, max_hops):
        _warn_unknown(
            f"bridge_{j}",
            int(((hops > j) & (roles[f"bridge_{j}"] < 0)).sum()),
            int((hops > j).sum()),
        )
    return _finish(
        "composition", vocab, keys, inputs, hops, answers, hops, roles, role_pos, splits, n
    )


def comparison_vocab(n) -> Vocab:
    """The authors' comparison tokens, in ranges (corruption replaces within a range)."""
    A = n["attr"]
    return Vocab.build(
        [
            ("specials", ["<pad>", "<q>", "<mask>", "</a>"]),
            ("entities", [f"<e_{i}>" for i in range(n["e"])]),
            ("attributes", [f"<attr_{j}>" for j in range(A)]),
            ("values", [f"<{k}>" for k in range(n["value"])]),
            ("labels", [f"<attr_{j}_{c}>" for j in range(A) for c in range(3)]),
        ]
    )


def _comparison(n, parsed, splits, task: str = "comparison") -> Dataset:
    vocab = comparison_vocab(n)
    keys, inputs, answers = _arrays(vocab, parsed, 5)
    N = len(keys)
    atomic = np.array([len(q) == 2 for q in keys])
    answer_pos = np.where(atomic, 1, 4)
    # atomic <e><attr> -> value; inferred <attr><q><e1><mask><e2> -> label
    attr = np.where(atomic, inputs[:, 1], inputs[:, 0])
    e1 = np.where(atomic, inputs[:, 0], inputs[:, 2])
    e2 = np.where(atomic, -1, inputs[:, 4])
    value = {
        (int(inputs[i, 0]), int(inputs[i, 1])): int(answers[i]) for i in np.flatnonzero(atomic)
    }
    v1 = np.array([value.get((int(a), int(b)), -1) for a, b in zip(e1, attr)])
    v2 = np.array([value.get((int(a), int(b)), -1) if a >= 0 else -1 for a, b in zip(e2, attr)])
    pos_e1 = np.where(atomic, 0, 2)
    pos_e2 = np.where(atomic, -1, 4)
    roles = {
        "attribute": attr,
        "entity_1": e1,
        "entity_2": e2,
        "value_1": v1,
        "value_2": v2,
        "answer": answers.copy(),
    }
    role_pos = {
        "attribute": np.where(atomic, 1, 0),
        "entity_1": pos_e1,
        "entity_2": pos_e2,
        "value_1": np.where(v1 >= 0, pos_e1, -1),
        "value_2": np.where(v2 >= 0, pos_e2, -1),
        "answer": np.full(N, -1),
    }
    _warn_unknown(
        "value_1/value_2", int((~atomic & ((v1 < 0) | (v2 < 0))).sum()), int((~atomic).sum())
    )
    return _finish(
        task, vocab, keys, inputs, answer_pos, answers, np.ones(N), roles, role_pos, splits, n
    )
