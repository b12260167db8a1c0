"""Knowledge banks: the facts a memory model reads, as files that plug into a frozen model.

    python -m grokloop.bank build run_dir=RUN out=banks/g1                 # the run's graph
    python -m grokloop.bank build data=composition_cpu data.seed=1 out=banks/g2   # graph G2's facts
    python -m grokloop.bank build run_dir=RUN facts=FILE out=banks/mine    # a list of facts
    python -m grokloop.bank build run_dir=RUN edit='e_3 r_5 e_9' out=banks/edit  # one fact edited
    python -m grokloop.bank eval run_dir=RUN bank=banks/g2 data=composition_cpu data.seed=1

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
fact (head, relation), at each step.
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


ACTIONS = {"build": ("facts", "edit"),
           "eval": ("bank", "step", "n_steps", "top_k", "splits", "name")}


def run_action(d: dict):
    """Dispatch on `action`, refusing the other action's options."""
    if len(d["action"]) != 1 or d["action"][0] not in ACTIONS:
        raise ValueError(f"{' '.join(d['action']) or 'no action'}: say `python -m grokloop.bank "
                         "build ...` or `python -m grokloop.bank eval ...`")
    action = d["action"][0]
    defaults = BankCommand()
    for other, keys in ACTIONS.items():
        for key in keys if other != action else ():
            if d[key] != getattr(defaults, key):
                raise ValueError(f"{key}= is an option of `{other}`, not of `{action}`")
    if action == "build":
        if not d["out"]:
            raise ValueError("out is required: pass out=DIR, the bank directory to write")
        return build(d)
    if not d["run_dir"]:
        raise ValueError("run_dir is required: pass run_dir=RUN, a run trained with "
                         "model.memory=facts")
    return evaluate_bank(d)


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


@torch.no_grad()
def evaluate_bank(d: dict) -> dict:
    from datagen import data_config_from_dict, load_or_build
    from grokloop.checkpoint import last_good_checkpoint, load_model
    from grokloop.evaluate import evaluate
    from grokloop.stats import acc_row

    # Every check before any work: the run, the bank against its vocabulary, the data.
    run_cfg, run_ds = _run_dataset(d["run_dir"])
    if run_cfg["model"].get("memory", "none") == "none":
        raise ValueError(f"run_dir={d['run_dir']} has no memory (model.memory=none); bank eval "
                         "needs a run trained with model.memory=facts")
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
    splits = d["splits"] or ds.eval_splits
    missing = [s for s in splits if s not in ds.eval_splits]
    if d["top_k"] is not None and d["top_k"] < 1:
        raise ValueError(f"top_k={d['top_k']} must be at least 1 (slots read per position)")
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
    bank = model.memory.bank

    t = time.perf_counter()
    data = {k: torch.as_tensor(getattr(ds, k)) for k in ("inputs", "answer_pos", "answers", "hops")}
    idx = {s: torch.as_tensor(ds.splits[s]) for s in splits}
    metrics = evaluate(model, data, idx, model.n_steps, d["batch_size"])
    experiment = run_cfg.get("experiment", "model")
    name = d["name"] or (f"{experiment}.swap" if d["bank"] else experiment)
    bank_name = Path(d["bank"]).name if d["bank"] else "own"
    common = {"model": name, "seed": run_cfg.get("seed"), "step": step, "bank": bank_name}
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
                rows.append(acc_row(r, len(atomic), **common, split=s, metric="retrieval",
                                    read_step=t_ + 1))
    seconds = time.perf_counter() - t
    out = Path(d["out"] or Path(d["run_dir"]) / "bank_eval" / bank_name)
    summary = {"study": f"bank_eval/{name}", "run_dir": str(d["run_dir"]), "machine": machine(),
               "code_version": code_version(), "seconds": seconds,
               "commands": ["python -m grokloop.bank " + " ".join(sys.argv[1:])],
               "bank": {"path": d["bank"], "n_facts": len(bank),
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


def markdown(summary: dict) -> str:
    lines = [f"# {summary['study']}", "", "```bash", *summary["commands"], "```", "",
             f"Bank: {summary['bank']['path'] or 'the checkpoint own (training graph)'}, "
             f"{summary['bank']['n_facts']:,} facts; {summary['n_steps']} steps, top-"
             f"{summary['top_k']} slots; "
             f"{summary['seconds']:.1f} s on {summary['machine'].get('cpu')}, code "
             f"{summary['code_version']}.", "",
             "| model | split | hops | metric | acc | 95% CI | n |", "|" + "---|" * 7]
    for r in summary["rows"]:
        metric = f"retrieval@{r['read_step']}" if "metric" in r else "answer"
        lines.append(f"| {r['model']} | {r['split']} | {r.get('hops', '')} | {metric} | "
                     f"{r['acc']:.3f} | [{r['lo']:.3f}, {r['hi']:.3f}] | {r['n']:,} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    from grokloop import cli

    cli.run("bank", run_action, argv)


if __name__ == "__main__":
    main()
