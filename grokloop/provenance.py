"""Provenance and safe writes: the code version every artefact records, content hashes, and the
one atomic-write helper (write to a temporary file beside the target, then rename), so a killed
process never leaves a half-written file under the final name.

Imports nothing from the rest of the project, so `datagen`, `grokloop`, `probes` and `reports`
can all use it.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path
from typing import Callable


def code_version() -> str:
    """The git commit of the checkout (with -dirty), or 'unknown' outside a git tree."""
    try:
        root = Path(__file__).resolve().parent.parent
        out = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=root,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def atomic_write(path: str | Path, write: Callable[[Path], None], suffix: str = "") -> Path:
    """Call `write(tmp)` on a temporary path beside `path`, then rename it over `path`.
    `suffix` keeps an extension some writers insist on (numpy's savez appends `.npz`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}{suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
