"""Halting on a frozen model: the learned selector against the simple exit rules, per split and
hop count, and what a run directory keeps of it (RUN/halting/).

    python -m grokloop.halting run_dir=RUN [max_steps=12] [step_cost=0.01] [abstain_reward=0.3]

(also `python -m grokloop.adaptive.halting ...`; options: conf/halting.yaml, typed by
HaltingCommand.) `run_halting` trains the selector (grokloop/adaptive/selector.py) on the run's
last checkpoint on its `train_split` (default valid: held-out facts; a split that overlaps
training is refused before any work), runs `evaluate_halting` on every other evaluation split,
and writes selector.safetensors, selector.json, results.json and results.md; `load_selector`
reads the selector back. The rules and their scores are grokloop/adaptive/rules.py; the report across
runs is reports/adaptive.py. With bank=DIR (a model.memory=facts run) the frozen model reads that
bank directory instead of the one it trained with (checked first: grokloop/bank.py bank_option),
and everything is written to RUN/halting/bank_NAME/ (NAME: the bank directory's name) instead;
with tag=TAG into the subfolder TAG/ of either (several selectors of one run, side by side).
With reuse=true the selector already there is evaluated again instead of trained (its options
must match). Abstention is compared as two curves: the confidence threshold's, and the
selector's greedy episodes with ABSTAIN_OFFSETS added to its abstain logit.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from datagen.provenance import atomic_write, atomic_write_text, code_version
from grokloop.adaptive import MAIN_RULES
from grokloop.adaptive.blocks import block_study
from grokloop.adaptive.contest import (
    candidate_exits,
    contest,
    flops_by_hops,
    flops_table,
    rule_schedules,
    score_rules,
    selector_flops,
    tuned_per_family,
)
from grokloop.adaptive.rules import (
    ABSTAIN_EXIT,
    COVERAGE_THRESHOLDS,
    TARGET_SELECTIVE_ACC,
    at_exit,
    auroc,
    core_layers,
    coverage_at_accuracy,
    coverage_curve,
    coverage_gain_interval,
    rule_exits,
    scheduled,
    selective_curve,
    selective_point,
    summarize_exits,
    threshold_at_coverage,
    trajectory,
)
from grokloop.adaptive.selector import (
    ABSTAIN_OFFSETS,
    HaltingConfig,
    Selector,
    check_train_split,
    dataset_tensors,
    rollout,
    summarize_selector,
    train_selector,
)
from grokloop.evaluate import answer_prefix


@torch.no_grad()
def evaluate_halting(
    model, ds, selector, cfg: HaltingConfig, splits: list[str], device="cpu", batch_size: int = 4096
) -> dict:
    """Every rule and the selector on every split: {split: {"rules": {rule: row}, "n",
    "coverage_curve" (at ABSTAIN_EXIT), "abstention"}} (`abstention`); for a model with a bank
    of several cores also "blocks", every schedule against its compute
    (grokloop/adaptive/blocks.py), and the selector's `mean_layers`."""
    data = dataset_tensors(ds, device)
    trained_hops = trained_hop_counts(ds)
    results = {}
    for i, split in enumerate(splits):
        print(
            f"exit rules and selector on {split} ({i + 1}/{len(splits)}, "
            f"{len(ds.splits[split]):,} examples, up to {cfg.max_steps} steps)",
            flush=True,
        )
        idx = torch.as_tensor(ds.splits[split], device=device)
        # the selector's coverage curve: a rollout per abstain offset, or, where it abstains only
        # at max_steps, exactly from one (`abstention`)
        offsets = ABSTAIN_OFFSETS if cfg.abstain_at == "any" else (0.0,)
        tokens = answer_prefix(data["inputs"], data["answer_pos"], idx)
        traj, outs = run_split(model, selector, data, tokens, idx, cfg, offsets, batch_size)
        hops = data["hops"][idx].cpu()
        exits = rule_exits(traj, model.config.n_steps)
        rules = {
            name: summarize_exits(traj, ex, hops, cost_all_steps=name == "max_confidence")
            for name, ex in exits.items()
        }
        out = outs.get(0.0)
        if out is not None:
            rules["selector"] = summarize_selector(out, hops)
        results[split] = {
            "rules": rules,
            "n": len(idx),
            "coverage_curve_exit": ABSTAIN_EXIT,
            "coverage_curve": coverage_curve(traj, exits[ABSTAIN_EXIT]),
            "abstention": abstention(
                traj,
                exits[ABSTAIN_EXIT],
                hops,
                out,
                trained_hops,
                offsets=outs,
                abstains_at_end=cfg.abstain_at == "max_steps",
            ),
        }
        if len(model.cores) > 1 and split.startswith("test"):  # a bank: schedules against compute
            results[split]["blocks"] = block_study(
                model,
                tokens[idx],
                data["answer_pos"][idx],
                data["answers"][idx],
                hops,
                cfg.max_steps,
                batch_size=batch_size,
            )
            if out is not None:
                unit = core_layers(model)[model.schedule[0]]  # the selector's cost unit
                rules["selector"]["mean_layers"] = rules["selector"]["mean_cost"] * unit
                for key in [k for k in rules["selector"] if k.startswith("hops_")]:
                    rules["selector"][key]["mean_layers"] = (
                        out["cost"][hops == int(key[5:])].mean().item() * unit
                    )
    return results


@torch.no_grad()
def run_split(model, selector, data, tokens, idx, cfg, offsets=(0.0,), batch_size: int = 4096):
    """The rules' trajectory on the facts `idx` (rows of `tokens`, the inputs cut after the
    deepest answer) and the selector's greedy episodes at each abstain offset ({} without a
    selector): (traj, {offset: episodes}), on the CPU."""
    trajs, outs = [], {b: [] for b in (offsets if selector is not None else ())}
    for chunk in idx.split(batch_size):
        args = (tokens[chunk], data["answer_pos"][chunk], data["answers"][chunk])
        trajs.append(trajectory(model, *args, cfg.max_steps))
        for b in outs:
            outs[b].append(rollout(model, selector, *args, cfg, greedy=True, abstain_offset=b))
    traj = {k: torch.cat([t[k] for t in trajs], dim=1).cpu() for k in trajs[0]}
    outs = {b: {k: torch.cat([o[k] for o in os]).cpu() for k in os[0]} for b, os in outs.items()}
    return traj, outs


def contest_results(model, ds, selector, cfg: HaltingConfig, test_split: str) -> tuple[dict, dict]:
    """The selector against every rule tuned on its training split (`valid`), scored once on
    `test_split` (grokloop/adaptive/contest.py): ({"rows", "flops", "by_hops", "frontier"}, the
    per-fact test arrays of the selector and each chosen rule, for pooling across runs)."""
    data = dataset_tensors(ds, "cpu")
    lengths_all = data["answer_pos"] + 1
    splits = (cfg.train_split, test_split)
    used = torch.cat([torch.as_tensor(ds.splits[s]) for s in splits])
    table = flops_table(
        model, sorted(set(lengths_all[used].tolist())), selector, selector.n_features
    )
    scored = {
        split: scored_split(model, selector, data, torch.as_tensor(ds.splits[split]), table, cfg)
        for split in splits
    }
    (v_rules, v_sel, _), (t_rules, t_sel, hops) = scored[cfg.train_split], scored[test_split]
    rows = contest(v_rules, t_rules, v_sel, t_sel, seed=cfg.seed)
    shown = [f"fixed_{min(model.config.n_steps, cfg.max_steps)}", f"fixed_{cfg.max_steps}"]
    tuned = tuned_per_family(v_rules)
    shown += [r["rule"] for r in rows if r["rule"]] + list(tuned.values())
    shown = list(dict.fromkeys(shown))
    methods = {"selector": t_sel} | {name: t_rules[name] for name in shown}
    frontier = [
        {
            "rule": name,
            "valid_acc": v_rules[name]["correct"].float().mean().item(),
            "valid_flops": v_rules[name]["flops"].mean().item(),
            "test_acc": t_rules[name]["correct"].float().mean().item(),
            "test_flops": t_rules[name]["flops"].mean().item(),
        }
        for name in v_rules
    ]
    result = {
        "split": test_split,
        "tuned_on": cfg.train_split,
        "rows": rows,
        "flops": table,
        "tuned": tuned,
        "by_hops": flops_by_hops(methods, hops),
        "frontier": frontier,
    }
    per_fact = {"hops": hops.numpy()} | {
        f"{name}.{k}": v.numpy() for name, d in methods.items() for k, v in d.items()
    }
    return result, per_fact


def scored_split(model, selector, data, idx, table, cfg) -> tuple[dict, dict, torch.Tensor]:
    """(every candidate rule on every rule schedule, the selector's greedy episodes, hops) of the
    facts `idx`, each side's per-fact correct, FLOPs and steps (grokloop/adaptive/contest.py)."""
    tokens = answer_prefix(data["inputs"], data["answer_pos"], idx)
    traj, outs = run_split(model, selector, data, tokens, idx, cfg)
    lengths, out = data["answer_pos"][idx] + 1, outs[0.0]
    rules = {}
    for prefix, schedule in rule_schedules(model, cfg.max_steps).items():
        if prefix:  # the default schedule's trajectory came with the selector's episodes
            with scheduled(model, schedule):
                traj = run_split(model, None, data, tokens, idx, cfg)[0]
        candidates = candidate_exits(traj, data["answer_pos"][idx])
        scored = score_rules(traj, candidates, table, schedule, lengths)
        rules |= {prefix + name: v for name, v in scored.items()}
    sel = {
        "correct": out["correct"],
        "flops": selector_flops(table, out, lengths),
        "steps": out["steps"].double(),
    }
    return rules, sel, data["hops"][idx]


def trained_hop_counts(ds) -> list[int]:
    """The inferred hop counts a k-hop dataset trains on ([] for other tasks)."""
    trained = (ds.config or {}).get("hops")
    return [int(k) for k in trained] if isinstance(trained, (list, tuple)) else []


def fact_groups(hops: torch.Tensor, trained_hops: list[int] = ()) -> dict[str, torch.Tensor]:
    """Masks of the facts abstention is scored on: all, each hop count, and, where a split mixes
    them, the trained hop counts and those deeper than any trained."""
    groups = {"all": torch.ones_like(hops, dtype=torch.bool)}
    groups |= {f"hops_{k}": hops == k for k in hops.unique().tolist()}
    if trained_hops:
        trained, deeper = torch.isin(hops, torch.tensor(trained_hops)), hops > max(trained_hops)
        if trained.any() and not trained.all():
            groups["trained_hops"] = trained
        if deeper.any() and not deeper.all():
            groups["deeper_than_trained"] = deeper
    return groups


def abstention(
    traj,
    exit_step,
    hops,
    out=None,
    trained_hops: list[int] = (),
    target: float = TARGET_SELECTIVE_ACC,
    offsets: dict | None = None,
    abstains_at_end: bool = False,
) -> dict:
    """Abstaining by a confidence threshold on the top probability at `exit_step` against the
    selector's abstain action, per group of facts (`fact_groups`): the threshold's coverage
    curve and its largest coverage at selective accuracy >= target; with the selector's
    episodes `out`, its operating point (coverage, selective accuracy) and the threshold whose
    coverage is closest to the selector's without exceeding it (the comparison at equal
    coverage). With `offsets` ({abstain offset: episodes}, ABSTAIN_OFFSETS) the selector has a
    curve too ("selector_curve"), and its coverage at the target is its curve's largest, as the
    threshold's is; without, that of its one point. `abstains_at_end` (a selector that abstains
    only at max_steps, where the offset changes nothing before): its curve comes from the one
    episode set `out`, exactly as the threshold's does: with offset b an episode that reached
    the end abstains where its abstain margin m > -b, so the curve thresholds -m, and the
    episodes that stopped before (m = -inf) always answer; "selector_curve" keeps its points at
    ABSTAIN_OFFSETS. Beside coverage, how well each score ranks right answers above wrong ones
    (`auroc`): the threshold's top probability, and, with `abstains_at_end`, the selector's -m,
    and the bootstrap interval of the selector's coverage at the target minus the threshold's
    (`coverage_gain_interval`, the facts resampled in pairs)."""
    top, right = at_exit(traj, exit_step)
    groups = {}
    for name, m in fact_groups(hops, trained_hops).items():
        exact = selective_curve(top[m], right[m])
        g = {
            "n": int(m.sum()),
            "threshold_coverage_at_target": coverage_at_accuracy(exact, target),
            "threshold_auroc": auroc(top[m], right[m]),
            "curve": selective_curve(top[m], right[m], COVERAGE_THRESHOLDS),
        }
        if out is not None:
            point = selective_point(out["correct"][m], ~out["abstained"][m])
            curve = [point]
            if abstains_at_end:
                score, right_end = -out["abstain_margin"][m], out["right_at_end"][m]
                g["selector_curve"] = [
                    {
                        "coverage": r["coverage"],
                        "selective_acc": r["selective_acc"],
                        "abstain_offset": r["min_confidence"],
                    }
                    for r in selective_curve(score, right_end, ABSTAIN_OFFSETS)
                ][::-1]
                curve = selective_curve(score, right_end)
                point["auroc"] = auroc(score, right_end)
                point["coverage_gain_interval"] = coverage_gain_interval(
                    score.cpu(), right_end.cpu(), top[m].cpu(), right[m].cpu(), target
                )
            elif offsets:
                curve = [
                    selective_point(o["correct"][m], ~o["abstained"][m]) | {"abstain_offset": b}
                    for b, o in sorted(offsets.items())
                ]
                g["selector_curve"] = curve
            g["selector"] = point | {"coverage_at_target": coverage_at_accuracy(curve, target)}
            g["threshold"] = threshold_at_coverage(exact, point["coverage"])
        groups[name] = g
    return {"exit": ABSTAIN_EXIT, "target_selective_acc": target, "groups": groups}


# --- RUN/halting/: the selector and the results ---------------------------------------------
def halting_dir(run_dir) -> Path:
    return Path(run_dir) / "halting"


def save_selector(
    run_dir, selector: Selector, cfg: HaltingConfig, curve: list[dict], d: Path | None = None
) -> None:
    """Into RUN/halting/ (or the directory `d`)."""
    d = d or halting_dir(run_dir)
    weights = {k: v.detach().cpu().contiguous() for k, v in selector.state_dict().items()}
    atomic_write(d / "selector.safetensors", lambda tmp: save_file(weights, str(tmp)))
    meta = {
        "config": dataclasses.asdict(cfg),
        "d_model": selector.d_model,
        "n_cores": selector.n_cores,
        "hidden": selector.hidden,
        "n_memory": selector.n_memory,
        "n_history": selector.n_history,
        "read_length": selector.read_length,
        "curve": curve,
    }
    atomic_write_text(d / "selector.json", json.dumps(meta, indent=1))


def load_selector(run_dir, d: Path | None = None) -> tuple[Selector, HaltingConfig, list[dict]]:
    """From RUN/halting/ (or the directory `d`): the selector, its config, its training curve."""
    d = d or halting_dir(run_dir)
    if not (d / "selector.json").exists():
        raise FileNotFoundError(
            f"{d} holds no selector; train one with `python -m grokloop.halting run_dir={run_dir}`"
        )
    meta = json.loads((d / "selector.json").read_text())
    n_memory = meta.get("n_memory", 0)
    selector = Selector(
        meta["d_model"],
        meta["n_cores"],
        meta["hidden"],
        n_memory=n_memory,
        read_state=meta["config"].get("read_state", True),
        n_history=meta.get("n_history", 0),
        read_length=meta.get("read_length", False),
    )
    selector.load_state_dict(load_file(str(d / "selector.safetensors")))
    # selectors saved before memory features existed read none
    cfg = HaltingConfig(**({"memory_features": n_memory > 0} | meta["config"]))
    return selector.eval(), cfg, meta.get("curve", [])


def markdown_table(results: dict, max_steps: int) -> str:
    """Per split: accuracy (mean steps) per hop count for the main rules."""
    lines = []
    for split, res in results.items():
        rules = res["rules"]
        hops = sorted(
            {k for row in rules.values() for k in row if k.startswith("hops_")},
            key=lambda k: int(k[5:]),
        )
        lines += [
            f"### {split} (n = {res['n']})",
            "",
            "| rule | acc | coverage | mean steps | "
            + " | ".join(h.replace("_", " ") for h in hops)
            + " |",
            "|---" * (4 + len(hops)) + "|",
        ]
        for name in (r.replace("{T}", str(max_steps)) for r in MAIN_RULES):
            if name not in rules:
                continue
            row = rules[name]
            cells = [f"{row[h]['acc']:.3f} ({row[h]['mean_steps']:.1f})" for h in hops]
            lines.append(
                f"| {name} | {row['acc']:.3f} | {row['coverage']:.2f} | "
                f"{row['mean_steps']:.2f} | " + " | ".join(cells) + " |"
            )
        lines.append("")
        if "abstention" in res:
            lines += abstention_table(res["abstention"]) + [""]
    return "\n".join(lines)


def fmt(x, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def abstention_table(ab: dict) -> list[str]:
    """Markdown lines: per group of facts, the selector against the confidence threshold at
    equal coverage, and each one's largest coverage at the target selective accuracy."""
    t = f"{ab['target_selective_acc']:.0%}"
    lines = [
        f"Abstention (confidence threshold on the top probability at the {ab['exit']} exit):",
        "",
        "| facts | n | selector coverage | selector sel. acc | threshold | threshold coverage "
        f"| threshold sel. acc | coverage at {t} sel. acc: selector | threshold |",
        "|---" * 9 + "|",
    ]
    for name, g in ab["groups"].items():
        sel, thr = g.get("selector", {}), g.get("threshold", {})
        lines.append(
            f"| {name} | {g['n']:,} | {fmt(sel.get('coverage'))} | "
            f"{fmt(sel.get('selective_acc'))} | {fmt(thr.get('min_confidence'), '.4g')} | "
            f"{fmt(thr.get('coverage'))} | {fmt(thr.get('selective_acc'))} | "
            f"{fmt(sel.get('coverage_at_target'))} | "
            f"{fmt(g['threshold_coverage_at_target'])} |"
        )
    return lines


# --- the command line: python -m grokloop.halting run_dir=RUN [key=value ...] -----------------
@dataclass
class HaltingCommand(HaltingConfig):
    """Schema of conf/halting.yaml: every HaltingConfig option, and the run to evaluate."""

    run_dir: str = "???"  # required
    bank: str | None = None  # a bank directory the frozen model reads (model.memory=facts runs);
    # results in RUN/halting/bank_NAME/
    tag: str | None = None  # results in RUN/halting/TAG/ (under bank_NAME/ with a bank): several
    # selectors of one run side by side, e.g. tag=abstain_0.8
    reuse: bool = False  # evaluate the selector already saved there again instead of training
    # one (its options must match these), e.g. after the evaluation grew


def main(argv: list[str] | None = None) -> None:
    from grokloop import cli

    cli.run("halting", run_halting, argv)


def run_halting(cmd: HaltingCommand) -> None:
    """Train the selector (or reuse the saved one), evaluate it, write RUN/halting/."""
    from grokloop.bank import bank_option, bank_results
    from grokloop.checkpoint import list_checkpoints, load_model

    run_dir, bank_dir, tag, reuse = cmd.run_dir, cmd.bank, cmd.tag, cmd.reuse
    if tag is not None and (not tag or Path(tag).name != tag or tag.startswith(".")):
        raise ValueError(
            f"tag={tag!r} must be a plain folder name (RUN/halting/TAG/), e.g. tag=abstain_0.8"
        )
    cfg = HaltingConfig(**{f.name: getattr(cmd, f.name) for f in dataclasses.fields(HaltingConfig)})
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model, ds, run_cfg = load_model(run_dir)
    check_train_split(ds, cfg.train_split)  # held-out facts only, before any work
    out_dir, bank_record = halting_dir(run_dir), None
    if bank_dir:  # checked before the selector trains or anything is written
        bank, manifest = bank_option(bank_dir, ds.vocab, model.config.memory, model=model)
        sub, bank_record = bank_results(bank_dir, bank, manifest)
        out_dir = out_dir / sub
    if tag:
        out_dir = out_dir / tag
    if reuse:
        selector, saved, curve = load_selector(run_dir, out_dir)
        differ = [
            f"{k}: saved {v!r}, given {getattr(cfg, k)!r}"
            for k, v in dataclasses.asdict(saved).items()
            if getattr(cfg, k) != v
        ]
        if differ:
            raise ValueError(
                f"reuse=true: the selector in {out_dir} was trained with other "
                f"options ({'; '.join(differ)}); pass the saved values or train a "
                "new one with tag=NAME"
            )
    else:
        selector, curve = train_selector(model, ds, cfg)
        save_selector(run_dir, selector, cfg, curve, out_dir)
    # the selector's own training split is not scored: every split reported is held out from it
    results = evaluate_halting(
        model, ds, selector, cfg, [s for s in ds.eval_splits if s != cfg.train_split]
    )
    out = {
        "run_dir": str(run_dir),
        "experiment": run_cfg["experiment"],
        "checkpoint_step": list_checkpoints(run_dir)[-1],
        "config": dataclasses.asdict(cfg),
        "code_version": code_version(),
        "selector_curve": curve,
        "splits": results,
    }
    if bank_record is not None:
        out["bank"] = bank_record
    if selector is not None and "test_inferred_id" in ds.splits and cfg.train_split in ds.splits:
        print("contest: the selector against every valid-tuned rule, in FLOPs", flush=True)
        out["contest"], per_fact = contest_results(model, ds, selector, cfg, "test_inferred_id")
        atomic_write(
            out_dir / "contest.npz", lambda tmp: np.savez_compressed(tmp, **per_fact), suffix=".npz"
        )
    atomic_write_text(out_dir / "results.json", json.dumps(out, indent=1))
    table = markdown_table(results, cfg.max_steps)
    atomic_write_text(out_dir / "results.md", table)
    print(table)
    print(f"wrote {out_dir}/results.json and results.md")


if __name__ == "__main__":
    main()
