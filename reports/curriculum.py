"""Curriculum reports: one curriculum's page (OUT/report.html, written by grokloop.curriculum) and
a study over many curricula (seeds, modes, orders, replay, models):

    python -m reports.curriculum DIR [DIR ...] out=docs/results/curriculum [commands=[...]]

DIR is a curriculum directory (OUT of grokloop.curriculum) or a tree of them. The study writes
summary.json in the results schema (one row per configuration, seed, trained-through stage and
evaluated stage, with Wilson intervals), with the named fields `matrix` (mean R per
configuration), `ACC`, `BWT`, `FWT` (mean and 95% t interval over seeds), `steps_to_gate`, and
`survival` (per stage, the steps to its gate in a configuration against from scratch as censored
time-to-event data: every run's time and event, Kaplan-Meier medians, their ratio and the log-rank
p; never a mean over censored runs), plus summary.md and report.html.

A configuration is `MODEL MODE [reversed | shuffled K] [EDIT before STAGE] [replay R] [distill D]
[optimizer kept]`, e.g. "vanilla 1L sequential replay 0.25"; its seeds are pooled for the intervals."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import plotly.graph_objects as go

from datagen.provenance import atomic_write_text, code_version, machine
from datagen.tables import table_overlap
from grokloop.metrics_log import read_rows
from grokloop.stats import acc_row, mean_interval
from reports.figures import split_color, style
from reports.html import Section, page, table, write
from reports.study import commands_from, summary_text
from reports.survival import km_curve, km_median, logrank

# --- reading ------------------------------------------------------------------------------------


def load_curriculum(path: str | Path) -> dict:
    """summary.json of a finished curriculum, with each stage's metrics rows under `curves`."""
    path = Path(path)
    if not (path / "summary.json").is_file() or not (path / "curriculum.json").is_file():
        raise SystemExit(
            f"{path}: not a finished curriculum (no curriculum.json and summary.json); "
            "run or resume it with python -m grokloop.curriculum"
        )
    s = json.loads((path / "summary.json").read_text())
    s["path"] = str(path)
    config = json.loads((path / "curriculum.json").read_text())
    s["recipe"] = recipe(config["optim"], config["train"])
    stages = config["curriculum"]["stages"]
    if s.get("edit", "none") != "none":
        s["edit_removed"] = edit_removed(path, s)
    s["tables"] = {  # op and modulus of each table stage (a curriculum has one modulus)
        n: [st["data"]["op"], st["data"].get("modulus", 127)]
        for n, st in stages.items()
        if st["data"].get("task") == "table"
    }
    s["curves"] = [read_rows(path / st["run_dir"] / "metrics.jsonl") for st in s["per_stage"]]
    return s


def edit_removed(path: Path, s: dict) -> float | None:
    """The share of the integer embeddings' squared norm the curriculum's edit removed: the
    edited stage's starting checkpoint against the stage before it (None where either is gone)."""
    from grokloop.checkpoint import last_good_checkpoint
    from grokloop.curriculum.edits import removed_norm_fraction

    k = s["stages"].index(s["edit_stage"])
    run_dir = path / s["per_stage"][k]["run_dir"]
    before = last_good_checkpoint(path / s["per_stage"][k - 1]["run_dir"])
    after = last_good_checkpoint(run_dir.with_name(run_dir.name + ".init"))
    if before is None or after is None:
        return None
    return removed_norm_fraction(before[0]["W_E"], after[0]["W_E"])


def find_curricula(paths: list[str]) -> list[Path]:
    found = []
    for p in map(Path, paths):
        if not p.exists():
            raise SystemExit(f"{p}: no such directory")
        found += (
            [p]
            if (p / "curriculum.json").is_file()
            else sorted(c.parent for c in p.rglob("curriculum.json"))
        )
    if not found:
        raise SystemExit(f"no curriculum directories under {', '.join(map(str, paths))}")
    return list(dict.fromkeys(found))


def recipe(optim: dict, train: dict) -> str:
    """How a curriculum's stages train, in a label: optimizer, learning rate, weight decay (on
    every parameter or matrices only), batch and precision."""
    parts = ["AdamW ⊥grad" if optim["perpendicular_grad"] else "AdamW", f"lr {optim['lr']:g}"]
    decay = "all" if optim["decay_norms_and_biases"] else "matrices"
    parts.append(f"wd {optim['weight_decay']:g} ({decay})" if optim["weight_decay"] else "wd 0")
    parts.append(f"batch {train['batch_size']}" if train["batch_size"] else "full batch")
    if train.get("precision", "fp32") != "fp32":
        parts.append(train["precision"])
    return ", ".join(parts)


def label(s: dict) -> str:
    named = "recipe" in s and s.get("show_recipe", True)
    parts = [f"{s['model']} [{s['recipe']}]" if named else s["model"], s["mode"]]
    if s["order"] == "reversed":
        parts.append("reversed")
    if s["order"] == "shuffled":
        parts.append(f"shuffled {s['order_seed']}")
    if s.get("edit", "none") != "none":
        parts.append(f"{s['edit']} before {s['edit_stage']}")
    if s.get("replay"):
        parts.append(f"replay {s['replay']:g}")
    if s.get("shrink", 1) < 1:
        parts.append(f"shrink {s['shrink']:g}")
    if s.get("distill"):
        parts.append(f"distill {s['distill']:g}")
    if not s.get("reset_optimizer", True):
        parts.append("optimizer kept")
    if "tag" in s:
        parts.append(f"({s['tag']})")
    return " ".join(parts)


# --- figures ------------------------------------------------------------------------------------


def matrix_heatmap(R: np.ndarray, rows: list[str], cols: list[str], title: str) -> go.Figure:
    fig = go.Figure(
        go.Heatmap(
            z=R,
            x=[f"on {c}" for c in cols],
            y=[f"after {r}" for r in rows],
            zmin=0,
            zmax=1,
            colorscale="Viridis",
            colorbar={"title": "held-out acc"},
            text=[[f"{v:.2f}" for v in row] for row in R],
            texttemplate="%{text}",
            hovertemplate="%{y}, %{x}: %{z:.3f}<extra></extra>",
        )
    )
    fig.update_yaxes(autorange="reversed")
    return style(fig, title, height=120 + 40 * len(rows))


def timeline(s: dict) -> go.Figure:
    """Every stage's held-out accuracy over the whole curriculum (global steps), with each stage's
    span marked and labelled by how it ended (gate or budget)."""
    fig, offset = go.Figure(), 0
    xs = {n: [] for n in s["stages"]}
    ys = {n: [] for n in s["stages"]}
    for st, curve in zip(s["per_stage"], s["curves"]):
        for r in curve:
            for n in s["stages"]:
                xs[n].append(offset + r["step"])
                ys[n].append(r[f"acc/test_{n}"])
        end = offset + st["steps"]
        fig.add_vrect(
            x0=offset,
            x1=end,
            line_width=0,
            opacity=0.06,
            fillcolor="green" if st["passed"] else "grey",
            annotation_text=f"{st['stage']}: {'gate' if st['passed'] else 'budget'} {st['steps']}",
            annotation_position="top left",
            annotation_textangle=-90 if len(s["per_stage"]) > 4 else 0,
        )
        offset = end
    for i, n in enumerate(s["stages"]):
        fig.add_trace(
            go.Scatter(
                x=xs[n], y=ys[n], name=f"test_{n}", mode="lines", line={"color": split_color(n, i)}
            )
        )
    fig.add_hline(y=s["per_stage"][0]["gate"], line_dash="dot", line_color="#999")
    fig.update_xaxes(title="step (all stages)")
    fig.update_yaxes(title="held-out accuracy", range=[0, 1.02])
    return style(fig, f"{label(s)}, seed {s['seed']}: every stage's held-out accuracy", height=460)


def stage_table(s: dict) -> str:
    rows = [
        [
            st["stage"],
            ", ".join(st["trains"]),
            st["budget"],
            st["steps"],
            "gate" if st["passed"] else "budget",
            ", ".join(f"{k} {v}" for k, v in st["steps_to_gate"].items()),
            st["n_train"],
            *(
                f"{st['spectra'][b]['gini']:.3f} {st['spectra'][b]['top'][:3]}"
                if "spectra" in st
                else "-"
                for b in ("fourier127", "walsh128")
            ),
        ]
        for st in s["per_stage"]
    ]
    return table(
        [
            "stage",
            "trains",
            "budget",
            "steps",
            "ended by",
            "steps to gate",
            "examples/step",
            "Fourier Z_127 gini, top",
            "Walsh Z_2^7 gini, top",
        ],
        rows,
    )


def survival_figure(name: str, per_stage: dict) -> go.Figure:
    """Kaplan-Meier curves of steps to each stage's gate: the configuration (solid) against from
    scratch (dotted), one colour per stage; a curve that stays up never reached the gate."""
    fig = go.Figure()
    for i, (stage, sv) in enumerate(per_stage.items()):
        for side, t, e, dash in (
            (name, sv["times"], sv["events"], "solid"),
            ("scratch", sv["base_times"], sv["base_events"], "dot"),
        ):
            km = km_curve(t, e)
            fig.add_trace(
                go.Scatter(
                    x=km["t"],
                    y=km["surviving"],
                    name=f"{stage}: {side}",
                    mode="lines",
                    line={"shape": "hv", "dash": dash, "color": split_color(stage, i)},
                )
            )
    fig.update_xaxes(title="steps in the stage")
    fig.update_yaxes(title="share of runs not yet at the gate", range=[0, 1.05])
    return style(fig, f"{name}: Kaplan-Meier, steps to each stage's gate", height=460)


def curriculum_sections(s: dict) -> list[Section]:
    R = np.array(s["matrix"])
    rows = [st["stage"] for st in s["per_stage"]]
    sec = Section(label(s) + f", seed {s['seed']}")
    sec.add(timeline(s)).add(
        matrix_heatmap(
            R, rows, s["stages"], "R[i, j]: held-out accuracy on stage j at the end of stage i"
        )
    )
    if "ACC" in s:
        sec.text(
            f"ACC {s['ACC']:.3f}, BWT {s['BWT']:+.3f}, FWT {s['FWT']:+.3f}; forgetting "
            + ", ".join(f"{n} {f:.3f}" for n, f in zip(s["stages"], s["forgetting"]))
        )
    sec.add(stage_table(s))
    return [sec]


def write_curriculum_report(out_dir: str | Path) -> Path:
    s = load_curriculum(out_dir)
    return write(
        Path(out_dir) / "report.html",
        page(
            f"Curriculum {s['curriculum']}",
            f"{s['path']}; {s['machine'].get('cpu')}, {s['wall_time_s'] / 60:.1f} min",
            curriculum_sections(s),
        ),
    )


# --- a study over curricula ---------------------------------------------------------------------


def study_rows(curricula: list[dict]) -> list[dict]:
    """Results-schema rows: held-out accuracy on each stage after each trained-through stage, per
    seed and pooled over seeds (seed "pooled": the Wilson interval of the pooled counts). `final`
    marks the rows after a curriculum's last stage."""
    rows, pool = [], {}
    for s in curricula:
        for i, (st, R_i) in enumerate(zip(s["per_stage"], s["matrix"])):
            final = i == len(s["per_stage"]) - 1
            for n, acc in zip(s["stages"], R_i):
                key = dict(model=label(s), split=f"test_{n}", after_stage=st["stage"], final=final)
                rows.append(
                    acc_row(
                        acc,
                        st["n_eval"],
                        **key,
                        seed=s["seed"],
                        step=st["steps"],
                        gate_passed=st["passed"],
                    )
                )
                hits = pool.setdefault(tuple(key.items()), [0.0, 0])
                hits[0] += acc * st["n_eval"]
                hits[1] += st["n_eval"]
    rows += [acc_row(c / n, n, **dict(key), seed="pooled") for key, (c, n) in pool.items()]
    return rows


def _stage(s: dict, name: str) -> dict:
    """The stage record of curriculum `s` that trained stage `name` (joint: the one record)."""
    return next(st for st in s["per_stage"] if name in st["steps_to_gate"])


def times_to_gate(curricula: list[dict], name: str) -> tuple[list[int], list[bool]]:
    """Each curriculum's steps to stage `name`'s gate and whether it got there: a run that spent
    its budget is censored at the steps it ran (the event lies beyond them)."""
    times, events = [], []
    for s in curricula:
        st = _stage(s, name)
        got = st["steps_to_gate"][name]
        times.append(st["steps"] if got is None else got)
        events.append(got is not None)
    return times, events


def stage_survival(configuration: list[dict], base: list[dict], name: str) -> dict:
    """Steps to stage `name`'s gate in a configuration against a baseline's (from scratch, or the
    unedited ladder), as time-to-event data: the Kaplan-Meier medians (None: more than half the
    runs never got there), their ratio (baseline over the configuration, > 1: faster) and the
    log-rank p value (None where no run of either side reached the gate), with every run's time
    and event stored."""
    t, e = times_to_gate(configuration, name)
    t0, e0 = times_to_gate(base, name)
    median, median0 = km_median(t, e), km_median(t0, e0)
    return {
        "times": t,
        "events": e,
        "seeds": [s["seed"] for s in configuration],
        "base_times": t0,
        "base_events": e0,
        "base_seeds": [s["seed"] for s in base],
        "km_median": median,
        "base_km_median": median0,
        "ratio": median0 / median if median and median0 else None,
        "logrank_p": logrank(t, e, t0, e0) if any(e) or any(e0) else None,
    }


def overlaps(s: dict) -> dict | None:
    """overlap[i][j]: the share of stage j's table where stage i's operation gives the same answer
    (datagen.tables.table_overlap), over the stages in s["stages"]; None unless all are tables."""
    if any(n not in s["tables"] for n in s["stages"]):
        return None
    ops = [s["tables"][n][0] for n in s["stages"]]
    modulus = s["tables"][s["stages"][0]][1]
    return {
        "stages": s["stages"],
        "matrix": [[table_overlap(o, i, modulus) if i != o else 1.0 for o in ops] for i in ops],
    }


def zero_shot(ss: list[dict], overlap: dict | None) -> dict:
    """Per stage j after the first (in run order): R[j-1][j] and b[j] per seed beside the trivial
    overlap of stage j-1's table with stage j's, the part of FWT an operation gets for free."""
    names = ss[0]["stages"]
    at = {n: k for k, n in enumerate(overlap["stages"])} if overlap else {}
    return {
        n: {
            "after": names[j - 1],
            "R_prev": [s["matrix"][j - 1][j] for s in ss],
            "b": [s["initial"][j] for s in ss],
            "seeds": [s["seed"] for s in ss],
            "overlap": overlap["matrix"][at[names[j - 1]]][at[n]] if overlap else None,
        }
        for j, n in enumerate(names)
        if j > 0
    }


def stage_end(ss: list[dict]) -> dict:
    """Per trained stage, its own valid and test accuracy at the end of its training, per seed
    (valid is what gates and choices read; test is what is reported)."""
    out = {}
    for k, st in enumerate(ss[0]["per_stage"]):
        for n in st["trains"]:
            last = [s["curves"][k][-1] for s in ss]
            out[n] = {
                "seeds": [s["seed"] for s in ss],
                "valid": [r.get(f"acc/valid_{n}") for r in last],
                "test": [r[f"acc/test_{n}"] for r in last],
            }
    return out


def transpose_by_configuration(curricula: list[dict]) -> dict:
    """Per configuration and commutative stage, each seed's test accuracy where the stage's
    training ended, split by whether a cell's transpose trained (probes/transpose.py)."""
    from datagen.tables import is_commutative
    from probes.transpose import transpose_accuracy

    out: dict = {}
    for s in sorted(curricula, key=lambda s: s["seed"]):
        for st in s["per_stage"]:
            for n in st["trains"]:
                if n in s["tables"] and is_commutative(*s["tables"][n]):
                    got = transpose_accuracy(Path(s["path"]) / st["run_dir"], f"test_{n}")
                    per = out.setdefault(label(s), {}).setdefault(n, {"seeds": []})
                    per["seeds"].append(s["seed"])
                    for k, v in got.items():
                        per.setdefault(k, []).append(v)
    return out


def _ladder(s: dict) -> tuple:
    """What two curricula must share to differ only by their edit."""
    return (
        s["model"],
        s.get("recipe"),
        s["mode"],
        tuple(s["stages"]),
        s["replay"],
        s.get("distill"),
    )


def edit_effects(groups: dict[str, list[dict]]) -> dict:
    """Per edited configuration: steps to the gate of the edited stage and those after it against
    the same ladder unedited (stage_survival), under `stages`, with the baseline's name."""
    unedited = {
        _ladder(ss[0]): n for n, ss in groups.items() if ss[0].get("edit", "none") == "none"
    }
    out = {}
    for name, ss in groups.items():
        s = ss[0]
        base = unedited.get(_ladder(s))
        if s.get("edit", "none") == "none" or base is None:
            continue
        after = s["stages"][s["stages"].index(s["edit_stage"]) :]
        out[name] = {
            "baseline": base,
            "removed_norm_fraction": [c.get("edit_removed") for c in ss],
            "stages": {n: stage_survival(ss, groups[base], n) for n in after},
        }
    return out


def aggregate(curricula: list[dict]) -> dict:
    groups: dict[str, list[dict]] = {}
    for s in sorted(curricula, key=lambda s: s["seed"]):
        groups.setdefault(label(s), []).append(s)
    scratch_by_model = {}  # (model, recipe) -> seed -> its scratch baseline
    for s in curricula:
        if s["mode"] == "scratch":
            scratch_by_model.setdefault((s["model"], s.get("recipe")), {})[s["seed"]] = s
    out = {
        "matrix": {},
        "ACC": {},
        "BWT": {},
        "FWT": {},
        "forgetting": {},
        "steps_to_gate": {},
        "survival": {},
        "zero_shot": {},
        "spectra": {},
        "cost": {},
        "stage_end": {},
        "edit_effect": edit_effects(groups),
    }
    for name, ss in groups.items():
        out["stage_end"][name] = stage_end(ss)
        out["cost"][name] = {
            "seeds": [s["seed"] for s in ss],
            "wall_time_s": [s["wall_time_s"] for s in ss],
            "stage_wall_time_s": {
                st["stage"]: [s["per_stage"][k]["wall_time_s"] for s in ss]
                for k, st in enumerate(ss[0]["per_stage"])
            },
        }
        if all("spectra" in st for s in ss for st in s["per_stage"]):  # measured by the command
            out["spectra"][name] = {
                st["stage"]: {
                    basis: {
                        "gini": mean_interval(
                            [s["per_stage"][k]["spectra"][basis]["gini"] for s in ss]
                        ),
                        "top_first_seed": st["spectra"][basis]["top"],
                        "top_per_seed": [s["per_stage"][k]["spectra"][basis]["top"] for s in ss],
                        "seeds": [s["seed"] for s in ss],
                    }
                    for basis in ("fourier127", "walsh128")
                }
                for k, st in enumerate(ss[0]["per_stage"])
            }
        if ss[0]["mode"] != "joint":
            out["matrix"][name] = {
                "rows": [st["stage"] for st in ss[0]["per_stage"]],
                "cols": ss[0]["stages"],
                "mean": np.mean([s["matrix"] for s in ss], 0).tolist(),
            }
        if "ACC" in ss[0]:
            out["zero_shot"][name] = zero_shot(ss, overlaps(ss[0]) if "tables" in ss[0] else None)
            for key in ("ACC", "BWT", "FWT"):
                out[key][name] = mean_interval([s[key] for s in ss])
            out["forgetting"][name] = {
                n: mean_interval([s["forgetting"][j] for s in ss])
                for j, n in enumerate(ss[0]["stages"][:-1])
            }
        steps = {}
        for n in ss[0]["stages"]:
            got = [_stage(s, n)["steps_to_gate"][n] for s in ss]
            steps[n] = {
                "per_seed": got,
                "seeds": [s["seed"] for s in ss],
                "reached": sum(g is not None for g in got),
            }
        out["steps_to_gate"][name] = steps
        base = list(scratch_by_model.get((ss[0]["model"], ss[0].get("recipe")), {}).values())
        if ss[0]["mode"] != "scratch" and base:
            out["survival"][name] = {  # the stages its scratch runs also trained
                n: stage_survival(ss, base, n)
                for n in ss[0]["stages"]
                if all(n in b["stages"] for b in base)
            }
    return out


def _ci(m: dict | None, fmt: str = "{:+.3f}") -> str:
    if not m:
        return ""
    bound = f", {m['censored']} censored" if m.get("censored") else ""
    if m["lo"] is None:
        return fmt.format(m["mean"]) + f" (1 seed{bound})"
    return (
        fmt.format(m["mean"])
        + " ["
        + fmt.format(m["lo"])
        + ", "
        + fmt.format(m["hi"])
        + f"] ({m['n']} seeds{bound})"
    )


def _survival_line(name: str, stage: str, sv: dict) -> str:
    """One row of the transfer table: medians with runs that reached the gate, ratio, p."""
    fmt = lambda m: "-" if m is None else f"{m:.0f}"  # noqa: E731
    ratio = "" if sv["ratio"] is None else f"{sv['ratio']:.2f}"
    p = "" if sv["logrank_p"] is None else f"{sv['logrank_p']:.3g}"
    reached, reached0 = sum(sv["events"]), sum(sv["base_events"])
    return (
        f"| {name} | {stage} | {fmt(sv['km_median'])} ({reached}/{len(sv['events'])}) | "
        f"{fmt(sv['base_km_median'])} ({reached0}/{len(sv['base_events'])}) | {ratio} | {p} |"
    )


def _table(title: str, note: str, head: list[str], rows: list[str]) -> list[str]:
    """A markdown section: ## title, an optional note, a table with header `head`."""
    return [
        "",
        f"## {title}",
        "",
        *([note, ""] if note else []),
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
        *rows,
    ]


def _transfer(agg: dict) -> list[str]:
    rows = [
        f"| {name} | {_ci(agg['ACC'][name], '{:.3f}')} | {_ci(agg['BWT'][name])} | "
        f"{_ci(agg['FWT'][name])} |"
        for name in agg["ACC"]
    ]
    head = ["configuration", "ACC", "BWT", "FWT"]
    return _table("Transfer and forgetting (mean, 95% t interval over seeds)", "", head, rows)


def _zero_shot(agg: dict) -> list[str]:
    rows = [
        f"| {name} | {n} | {z['after']} | {np.mean(z['R_prev']):.3f} | {np.mean(z['b']):.3f} | "
        + ("" if z["overlap"] is None else f"{z['overlap']:.3f}")
        + " |"
        for name, per in agg["zero_shot"].items()
        for n, z in per.items()
    ]
    note = (
        "R[j-1][j] (stage j before it trains, after stage j-1) and b[j] (the untrained model), "
        "mean over seeds, beside the share of stage j's table where stage j-1's operation gives "
        "the same answer: zero-shot accuracy at the overlap is that coincidence, not transfer."
    )
    head = ["configuration", "stage", "after", "R[j-1][j]", "b[j]", "overlap"]
    return _table(
        "What FWT is made of: zero-shot accuracy against the trivial overlap", note, head, rows
    )


def _steps(agg: dict, stages: list[str]) -> list[str]:
    rows = [
        f"| {name} | "
        + " | ".join(
            " / ".join("-" if g is None else str(g) for g in steps[n]["per_seed"])
            if n in steps
            else ""
            for n in stages
        )
        + " |"
        for name, steps in agg["steps_to_gate"].items()
    ]
    title = "Steps to each stage's gate (per seed; - : budget spent)"
    return _table(title, "", ["configuration", *stages], rows)


def _stage_end(agg: dict, stages: list[str]) -> list[str]:
    def cell(e: dict | None) -> str:
        if e is None or None in e["valid"]:
            return ""
        return f"{np.mean(e['valid']):.3f} / {np.mean(e['test']):.3f}"

    rows = [
        f"| {name} | " + " | ".join(cell(per.get(n)) for n in stages) + " |"
        for name, per in agg["stage_end"].items()
    ]
    note = "Mean over seeds of valid / test accuracy on the stage, where its own training ended."
    return _table("Each stage where its training ended", note, ["configuration", *stages], rows)


def _survival(agg: dict) -> list[str]:
    rows = [
        _survival_line(name, n, sv)
        for name, per in agg["survival"].items()
        for n, sv in per.items()
    ]
    note = (
        "Time-to-event data: a run that spent its budget is censored there. Kaplan-Meier "
        "median steps to the gate (runs that reached it / runs), the scratch median, their "
        "ratio (> 1: faster after the earlier stages) and the log-rank p. A median of - lies "
        "beyond the budget (more than half the runs never reached the gate)."
    )
    head = ["configuration", "stage", "median (reached)", "scratch median (reached)", "ratio"]
    return _table(
        "Transfer: steps to each stage's gate against from scratch",
        note,
        head + ["log-rank p"],
        rows,
    )


def _edit_effect(agg: dict) -> list[str]:
    if not agg.get("edit_effect"):
        return []
    rows = [
        _survival_line(name, n, sv)
        for name, eff in agg["edit_effect"].items()
        for n, sv in eff["stages"].items()
    ]

    def removed(eff: dict) -> str:
        got = [f for f in eff.get("removed_norm_fraction", []) if f is not None]
        return f" (the edit removed {np.mean(got):.2f} of the squared norm)" if got else ""

    bases = "; ".join(
        f"{n}{removed(eff)} against {eff['baseline']}" for n, eff in agg["edit_effect"].items()
    )
    note = (
        "Steps to the gate of the edited stage (and those after it) against the same ladder "
        "unedited, as survival data (ratio > 1: faster than unedited); the share of the integer "
        f"embeddings' squared norm each edit removed, mean over seeds: {bases}."
    )
    head = ["configuration", "stage", "median (reached)", "unedited median (reached)", "ratio"]
    return _table("Edits against the unedited ladder", note, head + ["log-rank p"], rows)


def _transpose(agg: dict, stages: list[str]) -> list[str]:
    if not agg.get("transpose"):
        return []

    def cell(t: dict | None) -> str:
        if t is None or None in t["mirrored"] or None in t["rest"]:
            return ""
        return f"{np.mean(t['mirrored']):.2f} / {np.mean(t['rest']):.2f}"

    rows = [
        f"| {name} | " + " | ".join(cell(per.get(n)) for n in stages) + " |"
        for name, per in agg["transpose"].items()
    ]
    note = (
        "Test accuracy where each commutative stage's training ended, on the held-out cells "
        "(a, b) whose transpose (b, a) was a training cell / on the rest (about half each), mean "
        "over seeds: a model that learned the table is right on both; one that memorised its "
        "cells and the symmetry is right on the first only (probes/transpose.py)."
    )
    title = "Learned, or looked up by symmetry?"
    return _table(title, note, ["configuration", *stages], rows)


def _cost(agg: dict, stages: list[str]) -> list[str]:
    rows = []
    for name, c in agg["cost"].items():
        per = c["stage_wall_time_s"]
        cells = [f"{np.mean(per[n]):.0f}" if n in per else "" for n in stages]
        rows.append(
            f"| {name} | {len(c['seeds'])} | {np.mean(c['wall_time_s']) / 60:.1f} | "
            + " | ".join(cells)
            + " |"
        )
    note = (
        "Wall time of a whole curriculum and of each stage (training and its evaluations, one "
        "thread), mean over seeds."
    )
    head = ["configuration", "seeds", "minutes", *(f"{n} (s)" for n in stages)]
    return _table("Cost on this machine", note, head, rows)


def _spectra(agg: dict) -> list[str]:
    top3 = lambda sp: " / ".join(str(t[:3]) for t in sp.get("top_per_seed", [sp["top_first_seed"]]))  # noqa: E731
    rows = [
        f"| {name} | {stage} | {sp['fourier127']['gini']['mean']:.3f} | {top3(sp['fourier127'])} "
        f"| {sp['walsh128']['gini']['mean']:.3f} | {top3(sp['walsh128'])} |"
        for name, per in agg["spectra"].items()
        for stage, sp in per.items()
    ]
    note = (
        "Gini coefficient of the integer tokens' embedding spectrum (mean over seeds; 0: spread "
        "evenly, towards 1: a few frequencies) in the Fourier basis of Z_127 (the modular "
        "stages' circuit) and the Walsh basis of Z_2^7 (XOR's), with each seed's top 3 "
        "frequencies."
    )
    head = ["configuration", "after", "Fourier Z_127 gini", "top", "Walsh Z_2^7 gini", "top"]
    return _table("Embedding structure after each stage", note, head, rows)


def _matrices(agg: dict) -> list[str]:
    lines = ["", "## Mean accuracy matrix R[i, j] (after stage i, on stage j)", ""]
    for name, m in agg["matrix"].items():
        lines += [f"**{name}**", "", "| after \\ on | " + " | ".join(m["cols"]) + " |"]
        lines.append("|---|" + "---|" * len(m["cols"]))
        lines += [
            f"| {r} | " + " | ".join(f"{v:.3f}" for v in row) + " |"
            for r, row in zip(m["rows"], m["mean"])
        ]
        lines.append("")
    return lines


def markdown(summary: dict) -> str:
    m = summary["machine"]
    lines = [
        f"# {summary['study']}",
        "",
        "Commands:",
        "",
        "```bash",
        *summary["commands"],
        "```",
        "",
        f"Machine: {m.get('cpu')} ({m.get('cores')} cores), torch {m.get('torch')}, "
        f"{m.get('date')}; code {summary.get('code_version')}."
        + (f" Every curriculum trains with {summary['recipe']}." if summary.get("recipe") else ""),
        *_transfer(summary),
        *_zero_shot(summary),
        *_steps(summary, summary["stages"]),
        *_stage_end(summary, summary["stages"]),
        *_survival(summary),
        *_edit_effect(summary),
        *_transpose(summary, summary["stages"]),
        *_cost(summary, summary["stages"]),
        *_spectra(summary),
        *_matrices(summary),
    ]
    return "\n".join(lines) + "\n"


@dataclass
class CurriculumStudyCommand:
    """Schema of conf/curriculum_study.yaml."""

    runs: list[str] = field(default_factory=list)  # curriculum directories or trees of them
    name: str = "curriculum"
    out: str | None = None  # None: runs/studies/NAME
    commands: list[str] = field(default_factory=list)  # the commands that made the curricula
    commands_file: str | None = None  # ... or a file of them, one per line (added after)
    transpose: bool = False  # true: split each commutative stage's test accuracy by whether the
    # transposed cell trained (probes/transpose.py)
    tags: bool = False  # true: each configuration is also named by its curriculum directory's
    # arm (runs/X/STUDY/ARM/seedN -> "(STUDY/ARM)"), for arms a label cannot tell apart


def arm(path: str | Path) -> str:
    """A curriculum's arm, from its directory: runs/X/STUDY/ARM/seedN -> "STUDY/ARM"."""
    parent = Path(path).parent
    return f"{parent.parent.name}/{parent.name}"


def write_study(
    out: str | Path,
    name: str,
    paths: list[Path],
    commands: list[str],
    tags: bool = False,
    transpose: bool = False,
) -> dict:
    curricula = [load_curriculum(p) | ({"tag": arm(p)} if tags else {}) for p in paths]
    recipes = {c["recipe"] for c in curricula}
    for c in curricula:  # one recipe for all: said once, not in every configuration's name
        c["show_recipe"] = len(recipes) > 1
    agg = aggregate(curricula)
    if transpose:
        agg["transpose"] = transpose_by_configuration(curricula)
    summary = {
        "study": name,
        "machine": machine(),
        "code_version": code_version(),
        "recipe": recipes.pop() if len(recipes) == 1 else None,
        "run_code_versions": sorted({c["code_version"] for c in curricula if "code_version" in c}),
        "commands": list(commands),
        "stages": list(dict.fromkeys(n for c in curricula for n in c["stages"])),
        **agg,
        "rows": study_rows(curricula),
    }
    out = Path(out)
    atomic_write_text(out / "summary.json", summary_text(summary))
    atomic_write_text(out / "summary.md", markdown(summary))
    sections = []
    for n, m in agg["matrix"].items():
        sec = Section(f"{n}: mean R")
        sec.add(matrix_heatmap(np.array(m["mean"]), m["rows"], m["cols"], f"{n}: mean R[i, j]"))
        sections.append(sec)
    tables = Section("Transfer tables")
    tables.parts.append(
        "<pre>"
        + markdown(summary).split("## Transfer", 1)[1].split("## Mean accuracy", 1)[0]
        + "</pre>"
    )
    sections.insert(0, tables)
    for n, per in agg["survival"].items():
        sections.insert(1, Section(f"{n}: steps to the gate").add(survival_figure(n, per)))
    for s in curricula:
        if s["seed"] == min(c["seed"] for c in curricula if label(c) == label(s)):
            sections += curriculum_sections(s)
    write(
        out / "report.html",
        page(
            f"Study {name}",
            f"{len(curricula)} curricula; {summary['machine'].get('cpu')}",
            sections,
        ),
    )
    return summary


def run_study(cmd: CurriculumStudyCommand) -> None:
    if not cmd.runs:
        raise SystemExit(
            "give the curriculum directories: python -m reports.curriculum DIR [DIR ...]"
        )
    if cmd.commands_file and not Path(cmd.commands_file).is_file():
        raise SystemExit(f"commands_file={cmd.commands_file}: no such file")
    out = Path(cmd.out or Path("runs/studies") / cmd.name)
    paths = find_curricula(cmd.runs)
    running = [p for p in paths if not (p / "summary.json").is_file()]
    for p in running:  # still training, or killed: resume it to include it
        print(f"skipped {p}: not finished (no summary.json)")
    if len(running) == len(paths):
        raise SystemExit(f"no finished curricula under {', '.join(cmd.runs)}")
    finished = [p for p in paths if p not in running]
    commands = list(cmd.commands) + commands_from(cmd.commands_file)
    summary = write_study(out, cmd.name, finished, commands, cmd.tags, cmd.transpose)
    print(f"wrote {out}/summary.json, summary.md and report.html: {len(summary['rows'])} rows")


def main(argv: list[str] | None = None) -> None:
    from grokloop import cli

    cli.run("curriculum_study", run_study, argv)


if __name__ == "__main__":
    main()
