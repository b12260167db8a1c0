"""Provenance and safe writes: the code version every artefact records, content hashes, and the
one atomic-write helper (write to a temporary file beside the target, then rename), so a killed
process never leaves a half-written file under the final name.

It lives at the bottom layer (datagen) and imports nothing from the rest of the project, so
`datagen`, `grokloop`, `probes` and `reports` can all use it.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Callable


def code_version() -> str:
    """The git commit of the checkout this code runs from (with -dirty); for an installed package
    (no checkout around it) `grokloop==VERSION`; 'unknown' if neither can be read."""
    root = Path(__file__).resolve().parent.parent
    if (root / ".git").exists():  # a directory, or a file in a git worktree
        try:
            out = subprocess.run(
                ["git", "describe", "--always", "--dirty"],
                cwd=root,
                capture_output=True,
                text=True,
                timeout=5,
            )
            if out.stdout.strip():
                return out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    try:
        return f"grokloop=={importlib.metadata.version('grokloop')}"
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def machine() -> dict:
    """What a timing or a result was measured on: the CPU model (timings are only comparable on
    one machine), cores, torch threads, GPU, torch version, date."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in open("/proc/cpuinfo")
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    flags = ""
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags"))
    except (OSError, StopIteration):
        pass
    isa = (
        "amx_bf16"
        if "amx_bf16" in flags
        else "avx512_bf16"
        if "avx512_bf16" in flags
        else "avx2"
        if "avx2" in flags
        else "other"
    )
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {
        "cpu": cpu,
        "isa": isa,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu,
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }


def portable_path(path: str | Path) -> str:
    """A path as committed results show it: relative to the working directory when below it,
    else from its last `runs` folder on (runs/NAME/...), else as given; never a machine's own
    absolute prefix where either rule applies."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        parts = path.parts
        if "runs" in parts:
            return str(Path(*parts[len(parts) - 1 - parts[::-1].index("runs") :]))
        return str(path)


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
