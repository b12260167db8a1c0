"""One page beside the paper: each headline of Wang et al. 2024, "Grokked Transformers are
Implicit Reasoners" (arXiv 2405.15071), with theirs quoted and ours read from the committed
studies (docs/results/*/summary.json), each with its interval, study, command and machine.

    python -m reports.paper [out=docs/results/paper] [results=docs/results]

Nothing here is typed by hand but the paper's own figures (quoted, with where they come from);
a claim whose study is not committed says so instead of a number.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from datagen.provenance import atomic_write_text, code_version, machine
from reports.html import Section, page, table, write
from reports.study import summary_text


def find(summary: dict, last: bool = False, **match) -> dict:
    """The one row of a study with these field values (last: the latest step's of them)."""
    rows = [r for r in summary["rows"] if all(r.get(k) == v for k, v in match.items())]
    if last and rows:
        rows = [max(rows, key=lambda r: r.get("step") or 0)]
    if len(rows) != 1:
        raise ValueError(f"{summary['study']}: {len(rows)} rows match {match}, expected one")
    return rows[0]


def baseline(summary: dict, **match) -> dict:
    """A baseline's row: pooled over seeds where it was run with several, else its one run (a
    deterministic baseline on the one dataset every model seed shares is run once)."""
    rows = [r for r in summary["rows"] if all(r.get(k) == v for k, v in match.items())]
    return find(summary, seed="pooled", **match) if len(rows) > 1 else find(summary, **match)


def interval(r: dict) -> str:
    return f"{r['acc']:.3f} [{r['lo']:.3f}, {r['hi']:.3f}] (n = {r['n']:,})"


def ours_id_grokking(s: dict) -> tuple[str, list[dict]]:
    cells = [c for c in s["phi_law"]["cells"] if c["phi"] == 7.2]
    parts = []
    for c in cells:
        ratios = [
            f"{g / f:.1f}x" if g and f else "never (censored)"
            for g, f in zip(c["steps_to_grok"], c["steps_to_fit"])
        ]
        parts.append(f"{c['n_entities']} entities: {', '.join(ratios)} (seeds {c['seeds']})")
    return (
        "valid reaches 0.95 at " + "; ".join(parts) + " the step that fits the training "
        "two-hop facts (phi 7.2, vanilla 4 layers, weight decay 1.0)"
    ), []


def ours_composition_ood(s: dict) -> tuple[str, list[dict]]:
    vanilla = find(
        s["composition_ood"],
        model="composition_cpu",
        split="test_inferred_ood",
        seed="pooled",
        step=6000,
    )
    loop = find(
        s["ood_levers"],
        model="composition_cpu_loop2_feedback_wd1",
        split="test_inferred_ood",
        seed="pooled",
        step=6000,
    )
    chosen = s["ood_parametric"]["selection"]  # chosen on valid_OI/IO/ood, never on test
    best = find(
        s["ood_parametric"],
        model=chosen["chosen"],
        split="test_inferred_ood",
        seed="pooled",
        step=chosen["step"],
    )
    return (
        f"vanilla {interval(vanilla)} at 6,000 steps (chance 0.01); beyond the paper, a 2x2 "
        f"loop with a discrete feedback channel at weight decay 1.0: {interval(loop)}; with "
        f"the bridge slot replaced by its decoded token's embedding ({chosen['chosen']}, "
        f"chosen on valid among {chosen['n_variants']}): {interval(best)}",
        [vanilla, loop, best],
    )


def ours_comparison_ood(s: dict) -> tuple[str, list[dict]]:
    r = find(
        s["comparison_ood"],
        model="comparison_cpu",
        split="test_inferred_ood",
        seed="pooled",
        step=16000,
    )
    return f"{interval(r)} at 16,000 steps", [r]


def ours_complex_reasoning(s: dict) -> tuple[str, list[dict]]:
    cr = s["complex_reasoning"]
    model = find(cr, last=True, model="complex_reasoning_cpu", split="test_hard", seed="pooled")
    retrieval = baseline(cr, model="retrieval", split="test_hard")
    chance = baseline(cr, model="chance", split="test_hard")
    return (
        f"the grokked transformer {interval(model)}; the retrieval baseline (the training "
        f"facts about the query's entities, one step) {interval(retrieval)}; chance "
        f"{interval(chance)}",
        [model, retrieval, chance],
    )


def ours_phi_law(s: dict) -> tuple[str, list[dict]]:
    law = s["phi_law"]["law"]
    rho = ", ".join(
        f"{n} entities rho = {'-' if r is None else f'{r:+.2f}'}"
        for n, r in law["spearman"].items()
    )
    ratio = (
        ", ".join(
            [f"phi {p}: {r:.2f}x" for p, r in law["size_ratio"].items()]
            + [
                f"phi {p}: at least {r:.2f}x (the larger graph censored at its budget)"
                for p, r in law.get("size_ratio_at_least", {}).items()
            ]
        )
        or "-"
    )
    return (
        f"median steps to grok against phi, Spearman {rho}; the two sizes' medians at fixed "
        f"phi differ by {ratio}"
    ), []


def ours_circuit(s: dict) -> tuple[str, list[dict]]:
    rows = [
        r
        for r in s["composition_ood"]["rows"]
        if r.get("role") == "bridge_1"
        and r["model"] == "composition_cpu"
        and r["split"] == "test_inferred_id"
    ]
    last = max(r["step"] for r in rows)
    rows = [r for r in rows if r["step"] == last]
    first = next((r for r in rows if r["acc"] >= 0.9), None)
    where = "never" if first is None else f"after layer {first['layer']} ({interval(first)})"
    return (
        f"in the 4-layer vanilla model the bridge entity is the logit lens's top-1 at the "
        f"first relation's position {where}, of layers "
        f"{', '.join(r['layer'] for r in rows)} (step {last:,})",
        rows,
    )


@dataclass(frozen=True)
class Claim:
    id: str
    claim: str
    theirs: str
    studies: tuple[str, ...]
    ours: object  # (summaries by study) -> (text, rows)


CLAIMS = (
    Claim(
        "id_grokking",
        "In-distribution generalisation arrives long after the training facts fit",
        "ID test near 100% after about 50x the steps needed to fit (phi 7.2, 2,000 entities: "
        "fit near 14K steps, ID near 700K; section 3, figure 1)",
        ("phi_law",),
        ours_id_grokking,
    ),
    Claim(
        "composition_ood",
        "A vanilla transformer does not compose out of distribution",
        "OOD test accuracy stays at 0% even at 2M steps (section 3)",
        ("composition_ood", "ood_levers", "ood_parametric"),
        ours_composition_ood,
    ),
    Claim(
        "comparison_ood",
        "Comparison generalises out of distribution",
        "ID and OOD both near 100% (section 3, figure 1)",
        ("comparison_ood",),
        ours_comparison_ood,
    ),
    Claim(
        "complex_reasoning",
        "Parametric memory for complex reasoning",
        "fully grokked transformer 99.3% on 150 hard queries; GPT-4-Turbo with retrieval 33.3% "
        "(CoT 31.3%), Gemini-1.5-Pro with retrieval 37.3% (CoT 12.0%); chance 33.3% "
        "(section 5, table 1)",
        ("complex_reasoning",),
        ours_complex_reasoning,
    ),
    Claim(
        "phi_law",
        "Grokking speed tracks the inferred/atomic ratio phi, not the data's size",
        "higher phi groks faster; at fixed phi the dataset's size barely changes the speed "
        "(section 3, figure 2)",
        ("phi_law",),
        ours_phi_law,
    ),
    Claim(
        "circuit",
        "Where the bridge entity becomes decodable",
        "in the 8-layer model the bridge appears at S[5, r1], and layers 5-8 do the second hop "
        "(section 4, logit lens and causal tracing)",
        ("composition_ood",),
        ours_circuit,
    ),
)


def paper_summary(results: Path) -> dict:
    loaded = {p.parent.name: json.loads(p.read_text()) for p in results.glob("*/summary.json")}
    claims, rows = [], []
    for c in CLAIMS:
        missing = [s for s in c.studies if s not in loaded]
        text, got = (
            (f"not measured: no committed {', '.join(missing)} study", [])
            if missing
            else c.ours(loaded)
        )
        first = loaded.get(c.studies[0], {})
        claims.append(
            {
                "id": c.id,
                "claim": c.claim,
                "theirs": c.theirs,
                "ours": text,
                "studies": list(c.studies),
                "commands": first.get("commands", []),
                "machine": first.get("machine", {}),
            }
        )
        rows += [
            r | {"claim": c.id, "study": next(s for s in c.studies if r in loaded[s]["rows"])}
            for r in got
        ]
    return {
        "study": "paper",
        "machine": machine(),
        "code_version": code_version(),
        "commands": ["python -m reports.paper"],
        "paper": "arXiv 2405.15071",
        "claims": claims,
        "rows": rows,
    }


def markdown(summary: dict) -> str:
    lines = [
        "# Beside the paper: Wang et al. 2024, Grokked Transformers are Implicit Reasoners",
        "",
        "Theirs is quoted from arXiv 2405.15071; ours is read from the committed studies "
        "(`python -m reports.paper`). Each study's summary.md names its commands and machine.",
        "",
        "| claim | theirs | ours | study |",
        "|---|---|---|---|",
    ]
    for c in summary["claims"]:
        studies = ", ".join(f"[{s}](../{s}/summary.md)" for s in c["studies"])
        lines.append(f"| {c['claim']} | {c['theirs']} | {c['ours']} | {studies} |")
    return "\n".join(lines) + "\n"


@dataclass
class PaperCommand:
    """Schema of conf/paper.yaml."""

    results: str = "docs/results"
    out: str = "docs/results/paper"


def run_paper(cmd: PaperCommand) -> dict:
    summary = paper_summary(Path(cmd.results))
    out = Path(cmd.out)
    atomic_write_text(out / "summary.json", summary_text(summary))
    atomic_write_text(out / "summary.md", markdown(summary))
    rows = [
        [c["claim"], c["theirs"], c["ours"], ", ".join(c["studies"])] for c in summary["claims"]
    ]
    section = Section("Claims").add(table(["claim", "theirs", "ours", "study"], rows))
    write(
        out / "index.html", page("grokloop beside Wang et al. 2024", "arXiv 2405.15071", [section])
    )
    print(markdown(summary))
    return summary


def main(argv: list[str] | None = None) -> None:
    from grokloop import cli

    cli.run("paper", run_paper, argv)


if __name__ == "__main__":
    main()
