"""The adaptive-thinking report across runs: accuracy per hop count and steps used, for every
model and halting rule, abstention (the selector against a confidence threshold at equal
coverage), plus accuracy-versus-compute and coverage-versus-selective-accuracy figures.

    python -m reports.adaptive runs/adaptive/khop_* [out=DIR] [names=[A,B,...]]
        [commands=["python -m grokloop.train ...", ...]]

(also `python -m reports.adaptive ...`; options: conf/adaptive_summary.yaml, typed by
SummaryCommand.) Each run directory must hold `halting/results.json` (`python -m grokloop.halting
run_dir=RUN`). Writes summary.json, summary.md and figures.html (a reports/html.py page, opens
offline) into `out`, by default runs/adaptive_summary (untracked; pass out=docs/results/adaptive
to publish).

summary.json is in the results schema (reports/study.py): {"study": "adaptive", "machine",
"commands", "rows"}, one row per (model, split, hop count, rule, seed) with `acc`, its Wilson 95%
interval `lo`/`hi` over `n` facts and `mean_steps`; rows for all hop counts of a split together
omit `hops`, and every hop count of a split has its own row too (a split of one hop count as
well), its n counted from the examples. `model` is the run's experiment name (or names=[...], one per run), `seed` the
run's seed, and models with several seeds also get `seed: "pooled"` rows (reports.study.pooled).
The selector's rows carry `coverage` and `selective_acc` (accuracy over the answered; `acc`
counts an abstention as not right), and each of its rows has a `confidence_threshold` row
beside it: answering only where the top probability at the `exit` rule's step reaches
`min_confidence`, the threshold whose coverage is closest to the selector's without exceeding
it. Both carry `coverage_at_90`: the largest coverage at selective accuracy >= 0.9 on its
curve (the selector's: its greedy episodes over ABSTAIN_OFFSETS added to its abstain logit,
or, for a selector that abstains only at max_steps, the exact curve of every offset; results
from before that curve give its one operating point). Beside the rows: `runs`
(what was evaluated) and `abstention` (per run, split and group of facts, including the
trained and deeper-than-trained hop counts together, the comparison and the threshold's
coverage curve). In the tables, hop 1 is read from the atomic_id split, hops 2.. from
test_inferred_id, and 2-hop OOD from test_inferred_ood. Summaries written before the results
schema (docs/archive/adaptive_*) still render.

On disk (write_summary) the rows' floats are cut to the digits that print the same in every
table, one row a line, and the abstention entries' curves (`curve`, `selector_curve`) sit
beside summary.json in summary_curves.json.gz; load_summary reads both back into the summary
the tables and figures are made from.
"""

from __future__ import annotations

import gzip
import html
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from datagen.provenance import atomic_write, atomic_write_text, code_version, machine
from grokloop.adaptive import MAIN_RULES
from grokloop.stats import acc_row
from reports import contest
from reports.figures import style
from reports.html import Section, page, table, write
from reports.load import read_run
from reports.study import POOL_APART, commands_from, pooled, summary_text

DEFAULT_OUT = "runs/adaptive_summary"  # under runs/ (gitignored): nothing tracked is overwritten
HOPS_NOTE = (
    "Accuracy (mean steps used) per hop count; hop 1 = atomic facts (ID), hops 2-3 are "
    "trained, 4+ never seen in training."
)
ROWS_NOTE = (
    "Accuracy (mean steps used) per hop count: hop 1 = atomic facts (atomic_id), hops 2+ "
    "= held-out inferred facts (test_inferred_id), 2-hop OOD = test_inferred_ood. "
    "Inferred hop counts in training: {trained}. Seeds pooled where a model has several; "
    "every number's Wilson 95% interval and n are in summary.json (rows)."
)
THRESHOLD_RULE = "confidence_threshold"  # the threshold at the selector's coverage
TABLE_FACTS = ("all", "trained_hops", "deeper_than_trained")  # abstention groups in the tables


def load_halting(path: str | Path) -> dict:
    """A run's halting results with what the summary needs of its training (last evaluation).
    `path`: a run directory (its halting/results.json) or a folder of halting results itself
    (RUN/halting/TAG, RUN/halting/bank_NAME), which names its run."""
    path = Path(path)
    results = (
        path / "results.json"
        if (path / "results.json").exists()
        else path / "halting" / "results.json"
    )
    if not results.exists():
        raise FileNotFoundError(
            f"{results} is missing; run `python -m grokloop.halting run_dir={path}` first"
        )
    res = json.loads(results.read_text())
    facts = contest.load_facts(results)
    run_dir = path if results == path / "halting" / "results.json" else res["run_dir"]
    run = read_run(run_dir, probes=False)
    last = run.metrics[-1]  # also for a run stopped early: its last evaluation
    chosen = {k.rsplit("/", 1)[1]: v for k, v in last.items() if k.startswith("depth/chosen_step/")}
    return {
        "name": res.get("experiment") or run.name,
        "seed": run.config.get("seed"),
        "trained_hops": (run.config.get("data") or {}).get("hops"),
        "halting": res,
        "config": run.config,
        "train_steps": last["step"],
        "wall_time_s": last["wall_time_s"],
        "chosen_step_last_interval": chosen,
        "checkpoint": res.get("checkpoint_step"),
        "contest_facts": facts,
    }


# --- rows in the results schema ----------------------------------------------------------------
def rule_fields(r: dict) -> dict:
    """A rule summary's extra row fields: mean steps, and coverage and selective accuracy where
    the rule can abstain."""
    out = {"mean_steps": r["mean_steps"]} | (
        {"mean_layers": r["mean_layers"]} if "mean_layers" in r else {}
    )
    if "selective_acc" in r:
        out |= {"coverage": r["coverage"], "selective_acc": r["selective_acc"]}
    return out


def group_hops(name: str) -> dict | None:
    """Row fields of an abstention group: {} for all facts, {hops: K} for one hop count, None for
    groups that are not rows (trained_hops, deeper_than_trained: summary.json `abstention`)."""
    if name == "all":
        return {}
    return {"hops": int(name[5:])} if name.startswith("hops_") else None


SELECTOR_RULES = ("selector", THRESHOLD_RULE)


def labelled(rows: list[dict], run: dict, rules: bool) -> list[dict]:
    """A run with a `selector_label` (SummaryCommand.selectors): its selector's rows renamed
    `selector.LABEL` (and the threshold at its coverage `confidence_threshold.LABEL`) with the
    selector's seed, and the other rules' rows only where `rules` (the first run of its model
    run: every selector of one frozen model meets the same rules)."""
    label = run.get("selector_label")
    if not label:
        return rows
    seed = run["halting"].get("config", {}).get("seed")
    out = []
    for r in rows:
        if r.get("rule") in SELECTOR_RULES:
            out.append(r | {"rule": f"{r['rule']}.{label}", "selector_seed": seed})
        elif rules:
            out.append(r)
    return out


def run_rows(run: dict, rules: bool = True) -> list[dict]:
    """The rows of one run: every rule (and the selector) per split, overall and per hop count,
    and the confidence threshold at the selector's coverage (`labelled`: rules=False keeps only
    the selector's)."""
    return labelled(all_rows(run), run, rules)


def per_hop_kept(rule: str, max_steps: int) -> bool:
    """Whether a rule's per-hop rows go into summary.json: the main rules, the selector and the
    threshold at its coverage, and the fixed depths `on_depth_grid` (a depth curve to
    max_steps); the threshold grids' per-hop rows stay in the runs' results.json (all of them
    at 32 steps took summary.json past 2 MB). Every rule keeps its all-hops row."""
    if rule in (r.replace("{T}", str(max_steps)) for r in MAIN_RULES) or rule in BLOCK_RULES:
        return True
    if rule.startswith(("selector", THRESHOLD_RULE, "trained_depth")):
        return True
    return on_depth_grid(rule)


def on_depth_grid(rule: str) -> bool:
    """A fixed depth on the per-hop and schedule rows' grid: every depth up to 8, every 2nd to
    16, every 4th beyond."""
    fixed = re.fullmatch(r"fixed_(\d+)", rule)
    t = int(fixed[1]) if fixed else 0
    return t > 0 and (t <= 8 or t % 2 == 0 and t <= 16 or t % 4 == 0)


def all_rows(run: dict) -> list[dict]:
    res, rows, missing_n = run["halting"], [], False
    max_steps = res.get("config", {}).get("max_steps", 0)
    ids = {"model": run["name"]}
    tail = {"seed": run.get("seed"), "step": res.get("checkpoint_step")}
    for split, sres in res["splits"].items():
        at = {}  # (hops, rule) -> row, to add the abstention fields
        for rule, r in sres["rules"].items():
            at[None, rule] = acc_row(
                r["acc"],
                r.get("n", sres["n"]),
                **ids,
                split=split,
                rule=rule,
                **tail,
                **rule_fields(r),
            )
            for key, h in r.items():
                if not key.startswith("hops_") or not per_hop_kept(rule, max_steps):
                    continue
                if "n" not in h:  # results.json from before per-hop counts
                    missing_n = True
                    continue
                at[int(key[5:]), rule] = acc_row(
                    h["acc"],
                    h["n"],
                    **ids,
                    split=split,
                    hops=int(key[5:]),
                    rule=rule,
                    **tail,
                    **rule_fields(h),
                )
        ab = sres.get("abstention") or {"groups": {}}
        key_90 = f"coverage_at_{ab.get('target_selective_acc', 0.9) * 100:g}"
        for name, g in ab["groups"].items():
            fields = group_hops(name)
            if fields is None or "threshold" not in g:
                continue
            hops = fields.get("hops")
            if (hops, "selector") in at:
                at[hops, "selector"][key_90] = g["selector"]["coverage_at_target"]
                if "coverage_gain_interval" in g["selector"]:  # selector minus threshold
                    at[hops, "selector"][f"{key_90}_gain_interval"] = g["selector"][
                        "coverage_gain_interval"
                    ]
            t, steps = g["threshold"], at.get((hops, ab["exit"]), {}).get("mean_steps")
            at[hops, THRESHOLD_RULE] = acc_row(
                t["coverage"] * (t["selective_acc"] or 0.0),
                g["n"],
                **ids,
                split=split,
                **fields,
                rule=THRESHOLD_RULE,
                **tail,
                mean_steps=steps,
                exit=ab["exit"],
                min_confidence=t["min_confidence"],
                coverage=t["coverage"],
                selective_acc=t["selective_acc"],
                **{key_90: g["threshold_coverage_at_target"]},
            )
        rows += at.values()
        rows += block_rows(sres.get("blocks", {}), ids | {"split": split}, tail)
    if missing_n:
        print(
            f"{res.get('run_dir')}: halting/results.json has no per-hop counts (written before "
            "they were recorded): its per-hop rows are left out; rerun python -m grokloop.halting",
            file=sys.stderr,
        )
    return rows


def block_rows(blocks: dict, ids: dict, tail: dict) -> list[dict]:
    """A bank model's schedules (grokloop/adaptive/blocks.py) as rows with `schedule` and
    `mean_layers`: every exit and the fixed depths `on_depth_grid` over all hop counts, and per
    hop count the exits of BLOCK_RULES (what the block table reads; the other rules' per-hop rows
    stay in the runs' results.json, which keeps summary.json under 2 MB); the random schedules by
    their mean only."""
    rows = []
    for schedule, b in blocks.items():
        if schedule.startswith("random_"):
            continue
        for rule, r in b["rules"].items():
            if rule.startswith("fixed_") and not on_depth_grid(rule):
                continue
            per_hop = [(int(k[5:]), h) for k, h in r.items() if k.startswith("hops_")]
            for hops, h in [(None, r)] + (per_hop if rule in BLOCK_RULES else []):
                rows.append(
                    acc_row(
                        h["acc"],
                        h["n"],
                        **ids,
                        **({} if hops is None else {"hops": hops}),
                        rule=rule,
                        schedule=schedule,
                        **tail,
                        mean_steps=h["mean_steps"],
                        mean_layers=h["mean_layers"],
                    )
                )
    return rows


def pool_key(r: dict) -> tuple:
    return (r["model"], r["split"], *(r.get(f) for f in POOL_APART))


def pooled_rows(rows: list[dict]) -> list[dict]:
    """reports.study.pooled over seeds (each run evaluates one final checkpoint), with the mean
    steps, coverage and selective accuracy of the pooled facts."""
    members: dict[tuple, list[dict]] = {}
    for r in rows:
        if r.get("seed") != "pooled":
            members.setdefault(pool_key(r), []).append(r)
    out = []
    for p in pooled(rows, by_step=False):
        rs, n = members[pool_key(p)], p["n"]
        for key in ("mean_steps", "mean_layers"):
            if all(r.get(key) is not None for r in rs):
                p[key] = sum(r[key] * r["n"] for r in rs) / n
        if all("coverage" in r for r in rs):
            answered = sum(r["coverage"] * r["n"] for r in rs)
            p["coverage"] = answered / n
            p["selective_acc"] = (
                sum(r["coverage"] * r["n"] * (r["selective_acc"] or 0.0) for r in rs) / answered
                if answered
                else None
            )
        out.append(p)
    return out


def abstention_entries(run: dict) -> list[dict]:
    """The run's abstention comparisons, one per split and group of facts, with the curves."""
    out = []
    for split, sres in run["halting"]["splits"].items():
        ab = sres.get("abstention")
        for name, g in (ab or {}).get("groups", {}).items():
            label = run.get("selector_label")
            out.append(
                {
                    "model": run["name"],
                    "seed": run.get("seed"),
                    **(
                        {
                            "selector_label": label,
                            "selector_seed": run["halting"]["config"].get("seed"),
                        }
                        if label
                        else {}
                    ),
                    "split": split,
                    "facts": name,
                    "exit": ab["exit"],
                    "target_selective_acc": ab["target_selective_acc"],
                    **g,
                }
            )
    return out


def check_one_max_steps(runs: list[dict]) -> None:
    """Refuse one model seed's runs at different max_steps: its rules are read from the first run
    only (`build`), and a threshold rule that never fires exits at max_steps, so the same name
    scores differently at 16 and at 32 steps."""
    first: dict[tuple, tuple] = {}
    for run in runs:
        T, where = run["halting"].get("config", {}).get("max_steps"), run["halting"].get("run_dir")
        T0, where0 = first.setdefault((run["name"], run.get("seed")), (T, where))
        if T != T0:
            raise SystemExit(
                f"{where} runs model {run['name']!r} (seed {run.get('seed')}) at max_steps {T}, "
                f"{where0} at {T0}: name them apart with names=[...] (e.g. NAME@{T})"
            )


def build(runs: list[dict]) -> dict:
    seen, rules_from = {}, set()
    for run in runs:
        key = (
            run["name"],
            run.get("seed"),
            run.get("selector_label"),
            run["halting"].get("config", {}).get("seed") if run.get("selector_label") else None,
        )
        if key in seen:
            raise SystemExit(
                f"{run['halting'].get('run_dir')} and {seen[key]} are both model "
                f"{key[0]!r} with seed {key[1]}: name them apart with names=[...] (or "
                "their selectors with selectors=[...])"
            )
        seen[key] = run["halting"].get("run_dir")
    check_one_max_steps(runs)
    rows = []
    for run in runs:
        first = (run["name"], run.get("seed")) not in rules_from
        rules_from.add((run["name"], run.get("seed")))
        rows += run_rows(run, rules=first)
    return {
        "study": "adaptive",
        "machine": machine(),
        "code_version": code_version(),
        "run_code_versions": sorted(
            {v for run in runs if (v := run["halting"].get("code_version")) is not None}
        ),
        "commands": [
            f"python -m grokloop.halting run_dir={run['halting']['run_dir']}" for run in runs
        ],
        "rows": rows + pooled_rows(rows),
        "abstention": [e for run in runs for e in abstention_entries(run)],
        **contest_fields(runs),
        "runs": [
            {
                k: run.get(k)
                for k in (
                    "name",
                    "seed",
                    "trained_hops",
                    "train_steps",
                    "wall_time_s",
                    "checkpoint",
                    "chosen_step_last_interval",
                )
            }
            | {
                "train_split": run["halting"].get("config", {}).get("train_split"),
                "run_dir": run["halting"].get("run_dir"),
            }
            for run in runs
        ],
    }


def contest_fields(runs: list[dict]) -> dict:
    """The selector against the valid-tuned rules (reports/contest.py), where runs hold one."""
    if not any(run["halting"].get("contest") for run in runs):
        return {}
    return {
        "selector_vs_rule": contest.selector_vs_rule(runs),
        "compute_by_hops": contest.compute_by_hops(runs),
        "frontier": contest.frontier(runs),
    }


# --- what the tables and figures show, from the rows --------------------------------------------
def shown_rows(rows: list[dict]) -> list[dict]:
    """Per model: its pooled rows if it has several seeds, else its one seed's rows."""
    multi = {r["model"] for r in rows if r.get("seed") == "pooled"}
    return [r for r in rows if (r.get("seed") == "pooled") == (r["model"] in multi)]


def hop_cells(summary: dict) -> list[dict]:
    """[{model, rule, hops: {hop: (acc, mean steps)}}] for the main rules (the archived
    summaries' `table`), from the rows."""
    index = {
        (r["model"], r["split"], r.get("hops"), r["rule"]): r
        for r in shown_rows(summary["rows"])
        if "schedule" not in r
    }
    out = []
    for model in dict.fromkeys(r["model"] for r in summary["rows"]):
        fixed = [re.fullmatch(r"fixed_(\d+)", rule) for m, _, _, rule in index if m == model]
        T = max([int(f[1]) for f in fixed if f] or [0])
        for rule in (r.replace("{T}", str(T)) for r in MAIN_RULES):
            if (model, "test_inferred_id", None, rule) not in index:
                continue
            cell = lambda r: (r["acc"], r["mean_steps"])
            hops = {}
            if (r := index.get((model, "atomic_id", None, rule))) is not None:
                hops["1"] = cell(r)
            for (m, split, k, rl), r in sorted(index.items(), key=lambda kv: kv[0][2] or 0):
                if (m, split, rl) == (model, "test_inferred_id", rule) and k is not None:
                    hops[str(k)] = cell(r)
            if (r := index.get((model, "test_inferred_ood", 2, rule))) is not None:
                hops["ood2"] = cell(r)
            out.append({"model": model, "rule": rule, "hops": hops})
    return out


def compute_points(summary: dict) -> dict:
    """{model: {rule: {mean_steps, acc, coverage}}} on test_inferred_id, all hops (the archived
    summaries' `curves`)."""
    out = {}
    for r in shown_rows(summary["rows"]):
        if (
            r["split"] == "test_inferred_id"
            and "hops" not in r
            and r["rule"] != THRESHOLD_RULE
            and "schedule" not in r
        ):
            out.setdefault(r["model"], {})[r["rule"]] = {
                "mean_steps": r["mean_steps"],
                "acc": r["acc"],
                "coverage": r.get("coverage", 1.0),
            }
    return out


# --- the tables, as (headers, rows) for the markdown and the page ------------------------------
def hops_table(summary: dict) -> tuple[list[str], list[list[str]]]:
    cells = summary["table"] if "rows" not in summary else hop_cells(summary)
    hops = sorted({h for row in cells for h in row["hops"] if h != "ood2"}, key=int)
    headers = (
        ["model", "rule"] + [f"{h} hop" + ("s" if h != "1" else "") for h in hops] + ["2-hop OOD"]
    )
    rows = [
        [row["model"], row["rule"]]
        + [
            f"{row['hops'][h][0]:.2f} ({row['hops'][h][1]:.1f})" if h in row["hops"] else "-"
            for h in hops + ["ood2"]
        ]
        for row in cells
    ]
    return headers, rows


def fmt(x, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def abstention_table(summary: dict) -> tuple[list[str], list[list[str]]]:
    """The selector against the confidence threshold at equal coverage, per run, split and
    group of facts (all, trained hop counts, deeper than trained; per hop count: the rows)."""
    entries = [
        e for e in summary.get("abstention", []) if e["facts"] in TABLE_FACTS and "selector" in e
    ]
    target = f"{entries[0]['target_selective_acc']:.0%}" if entries else "90%"
    headers = [
        "model",
        "seed",
        "split",
        "facts",
        "n",
        "selector coverage",
        "selector sel. acc",
        "threshold",
        "threshold coverage",
        "threshold sel. acc",
        f"coverage at {target} sel. acc: selector",
        "threshold",
    ]
    rows = [
        [
            e["model"]
            + (f" ({e['selector_label']} {e['selector_seed']})" if "selector_label" in e else ""),
            str(e["seed"]),
            e["split"],
            e["facts"],
            f"{e['n']:,}",
            fmt(e["selector"]["coverage"]),
            fmt(e["selector"]["selective_acc"]),
            fmt(e["threshold"]["min_confidence"], ".4g"),
            fmt(e["threshold"]["coverage"]),
            fmt(e["threshold"]["selective_acc"]),
            fmt(e["selector"]["coverage_at_target"]),
            fmt(e["threshold_coverage_at_target"]),
        ]
        for e in entries
    ]
    return headers, rows


BLOCK_RULES = ("huginn_kl<5e-4", "conf>=0.9", "oracle")  # the block table's exits per schedule


def blocks_table(summary: dict) -> tuple[list[str], list[list[str]]] | None:
    """Bank models on test_inferred_id: accuracy (mean layers applied) per hop count for each
    schedule at each exit of BLOCK_RULES, and the selector's own choices; None without a bank."""
    rows = [
        r
        for r in shown_rows(summary.get("rows", []))
        if r["split"] == "test_inferred_id"
        and r.get("mean_layers") is not None
        and (r.get("schedule") and r["rule"] in BLOCK_RULES or r["rule"] == "selector")
    ]
    if not rows:
        return None
    hops = sorted({r["hops"] for r in rows if "hops" in r})
    cells: dict[tuple, dict] = {}
    for r in rows:
        cells.setdefault((r["model"], r.get("schedule") or "selector's choice", r["rule"]), {})[
            r.get("hops")
        ] = f"{r['acc']:.2f} ({r['mean_layers']:.1f})"
    headers = ["model", "schedule", "exit", "all hops"] + [f"{h} hops" for h in hops]
    return headers, [
        [*key, c.get(None, "-"), *(c.get(h, "-") for h in hops)] for key, c in cells.items()
    ]


def runs_table(summary: dict) -> tuple[list[str], list[list[str]]]:
    new = "rows" in summary
    headers = (
        ["model"]
        + (["seed", "selector trained on"] if new else [])
        + [
            "training steps (last evaluation)",
            "checkpoint evaluated",
            "wall time (s)",
            "share of batches learning from step t (last interval)",
        ]
    )
    rows = [
        [run["name"]]
        + ([str(run.get("seed")), str(run.get("train_split"))] if new else [])
        + [
            run["train_steps"],
            run["checkpoint"],
            f"{run['wall_time_s']:.0f}",
            ", ".join(f"{t}: {v:.2f}" for t, v in run["chosen_step_last_interval"].items()) or "-",
        ]
        for run in summary["runs"]
    ]
    return headers, rows


def markdown_lines(headers: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(headers) + " |", "|---" * len(headers) + "|"] + [
        "| " + " | ".join(map(str, r)) + " |" for r in rows
    ]


def rows_note(summary: dict) -> str:
    trained = {run["name"]: run.get("trained_hops") for run in summary["runs"]}
    known = {name: hops for name, hops in trained.items() if hops}
    if len({str(h) for h in known.values()}) == 1 and len(known) == len(trained):
        text = ", ".join(map(str, next(iter(known.values()))))
    else:
        text = "; ".join(
            f"{name}: {', '.join(map(str, h)) if h else 'not recorded'}"
            for name, h in trained.items()
        )
    return ROWS_NOTE.format(trained=text or "not recorded")


def coverage_at_target_lines(summary: dict) -> list[str]:
    """A `## Abstention at the target` section: per model, test split and group of facts, the
    largest coverage at the target selective accuracy of the selector's curve and of the
    confidence threshold's, one value per seed (`-`: the curve never reaches the target)."""
    entries = [
        e
        for e in summary.get("abstention", [])
        if "selector" in e and e["split"].startswith("test") and e["facts"] in TABLE_FACTS
    ]
    if not entries:
        return []
    target = f"{entries[0]['target_selective_acc']:.0%}"
    cells: dict[tuple, dict] = {}
    for e in entries:
        c = cells.setdefault(
            (e["model"], e["split"], e["facts"]),
            {"n": 0, "sel": [], "thr": [], "sel_auc": [], "thr_auc": [], "gain": [], "curve": True},
        )
        c["n"] += e["n"]
        c["sel"].append(fmt(e["selector"]["coverage_at_target"], ".2f"))
        c["thr"].append(fmt(e["threshold_coverage_at_target"], ".2f"))
        c["sel_auc"].append(fmt(e["selector"].get("auroc"), ".3f"))
        c["thr_auc"].append(fmt(e.get("threshold_auroc"), ".3f"))
        c["gain"].append(gain_cell(e))
        c["curve"] &= "selector_curve" in e
    rows = [
        [
            m,
            split,
            facts,
            f"{c['n']:,}",
            " / ".join(c["sel"]) + ("" if c["curve"] else " (point)"),
            " / ".join(c["thr"]),
            " / ".join(c["gain"]),
            " / ".join(c["sel_auc"]),
            " / ".join(c["thr_auc"]),
        ]
        for (m, split, facts), c in cells.items()
    ]
    return [
        "",
        f"## Abstention at {target}",
        "",
        f"The largest share of facts answered at selective accuracy >= {target}: the "
        "selector's curve (its greedy episodes with ABSTAIN_OFFSETS added to its abstain "
        "logit, exact over every offset for a selector that abstains only at max_steps; "
        "`(point)`: results from before that curve, its one operating point) against "
        "the confidence threshold's, one value per seed; `-`: never reaches it. n pools the "
        "seeds. AUROC: how well each one's score ranks right answers above wrong ones (0.5: "
        "chance), the threshold's top probability and, for a selector that abstains only at "
        "max_steps, its abstain margin (`-` for one that may abstain at any step). Gain: "
        "the selector's coverage at the target minus the threshold's, with its 95% bootstrap "
        "interval over the facts (resampled in pairs), for a selector that abstains only at "
        "max_steps.",
        "",
        *markdown_lines(
            [
                "model",
                "split",
                "facts",
                "n",
                f"coverage at {target}: selector",
                "threshold",
                "gain [95% CI]",
                "AUROC: selector",
                "threshold",
            ],
            rows,
        ),
    ]


def gain_cell(e: dict) -> str:
    """The selector's coverage at the target minus the threshold's [its bootstrap interval]."""
    ci = e["selector"].get("coverage_gain_interval")
    if ci is None:
        return "-"
    gain = (e["selector"]["coverage_at_target"] or 0.0) - (e["threshold_coverage_at_target"] or 0.0)
    return f"{gain:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}]"


def markdown(summary: dict) -> str:
    if "rows" not in summary:  # an archived summary (docs/archive/adaptive_*)
        return (
            "\n".join(
                [
                    HOPS_NOTE,
                    "",
                    *markdown_lines(*hops_table(summary)),
                    "",
                    *markdown_lines(*runs_table(summary)),
                ]
            )
            + "\n"
        )
    m = summary["machine"]
    head = [
        f"# {summary['study']}",
        "",
        "Commands:",
        "",
        "```bash",
        *summary["commands"],
        "```",
        "",
        f"Machine: {m.get('cpu')} ({m.get('cores')} cores), torch {m.get('torch')}, "
        f"{m.get('date')}.",
        "",
    ]
    ab = abstention_table(summary)
    exits = sorted({e["exit"] for e in summary.get("abstention", [])})
    return (
        "\n".join(
            head
            + [
                rows_note(summary),
                "",
                *markdown_lines(*hops_table(summary)),
                "",
                f"Abstention: the selector against a confidence threshold on the "
                f"top probability at the {', '.join(exits) or '-'} exit, at equal "
                "coverage (the threshold's coverage is the closest to the selector's "
                "without exceeding it); per hop count in summary.json.",
                "",
                *markdown_lines(*ab),
                "",
                *markdown_lines(*runs_table(summary)),
                *coverage_at_target_lines(summary),
                *blocks_lines(summary),
                *contest_lines(summary),
            ]
        )
        + "\n"
    )


CONTEST_NOTE = (
    "The selector against the exit rules, both fit on valid (the selector trains there; each "
    "rule's threshold is chosen there among the rules tried), scored once on test. accuracy: "
    "the most accurate rule on valid at no more mean FLOPs than the selector's there, gain = "
    "selector minus rule accuracy; compute: the cheapest rule on valid at no less accuracy, "
    "gain = 1 - selector / rule FLOPs. Intervals: paired bootstrap over test facts (pooled "
    "entries: every run's facts, with each seed's gain in summary.json, seed_gains)."
)


BY_HOPS_NOTE = (
    "Accuracy (mean MFLOPs per fact, measured) by hop count on test_inferred_id: the selectors, "
    "the fixed depths and every rule family at its threshold tuned on valid (its name in "
    "summary.json compute_by_hops, `tuned_on_valid`), pooled over the runs that have it."
)


def contest_lines(summary: dict) -> list[str]:
    table_ = contest.entry_table(summary)
    if table_ is None:
        return []
    lines = ["", "## Selector against rule", "", CONTEST_NOTE, "", *markdown_lines(*table_)]
    if (pooled_ := contest.entry_table(summary, pooled_only=True)) is not None and pooled_[1]:
        lines += ["", "## Pooled selector against rule", "", *markdown_lines(*pooled_)]
    if (by_hops := contest.by_hops_table(summary)) is not None:
        lines += ["", "## Compute by difficulty", "", BY_HOPS_NOTE, "", *markdown_lines(*by_hops)]
    return lines


BLOCKS_NOTE = (
    "Block sizes (models with a bank of thinking blocks, model.core_sizes). Each "
    "schedule (core_C: core C at every step; cycle: the cores in turn; random: the "
    "mean of 8 random schedules) at an exit that does not see the answer, the oracle, and the selector "
    "choosing the next block itself; accuracy (mean layer applications per fact)."
)


def blocks_lines(summary: dict) -> list[str]:
    table_ = blocks_table(summary)
    # a section of its own, so the README can copy it (reports/readme.py section=Block_sizes)
    return (
        []
        if table_ is None
        else ["", "## Block sizes", "", BLOCKS_NOTE, "", *markdown_lines(*table_)]
    )


def blocks_figure(summary: dict) -> go.Figure | None:
    """Accuracy against layer applications on test_inferred_id (all hops): each schedule's
    fixed-depth curve, its exits as markers, and the selector's point, per bank model."""
    rows = [
        r
        for r in shown_rows(summary.get("rows", []))
        if r["split"] == "test_inferred_id" and "hops" not in r and r.get("mean_layers") is not None
    ]
    if not any(r.get("schedule") for r in rows):
        return None
    fig = go.Figure()
    dashes = ["solid", "dash", "dot", "dashdot"]
    for i, model in enumerate(dict.fromkeys(r["model"] for r in rows)):
        colour = f"hsl({(i * 67) % 360},60%,45%)"
        mine = [r for r in rows if r["model"] == model]
        for j, schedule in enumerate(
            dict.fromkeys(r["schedule"] for r in mine if r.get("schedule"))
        ):
            curve = sorted(
                (r["mean_layers"], r["acc"])
                for r in mine
                if r.get("schedule") == schedule and r["rule"].startswith("fixed_")
            )
            fig.add_trace(
                go.Scatter(
                    x=[c[0] for c in curve],
                    y=[c[1] for c in curve],
                    mode="lines+markers",
                    line=dict(color=colour, dash=dashes[j % len(dashes)]),
                    name=f"{model}: {schedule}, fixed depth",
                )
            )
            for r in mine:
                if r.get("schedule") == schedule and r["rule"] in BLOCK_RULES:
                    fig.add_trace(
                        go.Scatter(
                            x=[r["mean_layers"]],
                            y=[r["acc"]],
                            mode="markers",
                            marker=dict(
                                symbol=HUGINN_MARKERS.get(r["rule"], "circle"),
                                size=10,
                                color=colour,
                            ),
                            name=f"{model}: {schedule}, {r['rule']}",
                        )
                    )
        for r in mine:
            if r["rule"] == "selector":
                fig.add_trace(
                    go.Scatter(
                        x=[r["mean_layers"]],
                        y=[r["acc"]],
                        mode="markers",
                        marker=dict(symbol="diamond", size=14, color=colour),
                        name=f"{model}: selector's choice of block",
                    )
                )
    fig.update_xaxes(title_text="mean layer applications per fact (thinking block)")
    fig.update_yaxes(title_text="accuracy", range=[0, 1.02])
    return style(
        fig, "Block sizes: accuracy against compute (test_inferred_id, all hops)", height=520
    )


# --- figures.html ------------------------------------------------------------------------------
HUGINN_MARKERS = {
    "huginn_kl<5e-4": "triangle-up",
    "huginn_entropy<1e-3": "square",
    "huginn_argmax_5": "x",
}


def compute_figure(summary: dict) -> go.Figure:
    """Accuracy against mean steps per rule family, and the selector's coverage and accuracy."""
    points = summary["curves"] if "rows" not in summary else compute_points(summary)
    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=(
            "Accuracy vs compute (test_inferred_id, all hops)",
            "Coverage vs accuracy (abstention)",
        ),
    )
    for i, (name, rules) in enumerate(points.items()):
        colour = f"hsl({(i * 67) % 360},60%,45%)"
        for family, prefix in (
            ("fixed T", "fixed_"),
            ("KL exit", "kl<"),
            ("confidence exit", "conf>="),
        ):
            pts = sorted(
                (r["mean_steps"], r["acc"]) for k, r in rules.items() if k.startswith(prefix)
            )
            fig.add_trace(
                go.Scatter(
                    x=[p[0] for p in pts],
                    y=[p[1] for p in pts],
                    mode="lines+markers",
                    name=f"{name}: {family}",
                    line=dict(
                        color=colour,
                        dash={"fixed T": "solid", "KL exit": "dot"}.get(family, "dash"),
                    ),
                    legendgroup=name,
                ),
                row=1,
                col=1,
            )
        markers = {"oracle": "star", "selector": "diamond"} | HUGINN_MARKERS
        for special, symbol in markers.items():
            if special in rules:
                r = rules[special]
                fig.add_trace(
                    go.Scatter(
                        x=[r["mean_steps"]],
                        y=[r["acc"]],
                        mode="markers",
                        marker=dict(symbol=symbol, size=12, color=colour),
                        name=f"{name}: {special}",
                        legendgroup=name,
                    ),
                    row=1,
                    col=1,
                )
                if special == "selector":
                    fig.add_trace(
                        go.Scatter(
                            x=[r["coverage"]],
                            y=[r["acc"] / max(r["coverage"], 1e-9)],
                            mode="markers",
                            marker=dict(symbol=symbol, size=12, color=colour),
                            name=f"{name}: selector",
                            legendgroup=name,
                            showlegend=False,
                        ),
                        row=1,
                        col=2,
                    )
    fig.update_xaxes(title_text="mean thinking steps per example", row=1, col=1)
    fig.update_yaxes(title_text="accuracy", range=[0, 1.02], row=1, col=1)
    fig.update_xaxes(title_text="coverage (share answered)", range=[0, 1.02], row=1, col=2)
    fig.update_yaxes(title_text="accuracy on answered", range=[0, 1.02], row=1, col=2)
    style(fig, "Halting rules and the selector on the frozen models", height=540)
    return fig.update_layout(margin=dict(t=100))  # room for the subplot titles under the title


COVERAGE_PANELS = [
    ("in-distribution (trained hop counts)", "test_inferred_id", ("trained_hops", "all")),
    ("deeper than trained", "test_inferred_id", ("deeper_than_trained",)),
    ("OOD", "test_inferred_ood", ("all",)),
]


def coverage_panels(entries: list[dict]) -> list[tuple[str, list[dict]]]:
    """(title, abstention entries) for in-distribution, deeper-than-trained and OOD facts where
    the runs have them, else every split's facts together."""
    panels = []
    for title, split, facts in COVERAGE_PANELS:
        for f in facts:
            chosen = [e for e in entries if e["split"] == split and e["facts"] == f]
            if chosen:
                panels.append((title, chosen))
                break
    return panels or [
        (split, [e for e in entries if e["split"] == split and e["facts"] == "all"])
        for split in dict.fromkeys(e["split"] for e in entries)
    ]


def coverage_figure(summary: dict) -> go.Figure | None:
    """Coverage against selective accuracy: the confidence threshold's curve (lines), the
    selector's operating point (diamonds) and its curve over abstain offsets (dashed), per model
    and seed."""
    panels = coverage_panels(summary.get("abstention", []))
    if not panels:
        return None
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[t for t, _ in panels])
    models = list(dict.fromkeys(r["model"] for r in summary["rows"]))
    legend = set()
    for col, (_, entries) in enumerate(panels, start=1):
        for e in entries:
            colour = f"hsl({(models.index(e['model']) * 67) % 360},60%,45%)"
            label = f"{e['model']} (seed {e['seed']})"
            pts = [p for p in e["curve"] if p["selective_acc"] is not None]
            fig.add_trace(
                go.Scatter(
                    x=[p["coverage"] for p in pts],
                    y=[p["selective_acc"] for p in pts],
                    mode="lines",
                    line=dict(color=colour),
                    name=f"{label}: threshold",
                    legendgroup=label,
                    showlegend=label not in legend,
                    hovertext=[f"top p >= {p['min_confidence']:g}" for p in pts],
                ),
                row=1,
                col=col,
            )
            curve = [p for p in e.get("selector_curve", []) if p["selective_acc"] is not None]
            if curve:
                fig.add_trace(
                    go.Scatter(
                        x=[p["coverage"] for p in curve],
                        y=[p["selective_acc"] for p in curve],
                        mode="lines+markers",
                        line=dict(color=colour, dash="dash"),
                        marker=dict(size=5),
                        name=f"{label}: selector curve",
                        legendgroup=label,
                        showlegend=label not in legend,
                        hovertext=[f"abstain offset {p['abstain_offset']:+g}" for p in curve],
                    ),
                    row=1,
                    col=col,
                )
            if "selector" in e and e["selector"]["selective_acc"] is not None:
                fig.add_trace(
                    go.Scatter(
                        x=[e["selector"]["coverage"]],
                        y=[e["selector"]["selective_acc"]],
                        mode="markers",
                        marker=dict(symbol="diamond", size=12, color=colour),
                        name=f"{label}: selector",
                        legendgroup=label,
                        showlegend=label not in legend,
                    ),
                    row=1,
                    col=col,
                )
            legend.add(label)
        fig.add_hline(
            y=entries[0]["target_selective_acc"],
            line=dict(color="#999", dash="dot"),
            row=1,
            col=col,
        )
        fig.update_xaxes(title_text="coverage (share answered)", range=[0, 1.02], row=1, col=col)
        fig.update_yaxes(range=[0, 1.02], row=1, col=col)
    fig.update_yaxes(title_text="selective accuracy (on answered)", row=1, col=1)
    style(
        fig,
        "Abstention: confidence threshold (lines), the selector (diamonds; dashed: its "
        "abstain offsets)",
        height=480,
    )
    return fig.update_layout(margin=dict(t=100))


def figures_html(summary: dict) -> str:
    names = ", ".join(dict.fromkeys(run["name"] for run in summary["runs"]))
    sections = [Section("Accuracy against compute").add(compute_figure(summary))]
    if "rows" in summary:
        sections.append(
            Section("Abstention")
            .add(coverage_figure(summary))
            .text(
                "The selector's abstain action against a confidence threshold at "
                "equal coverage, and each one's largest coverage at 90% selective "
                "accuracy."
            )
            .add(table(*abstention_table(summary)))
        )
    if (blocks := blocks_figure(summary)) is not None:
        sections.append(
            Section("Block sizes")
            .add(blocks)
            .text(html.escape(BLOCKS_NOTE))
            .add(table(*blocks_table(summary)))
        )
    if (entries := contest.entry_table(summary)) is not None:
        sec = Section("Selector against rule").text(html.escape(CONTEST_NOTE)).add(table(*entries))
        for fig in (contest.frontier_figure(summary), contest.by_hops_figure(summary)):
            if fig is not None:
                sec.add(fig)
        if (by_hops := contest.by_hops_table(summary)) is not None:
            sec.text(html.escape(BY_HOPS_NOTE)).add(table(*by_hops))
        sections.append(sec)
    note = rows_note(summary) if "rows" in summary else HOPS_NOTE
    sections += [
        Section("Accuracy per hop count").text(html.escape(note)).add(table(*hops_table(summary))),
        Section("Runs").add(table(*runs_table(summary))),
    ]
    return page(
        "Adaptive thinking", html.escape(f"{len(summary['runs'])} run(s): {names}"), sections
    )


# --- summary.json and its curves on disk ------------------------------------------------------
CURVES_FILE = "summary_curves.json.gz"  # beside summary.json
CURVES = ("curve", "selector_curve")  # the curves of an abstention entry
FRONTIER_FILE = "summary_frontier.json.gz"  # beside summary.json: every candidate rule's point
ENTRY_IDS = ("model", "seed", "selector_label", "selector_seed", "split", "facts")
PRINTED = (".1f", ".2f", ".3f", ".4g")  # every format a table prints a row's number in
SHORTENED = ("rows", "compute_by_hops", "frontier")  # the lists of rows whose floats `shorten` cuts


def shorten(x):
    """A row's value with floats cut to the fewest significant digits (6, 8, 10) that print as
    the full float does in every PRINTED format: 17-digit Wilson bounds on 19k rows took megabytes
    and no table shows them, and a table never changes for it."""
    if isinstance(x, list):
        return [shorten(v) for v in x]
    if not isinstance(x, float):
        return x
    # repeated to a fixed point, so that a shortened summary shortens to itself: a value cut to 8
    # digits can print as its 6-digit neighbour does where the original did not
    while (y := shorter(x)) != x:
        x = y
    return x


def shorter(x: float) -> float:
    """x at the fewest digits (6, 8, 10) that print as x does in every PRINTED format, or x."""
    for digits in (6, 8, 10):
        y = float(f"{x:.{digits}g}")
        if all(format(y, f) == format(x, f) for f in PRINTED):
            return y
    return x


def write_summary(out: Path, summary: dict) -> dict:
    """summary.json (SHORTENED rows shortened, abstention entries without their curves, no
    frontier), the curves in CURVES_FILE and the frontier in FRONTIER_FILE (gzipped JSON: the
    bulk of the entries, every candidate rule's point, and no table reads them, only the coverage
    and frontier figures); returns the summary as load_summary reads it back."""
    summary = summary | {
        key: [{k: shorten(v) for k, v in r.items()} for r in summary[key]]
        for key in SHORTENED
        if key in summary
    }
    entries = summary.get("abstention", [])
    curves = [{k: e[k] for k in ENTRY_IDS + CURVES if k in e} for e in entries]
    on_disk = {k: v for k, v in summary.items() if k != "frontier"} | (
        {"abstention": [{k: v for k, v in e.items() if k not in CURVES} for e in entries]}
        if entries
        else {}
    )
    atomic_write_text(out / "summary.json", summary_text(on_disk))
    write_sidecar(out / CURVES_FILE, curves if entries else None)
    write_sidecar(out / FRONTIER_FILE, summary.get("frontier") or None)
    return summary


def write_sidecar(path: Path, data) -> None:
    """Gzipped JSON (mtime 0: the same data gives the same bytes), or no file for None (a stale
    one would not match)."""
    if data is None:
        path.unlink(missing_ok=True)
        return
    raw = gzip.compress(json.dumps(data, separators=(",", ":")).encode(), mtime=0)
    atomic_write(path, lambda tmp: tmp.write_bytes(raw))


def load_summary(path: str | Path) -> dict:
    """A summary.json (or its folder) with its abstention curves put back from CURVES_FILE and
    its frontier from FRONTIER_FILE."""
    path = Path(path)
    path = path / "summary.json" if path.is_dir() else path
    summary = json.loads(path.read_text())
    if (sidecar := path.parent / CURVES_FILE).is_file() and "abstention" in summary:
        curves = json.loads(gzip.decompress(sidecar.read_bytes()))
        if [[c.get(k) for k in ENTRY_IDS] for c in curves] != [
            [e.get(k) for k in ENTRY_IDS] for e in summary["abstention"]
        ]:
            raise ValueError(f"{sidecar} does not match {path}'s abstention entries")
        summary["abstention"] = [
            e | {k: c[k] for k in CURVES if k in c} for e, c in zip(summary["abstention"], curves)
        ]
    if (sidecar := path.parent / FRONTIER_FILE).is_file():
        summary["frontier"] = json.loads(gzip.decompress(sidecar.read_bytes()))
    return summary


# --- the command line: python -m reports.adaptive RUN [RUN ...] [out=DIR] -----------
@dataclass
class SummaryCommand:
    """Schema of conf/adaptive_summary.yaml; the positional RUN words are runs=[...]."""

    runs: list[str] = field(default_factory=list)  # run directories holding halting/results.json
    out: str = DEFAULT_OUT
    names: list[str] = field(default_factory=list)  # the model name of each run (default: its
    # experiment name); runs of one model differ
    # only in seed
    commands: list[str] = field(default_factory=list)  # the commands that made the study (default:
    # the halting command of each run)
    commands_file: str | None = None  # ... or a file of them, one per line (added after)
    splits: list[str] = field(default_factory=list)  # keep only these evaluation splits (none:
    # all), e.g. [atomic_id,test_inferred_id]
    selectors: list[str] = field(default_factory=list)  # a label per run for its selector: runs
    # of one model (same name and seed) then
    # differ by selector; their rules are kept once


def main(argv: list[str] | None = None) -> None:
    from grokloop import cli

    cli.run("adaptive_summary", summarize, argv)


def only_splits(splits: dict, keep: list[str]) -> dict:
    """A run's halting splits cut to `keep`, refusing a name no run has."""
    missing = [s for s in keep if s not in splits]
    if missing:
        raise ValueError(
            f"splits={keep}: {', '.join(missing)} not evaluated in this run (it has "
            f"{', '.join(splits)}); name splits it has"
        )
    return {k: v for k, v in splits.items() if k in keep}


def summarize(cmd: SummaryCommand) -> None:
    if not cmd.runs:
        raise ValueError(
            "runs: give at least one run directory: "
            "python -m reports.adaptive RUN [RUN ...] [out=DIR]"
        )
    names = list(cmd.names or [])
    if names and len(names) != len(cmd.runs):
        raise ValueError(
            f"names: {len(names)} names for {len(cmd.runs)} runs; give one per run "
            "(in the order of the runs) or none"
        )
    runs = [load_halting(r) for r in cmd.runs]
    if cmd.splits:
        for run in runs:
            run["halting"]["splits"] = only_splits(run["halting"]["splits"], cmd.splits)
    for run, name in zip(runs, names):
        run["name"] = name
    if cmd.selectors and len(cmd.selectors) != len(runs):
        raise ValueError(
            f"selectors: {len(cmd.selectors)} labels for {len(runs)} runs; give one per run"
        )
    for run, label in zip(runs, cmd.selectors):
        run["selector_label"] = label
    summary = build(runs)
    if cmd.commands or cmd.commands_file:
        summary["commands"] = list(cmd.commands) + commands_from(cmd.commands_file)
    out = Path(cmd.out)
    summary = write_summary(out, summary)  # the tables and figures of what load_summary reads
    atomic_write_text(out / "summary.md", markdown(summary))
    write(out / "figures.html", figures_html(summary))  # docs/results: the shared plotly.js
    print(markdown(summary))
    print(f"wrote {out}/summary.json, summary.md, figures.html")


if __name__ == "__main__":
    main()
