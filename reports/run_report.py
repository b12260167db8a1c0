"""The report of one run: config and code version, training curves, and a section per probe that
has results; probes not run are listed with the command that runs them."""

from __future__ import annotations

import html
import json

from reports import figures as F
from reports.html import Section, code, page, table
from reports.load import RunFiles

PROBE_TITLES = {
    "logit_lens": "Logit lens",
    "causal_tracing": "Causal tracing",
    "attention": "Attention patterns",
    "fourier": "Fourier progress measures",
    "surgery": "Layer-loop surgery",
}


def held_out_split(run: RunFiles) -> str | None:
    """The split whose curve tells the story: inferred ID test, else the test split."""
    splits = run.splits()
    return next(
        (s for s in ("test_inferred_id", "test", "test_inferred_ood") if s in splits),
        splits[-1] if splits else None,
    )


def overview(run: RunFiles) -> Section:
    sec = Section("Run")
    s, cfg = run.summary, run.config
    m = cfg.get("model", {})
    shape = (
        f"{m.get('n_prelude', 0)} prelude + {m.get('n_core')} core layer(s) × {m.get('n_steps')} "
        f"step(s) + {m.get('n_coda', 0)} coda, d_model {m.get('d_model')}"
    )
    rows = [
        ["directory", str(run.path)],
        ["experiment", cfg.get("experiment", "")],
        ["task", cfg.get("data", {}).get("task", "")],
        ["model", shape],
        ["code version", cfg.get("code_version", "unknown")],
    ]
    if s:
        rows += [["steps trained", f"{s['steps']:,}"], ["wall time", f"{s['wall_time_s']:.0f} s"]]
    else:
        rows += [["status", "no summary.json: the run is unfinished or was stopped"]]
    sec.add(table(["", ""], rows))
    if s:
        final = s["final"]
        grok = s.get(f"steps_to_{cfg.get('train', {}).get('grok_threshold', 0.99)}", {})
        sec.add(
            table(
                ["split", "final accuracy", "first step ≥ threshold"],
                [
                    [
                        k,
                        final.get(f"acc/{k}", float("nan")),
                        f"{grok[k]:,}" if grok.get(k) else "never",
                    ]
                    for k in run.splits()
                ],
            )
        )
    sec.add(
        "<details><summary>Full config</summary>" + code(json.dumps(cfg, indent=2)) + "</details>"
    )
    return sec


def training(run: RunFiles) -> Section:
    sec = Section("Training")
    if not run.metrics:
        return sec.text("No evaluations recorded yet.")
    sec.add(F.accuracy_curves(run)).add(F.loss_and_weight_norm(run))
    split = held_out_split(run)
    if any(k.startswith(f"acc_step/{split}/") for k in run.metrics[-1]):
        sec.add(F.readout_curves(run, split))
    if any(k.startswith(f"acc/{split}/hops_") for k in run.metrics[-1]):
        sec.add(F.hops_curves(run, split))
    if any(k.startswith("depth/chosen_step/") for r in run.metrics for k in r):
        sec.add(F.chosen_steps(run))
    return sec


def probe_sections(run: RunFiles) -> list[Section]:
    out = []
    if lens := run.probes.get("logit_lens"):
        sec = Section(PROBE_TITLES["logit_lens"])
        for split in lens.meta["splits"]:
            sec.add(F.role_mrr_over_training(lens, split))
            for fig in F.logit_lens_maps(lens, split):
                sec.add(fig)
        out.append(sec)
    if tr := run.probes.get("causal_tracing"):
        sec = Section(PROBE_TITLES["causal_tracing"])
        last = [r for r in tr.rows if r["checkpoint"] == tr.steps[-1] and r["kind"] == "summary"]
        sec.add(
            table(
                [
                    "split",
                    "corrupted token",
                    "examples",
                    "corruption flips the answer",
                    "clean accuracy",
                ],
                [
                    [
                        r["split"],
                        r["corrupt"],
                        r["n"],
                        r.get("full_effect", float("nan")),
                        r.get("clean_acc", float("nan")),
                    ]
                    for r in last
                ],
            )
        )
        for r in last:
            if r["n"]:
                sec.add(F.tracing_maps(tr, r["split"], r["corrupt"]))
                sec.add(F.patching_map(tr, r["split"], r["corrupt"]))
        out.append(sec)
    if att := run.probes.get("attention"):
        sec = Section(PROBE_TITLES["attention"])
        for split in att.meta["splits"]:
            sec.add(F.attention_maps(att, split))
        out.append(sec)
    if four := run.probes.get("fourier"):
        sec = Section(PROBE_TITLES["fourier"])
        for fig in F.fourier_figures(four):
            sec.add(fig)
        out.append(sec)
    if surg := run.probes.get("surgery"):
        sec = Section(PROBE_TITLES["surgery"])
        for split in surg.meta["splits"]:
            sec.add(F.surgery_maps(surg, split))
        out.append(sec)
    return out


def missing_probes(run: RunFiles) -> Section | None:
    modular = (
        run.config.get("data", {}).get("task") == "modular"
        and run.config["data"].get("op") == "add"
    )
    missing = [p for p in PROBE_TITLES if p not in run.probes and (p != "fourier" or modular)]
    if not missing:
        return None
    sec = Section("Probes not run")
    sec.text(
        "These probes have no results in this run directory. To compute them over every "
        "checkpoint, then rebuild this report:"
    )
    sec.add(
        code(
            f"python -m probes run_dir={run.path} probe={','.join(missing)} checkpoints=all\n"
            f"python -m reports run_dir={run.path}"
        )
    )
    sec.add("<ul>" + "".join(f"<li>{html.escape(PROBE_TITLES[p])}</li>" for p in missing) + "</ul>")
    return sec


def run_report(run: RunFiles) -> str:
    sections = [overview(run), training(run), *probe_sections(run)]
    if (miss := missing_probes(run)) is not None:
        sections.append(miss)
    subtitle = html.escape(f"{run.config.get('experiment', '')} · {run.path}")
    return page(f"grokloop run: {run.name}", subtitle, sections)
