"""The Dataset every task produces: fixed-length int arrays, one answer token, per-example roles.

Layout (N examples, n_ctx positions):
  inputs      int64 [N, n_ctx]  right-padded with <pad>
  answer_pos  int64 [N]         position whose next-token prediction is the answer
  answers     int64 [N]         answer token id
  hops        int64 [N]         hop count (atomic facts and non-chained tasks: 1)
  roles       name -> int64 [N] token id of each structural role, -1 where absent
  role_pos    name -> int64 [N] input position of the role (bridges: position of the relation
                                that produces them), -1 where absent
  splits      name -> int64 [k] example indices; "train" is what the model trains on
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from datagen.provenance import atomic_write, atomic_write_text, code_version
from datagen.vocab import Vocab

__all__ = ["Dataset", "GENERATOR_VERSION", "code_version", "read_json", "sample_eval"]

# Bump whenever any generator's output for the same config changes: the dataset cache is keyed by
# (config, GENERATOR_VERSION), so a bump makes every cached dataset stale.
#   2: k-hop held-out queries are never prefixes of training facts; modular/group `train_sample`.
#   3: composition and comparison `valid` (held-out ID inferred facts); composition `test_OI` /
#      `test_IO` (OOD by hop); comparison splits by unordered pair.
#   4: khop_perm `valid` holds the test-only hop counts too.
GENERATOR_VERSION = 4


@dataclass
class Dataset:
    task: str
    vocab: Vocab
    inputs: np.ndarray
    answer_pos: np.ndarray
    answers: np.ndarray
    hops: np.ndarray
    roles: dict[str, np.ndarray]
    role_pos: dict[str, np.ndarray]
    splits: dict[str, np.ndarray]
    config: dict
    stats: dict = field(default_factory=dict)  # task-specific numbers, e.g. achieved phi

    def __len__(self) -> int:
        return len(self.answers)

    @property
    def n_ctx(self) -> int:
        return self.inputs.shape[1]

    @property
    def eval_splits(self) -> list[str]:
        return [s for s in self.splits if s != "train"]

    def _arrays(self) -> dict[str, np.ndarray]:
        arrays = {
            "inputs": self.inputs,
            "answer_pos": self.answer_pos,
            "answers": self.answers,
            "hops": self.hops,
        }
        arrays |= {f"roles/{k}": v for k, v in self.roles.items()}
        arrays |= {f"role_pos/{k}": v for k, v in self.role_pos.items()}
        arrays |= {f"splits/{k}": v for k, v in self.splits.items()}
        return arrays

    def content_hash(self) -> str:
        """sha256 of the vocabulary and every array (the manifest's `content_hash`): two datasets
        with the same hash hold the same examples and splits, whatever code built them."""
        h = hashlib.sha256(json.dumps(self.vocab.to_dict()).encode())
        for name, arr in sorted(self._arrays().items()):
            h.update(name.encode())
            h.update(np.ascontiguousarray(arr, dtype=np.int64).tobytes())
        return h.hexdigest()

    def manifest(self) -> dict:
        return {
            "task": self.task,
            "config": self.config,
            "seed": self.config.get("seed"),
            "n_examples": len(self),
            "n_ctx": self.n_ctx,
            "d_vocab": len(self.vocab),
            "counts": {k: int(len(v)) for k, v in self.splits.items()},
            "stats": self.stats,
            "content_hash": self.content_hash(),
            "generator_version": GENERATOR_VERSION,
            "code_version": code_version(),
        }

    def save(self, out_dir: str | Path) -> Path:
        """Write data.npz, vocab.json and manifest.json, each atomically (manifest last, so a
        directory with a manifest is complete)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / "data.npz", lambda tmp: np.savez(tmp, **self._arrays()), suffix=".npz")
        atomic_write_text(out / "vocab.json", json.dumps(self.vocab.to_dict()))
        atomic_write_text(out / "manifest.json", json.dumps(self.manifest(), indent=2))
        return out

    @staticmethod
    def load(path: str | Path) -> "Dataset":
        path = Path(path)
        fix = f"delete {path} to build it again, or rewrite it (python -m datagen)"
        manifest = read_json(path / "manifest.json", fix)
        vocab = Vocab.from_dict(read_json(path / "vocab.json", fix))
        with np.load(path / "data.npz") as z:
            arrays = {k: z[k] for k in z.files}

        def group(prefix):
            return {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith(prefix + "/")}

        return Dataset(
            task=manifest["task"],
            vocab=vocab,
            inputs=arrays["inputs"],
            answer_pos=arrays["answer_pos"],
            answers=arrays["answers"],
            hops=arrays["hops"],
            roles=group("roles"),
            role_pos=group("role_pos"),
            splits=group("splits"),
            config=manifest["config"],
            stats=manifest["stats"],
        )


def read_json(path: Path, fix: str = "") -> object:
    """The JSON in `path`; a ValueError naming the file (json's own message names only a line
    and column) and, if given, the fix."""
    try:
        text = Path(path).read_text()
        return json.loads(text)
    except json.JSONDecodeError as e:
        what = (
            "is empty"
            if not text.strip()
            else f"is not valid JSON ({e.msg}: line {e.lineno} column {e.colno}; truncated?)"
        )
        raise ValueError(f"{path} {what}" + (f"; {fix}" if fix else "")) from None
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a text file" + (f"; {fix}" if fix else "")) from None


def sample_eval(indices: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """At most `size` of `indices`, uniformly without replacement, sorted for stable order."""
    if len(indices) <= size:
        return np.sort(indices)
    return np.sort(rng.choice(indices, size=size, replace=False))
