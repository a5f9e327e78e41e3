"""Run folders: ``<output_root>/<name>/`` and where their checkpoints are.

Used by the loop (resume) and by commands that read a finished run (``perceptsr fuse``).
"""

from __future__ import annotations

from pathlib import Path

from perceptsr.config import TrainConfig
from perceptsr.errors import CheckpointError

__all__ = ["find_resume_checkpoint", "run_dir_of"]


def run_dir_of(cfg: TrainConfig) -> Path:
    return Path(cfg.output_root) / cfg.name


def find_resume_checkpoint(run_dir: Path, resume) -> Path | None:
    """The checkpoint folder to resume from: ``resume=True`` -> the latest in ``run_dir`` (None if
    there is none); a path -> a checkpoint folder ``iter_N``, or the latest of a ``checkpoints/``
    folder or of a run folder."""
    from perceptsr.checkpoint import CheckpointSaver

    if resume is None or resume is False:
        return None
    if resume is True:
        folder = run_dir / "checkpoints"
        return CheckpointSaver(folder).latest() if folder.is_dir() else None
    path = Path(resume)
    if (path / CheckpointSaver.MANIFEST).is_file():
        return path
    for folder in (path / "checkpoints", path):
        if folder.is_dir():
            found = CheckpointSaver(folder).latest()
            if found is not None:
                return found
    raise CheckpointError(f"--resume {path}: no checkpoint there (expected iter_N/{CheckpointSaver.MANIFEST})")
