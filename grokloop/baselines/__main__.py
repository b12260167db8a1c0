"""The non-parametric baselines of a dataset: nearest-key lookup (memorisation controls) and the
exact symbolic lookup (the reasoning upper bound), on every evaluation split.

    python -m grokloop.baselines lookup data=composition_small
    python -m grokloop.baselines lookup data=composition_cpu sigma=[0,1,2,4] d=256 seed=0
    python -m grokloop.baselines lookup data=modular methods=[lookup_cosine,symbolic] out=/tmp/b
    python -m grokloop.baselines lookup data=complex_reasoning_cpu   # + retrieval and chance

Writes OUT/summary.json (the results schema: rows model, split, (hops), sigma, seed, acc, Wilson
95% lo/hi, n, chance, (coverage)) and OUT/summary.md; OUT defaults to runs/baselines/NAME, NAME
the data preset. Typed by BaselinesCommand (conf/baselines.yaml).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from datagen import load_or_build
from datagen.provenance import atomic_write_text, code_version, machine
from grokloop.baselines.evaluate import default_methods, evaluate
from grokloop.config import as_data_config


@dataclass
class BaselinesCommand:
    """Schema of conf/baselines.yaml (`python -m grokloop.baselines lookup ...`)."""

    data: Any = None
    name: str | None = None  # names the output; None: the data preset's (data=NAME)
    methods: list[str] | None = None  # None: the task's (evaluate.default_methods)
    sigma: list[float] = field(default_factory=lambda: [0.0])  # query noise, x a key's norm
    d: int = 256  # key dimension per token
    digit_base: float = 2.0  # digit weights w_i = digit_base ** -i (1: plain Euclidean)
    seed: int = 0  # the canonical keys and the noise
    query_chunk: int = 1024  # exact search in blocks of query_chunk x bank_chunk scores
    bank_chunk: int = 16384
    data_cache: str | None = None
    out: str | None = None  # a directory; None: runs/baselines/NAME


def markdown(summary: dict) -> str:
    rows = summary["rows"]
    has_hops = any("hops" in r for r in rows)
    head = (
        ["model", "split"]
        + (["hops"] if has_hops else [])
        + ["sigma", "acc", "95% CI", "n", "chance", "coverage"]
    )
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
        f"Dataset `{summary['data']}` ({summary['dataset_hash'][:12]}), keys d = "
        f"{summary['config']['d']}, seed {summary['config']['seed']}, digit base "
        f"{summary['config']['digit_base']}; {summary['seconds']:.1f} s on {m.get('cpu')} "
        f"({m.get('cores')} cores), torch {m.get('torch')}, {m.get('date')}, code "
        f"{summary['code_version']}.",
        "",
        "Memorisation controls (lookup_cosine, lookup_digit, scattershot) store every training "
        "example and answer with the nearest stored key's answer; symbolic chains or compares "
        "the training atomic facts (modular/group: only training cells are answered; complex "
        "reasoning: interval reasoning); retrieval answers from the training facts about the "
        "query's entities in one step; chance guesses uniformly. "
        "sigma: query noise in units of a key's norm.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in rows:
        cells = (
            [r["model"], r["split"]]
            + ([str(r.get("hops", ""))] if has_hops else [])
            + [
                "" if r["sigma"] is None else f"{r['sigma']:g}",
                f"{r['acc']:.3f}",
                f"[{r['lo']:.3f}, {r['hi']:.3f}]",
                f"{r['n']:,}",
                f"{r['chance']:.3g}",
                f"{r['coverage']:.3f}" if "coverage" in r else "",
            ]
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def preset_name(cmd: BaselinesCommand) -> str:
    """`name`, else the data preset chosen on the command line (data=NAME), else the task."""
    if cmd.name:
        return cmd.name
    try:
        from hydra.core.hydra_config import HydraConfig

        return str(HydraConfig.get().runtime.choices["data"])
    except (ValueError, KeyError):  # not inside a Hydra run (a direct call)
        return as_data_config(cmd.data).task


def lookup(cmd: BaselinesCommand) -> dict:
    if not cmd.sigma:
        raise ValueError("sigma is empty: give at least one noise scale, e.g. sigma=0")
    if cmd.data is None:
        raise ValueError("data is required: pass data=PRESET, e.g. data=composition_cpu")
    name = preset_name(cmd)
    ds = load_or_build(as_data_config(cmd.data), cmd.data_cache)
    methods = default_methods(ds.task) if cmd.methods is None else cmd.methods
    t = time.perf_counter()
    rows = [
        {"data": name} | r
        for r in evaluate(
            ds,
            methods,
            cmd.sigma,
            cmd.d,
            cmd.seed,
            cmd.digit_base,
            query_chunk=cmd.query_chunk,
            bank_chunk=cmd.bank_chunk,
        )
    ]
    seconds = time.perf_counter() - t
    out = Path(cmd.out or Path("runs/baselines") / name)
    config = asdict(cmd) | {"name": name, "methods": methods}
    summary = {
        "study": f"baselines/{name}",
        "data": name,
        "dataset_hash": ds.content_hash(),
        "machine": machine(),
        "code_version": code_version(),
        "seconds": seconds,
        "commands": ["python -m grokloop.baselines lookup " + " ".join(sys.argv[1:])],
        "config": {k: v for k, v in config.items() if k not in ("out", "data_cache")},
        "rows": rows,
    }
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    atomic_write_text(out / "summary.md", markdown(summary))
    for r in rows:
        hops = f" hops {r['hops']}" if "hops" in r else ""
        sigma = "" if r["sigma"] is None else f" sigma {r['sigma']:g}"
        print(
            f"{r['model']:<14} {r['split'] + hops:<26}{sigma:<11} acc {r['acc']:.3f} "
            f"[{r['lo']:.3f}, {r['hi']:.3f}] n {r['n']}"
        )
    print(f"written to {out.resolve()}/summary.json and summary.md ({seconds:.1f} s)")
    return summary


def main(argv: list[str] | None = None) -> None:
    from grokloop import cli

    cli.run("baselines", lookup, argv)


if __name__ == "__main__":
    main()
