"""Generate a dataset from a config, write it, print its statistics.

    python -m datagen data=composition_small out_dir=/tmp/comp
    python -m datagen data=composition_paper out_dir=/tmp/paper format=grokked
"""
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from datagen import build_dataset, data_config_from_dict
from datagen.grokked_format import write_grokked


@hydra.main(config_path="../conf", config_name="datagen", version_base="1.3")
def main(cfg: DictConfig) -> None:
    data_cfg = data_config_from_dict(OmegaConf.to_container(cfg.data, resolve=True))
    if cfg.format not in ("npz", "grokked"):
        raise ValueError(f"format={cfg.format!r} is unknown; use npz or grokked")
    ds = build_dataset(data_cfg)
    m = ds.manifest()
    print(f"task {m['task']}  examples {m['n_examples']}  n_ctx {m['n_ctx']}  d_vocab {m['d_vocab']}")
    for split, n in m["counts"].items():
        print(f"  {split:<20} {n:>9,}")
    if "achieved_phi" in ds.stats:
        print(f"achieved phi {ds.stats['achieved_phi']:.4f} (requested {data_cfg.phi})")
    print(f"content hash {m['content_hash']}")
    if cfg.out_dir:
        out = Path(cfg.out_dir)
        write_grokked(ds, out) if cfg.format == "grokked" else ds.save(out)
        print(f"written to {out.resolve()}")


if __name__ == "__main__":
    main()
