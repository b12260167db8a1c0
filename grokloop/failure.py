"""Every failure a command meets at run time as one line: what went wrong, and what to do.

grokloop/cli.py `run` prints `error: <line>` on stderr and exits with the status given here; no
traceback, unless GROKLOOP_DEBUG=1 (or HYDRA_FULL_ERROR=1) asks for it. Statuses: 2 for a value
the command cannot use (ValueError, a missing or existing path: nothing was done), 1 for a run
that failed (a locked or damaged run, NaN, a disk that is full or read-only), 128 + the signal
for a stop on a signal (130 Ctrl-C, 143 SIGTERM: the shell's convention). An exception raised
by our own code carries a message written for the user; one raised inside a library (torch, a
bug of ours surfacing there) says where it came from and how to see the traceback.
"""

from __future__ import annotations

import errno
import os
import signal
import traceback
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
_OURS = tuple(str(_ROOT / pkg) + os.sep for pkg in ("datagen", "grokloop", "probes", "reports"))
DEBUG = "GROKLOOP_DEBUG=1 shows the traceback"


class Terminated(BaseException):
    """SIGTERM outside a training loop (which checkpoints first: grokloop/train/stop.py). A
    BaseException, like KeyboardInterrupt, so no `except Exception` swallows it."""

    exit_status = 128 + signal.SIGTERM

    def __str__(self) -> str:
        return "terminated by SIGTERM"


def raise_terminated(signum, frame) -> None:
    raise Terminated()


def debug_wanted() -> bool:
    return os.environ.get("GROKLOOP_DEBUG", "") not in ("", "0")


def _flat(text: str) -> str:
    return " ".join(str(text).split())


def raised_by_us(e: BaseException) -> bool:
    """True when the innermost frame that raised `e` is in datagen, grokloop, probes or reports."""
    frames = traceback.extract_tb(e.__traceback__)
    return bool(frames) and frames[-1].filename.startswith(_OURS)


def os_line(e: OSError) -> str:
    """A failed file operation: the path, the reason, and the fix for the usual reasons."""
    where = f"{e.filename}: " if e.filename else ""
    line = f"{where}{(e.strerror or _flat(e)).lower()}"
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        line += "; it is not writable here: fix its permissions or write somewhere else (out_dir=)"
    elif e.errno in (errno.EEXIST, errno.ENOTDIR):
        line += "; a file is where a directory should be: choose another path"
    elif e.errno in (errno.ENOSPC, errno.EDQUOT):
        line += (
            "; free some space and run again (a training run continues from its last "
            "checkpoint with resume=true)"
        )
    return line


def describe_failure(e: BaseException) -> tuple[str, int]:
    """(the one line, the exit status) for an exception a command did not handle."""
    status = getattr(e, "exit_status", None)
    if isinstance(status, int):  # a stop on a signal (train's Interrupted, Terminated)
        return _flat(e), status
    if isinstance(e, KeyboardInterrupt):
        return "interrupted (Ctrl-C)", 128 + signal.SIGINT
    if isinstance(e, OSError) and e.errno is not None:
        usage = isinstance(e, (FileNotFoundError, FileExistsError, NotADirectoryError))
        return os_line(e), 2 if usage else 1
    usage = isinstance(e, (ValueError, FileNotFoundError, FileExistsError))
    message = _flat(e) or type(e).__name__
    if not raised_by_us(e):
        message = f"{type(e).__name__}: {message} (raised in {_origin(e)}; {DEBUG})"
    elif not usage and not isinstance(e, (RuntimeError, ArithmeticError, OSError)):
        message = f"internal error, {type(e).__name__}: {message} ({DEBUG}; please report it)"
    return message, 2 if usage else 1


def _origin(e: BaseException) -> str:
    frames = traceback.extract_tb(e.__traceback__)
    if not frames:
        return "an unknown place"
    path = Path(frames[-1].filename)
    parts = path.parts
    if "site-packages" in parts:  # torch/nn/functional.py -> torch
        return parts[parts.index("site-packages") + 1]
    return path.name


def format_warning(message, category, filename, lineno, line=None) -> str:
    """warnings.warn as one line, `warning: ...` (Python's default adds the source line)."""
    return f"warning: {_flat(message)}\n"
