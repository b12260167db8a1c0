"""Knowledge banks: the facts a memory model reads, as files that plug into a frozen model.

    python -m grokloop.bank build run_dir=RUN out=banks/g1                 # the run's graph
    python -m grokloop.bank build data=composition_cpu data.seed=1 out=banks/g2   # graph G2's facts
    python -m grokloop.bank build run_dir=RUN facts=FILE out=banks/mine    # a list of facts
    python -m grokloop.bank build run_dir=RUN edit='e_3 r_5 e_9' out=banks/edit  # one fact edited
    python -m grokloop.bank build data=composition_cpu needed_by=test_inferred_id out=banks/slim
    python -m grokloop.bank build run_dir=RUN keep_fraction=0.5 out=banks/half   # facts missing
    python -m grokloop.bank eval run_dir=RUN bank=banks/g2 data=composition_cpu data.seed=1
    python -m grokloop.bank edit_eval run_dir=RUN n_edits=200              # edits in the bank
    python -m grokloop.bank edit_eval run_dir=ANY_RUN method=finetune n_edits=200  # the baseline

A bank is a directory:
  bank.safetensors  head, relation, tail: int64 [n_facts], token ids in slot order
  manifest.json     format, n_facts, the facts by name (up to MAX_NAMED), the vocabulary (its
                    sha256 and tokens), what it fits, where it came from, sha256 of the tensors
written atomically, tensors first and the manifest last, so a directory with a manifest is a
complete bank.

Why token ids and not keys and values: the model makes every slot from the ids with its own
learned maps (grokloop/memory.py), so a bank is independent of any one set of weights. The same
file plugs into every model over its vocabulary (the swap experiment needs exactly this), stays
right after the model is fine-tuned, is exact and tiny (24 bytes a fact), and can be read and
edited by name. Stored keys would be stale after any weight change and would tie a bank to one
checkpoint.

What "fits" means: the manifest's vocabulary (sha256 of its tokens and ranges) is the run's, and
the model has model.memory=facts; the model's sizes do not matter, since the slots are computed.
A bank that does not fit is refused before any work, naming what differs and the fix.
`eval` writes the results schema (reports/study): rows model, split, (hops), acc, Wilson lo/hi,
n, seed, step, bank; a swapped bank's rows are named `EXPERIMENT.swap`. It also measures
retrieval: how often the memory's top-1 slot at an atomic query's answer position is the queried
fact (head, relation), at each step (metric retrieval@STEP), and every row names the bank's size
(bank_facts, bank_bytes: the bytes of its bank.safetensors).

A slim bank (`build needed_by=SPLIT,...`) keeps only the facts on the query paths of those splits
of the data (else the run's): hop 1 is (head, relation_1), hop i (bridge_{i-1}, relation_i), read
from the dataset's roles, in the whole bank's slot order; a fact the queries need but the bank
lacks is an error.

Edit propagation (`edit_eval`): for each hop position P (1, 2), n_edits distinct facts (h, r)
that are hop P of some two-hop query of `splits` (default: every held-out two-hop split) get a
new tail t', drawn (edit_seed) among the other entities for which every query through the fact at
hop P gets a new answer in the edited graph. Each edit is applied alone and undone before the
next, so nothing is batched and nothing needs to be shown exact: method=bank plugs in the bank
with that one fact edited (FactBank.edited; weights frozen), method=finetune trains every weight
finetune_steps Adam steps on the atomic query `h r` -> t' alone (the baseline; a bank-less run
works). Measured: success (`h r` answers t'), propagation (each query through the fact at hop P
answers its answer in the edited graph: for P=1 the new bridge's fact, for P=2 t'), locality
(n_locality unrelated queries, the fact on no hop of their path, give the answer the unedited
model gave), spill (how often such a query answers t' instead, lower is better: a fine-tuned
model that says t' to everything gets propagation at hop 2 for free) and before (the
through-queries' old answers before the edit). Rows are named
NAME.hopP.METRIC (NAME: EXPERIMENT.METHOD_edit), split by the edited fact's class (atomic_id,
atomic_ood) or the query path's (two_hop_XY: ID or OOD fact at hops 1 and 2, read from the
dataset's splits; two_hop: all), with Wilson intervals over the queries.
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from grokloop.memory import FactBank
from grokloop.provenance import atomic_write, atomic_write_text, code_version, machine, sha256_file

FORMAT = "grokloop.bank/1"
MAX_NAMED = 10_000   # the manifest names every fact of a bank up to this size


# --- files ------------------------------------------------------------------------------------
def vocab_sha256(vocab) -> str:
    """The vocabulary's identity: sha256 of its tokens and named ranges."""
    return hashlib.sha256(json.dumps(vocab.to_dict(), sort_keys=True).encode()).hexdigest()


def fact_names(bank: FactBank, vocab) -> list[str]:
    return [" ".join(vocab.token(int(i)) for i in row) for row in bank.ids()]


def facts_sha256(bank: FactBank) -> str:
    return hashlib.sha256(bank.ids().numpy().tobytes()).hexdigest()


def save_bank(bank: FactBank, out: str | Path, vocab, source: dict,
              built_for: dict | None = None) -> Path:
    """Write bank directory `out` (tensors, then the manifest); returns it."""
    out = Path(out)
    tensors = {"head": bank.head.contiguous(), "relation": bank.relation.contiguous(),
               "tail": bank.tail.contiguous()}
    atomic_write(out / "bank.safetensors", lambda p: save_file(tensors, str(p)))
    manifest = {
        "format": FORMAT, "schema": "head relation -> tail", "n_facts": len(bank),
        "facts_sha256": facts_sha256(bank),
        "facts": fact_names(bank, vocab) if len(bank) <= MAX_NAMED else None,
        "vocab": {"sha256": vocab_sha256(vocab), "size": len(vocab), **vocab.to_dict()},
        "fits": {"model.memory": "facts", "vocab_sha256": vocab_sha256(vocab)},
        "source": source, "built_for": built_for,
        "bank_sha256": sha256_file(out / "bank.safetensors"),
        "code_version": code_version(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=1))
    return out


def read_manifest(path: str | Path) -> dict:
    path = Path(path)
    if not (path / "manifest.json").exists():
        raise FileNotFoundError(f"bank={path} is not a bank (no manifest.json); write one with "
                                "`python -m grokloop.bank build ... out=DIR`")
    manifest = json.loads((path / "manifest.json").read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"bank={path} has format {manifest.get('format')!r}, this code reads "
                         f"{FORMAT!r}; rebuild it with `python -m grokloop.bank build`")
    return manifest


def check_fits(manifest: dict, path, vocab, model=None) -> None:
    """ValueError, naming what differs and the fix, unless bank `manifest` fits the vocabulary
    (and `model`, if given)."""
    if model is not None and getattr(model, "memory", None) is None:
        raise ValueError(f"bank={path}: this model has no memory to read a bank "
                         f"(model.memory={model.config.memory}); train one with "
                         "model.memory=facts")
    want, have = manifest["fits"]["vocab_sha256"], vocab_sha256(vocab)
    if want != have:
        theirs = manifest.get("vocab", {})
        raise ValueError(f"bank={path} was built for another vocabulary ({theirs.get('size')} "
                         f"tokens, sha256 {want[:12]}) than this model's ({len(vocab)} tokens, "
                         f"sha256 {have[:12]}); build the bank with the run's vocabulary "
                         "(python -m grokloop.bank build run_dir=RUN ...)")


def load_bank(path: str | Path, vocab, model=None) -> tuple[FactBank, dict]:
    """(bank, manifest) of bank directory `path`, after checking that it fits `vocab` (and
    `model`) and that its tensors are the ones the manifest recorded."""
    manifest = read_manifest(path)
    check_fits(manifest, path, vocab, model)
    f = Path(path) / "bank.safetensors"
    if sha256_file(f) != manifest["bank_sha256"]:
        raise ValueError(f"{f} does not match the sha256 its manifest recorded (damaged or "
                         "changed by hand); rebuild the bank")
    t = load_file(str(f))
    return FactBank(t["head"], t["relation"], t["tail"]), manifest


def attach_bank(model, path: str | Path, vocab) -> dict:
    """Check bank `path` against the model and vocabulary, then make the model read it (the
    weights are untouched); returns its manifest."""
    bank, manifest = load_bank(path, vocab, model)
    model.memory.attach(bank)
    return manifest


def bank_option(path: str | Path, vocab, memory: str, key: str = "bank",
                model=None) -> tuple[FactBank, dict]:
    """The bank that the option `key=path` names (train.bank, or bank= of probes and halting),
    for a run with model.memory=`memory` over `vocab`: (bank, manifest), after the run is checked
    to have a memory and every check of `load_bank` (a bank directory, built for this
    vocabulary, its tensors the ones recorded); attached to `model` too, if one is given. Each
    refusal is one line that names the option and the fix; nothing is attached then."""
    if memory == "none":
        raise ValueError(f"{key}={path}: this run has no memory to read a bank (model.memory="
                         "none); only a model.memory=facts model reads one: set model.memory="
                         f"facts, or leave out {key}=")
    try:
        bank, manifest = load_bank(path, vocab)
    except (ValueError, FileNotFoundError) as e:
        if key == "bank":
            raise
        raise type(e)(str(e).replace(f"bank={path}", f"{key}={path}", 1)) from None
    if model is not None:
        model.memory.attach(bank)
    return bank, manifest


def bank_results(path: str | Path, bank: FactBank, manifest: dict) -> tuple[str, dict]:
    """Where a command that read bank `path` instead of the run's own writes its results (the
    subfolder bank_NAME, NAME the bank directory's name, so the run's own results stay), and the
    record of the bank those results carry."""
    return (f"bank_{Path(path).resolve().name}",
            {"path": str(path), "n_facts": len(bank), "facts_sha256": facts_sha256(bank),
             "source": manifest["source"]})


def parse_facts(lines: list[str], vocab, where: str) -> FactBank:
    """Facts written as token names (`<e_3>` or `e_3`), one `head relation tail` a line
    (# comments, blank lines skipped), to a bank over `vocab`."""
    ids = []
    for n, line in enumerate(lines, 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        if len(words) != 3:
            raise ValueError(f"{where} line {n}: {line.strip()!r} is not `head relation tail`")
        try:   # <e_3> or e_3 (angle brackets do not pass Hydra's override lexer)
            ids.append([vocab.id(w if w in vocab._index else f"<{w}>") for w in words])
        except KeyError as e:
            raise ValueError(f"{where} line {n}: token {e.args[0]!r} is not in the vocabulary "
                             f"(e.g. {vocab.tokens[min(2, len(vocab) - 1)]!r})") from None
    if not ids:
        raise ValueError(f"{where} holds no facts")
    t = torch.tensor(ids)
    return FactBank(t[:, 0], t[:, 1], t[:, 2])


def bank_bytes(bank: FactBank) -> int:
    """The size in bytes of bank.safetensors for `bank` (what `save_bank` writes; 24 a fact plus
    the header), also for a bank held only in a checkpoint."""
    from safetensors.torch import save
    return len(save({"head": bank.head.contiguous(), "relation": bank.relation.contiguous(),
                     "tail": bank.tail.contiguous()}))


# --- slim banks: only the facts a query set needs ------------------------------------------------
def path_facts(ds, idx) -> torch.Tensor:
    """The atomic facts (head, relation) [m, 2], distinct and sorted, on the paths of queries
    `idx` of dataset `ds`: hop 1 is (head, relation_1), hop i > 1 is (bridge_{i-1}, relation_i),
    read from the dataset's roles (so an atomic query needs its own fact)."""
    idx = np.asarray(idx, dtype=np.int64)
    pairs, i = [], 1
    while f"relation_{i}" in ds.roles:
        head = ds.roles["head" if i == 1 else f"bridge_{i - 1}"][idx]
        rel = ds.roles[f"relation_{i}"][idx]
        keep = (head >= 0) & (rel >= 0)
        pairs.append(np.stack([head[keep], rel[keep]], 1))
        i += 1
    if not pairs:
        raise ValueError(f"the {ds.task!r} dataset has no head/relation roles: a slim bank needs "
                         "a fact task such as data=composition_cpu")
    return torch.as_tensor(np.unique(np.concatenate(pairs), axis=0), dtype=torch.int64)


def slim_bank(bank: FactBank, ds, splits: list[str], vocab) -> FactBank:
    """The facts of `bank` on the query paths of `ds`'s `splits` (slot order kept); ValueError if
    a split is unknown or the bank lacks a fact the queries need."""
    bad = [s for s in splits if s not in ds.eval_splits]
    if bad:
        raise ValueError(f"needed_by names {bad[0]!r}, which the dataset does not have; it has "
                         f"{ds.eval_splits}")
    idx = np.concatenate([np.asarray(ds.splits[s]) for s in splits])
    needed = path_facts(ds, idx)
    slots = bank.slots_of(needed[:, 0], needed[:, 1])
    if (slots < 0).any():
        h, r = needed[int(torch.nonzero(slots < 0)[0, 0])].tolist()
        raise ValueError(f"the bank lacks {int((slots < 0).sum())} of the {len(needed)} facts "
                         f"that {','.join(splits)} need, e.g. ({vocab.token(h)}, "
                         f"{vocab.token(r)}); build it from the graph those queries come from")
    keep = torch.zeros(len(bank), dtype=torch.bool)
    keep[slots] = True
    return bank.subset(keep)


def random_share(bank: FactBank, fraction: float, seed: int) -> FactBank:
    """round(fraction * n) of the bank's facts drawn at random by `seed`, slot order kept: a bank
    that lacks some of the knowledge its queries need."""
    g = torch.Generator().manual_seed(seed)
    keep = torch.randperm(len(bank), generator=g)[:round(fraction * len(bank))].sort().values
    return bank.subset(keep)


# --- commands -----------------------------------------------------------------------------------
@dataclass
class BankCommand:
    """Schema of conf/bank.yaml: `python -m grokloop.bank build|eval key=value ...` (the word
    becomes `action`). build: the facts are a list (facts=FILE), else the training graph of
    `data` (e.g. G2: data.seed=1), else the run's; the vocabulary is the run's, else data's (both
    given: they must be equal). eval: the run's frozen model reads `bank` (None: the bank its
    checkpoint holds) on `data` (None: the run's dataset)."""
    action: list[str] = field(default_factory=list)   # [build] or [eval]
    run_dir: str | None = None      # a memory run (eval: required; build: its graph, vocabulary)
    data: Any = None                # build: its training atomic facts; eval: the data to evaluate
    out: str | None = None          # build: the bank directory (required); eval: the summary
                                    # directory (None: RUN/bank_eval/BANK_NAME, own: no bank given)
    data_cache: str | None = None
    # build
    facts: str | None = None        # a text file, one `head relation tail` a line (token names)
    edit: list[str] = field(default_factory=list)  # facts `h r t` replacing (or adding) fact (h, r)
    # eval
    bank: str | None = None         # a bank directory to read instead of the checkpoint's own
    step: int | None = None         # checkpoint step; None: the last good one
    n_steps: int | None = None      # recurrence steps; None: the model's
    top_k: int | None = None        # slots read per position; None: the model's memory_top_k
    splits: list[str] = field(default_factory=list)   # []: every evaluation split
    name: str | None = None         # the rows' model name; None: EXPERIMENT (.swap with a bank)
    batch_size: int = 4096
    # build: a slim bank
    needed_by: list[str] = field(default_factory=list)  # keep only the facts on these splits'
                                                        # query paths (of data, else the run's)
    # build: a bank with knowledge missing (what a model should answer "I don't know" to)
    keep_fraction: float = 1.0      # keep this share of the facts, drawn at random (keep_seed)
    keep_seed: int = 0
    # edit_eval (also: bank, step, n_steps, top_k, name; splits = the two-hop query pool)
    method: str = "bank"            # bank: edit the fact in the bank; finetune: train the weights
    n_edits: int = 200              # facts edited (one at a time) per hop position
    positions: list[int] = field(default_factory=lambda: [1, 2])  # hop positions edited
    n_locality: int = 20            # unrelated two-hop queries checked per edit
    edit_seed: int = 0              # which facts are edited and their new tails
    finetune_steps: int = 10        # method=finetune: Adam steps on the edited atomic query
    finetune_lr: float = 1e-4       # method=finetune: Adam's learning rate


EVAL_KEYS = ("bank", "step", "n_steps", "top_k", "splits", "name")
ACTIONS = {"build": ("facts", "edit", "needed_by", "keep_fraction", "keep_seed"),
           "eval": EVAL_KEYS,
           "edit_eval": EVAL_KEYS + ("method", "n_edits", "positions", "n_locality", "edit_seed",
                                     "finetune_steps", "finetune_lr")}


def run_action(d: dict):
    """Dispatch on `action`, refusing the other actions' options."""
    if len(d["action"]) != 1 or d["action"][0] not in ACTIONS:
        raise ValueError(f"{' '.join(d['action']) or 'no action'}: say `python -m grokloop.bank "
                         "build ...`, `... eval ...` or `... edit_eval ...`")
    action = d["action"][0]
    defaults = BankCommand()
    for key in sorted({k for keys in ACTIONS.values() for k in keys} - set(ACTIONS[action])):
        if d[key] != getattr(defaults, key):
            owners = " and ".join(f"`{a}`" for a, keys in ACTIONS.items() if key in keys)
            raise ValueError(f"{key}= is an option of {owners}, not of `{action}`")
    if action == "build":
        if not d["out"]:
            raise ValueError("out is required: pass out=DIR, the bank directory to write")
        if not 0 < d["keep_fraction"] <= 1:
            raise ValueError(f"keep_fraction={d['keep_fraction']} must be in (0, 1]: the share of "
                             "the facts kept")
        return build(d)
    if not d["run_dir"]:
        raise ValueError("run_dir is required: pass run_dir=RUN, a run trained with "
                         "model.memory=facts" + (" (or any run, with method=finetune)"
                                                 if action == "edit_eval" else ""))
    return evaluate_bank(d) if action == "eval" else edit_eval(d)


def _run_dataset(run_dir: str | Path):
    """(run config dict, dataset) of a run directory, without loading weights."""
    from datagen import data_config_from_dict, load_or_build
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").exists():
        raise FileNotFoundError(f"run_dir={run_dir} is not a run directory (no config.json)")
    cfg = json.loads((run_dir / "config.json").read_text())
    return cfg, load_or_build(data_config_from_dict(cfg["data"]), cfg.get("data_cache"))


def build(d: dict) -> Path:
    from datagen import data_config_from_dict, load_or_build

    if not (d["run_dir"] or d["data"]):
        raise ValueError("give run_dir=RUN (its training graph and vocabulary) or data=PRESET "
                         "(e.g. data=composition_cpu data.seed=1 for another graph)")
    run_cfg, run_ds = _run_dataset(d["run_dir"]) if d["run_dir"] else (None, None)
    data_ds = None
    if d["data"]:
        data_ds = load_or_build(data_config_from_dict(d["data"]), d["data_cache"])
    vocab = (run_ds or data_ds).vocab
    if run_ds is not None and data_ds is not None and \
            vocab_sha256(data_ds.vocab) != vocab_sha256(vocab):
        raise ValueError(f"data has another vocabulary ({len(data_ds.vocab)} tokens) than run_dir="
                         f"{d['run_dir']} ({len(vocab)}); give a preset with the run's entities "
                         "and relations")
    if d["facts"]:
        bank = parse_facts(Path(d["facts"]).read_text().splitlines(), vocab, f"facts={d['facts']}")
        source = {"kind": "facts", "file": str(d["facts"]), "sha256": sha256_file(d["facts"])}
    else:
        ds = data_ds or run_ds
        bank = FactBank.from_dataset(ds)
        source = {"kind": "data" if data_ds is not None else "run", "task": ds.task,
                  "data": ds.config, "dataset_hash": ds.content_hash()}
    if d["needed_by"]:
        ds = data_ds or run_ds
        full = len(bank)
        bank = slim_bank(bank, ds, d["needed_by"], vocab)
        source |= {"needed_by": list(d["needed_by"]), "needed_by_dataset_hash": ds.content_hash(),
                   "n_facts_before": full}
    if d["keep_fraction"] != 1.0:
        bank = random_share(bank, d["keep_fraction"], d["keep_seed"])
        source |= {"keep_fraction": d["keep_fraction"], "keep_seed": d["keep_seed"]}
    for fact in d["edit"]:
        edit = parse_facts([fact], vocab, f"edit={fact!r}")
        bank = bank.edited(int(edit.head[0]), int(edit.relation[0]), int(edit.tail[0]))
    source |= {"run_dir": d["run_dir"], "edits": list(d["edit"])}
    built_for = None if run_cfg is None else {
        "run_dir": str(d["run_dir"]), "model": run_cfg["model"],
        "experiment": run_cfg.get("experiment")}
    out = save_bank(bank, d["out"], vocab, source, built_for)
    print(f"bank of {len(bank):,} facts written to {out.resolve()}")
    return out


def retrieval(model, bank: FactBank, tokens: torch.Tensor, batch_size: int) -> list[float]:
    """For atomic queries `h r` [n, 2]: per step, the fraction whose top-1 memory slot at the
    relation's position holds fact (h, r) (any tail: an edited fact counts)."""
    hits, n_steps = None, model.n_steps
    for chunk in tokens.split(batch_size):
        slots = {}
        hooks = [(f"steps.{s}.memory.hook_slots", lambda a, hook, s=s: slots.__setitem__(s, a))
                 for s in range(n_steps)]
        model.run_with_hooks(chunk, fwd_hooks=hooks)
        heads, rels = bank.head.to(chunk.device), bank.relation.to(chunk.device)
        got = torch.stack([slots[s][:, 1, 0] for s in range(n_steps)])          # [steps, n]
        ok = (heads[got] == chunk[:, 0]) & (rels[got] == chunk[:, 1])
        hits = ok.sum(1) if hits is None else hits + ok.sum(1)
    return (hits.float() / len(tokens)).tolist()


def _load(d: dict, need_memory: bool = True):
    """(run config, run dataset, dataset, bank manifest or None, model, step) of an eval or
    edit_eval command, every check done before the model is loaded: the run, the bank against
    its vocabulary, the data, the splits named."""
    from datagen import data_config_from_dict, load_or_build
    from grokloop.checkpoint import last_good_checkpoint, load_model

    run_cfg, run_ds = _run_dataset(d["run_dir"])
    has_memory = run_cfg["model"].get("memory", "none") != "none"
    if (need_memory or d["bank"]) and not has_memory:
        raise ValueError(f"run_dir={d['run_dir']} has no memory (model.memory=none); "
                         f"{'bank=' if d['bank'] else 'bank ' + d['action'][0]} needs a run "
                         "trained with model.memory=facts" +
                         (" (edit it by fine-tuning with method=finetune)"
                          if d["action"][0] == "edit_eval" else ""))
    manifest = None
    if d["bank"]:
        manifest = read_manifest(d["bank"])
        check_fits(manifest, d["bank"], run_ds.vocab)
    ds = run_ds
    if d["data"]:
        ds = load_or_build(data_config_from_dict(d["data"]), d["data_cache"])
        if vocab_sha256(ds.vocab) != vocab_sha256(run_ds.vocab):
            raise ValueError(f"data has another vocabulary ({len(ds.vocab)} tokens) than run_dir="
                             f"{d['run_dir']} ({len(run_ds.vocab)}); evaluate on data with the "
                             "run's entities and relations")
    missing = [s for s in d["splits"] if s not in ds.eval_splits]
    if d["top_k"] is not None and d["top_k"] < 1:
        raise ValueError(f"top_k={d['top_k']} must be at least 1 (slots read per position)")
    if d["top_k"] is not None and not has_memory:
        raise ValueError(f"top_k={d['top_k']}: run_dir={d['run_dir']} has no memory to read")
    if missing:
        raise ValueError(f"splits names {missing[0]!r}, which this dataset does not have; it has "
                         f"{ds.eval_splits}")
    got = last_good_checkpoint(d["run_dir"]) if d["step"] is None else None
    step = got[2]["step"] if got is not None else d["step"]
    model, _, _ = load_model(d["run_dir"], step)
    if d["bank"]:
        attach_bank(model, d["bank"], run_ds.vocab)
    if d["n_steps"]:
        model.set_n_steps(d["n_steps"])
    if d["top_k"]:
        model.memory.top_k = d["top_k"]
    return run_cfg, run_ds, ds, manifest, model, step


@torch.no_grad()
def evaluate_bank(d: dict) -> dict:
    from grokloop.evaluate import evaluate
    from grokloop.stats import acc_row

    run_cfg, run_ds, ds, manifest, model, step = _load(d)
    splits = d["splits"] or ds.eval_splits
    bank = model.memory.bank

    t = time.perf_counter()
    data = {k: torch.as_tensor(getattr(ds, k)) for k in ("inputs", "answer_pos", "answers", "hops")}
    idx = {s: torch.as_tensor(ds.splits[s]) for s in splits}
    metrics = evaluate(model, data, idx, model.n_steps, d["batch_size"])
    experiment = run_cfg.get("experiment", "model")
    name = d["name"] or (f"{experiment}.swap" if d["bank"] else experiment)
    bank_name = Path(d["bank"]).name if d["bank"] else "own"
    common = {"model": name, "seed": run_cfg.get("seed"), "step": step, "bank": bank_name,
              "bank_facts": len(bank), "bank_bytes": bank_bytes(bank)}
    rows = []
    for s in splits:
        hops = data["hops"][idx[s]].unique().tolist()
        one_hop = {"hops": hops[0]} if len(hops) == 1 else {}
        rows.append(acc_row(metrics[f"acc/{s}"], metrics[f"n/{s}"], **common, split=s, **one_hop))
        for key in sorted(k for k in metrics if k.startswith(f"acc/{s}/hops_")):
            k = int(key.rsplit("_", 1)[1])
            rows.append(acc_row(metrics[key], metrics[f"n/{s}/hops_{k}"], **common, split=s,
                                hops=k))
        atomic = idx[s][(data["hops"][idx[s]] == 1) & (data["answer_pos"][idx[s]] == 1)]
        if len(atomic):
            found = retrieval(model, bank, data["inputs"][atomic, :2], d["batch_size"])
            for t_, r in enumerate(found):
                rows.append(acc_row(r, len(atomic), **common, split=s,
                                    metric=f"retrieval@{t_ + 1}", read_step=t_ + 1))
    seconds = time.perf_counter() - t
    out = Path(d["out"] or Path(d["run_dir"]) / "bank_eval" / bank_name)
    summary = {"study": f"bank_eval/{name}", "run_dir": str(d["run_dir"]), "machine": machine(),
               "code_version": code_version(), "seconds": seconds,
               "commands": ["python -m grokloop.bank " + " ".join(sys.argv[1:])],
               "bank": {"path": d["bank"], "n_facts": len(bank), "bytes": bank_bytes(bank),
                        "facts_sha256": facts_sha256(bank),
                        "source": manifest["source"] if manifest else "checkpoint"},
               "dataset_hash": ds.content_hash(), "n_steps": model.n_steps,
               "top_k": model.memory.top_k, "rows": rows}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    atomic_write_text(out / "summary.md", markdown(summary))
    for r in rows:
        what = f"{r['split']}" + (f" hops {r['hops']}" if "hops" in r else "") + \
            (f" retrieval@step{r['read_step']}" if "metric" in r else "")
        print(f"{r['model']:<28} {what:<36} acc {r['acc']:.3f} [{r['lo']:.3f}, {r['hi']:.3f}] "
              f"n {r['n']}")
    print(f"written to {out.resolve()}/summary.json and summary.md ({seconds:.1f} s)")
    return summary


# --- edit propagation ----------------------------------------------------------------------------
# Which atomic facts are in- and out-of-distribution, read from the splits of a composition
# dataset: the class of each hop of a two-hop split's paths (datagen/composition.py).
PATH_CLASSES = {"train": "II", "train_inferred": "II", "valid": "II", "test_inferred_id": "II",
                "test_inferred_ood": "OO", "test_OI": "OI", "test_IO": "IO"}
ATOMIC_CLASSES = {"atomic_id": "I", "atomic_ood": "O"}


def fact_classes(ds, d_vocab: int) -> torch.Tensor:
    """[d_vocab, d_vocab] int8: 1 where fact (head, relation) is ID, 2 where it is OOD, 0 where
    the dataset's splits do not say (atomic_id/atomic_ood, and each hop of the two-hop splits:
    test_OI's first hop is OOD, its second ID, and so on)."""
    cls = torch.zeros(d_vocab, d_vocab, dtype=torch.int8)
    for split, c in ATOMIC_CLASSES.items():
        if split in ds.splits:
            idx = np.asarray(ds.splits[split])
            cls[torch.as_tensor(ds.inputs[idx, 0]), torch.as_tensor(ds.inputs[idx, 1])] = \
                1 if c == "I" else 2
    for split, cc in PATH_CLASSES.items():
        if split not in ds.splits:
            continue
        idx = np.asarray(ds.splits[split])
        idx = idx[ds.hops[idx] == 2]
        for hop, c in enumerate(cc):
            head = ds.roles["head" if hop == 0 else "bridge_1"][idx]
            rel = ds.roles[f"relation_{hop + 1}"][idx]
            cls[torch.as_tensor(head), torch.as_tensor(rel)] = 1 if c == "I" else 2
    return cls


def fact_table(bank: FactBank, d_vocab: int) -> torch.Tensor:
    """[d_vocab, d_vocab] int64: the tail of fact (head, relation), -1 where there is none."""
    table = torch.full((d_vocab, d_vocab), -1, dtype=torch.int64)
    table[bank.head, bank.relation] = bank.tail
    return table


def compose(table: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """Answers of two-hop queries (h, r1, r2) [n, 3] in graph `table`; -1 where a hop is missing."""
    bridge = table[queries[:, 0], queries[:, 1]]
    return torch.where(bridge >= 0, table[bridge.clamp(min=0), queries[:, 2]], -1)


@dataclass
class Edit:
    """One edited fact (head, relation): old -> new tail; `through` indexes the queries that
    pass through it at the edited hop position, `new_answers` their answers in the edited graph
    (only queries whose answer the edit changes), `unchanged` how many through-queries it leaves
    with their answer, `locality` indexes unrelated queries (through it at no position)."""
    position: int
    head: int
    relation: int
    old: int
    new: int
    through: torch.Tensor
    new_answers: torch.Tensor
    unchanged: int
    locality: torch.Tensor


def plan_edits(table: torch.Tensor, queries: torch.Tensor, position: int, n_edits: int,
               n_locality: int, entities: torch.Tensor, rng: np.random.Generator) -> list[Edit]:
    """Up to `n_edits` distinct facts that are hop `position` (1 or 2) of some of `queries`
    (two-hop (h, r1, r2) [n, 3] in graph `table`), each with a new tail drawn uniformly from the
    `entities` other than the old tail whose edited graph changes the answer of every query
    through the fact at that hop (any other entity if none does: the queries it leaves unchanged
    are counted, not scored), and `n_locality` queries the fact is on no path of."""
    bridge = table[queries[:, 0], queries[:, 1]]
    keys = queries[:, :2] if position == 1 else torch.stack([bridge, queries[:, 2]], 1)
    on_any = [queries[:, :2], torch.stack([bridge, queries[:, 2]], 1)]
    distinct = torch.unique(keys, dim=0)
    pick = rng.choice(len(distinct), size=min(n_edits, len(distinct)), replace=False)
    edits = []
    for h, r in distinct[torch.as_tensor(pick)].tolist():
        old = int(table[h, r])
        through = torch.nonzero((keys[:, 0] == h) & (keys[:, 1] == r)).flatten()
        old_answers = compose(table, queries[through])
        others = entities[entities != old]
        if not len(others):
            raise ValueError(f"no entity other than the old tail {old} to edit fact ({h}, {r}) to")
        if position == 1:   # the new bridge must give every through-query a new, defined answer
            after = table[others][:, queries[through, 2]]                   # [entities, through]
            good = others[((after >= 0) & (after != old_answers)).all(1)]
            others = good if len(good) else others
        new = int(others[int(rng.integers(len(others)))])
        edited = table.clone()
        edited[h, r] = new
        new_answers = compose(edited, queries[through])
        changed = (new_answers >= 0) & (new_answers != old_answers)
        unrelated = torch.nonzero(~((on_any[0][:, 0] == h) & (on_any[0][:, 1] == r)) &
                                  ~((on_any[1][:, 0] == h) & (on_any[1][:, 1] == r))).flatten()
        local = unrelated[torch.as_tensor(
            rng.choice(len(unrelated), size=min(n_locality, len(unrelated)), replace=False),
            dtype=torch.int64)]
        edits.append(Edit(position, h, r, old, new, through[changed], new_answers[changed],
                          int((~changed).sum()), local))
    return edits


@torch.no_grad()
def predict(model, tokens: torch.Tensor, position: int, batch_size: int = 4096) -> torch.Tensor:
    """The model's answers (argmax after its last step) at `position` of each row of `tokens`."""
    if not len(tokens):
        return torch.zeros(0, dtype=torch.int64)
    device = next(model.parameters()).device
    out = []
    for chunk in tokens.split(batch_size):
        pos = torch.full((len(chunk),), position, device=device)
        out.append(model.readout_steps(chunk.to(device), model.n_steps, positions=pos)[-1]
                   .argmax(-1).cpu())
    return torch.cat(out)


def bank_editor(model, bank: FactBank):
    """method=bank: `apply(edit)` plugs in `bank` with the one fact edited; `restore()` the bank."""
    def apply(e: Edit):
        model.memory.attach(bank.edited(e.head, e.relation, e.new))

    return apply, lambda: model.memory.attach(bank)


def finetune_editor(model, steps: int, lr: float):
    """method=finetune: `apply(edit)` trains every weight for `steps` Adam steps (learning rate
    `lr`) on the edited atomic query `h r` -> new tail alone (cross-entropy of the answer after
    the last step); `restore()` puts back the weights (and bank) it started from."""
    import torch.nn.functional as F

    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    device = next(model.parameters()).device

    def apply(e: Edit):
        tokens = torch.tensor([[e.head, e.relation]], device=device)
        target, pos = torch.tensor([e.new], device=device), torch.tensor([1], device=device)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        model.train()
        with torch.enable_grad():
            for _ in range(steps):
                logits = model.readout_steps(tokens, model.n_steps, positions=pos)[-1]
                loss = F.cross_entropy(logits.float(), target)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        model.eval()

    def restore():
        model.load_state_dict(start)
        model.eval()

    return apply, restore


def measure_edits(model, edits: list[Edit], queries: torch.Tensor, table: torch.Tensor,
                  classes: torch.Tensor, apply, restore, batch_size: int = 4096) -> dict:
    """Edit by edit (exact: each is applied alone to the unedited model, then undone): whether
    the edited atomic query answers the new tail (success), each through-query its answer in the
    edited graph (propagation), each unrelated query the answer it gave before any edit
    (locality) and how often it answers the new tail instead (spill, among those that did not
    before); and, before any edit, whether the through-queries got their old answers (before).
    Returns {(metric, split): [correct, n]}, split by the class of the fact (atomic_id/ood) or of
    the query's path (two_hop_II/OI/IO/OO: ID or OOD fact at each hop, in the graph the answer
    follows; `two_hop` all of them)."""
    restore()
    model.eval()
    before = predict(model, queries, 2, batch_size)
    old_answers = compose(table, queries)
    letter = {0: "?", 1: "I", 2: "O"}
    counts: dict[tuple[str, str], list[int]] = {}

    def count(metric: str, splits: list[str], ok: torch.Tensor):
        for s in splits:
            c = counts.setdefault((metric, s), [0, 0])
            c[0] += int(ok.sum())
            c[1] += len(ok)

    def path_split(q: torch.Tensor, tab: torch.Tensor) -> list[str]:
        bridge = tab[q[:, 0], q[:, 1]]
        first, second = classes[q[:, 0], q[:, 1]], classes[bridge.clamp(min=0), q[:, 2]]
        return [f"two_hop_{letter[int(a)]}{letter[int(b)]}" for a, b in zip(first, second)]

    def count_by_path(metric: str, q: torch.Tensor, tab: torch.Tensor, ok: torch.Tensor):
        count(metric, ["two_hop"], ok)
        labels = path_split(q, tab)
        for lab in sorted(set(labels)):
            count(metric, [lab], ok[torch.tensor([x == lab for x in labels])])

    for e in edits:
        fact = {1: "atomic_id", 2: "atomic_ood"}.get(int(classes[e.head, e.relation]), "atomic_?")
        q = queries[e.through]
        count_by_path("before", q, table, before[e.through] == old_answers[e.through])
        apply(e)
        got = predict(model, torch.tensor([[e.head, e.relation]]), 1, batch_size)
        count("success", ["atomic", fact], got == e.new)
        edited = table.clone()
        edited[e.head, e.relation] = e.new
        count_by_path("propagation", q, edited, predict(model, q, 2, batch_size) == e.new_answers)
        local = queries[e.locality]
        after = predict(model, local, 2, batch_size)
        count_by_path("locality", local, table, after == before[e.locality])
        other = before[e.locality] != e.new
        count_by_path("spill", local[other], table, after[other] == e.new)
        restore()
    return counts


METRICS = {"success": "the edited atomic query answers the new tail",
           "propagation": "a two-hop query through the edited fact answers its new answer",
           "locality": "an unrelated two-hop query keeps the answer it gave before the edit",
           "before": "before the edit, the through-queries answer their old answers",
           "spill": "an unrelated two-hop query now answers the edited fact's new tail (of those "
                    "that did not before; lower is better)"}


def edit_eval(d: dict) -> dict:
    """`python -m grokloop.bank edit_eval`: single-fact edits and how far they carry through
    two-hop answers, for a frozen memory model whose bank is edited (method=bank) or for any
    model fine-tuned on the edited fact (method=finetune, the baseline). Rows NAME.hopP.METRIC."""
    from grokloop.stats import acc_row

    method = d["method"]
    if method not in ("bank", "finetune"):
        raise ValueError(f"method={method!r}: choose bank (edit the fact in the bank, model "
                         "frozen) or finetune (train the weights on the edited fact)")
    if d["n_edits"] < 1 or d["n_locality"] < 0:
        raise ValueError(f"n_edits={d['n_edits']} must be at least 1 and n_locality="
                         f"{d['n_locality']} at least 0")
    if not d["positions"] or not set(d["positions"]) <= {1, 2}:
        raise ValueError(f"positions={d['positions']}: the hop positions to edit, 1 (the first "
                         "hop of two-hop queries), 2 (the second) or both: positions=1,2")
    if method == "finetune" and (d["finetune_steps"] < 1 or d["finetune_lr"] <= 0):
        raise ValueError(f"finetune_steps={d['finetune_steps']} must be at least 1 and "
                         f"finetune_lr={d['finetune_lr']} positive")
    if method == "bank" and (d["finetune_steps"] != BankCommand.finetune_steps or
                             d["finetune_lr"] != BankCommand.finetune_lr):
        raise ValueError("finetune_steps= and finetune_lr= are options of method=finetune")
    run_cfg, run_ds, ds, manifest, model, step = _load(d, need_memory=method == "bank")
    if ds.task != "composition":
        raise ValueError(f"edit_eval needs two-hop fact queries (a composition dataset), not "
                         f"{ds.task!r}")
    two_hop = [s for s in ds.eval_splits if (ds.hops[ds.splits[s]] == 2).all()]
    splits = d["splits"] or [s for s in two_hop if s != "train_inferred"]
    bad = [s for s in splits if s not in two_hop]
    if bad:
        raise ValueError(f"splits names {bad[0]!r}, which holds no two-hop queries; the query "
                         f"pool comes from {two_hop}")
    d_vocab = len(ds.vocab)
    graph = FactBank.from_dataset(ds)
    table = fact_table(graph, d_vocab)
    if method == "bank":
        bank = model.memory.bank
        if not torch.equal(fact_table(bank, d_vocab), table):
            raise ValueError("the bank the model reads holds other facts than the graph of the "
                             "data asked about; pass bank= built from that graph (python -m "
                             "grokloop.bank build data=...)")
    idx = np.concatenate([np.asarray(ds.splits[s]) for s in splits])
    queries = torch.unique(torch.as_tensor(ds.inputs[idx, :3], dtype=torch.int64), dim=0)
    if not torch.equal(compose(table, torch.as_tensor(ds.inputs[idx, :3], dtype=torch.int64)),
                       torch.as_tensor(ds.answers[idx], dtype=torch.int64)):
        raise ValueError("the two-hop queries' answers are not those of the dataset's graph of "
                         "atomic facts; edit_eval needs the dataset the queries came from")
    classes = fact_classes(ds, d_vocab)
    entities = torch.tensor(list(ds.vocab.range("entities")))

    t0 = time.perf_counter()
    if method == "bank":
        apply, restore = bank_editor(model, model.memory.bank)
    else:
        apply, restore = finetune_editor(model, d["finetune_steps"], d["finetune_lr"])
    experiment = run_cfg.get("experiment", "model")
    name = d["name"] or f"{experiment}.{method}_edit"
    common = {"seed": run_cfg.get("seed"), "step": step, "method": method}
    rows, plans = [], []
    for position in d["positions"]:
        rng = np.random.default_rng([d["edit_seed"], position])
        edits = plan_edits(table, queries, position, d["n_edits"], d["n_locality"], entities, rng)
        counts = measure_edits(model, edits, queries, table, classes, apply, restore,
                               d["batch_size"])
        for metric in METRICS:
            for (m, split), (k, n) in sorted(counts.items()):
                if m == metric and n:
                    rows.append(acc_row(k / n, n, model=f"{name}.hop{position}.{metric}",
                                        split=split, hops=1 if metric == "success" else 2,
                                        metric=f"edit_{metric}", edit_hop=position, **common))
        tok = ds.vocab.token
        plans.append({"position": position, "n_edits": len(edits),
                      "n_through": sum(len(e.through) for e in edits),
                      "n_unchanged": sum(e.unchanged for e in edits),
                      "edits": [f"{tok(e.head)} {tok(e.relation)}: {tok(e.old)} -> {tok(e.new)}"
                                for e in edits]})
    seconds = time.perf_counter() - t0
    out = Path(d["out"] or Path(d["run_dir"]) / "bank_edit" / method)
    summary = {"study": f"bank_edit/{name}", "run_dir": str(d["run_dir"]), "machine": machine(),
               "code_version": code_version(), "seconds": seconds,
               "commands": ["python -m grokloop.bank " + " ".join(sys.argv[1:])],
               "method": method, "metrics": METRICS, "query_splits": splits,
               "n_queries": len(queries), "edit_seed": d["edit_seed"],
               "n_locality": d["n_locality"], "n_steps": model.n_steps,
               "finetune": {"steps": d["finetune_steps"], "lr": d["finetune_lr"],
                            "optimizer": "Adam"} if method == "finetune" else None,
               "bank": None if getattr(model, "memory", None) is None else
               {"path": d["bank"], "n_facts": len(model.memory.bank),
                "source": manifest["source"] if manifest else "checkpoint"},
               "dataset_hash": ds.content_hash(), "plans": plans, "rows": rows}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    atomic_write_text(out / "summary.md", edit_markdown(summary))
    for r in rows:
        print(f"{r['model']:<44} {r['split']:<12} acc {r['acc']:.3f} [{r['lo']:.3f}, "
              f"{r['hi']:.3f}] n {r['n']}")
    print(f"written to {out.resolve()}/summary.json and summary.md ({seconds:.1f} s)")
    return summary


def edit_markdown(summary: dict) -> str:
    plans = "; ".join(f"hop {p['position']}: {p['n_edits']} edits, {p['n_through']} "
                      f"through-queries ({p['n_unchanged']} left unchanged by their edit, not "
                      "scored)" for p in summary["plans"])
    how = ("the fact replaced in the bank, every weight frozen" if summary["method"] == "bank"
           else f"every weight fine-tuned {summary['finetune']['steps']} Adam steps at lr "
           f"{summary['finetune']['lr']} on the edited atomic query alone")
    lines = [f"# {summary['study']}", "", "```bash", *summary["commands"], "```", "",
             f"Each edit applied alone ({how}), then undone. Query pool: the two-hop queries of "
             f"{', '.join(summary['query_splits'])} ({summary['n_queries']:,}); {plans}; "
             f"{summary['n_locality']} unrelated queries per edit; edit_seed "
             f"{summary['edit_seed']}; {summary['seconds']:.1f} s on "
             f"{summary['machine'].get('cpu')}, code {summary['code_version']}.", "",
             *[f"- {m}: {text}" for m, text in summary["metrics"].items()], "",
             "Splits: atomic_id/ood, the edited fact's class; two_hop_XY, the query's path (X, Y: "
             "ID or OOD fact at hops 1 and 2, in the graph its answer follows).", "",
             "| model | split | acc | 95% CI | n |", "|" + "---|" * 5]
    for r in summary["rows"]:
        lines.append(f"| {r['model']} | {r['split']} | {r['acc']:.3f} | "
                     f"[{r['lo']:.3f}, {r['hi']:.3f}] | {r['n']:,} |")
    return "\n".join(lines) + "\n"


def markdown(summary: dict) -> str:
    lines = [f"# {summary['study']}", "", "```bash", *summary["commands"], "```", "",
             f"Bank: {summary['bank']['path'] or 'the checkpoint own (training graph)'}, "
             f"{summary['bank']['n_facts']:,} facts ({summary['bank']['bytes']:,} bytes); "
             f"{summary['n_steps']} steps, top-"
             f"{summary['top_k']} slots; "
             f"{summary['seconds']:.1f} s on {summary['machine'].get('cpu')}, code "
             f"{summary['code_version']}.", "",
             "| model | split | hops | metric | acc | 95% CI | n |", "|" + "---|" * 7]
    for r in summary["rows"]:
        metric = r.get("metric", "answer")
        lines.append(f"| {r['model']} | {r['split']} | {r.get('hops', '')} | {metric} | "
                     f"{r['acc']:.3f} | [{r['lo']:.3f}, {r['hi']:.3f}] | {r['n']:,} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    from grokloop import cli

    cli.run("bank", run_action, argv)


if __name__ == "__main__":
    main()
