"""What `python -m probes` stores for each probe and checkpoint: the arrays (an npz) and a tidy
table (rows with a `checkpoint` key, one per cell), built here from each probe's typed result,
and the Store that writes them under RUN/probes/."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from datagen.provenance import atomic_write, atomic_write_text
from grokloop.adaptive.halting import trained_hop_counts
from probes import attention, causal_tracing, fourier, logit_lens, signals, surgery
from probes.examples import corrupt, input_roles


class Store:
    """Results of one probe: npz per checkpoint, a tidy JSONL table, a JSON record."""

    def __init__(self, run_dir: Path, probe: str, meta: dict, sub: str | None = None):
        self.dir = run_dir / "probes" / (sub or "")
        self.probe, self.meta = probe, meta
        (self.dir / probe).mkdir(parents=True, exist_ok=True)

    def save(self, step: int, arrays: dict[str, np.ndarray], rows: list[dict]):
        atomic_write(
            self.dir / self.probe / f"step_{step:08d}.npz",
            lambda tmp: np.savez_compressed(tmp, **arrays),
            suffix=".npz",
        )
        table = self.dir / f"{self.probe}.jsonl"
        old = (
            [json.loads(line) for line in table.read_text().splitlines()] if table.exists() else []
        )
        keep = [r for r in old if r["checkpoint"] != step]
        rows = [{"checkpoint": step} | r for r in rows]
        atomic_write_text(table, "".join(json.dumps(r) + "\n" for r in keep + rows))
        record = self.dir / f"{self.probe}.json"
        done = json.loads(record.read_text())["checkpoints"] if record.exists() else []
        atomic_write_text(
            record, json.dumps(self.meta | {"checkpoints": sorted(set(done) | {step})}, indent=2)
        )


def _cells(prefix: dict, layers: list[str], grid: np.ndarray, name: str) -> list[dict]:
    """Rows for a [layer, pos] grid."""
    return [
        prefix | {"layer": i, "layer_label": layers[i], "pos": p, name: float(grid[i, p])}
        for i in range(grid.shape[0])
        for p in range(grid.shape[1])
    ]


def run_logit_lens(model, batches, cmd):
    arrays, rows = {}, []
    for split, b in batches.items():
        lens = logit_lens.logit_lens(model, b)
        readout = logit_lens.step_readout(model, b)
        for k in ("rank", "mrr", "top1", "at_role_mrr", "at_role_top1", "n"):
            arrays[f"{split}/{k}"] = getattr(lens, k)
        arrays[f"{split}/readout_acc"], arrays[f"{split}/readout_mrr"] = (
            readout.acc,
            readout.answer_mrr,
        )
        arrays["roles"], arrays["layers"] = np.array(lens.roles), np.array(lens.layers)
        for j, role in enumerate(lens.roles):
            rows += [
                {
                    "kind": "at_role",
                    "split": split,
                    "role": role,
                    "layer": i,
                    "layer_label": lens.layers[i],
                    "mrr": float(lens.at_role_mrr[j, i]),
                    "top1": float(lens.at_role_top1[j, i]),
                    "n": int(lens.n[j]),
                }
                for i in range(len(lens.layers))
            ]
        if (h := logit_lens.handoff(model, b)) is not None:
            rows.append({"kind": "handoff", "split": split} | dataclasses.asdict(h))
        rows += [
            {
                "kind": "readout",
                "split": split,
                "step": t + 1,
                "acc": float(a),
                "answer_mrr": float(m),
            }
            for t, (a, m) in enumerate(zip(readout.acc, readout.answer_mrr))
        ]
    return arrays, rows


def run_wave(model, batches, cmd):
    """The bridge wave (logit_lens.bridge_wave) over `cmd.steps` steps (0: the trained number):
    a row per (split, hop count, link) with the share right at some step, the median first step
    and the share right after the last step; the per-step shares in the arrays."""
    arrays, rows = {}, []
    for split, b in batches.items():
        w = logit_lens.bridge_wave(model, b, cmd.steps or None)
        if w is None:
            continue
        for k in ("hops", "right", "ever", "first", "n"):
            arrays[f"{split}/{k}"] = getattr(w, k)
        rows += [
            {
                "kind": "link",
                "split": split,
                "hops": int(k),
                "link": i + 1,
                "ever": float(w.ever[j, i]),
                "first_step": None if np.isnan(w.first[j, i]) else float(w.first[j, i]),
                "at_end": float(w.right[-1, j, i]),
                "steps": int(w.right.shape[0]),
                "n": int(w.n[j]),
            }
            for j, k in enumerate(w.hops)
            for i in range(int(k))
        ]
    return arrays, rows


def run_causal_tracing(model, batches, cmd, ds):
    arrays, rows = {}, []
    layers = ["embed"] + [v.label for v in model.layer_table()]
    for split, b in batches.items():
        roles = input_roles(b) if cmd.corrupt == "all" else [cmd.corrupt]
        for role in roles:
            bad, bad_answers, kept = corrupt(ds, b, role, seed=cmd.seed, mode=cmd.corruption)
            if len(kept) == 0:
                rows.append(
                    {
                        "kind": "summary",
                        "split": split,
                        "corrupt": role,
                        "n": 0,
                        "corruption": cmd.corruption,
                        "n_dropped": len(b),
                    }
                )
                continue
            clean = b.subset(kept)
            res = causal_tracing.causal_trace(
                model, clean.tokens, bad, clean.answer_pos, clean.answers, bad_answers
            )
            key = f"{split}/{role}"
            arrays[f"{key}/strength"], arrays[f"{key}/logit_diff"] = res.strength, res.logit_diff
            arrays[f"{key}/flip"] = res.flip
            rows.append(
                {
                    "kind": "summary",
                    "split": split,
                    "corrupt": role,
                    "n": len(kept),
                    "corruption": cmd.corruption,
                    "n_dropped": len(b) - len(kept),
                    "full_effect": res.full_effect,
                    "clean_acc": res.clean_acc,
                }
            )
            prefix = {"kind": "cell", "split": split, "corrupt": role}
            rows += [
                r | {"logit_diff": float(res.logit_diff[r["layer"], r["pos"]])}
                for r in _cells(prefix, layers, res.strength, "strength")
            ]
            m = min(len(kept), cmd.patching_examples)
            if m:
                maps = causal_tracing.patching_maps(
                    model,
                    clean.tokens[:m],
                    bad[:m],
                    clean.answer_pos[:m],
                    clean.answers[:m],
                    bad_answers[:m],
                )
                arrays |= {
                    f"{key}/patching_{k}": getattr(maps, k)
                    for k in ("resid_pre", "attn_out", "head_out")
                }
    arrays["layers"] = np.array(layers)
    return arrays, rows


def run_attention(model, batches, cmd):
    arrays, rows = {}, []
    for split, b in batches.items():
        att = attention.attention_patterns(model, b.tokens[: cmd.n_attention])
        arrays[f"{split}/pattern"], arrays[f"{split}/mean"] = att.pattern, att.mean
        arrays[f"{split}/tokens"] = b.tokens[: cmd.n_attention].numpy()
        arrays["layers"] = np.array(att.layers)
        mean = att.mean
        rows += [
            {
                "split": split,
                "layer": v,
                "layer_label": att.layers[v],
                "head": h,
                "query": q,
                "key": k,
                "attention": float(mean[v, h, q, k]),
            }
            for v in range(mean.shape[0])
            for h in range(mean.shape[1])
            for q in range(mean.shape[2])
            for k in range(q + 1)
        ]
    return arrays, rows


def run_fourier(model, ds):
    res = fourier.fourier_measures(model, ds)
    row = {
        "gini": res.gini,
        "key_freqs": res.key_freqs,
        "restricted_loss": res.restricted_loss,
        "excluded_loss": res.excluded_loss,
        "train_loss": res.train_loss,
        "test_loss": res.test_loss,
    }
    return {"freq_norm": res.freq_norm}, [row]


def run_surgery(model, batches, cmd):
    repeats = tuple(cmd.repeats)
    res = surgery.layer_loop_surgery(model, batches, repeats)
    arrays = {f"{s}/acc": g for s, g in res.acc.items()} | {
        "repeats": np.array(repeats),
        "layers": np.array(res.layers),
    }
    rows = []
    for split, grid in res.acc.items():
        rows += [
            {
                "split": split,
                "repeats": extra,
                "start": s,
                "end": e,
                "acc": float(grid[r, s, e]),
                "base_acc": res.base[split],
            }
            for r, extra in enumerate(repeats)
            for s in range(grid.shape[1])
            for e in range(s, grid.shape[2])
        ]
    return arrays, rows


def run_signals(model, batches, cmd, ds, fit_batch=None):
    """Rows per split, hop group, step and signal: AUROC and coverage at 90% selective
    accuracy; with `fit_batch` (fit_split) also the signals' combination at the last step."""
    n_steps = cmd.steps or model.config.n_steps
    combination = None
    if fit_batch is not None:
        try:
            combination = signals.fit_combination(
                model, fit_batch.tokens, fit_batch.answer_pos, fit_batch.answers, n_steps
            )
        except ValueError as e:  # its answers all right or all wrong: nothing to fit
            raise SystemExit(f"fit_split={fit_batch.split}: {e}") from None
    number = lambda v: None if np.isnan(v) else float(v)
    arrays, rows = {}, []
    for split, b in batches.items():
        groups = signals.abstention_signals(
            model,
            b.tokens,
            b.answer_pos,
            b.answers,
            b.hops,
            n_steps,
            combination,
            trained_hop_counts(ds),
        )
        for hops, g in groups.items():
            for key in ("auroc", "acc", "coverage"):
                arrays[f"{split}/{hops}/{key}"] = getattr(g, key)
            at = {"split": split, "hops": hops, "n": g.n}
            rows += [
                at
                | {
                    "step": t + 1,
                    "signal": name,
                    "acc": float(g.acc[t]),
                    "auroc": number(g.auroc[i, t]),
                    "coverage_at_0.9": number(g.coverage[i, t]),
                }
                for i, name in enumerate(g.signals)
                for t in range(n_steps)
            ]
            if g.combined is not None:
                c = g.combined
                rows.append(
                    at
                    | {
                        "step": n_steps,
                        "signal": f"combined_fit_{fit_batch.split}",
                        "acc": float(g.acc[-1]),
                        "auroc": number(c["auroc"]),
                        "coverage_at_0.9": number(c["coverage"]),
                    }
                )
        arrays["signals"] = np.array(g.signals)
    return arrays, rows
