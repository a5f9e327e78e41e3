"""The mode a new file or folder gets under the process umask, for files made by ``mkstemp`` /
``mkdtemp`` (always 0o600 / 0o700) that are renamed into place: results must be as readable as
anything else the user creates."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["umask_mode"]


def _umask() -> int:
    """The process umask, read from /proc where possible (``os.umask`` can only be read by setting
    it, which briefly changes it for every thread)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def umask_mode(directory: bool = False) -> int:
    """The mode ``open``/``mkdir`` would give a new file (0o666) or folder (0o777) under the umask:
    temp files and folders are created 0o600/0o700 and get this mode before they are renamed."""
    return (0o777 if directory else 0o666) & ~_umask()
