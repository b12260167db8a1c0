"""Run probes on a training run, one checkpoint at a time.

    python -m probes run_dir=RUN [probe=all|logit_lens,causal_tracing,attention,fourier,surgery,
        signals] [checkpoints=last|all|STEP,STEP,...] [split=NAME[,NAME]] [n=300]
        [corrupt=all|ROLE] [corruption=exists|free]
        [repeats=1,2,3] [patching_examples=40] [n_attention=8] [steps=0] [fit_split=NAME]
        [seed=0] [bank=DIR]

The options are typed by ProbesCommand (conf/probes.yaml; `python -m probes --help`).

Writes RUN/probes/{probe}/step_XXXXXXXX.npz (arrays), RUN/probes/{probe}.jsonl (a tidy table, one
row per cell and checkpoint; re-running a checkpoint replaces its rows) and RUN/probes/{probe}.json
(the options, the run's config, the code version, the checkpoints done). With bank=DIR (a
model.memory=facts run) every checkpoint's model reads that bank directory instead of the one it
trained with (checked first: grokloop/bank.py bank_option), and the results go to
RUN/probes/bank_NAME/ (NAME: the bank directory's name), so the run's own probes stay as they are.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from grokloop.adaptive.halting import trained_hop_counts
from grokloop.checkpoint import list_checkpoints, load_model, read_checkpoint
from datagen.provenance import atomic_write, atomic_write_text, code_version
from probes import attention, causal_tracing, fourier, logit_lens, signals, surgery
from probes.examples import corrupt, input_roles, probe_batch

PROBES = ("logit_lens", "causal_tracing", "attention", "fourier", "surgery", "signals")


@dataclass
class ProbesCommand:
    """Schema of conf/probes.yaml. On the command line a list may be written probe=a,b."""
    run_dir: str = "???"            # required
    probe: list[str] = field(default_factory=lambda: ["all"])        # all, or some of PROBES
    checkpoints: list[str] = field(default_factory=lambda: ["last"])  # last | all | steps
    split: list[str] = field(default_factory=list)   # []: train_inferred + test_inferred_ood
    n: int = 300                    # examples per split
    corrupt: str = "all"            # causal tracing: corrupt every input role, or this one
    corruption: str = "exists"      # causal tracing: exists | free (probes/examples.py)
    repeats: list[int] = field(default_factory=lambda: [1, 2, 3])     # surgery: extra repeats
    patching_examples: int = 40     # causal tracing: examples in the per-head patching maps
    n_attention: int = 8            # attention: examples whose patterns are kept
    steps: int = 0                  # signals: recurrence steps to run (0: the trained number)
    fit_split: str = ""             # signals: fit the signals' combination on n examples of this
                                    # split (not one it is scored on), score it on every split
    seed: int = 0
    bank: str | None = None         # a bank directory every checkpoint's model reads (memory runs);
                                    # results in RUN/probes/bank_NAME/


def choose_probes(name: str, ds) -> list[str]:
    """Explicitly named probes must apply to the task; `all` skips those that do not."""
    applies = {"fourier": ds.task == "modular" and ds.config.get("op") == "add"}
    if name == "all":
        return [p for p in PROBES if applies.get(p, True)]
    chosen = [p.strip() for p in name.split(",")]
    for p in chosen:
        if p not in PROBES:
            raise SystemExit(f"probe={p!r}: unknown; choose from {', '.join(PROBES)} or all")
        if not applies.get(p, True):
            try:
                fourier.check_applies(ds)
            except ValueError as e:
                raise SystemExit(str(e)) from None
    return chosen


def choose_checkpoints(spec: str, run_dir: Path) -> list[int]:
    have = list_checkpoints(run_dir)
    if not have:
        raise SystemExit(f"{run_dir} has no checkpoints; train it (python -m grokloop.train) first")
    if spec == "last":
        return have[-1:]
    if spec == "all":
        return have
    try:
        wanted = [int(s) for s in spec.split(",")]
    except ValueError:
        raise SystemExit(f"checkpoints={spec!r}: use last, all or a list of steps like 100,2000")
    missing = [s for s in wanted if s not in have]
    if missing:
        raise SystemExit(f"checkpoints: step {missing[0]} has no checkpoint; this run has {have}")
    return wanted


def default_splits(ds) -> list[str]:
    # The paper traces training inferred facts; OOD shows what the model does not generalise.
    preferred = [s for s in ("train_inferred", "test_inferred_ood") if s in ds.splits]
    return preferred or ds.eval_splits[:1]


class Store:
    """Results of one probe: npz per checkpoint, a tidy JSONL table, a JSON record."""

    def __init__(self, run_dir: Path, probe: str, meta: dict, sub: str | None = None):
        self.dir = run_dir / "probes" / (sub or "")
        self.probe, self.meta = probe, meta
        (self.dir / probe).mkdir(parents=True, exist_ok=True)

    def save(self, step: int, arrays: dict[str, np.ndarray], rows: list[dict]):
        atomic_write(self.dir / self.probe / f"step_{step:08d}.npz",
                     lambda tmp: np.savez_compressed(tmp, **arrays), suffix=".npz")
        table = self.dir / f"{self.probe}.jsonl"
        old = [json.loads(line) for line in table.read_text().splitlines()] if table.exists() else []
        keep = [r for r in old if r["checkpoint"] != step]
        rows = [{"checkpoint": step} | r for r in rows]
        atomic_write_text(table, "".join(json.dumps(r) + "\n" for r in keep + rows))
        record = self.dir / f"{self.probe}.json"
        done = json.loads(record.read_text())["checkpoints"] if record.exists() else []
        atomic_write_text(record, json.dumps(self.meta | {"checkpoints": sorted(set(done) | {step})},
                                             indent=2))


def _cells(prefix: dict, layers: list[str], grid: np.ndarray, name: str) -> list[dict]:
    """Rows for a [layer, pos] grid."""
    return [prefix | {"layer": i, "layer_label": layers[i], "pos": p, name: float(grid[i, p])}
            for i in range(grid.shape[0]) for p in range(grid.shape[1])]


def run_logit_lens(model, batches, opts):
    arrays, rows = {}, []
    for split, b in batches.items():
        lens = logit_lens.logit_lens(model, b)
        readout = logit_lens.step_readout(model, b)
        for k in ("rank", "mrr", "top1", "at_role_mrr", "at_role_top1", "n"):
            arrays[f"{split}/{k}"] = lens[k]
        arrays[f"{split}/readout_acc"], arrays[f"{split}/readout_mrr"] = readout["acc"], readout["answer_mrr"]
        arrays["roles"], arrays["layers"] = np.array(lens["roles"]), np.array(lens["layers"])
        for j, role in enumerate(lens["roles"]):
            rows += [{"kind": "at_role", "split": split, "role": role, "layer": i,
                      "layer_label": lens["layers"][i], "mrr": float(lens["at_role_mrr"][j, i]),
                      "top1": float(lens["at_role_top1"][j, i]), "n": int(lens["n"][j])}
                     for i in range(len(lens["layers"]))]
        rows += [{"kind": "readout", "split": split, "step": t + 1, "acc": float(a), "answer_mrr": float(m)}
                 for t, (a, m) in enumerate(zip(readout["acc"], readout["answer_mrr"]))]
    return arrays, rows


def run_causal_tracing(model, batches, opts, ds):
    arrays, rows = {}, []
    layers = ["embed"] + [v.label for v in model.layer_table()]
    for split, b in batches.items():
        roles = input_roles(b) if opts["corrupt"] == "all" else [opts["corrupt"]]
        for role in roles:
            bad, bad_answers, kept = corrupt(ds, b, role, seed=int(opts["seed"]),
                                             mode=opts["corruption"])
            if len(kept) == 0:
                rows.append({"kind": "summary", "split": split, "corrupt": role, "n": 0,
                             "corruption": opts["corruption"], "n_dropped": len(b)})
                continue
            clean = b.subset(kept)
            res = causal_tracing.causal_trace(model, clean.tokens, bad, clean.answer_pos,
                                              clean.answers, bad_answers)
            key = f"{split}/{role}"
            arrays[f"{key}/strength"], arrays[f"{key}/logit_diff"] = res["strength"], res["logit_diff"]
            arrays[f"{key}/flip"] = res["flip"]
            rows.append({"kind": "summary", "split": split, "corrupt": role, "n": len(kept),
                         "corruption": opts["corruption"],
                         "n_dropped": len(b) - len(kept), "full_effect": res["full_effect"],
                         "clean_acc": res["clean_acc"]})
            prefix = {"kind": "cell", "split": split, "corrupt": role}
            rows += [r | {"logit_diff": float(res["logit_diff"][r["layer"], r["pos"]])}
                     for r in _cells(prefix, layers, res["strength"], "strength")]
            m = min(len(kept), int(opts["patching_examples"]))
            if m:
                maps = causal_tracing.patching_maps(model, clean.tokens[:m], bad[:m], clean.answer_pos[:m],
                                                    clean.answers[:m], bad_answers[:m])
                arrays |= {f"{key}/patching_{k}": v for k, v in maps.items()}
    arrays["layers"] = np.array(layers)
    return arrays, rows


def run_attention(model, batches, opts):
    arrays, rows = {}, []
    for split, b in batches.items():
        att = attention.attention_patterns(model, b.tokens[: int(opts["n_attention"])])
        arrays[f"{split}/pattern"], arrays[f"{split}/mean"] = att["pattern"], att["mean"]
        arrays[f"{split}/tokens"] = b.tokens[: int(opts["n_attention"])].numpy()
        arrays["layers"] = np.array(att["layers"])
        mean = att["mean"]
        rows += [{"split": split, "layer": v, "layer_label": att["layers"][v], "head": h, "query": q,
                  "key": k, "attention": float(mean[v, h, q, k])}
                 for v in range(mean.shape[0]) for h in range(mean.shape[1])
                 for q in range(mean.shape[2]) for k in range(q + 1)]
    return arrays, rows


def run_fourier(model, ds):
    res = fourier.fourier_measures(model, ds)
    row = {k: v for k, v in res.items() if k != "freq_norm"}
    return {"freq_norm": res["freq_norm"]}, [row]


def run_surgery(model, batches, opts):
    repeats = tuple(int(r) for r in opts["repeats"].split(","))
    res = surgery.layer_loop_surgery(model, batches, repeats)
    arrays = {f"{s}/acc": g for s, g in res["acc"].items()} | {"repeats": np.array(repeats),
                                                               "layers": np.array(res["layers"])}
    rows = []
    for split, grid in res["acc"].items():
        rows += [{"split": split, "repeats": extra, "start": s, "end": e, "acc": float(grid[r, s, e]),
                  "base_acc": res["base"][split]}
                 for r, extra in enumerate(repeats) for s in range(grid.shape[1])
                 for e in range(s, grid.shape[2])]
    return arrays, rows


def run_signals(model, batches, opts, ds, fit_batch=None):
    """Rows per split, hop group, step and signal: AUROC and coverage at 90% selective
    accuracy; with `fit_batch` (fit_split) also the signals' combination at the last step."""
    n_steps = int(opts["steps"]) or model.config.n_steps
    combination = None
    if fit_batch is not None:
        try:
            combination = signals.fit_combination(model, fit_batch.tokens, fit_batch.answer_pos,
                                                   fit_batch.answers, n_steps)
        except ValueError as e:   # its answers all right or all wrong: nothing to fit
            raise SystemExit(f"fit_split={fit_batch.split}: {e}") from None
    number = lambda v: None if np.isnan(v) else float(v)
    arrays, rows = {}, []
    for split, b in batches.items():
        groups = signals.abstention_signals(model, b.tokens, b.answer_pos, b.answers, b.hops,
                                            n_steps, combination, trained_hop_counts(ds))
        for hops, g in groups.items():
            for key in ("auroc", "acc", "coverage"):
                arrays[f"{split}/{hops}/{key}"] = g[key]
            at = {"split": split, "hops": hops, "n": g["n"]}
            rows += [at | {"step": t + 1, "signal": name, "acc": float(g["acc"][t]),
                           "auroc": number(g["auroc"][i, t]),
                           "coverage_at_0.9": number(g["coverage"][i, t])}
                     for i, name in enumerate(g["signals"]) for t in range(n_steps)]
            if "combined" in g:
                c = g["combined"]
                rows.append(at | {"step": n_steps, "signal": f"combined_fit_{fit_batch.split}",
                                  "acc": float(g["acc"][-1]), "auroc": number(c["auroc"]),
                                  "coverage_at_0.9": number(c["coverage"])})
        arrays["signals"] = np.array(g["signals"])
    return arrays, rows


def main(argv: list[str] | None = None) -> None:
    from grokloop import cli

    cli.run("probes", run_probes, argv)


def run_probes(d: dict) -> None:
    """The composed ProbesCommand as a dict (options it lacks take their defaults); the probes
    take its options as strings (lists comma-joined), the form RUN/probes/{probe}.json records."""
    from grokloop.bank import bank_option, bank_results

    d = asdict(ProbesCommand()) | d

    opts = {k: ",".join(map(str, v)) if isinstance(v, list) else str(v) for k, v in d.items()
            if k != "bank"}
    run_dir = Path(opts["run_dir"])
    if not run_dir.is_dir():
        raise SystemExit(f"run_dir={run_dir}: no such directory")
    if int(opts["steps"]) < 0:
        raise SystemExit(f"steps={opts['steps']}: give the recurrence steps to run, or 0 for the "
                         "model's trained number")
    steps = choose_checkpoints(opts["checkpoints"], run_dir)
    model, ds, run_cfg = load_model(run_dir, steps[0])
    bank = None
    if d.get("bank"):   # checked before any probe runs or anything is written
        bank, manifest = bank_option(d["bank"], ds.vocab, model.config.memory, model=model)
    probes = choose_probes(opts["probe"], ds)
    splits = opts["split"].split(",") if opts["split"] else default_splits(ds)
    batches = {s: probe_batch(ds, s, int(opts["n"]), seed=int(opts["seed"])) for s in splits}
    if opts["corrupt"] != "all":
        for b in batches.values():
            if opts["corrupt"] not in input_roles(b):
                raise SystemExit(f"corrupt={opts['corrupt']!r} is not an input role of task "
                                 f"{ds.task!r}; choose from {input_roles(b)}")
    fit_batch = None
    if opts["fit_split"]:
        if "signals" not in probes:
            raise SystemExit(f"fit_split={opts['fit_split']} is read by the signals probe only; "
                             "add probe=signals or leave fit_split out")
        if opts["fit_split"] in splits:
            raise SystemExit(f"fit_split={opts['fit_split']} is also a split scored (split="
                             f"{','.join(splits)}): a combination scored on the facts it was fitted "
                             "to looks better than it is; fit it on another split, e.g. valid")
        try:
            fit_batch = probe_batch(ds, opts["fit_split"], int(opts["n"]), seed=int(opts["seed"]))
        except ValueError as e:
            raise SystemExit(f"fit_{e}") from None
    meta = {"run_dir": str(run_dir), "options": opts, "splits": splits,
            "code_version": code_version(), "run_config": run_cfg}
    sub = None
    if bank is not None:
        sub, meta["bank"] = bank_results(d["bank"], bank, manifest)
    stores = {p: Store(run_dir, p, meta | {"probe": p}, sub) for p in probes}
    for k, step in enumerate(steps):
        if step != steps[0]:
            model.load_state_dict(read_checkpoint(run_dir, step)[0])
            if bank is not None:   # the checkpoint brought its own bank back
                model.memory.attach(bank)
        for p in probes:
            print(f"checkpoint {step} ({k + 1}/{len(steps)}): {p} on {', '.join(splits)}", flush=True)
            if p == "logit_lens":
                arrays, rows = run_logit_lens(model, batches, opts)
            elif p == "causal_tracing":
                arrays, rows = run_causal_tracing(model, batches, opts, ds)
            elif p == "attention":
                arrays, rows = run_attention(model, batches, opts)
            elif p == "fourier":
                arrays, rows = run_fourier(model, ds)
            elif p == "signals":
                arrays, rows = run_signals(model, batches, opts, ds, fit_batch)
            else:
                arrays, rows = run_surgery(model, batches, opts)
            stores[p].save(step, arrays, rows)
    print(f"wrote {run_dir / 'probes' / (sub or '')}/{{{','.join(probes)}}}.jsonl, .json and npz "
          "arrays")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
