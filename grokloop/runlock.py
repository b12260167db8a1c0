"""One writer per run directory: RUN/.lock holds the PID and host of the process training there.

    with run_lock(out_dir):
        ...   # the only process writing into out_dir

The lock file is created with O_CREAT|O_EXCL, so of two processes starting into one directory
exactly one gets it; the other stops with an error naming the holder. A lock left behind by a
process that died without cleaning up (SIGKILL, power loss) is stale: on the same host we can
see that its PID is gone, warn and take it over. A lock from another host cannot be checked from
here and is always respected. Different run directories (a sweep) never interact.

Known gap: two processes taking over the same stale lock at the same instant may both succeed;
PID reuse can make a stale lock look alive (then it is refused, which is the safe side).
"""

from __future__ import annotations

import json
import os
import socket
import warnings
from contextlib import contextmanager
from pathlib import Path

LOCK_NAME = ".lock"


class RunLockedError(RuntimeError):
    """Another process holds the run directory's lock."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _holder(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # vanished, or created but not yet written: treat as held


def acquire(run_dir: str | Path) -> Path:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_NAME
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _holder(path)
            if holder is None:
                if not path.exists():  # released between our open and read: try again
                    continue
                raise RunLockedError(
                    f"{run_dir} is locked by {path}, which is unreadable (a "
                    "process may be starting there); if no run is using "
                    f"{run_dir}, delete {path}"
                )
            if holder.get("host") == me["host"] and not _alive(int(holder.get("pid", -1))):
                warnings.warn(
                    f"{path}: stale lock of PID {holder.get('pid')} on {holder.get('host')}, "
                    "which is no longer running; taking it over"
                )
                path.unlink(missing_ok=True)
                continue
            raise RunLockedError(
                f"{run_dir} is in use by PID {holder.get('pid')} on host "
                f"{holder.get('host')} (lock {path}); wait for it to finish or "
                "choose another out_dir. If that process is gone, delete the lock."
            )
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        return path
    raise RunLockedError(f"could not take the lock {path}; another process keeps taking it")


def release(path: Path) -> None:
    """Remove the lock if it is still ours (never another process's after a takeover)."""
    holder = _holder(path)
    if (
        holder is not None
        and holder.get("pid") == os.getpid()
        and holder.get("host") == socket.gethostname()
    ):
        path.unlink(missing_ok=True)


@contextmanager
def run_lock(run_dir: str | Path):
    path = acquire(run_dir)
    try:
        yield path
    finally:
        release(path)
