"""Generate a dataset from a config, write it, print its statistics.

python -m datagen data=composition_small out_dir=/tmp/comp
python -m datagen data=composition data.n_entities=200 out_dir=/tmp/comp
python -m datagen data=composition_paper out_dir=/tmp/paper format=grokked
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datagen import build_dataset
from datagen.grokked_format import write_grokked

FORMATS = ("npz", "grokked")


@dataclass
class DatagenCommand:
    """Schema of conf/datagen.yaml; `data` is typed by its preset (conf/data/)."""

    data: Any = None
    out_dir: str | None = None  # None: print the statistics only
    format: str = "npz"  # npz | grokked (the authors' JSON files)


def generate(cmd: DatagenCommand) -> None:
    if cmd.format not in FORMATS:
        raise ValueError(f"format={cmd.format!r} is unknown; use one of {', '.join(FORMATS)}")
    if cmd.data is None:
        raise ValueError("data is required: pass data=PRESET (conf/data/), e.g. data=composition")
    data_cfg = cmd.data
    ds = build_dataset(data_cfg)
    m = ds.manifest()
    print(
        f"task {m['task']}  examples {m['n_examples']}  n_ctx {m['n_ctx']}  d_vocab {m['d_vocab']}"
    )
    for split, n in m["counts"].items():
        print(f"  {split:<20} {n:>9,}")
    if "achieved_phi" in ds.stats:
        print(f"achieved phi {ds.stats['achieved_phi']:.4f} (requested {data_cfg.phi})")
    print(f"content hash {m['content_hash']}")
    if cmd.out_dir:
        out = Path(cmd.out_dir)
        write_grokked(ds, out) if cmd.format == "grokked" else ds.save(out)
        print(f"written to {out.resolve()}")


def main(argv: list[str] | None = None) -> None:
    from grokloop import cli

    cli.run("datagen", generate, argv)


if __name__ == "__main__":
    main()
