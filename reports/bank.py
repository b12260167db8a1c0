"""The markdown pages of the bank command's results (`python -m grokloop.bank eval` and
`edit_eval` write them beside summary.json)."""

from __future__ import annotations


def edit_markdown(summary: dict) -> str:
    plans = "; ".join(
        f"hop {p['position']}: {p['n_edits']} edits, {p['n_through']} "
        f"through-queries ({p['n_unchanged']} left unchanged by their edit, not "
        "scored)"
        for p in summary["plans"]
    )
    how = (
        "the fact replaced in the bank, every weight frozen"
        if summary["method"] == "bank"
        else f"every weight fine-tuned {summary['finetune']['steps']} Adam steps at lr "
        f"{summary['finetune']['lr']} on the edited atomic query alone"
    )
    lines = [
        f"# {summary['study']}",
        "",
        "```bash",
        *summary["commands"],
        "```",
        "",
        f"Each edit applied alone ({how}), then undone. Query pool: the two-hop queries of "
        f"{', '.join(summary['query_splits'])} ({summary['n_queries']:,}); {plans}; "
        f"{summary['n_locality']} unrelated queries per edit; edit_seed "
        f"{summary['edit_seed']}; {summary['seconds']:.1f} s on "
        f"{summary['machine'].get('cpu')}, code {summary['code_version']}.",
        "",
        *[f"- {m}: {text}" for m, text in summary["metrics"].items()],
        "",
        "Splits: atomic_id/ood, the edited fact's class; two_hop_XY, the query's path (X, Y: "
        "ID or OOD fact at hops 1 and 2, in the graph its answer follows).",
        "",
        "| model | split | acc | 95% CI | n |",
        "|" + "---|" * 5,
    ]
    for r in summary["rows"]:
        lines.append(
            f"| {r['model']} | {r['split']} | {r['acc']:.3f} | "
            f"[{r['lo']:.3f}, {r['hi']:.3f}] | {r['n']:,} |"
        )
    return "\n".join(lines) + "\n"


def markdown(summary: dict) -> str:
    lines = [
        f"# {summary['study']}",
        "",
        "```bash",
        *summary["commands"],
        "```",
        "",
        f"Bank: {summary['bank']['path'] or 'the checkpoint own (training graph)'}, "
        f"{summary['bank']['n_facts']:,} facts ({summary['bank']['bytes']:,} bytes); "
        f"{summary['n_steps']} steps, top-"
        f"{summary['top_k']} slots; "
        f"{summary['seconds']:.1f} s on {summary['machine'].get('cpu')}, code "
        f"{summary['code_version']}.",
        "",
        "| model | split | hops | metric | acc | 95% CI | n |",
        "|" + "---|" * 7,
    ]
    for r in summary["rows"]:
        metric = r.get("metric", "answer")
        lines.append(
            f"| {r['model']} | {r['split']} | {r.get('hops', '')} | {metric} | "
            f"{r['acc']:.3f} | [{r['lo']:.3f}, {r['hi']:.3f}] | {r['n']:,} |"
        )
    return "\n".join(lines) + "\n"
