"""The new-entities study (issue 37): docs/results/new_entities/ from the summaries of the bank
evaluations that asked new entities' questions (`python -m grokloop.bank eval questions=...`).

    python -m reports.new_entities SUMMARY.json ... out=docs/results/new_entities \
        commands_file=FILE

Writes summary.json (the results schema: study, machine, code_version, commands, rows; every
seed's rows, and per (model, bank, split, metric) the seeds pooled, `seed: pooled`), summary.md
(the tables) and index.html (the figures; committed pages share docs/results/plotly.min.js).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from datagen.dataset import read_json
from datagen.provenance import atomic_write_text, code_version, portable_path
from grokloop.stats import wilson
from reports.study import commands_from, summary_text

TEST_SPLITS = ("test_new_head", "test_new_bridge", "test_new_answer", "test_new_all", "test_old")
SPLITS = tuple(s.replace("test", "valid", 1) for s in TEST_SPLITS) + TEST_SPLITS
TARGETS = {"test_new_all": 0.9, "test_old": 0.95}  # Wilson lower bound, seeds pooled
CHOOSE_ON = ("valid_new_all", "valid_old")  # a variant's worst of these decides (both targets)


def pool(rows: list[dict]) -> list[dict]:
    """Per (model, bank, split, metric): the seeds' questions pooled into one accuracy and its
    Wilson interval (each row evaluates a final model, so steps are not lined up)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["model"], r.get("bank"), r["split"], r.get("metric")), []).append(r)
    out = []
    for (model, bank, split, metric), rs in groups.items():
        k, n = sum(r["acc"] * r["n"] for r in rs), sum(r["n"] for r in rs)
        lo, hi = wilson(round(k), n)
        same = {f: rs[0][f] for f in ("hop", "read_step", "frozen", "chance") if f in rs[0]}
        cost = {
            f: sum(r[f] for r in rs) / len(rs)
            for f in ("finetune_seconds", "finetune_steps")
            if f in rs[0]
        }
        out.append(
            {
                "model": model,
                "bank": bank,
                "split": split,
                **({"metric": metric} if metric else {}),
                **same,
                **cost,
                "acc": k / n,
                "lo": lo,
                "hi": hi,
                "n": n,
                "seed": "pooled",
                "seeds": sorted(r.get("seed") for r in rs if r.get("seed") is not None),
            }
        )
    return out


def is_frozen_canonical(r: dict) -> bool:
    return "metric" not in r and bool(r.get("frozen")) and r["model"].startswith("canonical")


def choose(pooled: list[dict]) -> dict | None:
    """The frozen canonical-key variant whose worse pooled accuracy over CHOOSE_ON (validation
    banks: other new entities' facts, the run's valid split) is best: {chosen, criterion,
    variants: {model: score}}; None without validation rows. Test rows are never read."""
    scores: dict[str, list[float]] = {}
    for r in pooled:
        if is_frozen_canonical(r) and r["split"] in CHOOSE_ON:
            scores.setdefault(r["model"], []).append(r["acc"])
    scores = {m: min(v) for m, v in scores.items() if len(v) == len(CHOOSE_ON)}
    if not scores:
        return None
    return {
        "chosen": max(scores, key=scores.get),
        "criterion": f"the worse of {' and '.join(CHOOSE_ON)}, seeds pooled",
        "variants": scores,
    }


def study(summaries: list[dict], commands: list[str]) -> dict:
    rows = [r for s in summaries for r in s["rows"]]
    pooled = pool(rows)
    selection = choose(pooled)
    targets = []
    for split, want in TARGETS.items():
        for r in pooled:
            if r["split"] == split and is_frozen_canonical(r):
                targets.append(
                    {
                        "model": r["model"],
                        "bank": r["bank"],
                        "split": split,
                        "target_lo": want,
                        "lo": r["lo"],
                        "met": r["lo"] >= want,
                        **({"chosen": r["model"] == selection["chosen"]} if selection else {}),
                    }
                )
    return {
        "study": "new_entities",
        "machine": summaries[0]["machine"],
        "code_version": code_version(),
        "commands": commands,
        "evaluated_with": sorted({s["code_version"] for s in summaries}),
        "weights_sha256": {portable_path(s["run_dir"]): s["weights_sha256"] for s in summaries},
        "selection": selection,
        "targets": targets,
        "rows": rows + pooled,
    }


def table(rows: list[dict], what: str) -> list[str]:
    """A markdown table: a line per (model, bank), a column per split (acc [lo, hi])."""
    if not rows:
        return []
    keys = list(dict.fromkeys((r["model"], r["bank"]) for r in rows))
    splits = [s for s in SPLITS if any(r["split"] == s for r in rows)]
    lines = [f"| model | bank | {' | '.join(splits)} |", "|" + "---|" * (2 + len(splits))]
    for model, bank in keys:
        cells = []
        for s in splits:
            r = next(
                (r for r in rows if (r["model"], r["bank"], r["split"]) == (model, bank, s)), None
            )
            cells.append("" if r is None else f"{r['acc']:.3f} [{r['lo']:.2f}, {r['hi']:.2f}]")
        lines.append(f"| {model} | {bank} | {' | '.join(cells)} |")
    n = {r["n"] for r in rows}
    return [
        f"{what} (seeds pooled, Wilson 95% intervals; n = "
        f"{', '.join(f'{x:,}' for x in sorted(n))} per cell)",
        "",
        *lines,
        "",
    ]


def is_valid(row: dict) -> bool:
    return row["split"].startswith("valid")


def selection_lines(selection: dict | None) -> list[str]:
    if not selection:
        return []
    v = selection["variants"]
    return [
        f"Chosen on valid ({selection['criterion']}) among {len(v)} variants: "
        f"**{selection['chosen']}** ("
        + ", ".join(f"{m} {a:.3f}" for m, a in sorted(v.items(), key=lambda x: -x[1]))
        + ").",
        "",
    ]


def markdown(summary: dict) -> str:
    pooled = [r for r in summary["rows"] if r.get("seed") == "pooled"]
    answers = [r for r in pooled if "metric" not in r]
    m = summary["machine"]
    lines = [
        f"# {summary['study']}",
        "",
        "```bash",
        *summary["commands"],
        "```",
        "",
        f"Machine: {m.get('cpu')} ({m.get('cores')} cores), torch {m.get('torch')}, "
        f"{m.get('date')}; code {summary['code_version']}. Seeds: "
        f"{', '.join(map(str, sorted({r['seed'] for r in summary['rows'] if r.get('seed') not in (None, 'pooled')})))}.",
        "",
        *table([r for r in answers if is_valid(r)], "Two-hop accuracy on the validation banks"),
        *selection_lines(summary.get("selection")),
        *table([r for r in answers if not is_valid(r)], "Two-hop accuracy on the test banks"),
        "Targets (the frozen canonical-key reasoner, Wilson lower bound):",
        "",
    ]
    lines += [
        f"- {t['model']} / {t['bank']} / {t['split']}: lower bound {t['lo']:.3f} against "
        f"{t['target_lo']}: {'met' if t['met'] else '**not met**'}"
        + (" (the variant chosen on valid)" if t.get("chosen") else "")
        for t in summary["targets"]
    ]
    for hop in (1, 2):  # on test (every variant's retrieval on valid: summary.json)
        ret = [r for r in pooled if r.get("hop") == hop and not is_valid(r)]
        for step in sorted({r["read_step"] for r in ret}):
            lines += [
                "",
                *table(
                    [r for r in ret if r["read_step"] == step],
                    f"Memory retrieval, hop {hop} read at step {step}: the share of "
                    "questions whose top-1 slot is the hop's fact",
                ),
            ]
    cost = [r for r in answers if "finetune_seconds" in r]
    if cost:
        lines += [
            "",
            "Fine-tuning cost (mean per seed): "
            + "; ".join(
                f"{r['model']} ({r['bank']}): {r['finetune_steps']:.0f} steps, "
                f"{r['finetune_seconds']:.0f} s"
                for r in cost
                if r["split"] == "test_old"
            ),
            "",
        ]
    return "\n".join(lines) + "\n"


def page(summary: dict) -> str:
    from reports.figures import interval_bars
    from reports.html import Section
    from reports.html import page as html_page

    pooled = [r for r in summary["rows"] if r.get("seed") == "pooled"]
    section = Section("Two-hop accuracy by split, seeds pooled")
    section.text(
        "Wilson 95% intervals. Frozen: every weight as trained (sha256 checked). Per-seed "
        "rows, retrieval per hop and step, and the fine-tuning cost: summary.json, "
        "summary.md."
    )
    for bank in dict.fromkeys(r["bank"] for r in pooled):
        rows = [
            r | {"model": r["model"]} for r in pooled if r["bank"] == bank and "metric" not in r
        ]
        section.add(interval_bars(rows, f"bank: {bank}"))
    mech = Section("Retrieval at each hop (the memory's top-1 slot is the hop's fact)")
    for hop, step in ((1, 1), (2, 2)):
        rows = [
            r | {"model": f"{r['model']} ({r['bank']})"}
            for r in pooled
            if r.get("hop") == hop and r.get("read_step") == step
        ]
        if rows:
            mech.add(interval_bars(rows, f"hop {hop}, read at step {step}"))
    return html_page(
        "grokloop study: new_entities", f"{len(summary['rows'])} rows", [section, mech]
    )


def write(out: str | Path, summaries: list[dict], commands: list[str]) -> dict:
    from reports.html import write as write_html

    out = Path(out)
    summary = study(summaries, commands)
    atomic_write_text(out / "summary.json", summary_text(summary))
    atomic_write_text(out / "summary.md", markdown(summary))
    write_html(out / "index.html", page(summary))
    return summary


@dataclass
class NewEntitiesCommand:
    """Schema of conf/new_entities.yaml."""

    summaries: list[str] = field(default_factory=list)  # the bank evaluations' summary.json
    out: str = "runs/studies/new_entities"
    commands_file: str | None = None  # the commands that made the summaries, one per line


def run_new_entities(cmd: NewEntitiesCommand) -> None:
    if not cmd.summaries:
        raise ValueError(
            "give the evaluations: python -m reports.new_entities "
            "runs/new_entities/eval/*/summary.json"
        )
    commands = commands_from(cmd.commands_file)
    s = write(cmd.out, [read_json(Path(p)) for p in cmd.summaries], commands)
    print(f"wrote {cmd.out}/summary.json, summary.md and index.html: {len(s['rows'])} rows")


def main(argv: list[str] | None = None) -> None:
    from grokloop import cli

    cli.run("new_entities", run_new_entities, argv)


if __name__ == "__main__":
    main()
