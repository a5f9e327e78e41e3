"""One trainer per run folder: an advisory ``flock`` on ``<run>/.lock``, held by rank 0 for the whole run.

The kernel drops the lock when its holder exits in any way (``kill -9`` included), so a crash never
leaves a stale lock behind; the PID, host and start time written into the file only tell a second
trainer who holds it. Locks on network file systems depend on the server (NFSv4 and Lustre honour
``flock``; some mounts make it local to a node), so two nodes sharing one folder over such a mount
are not protected.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock; the run folder is then not protected
    fcntl = None

from perceptsr.errors import PerceptsrError

__all__ = ["RunLock", "RunLockedError"]


class RunLockedError(PerceptsrError, RuntimeError):
    """Another process is training in this run folder."""


class RunLock:
    """``acquire()`` takes the lock without waiting (RunLockedError naming the holder if it is taken);
    ``release()`` drops it (also done by the kernel at any exit)."""

    FILE = ".lock"

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / self.FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        if self._fd is not None or fcntl is None:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _read_holder(fd)
            os.close(fd)
            raise RunLockedError(
                f"run folder {self.run_dir} is in use by another trainer ({holder}; lock file {self.path}); "
                f"wait for it to end or stop it, or train elsewhere (--set name=... or --out ...)"
            ) from None
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        os.ftruncate(fd, 0)  # the holder's record is only true while the lock is held
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        record = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return f"PID {record['pid']} on host {record['host']}, since {record['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown: it has not written its PID yet"
