"""Periodic training checkpoints with retention (:class:`CheckpointSaver`)."""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from perceptsr.checkpoint.atomic import atomic_write, fsync_dir
from perceptsr.checkpoint.format import read_checkpoint, save_model, unwrap_module
from perceptsr.checkpoint.legacy import first_line
from perceptsr.checkpoint.loading import load_state_dict_strict
from perceptsr.checkpoint.training_state import load_training_state, save_training_state
from perceptsr.errors import CheckpointError
from perceptsr.umask import umask_mode

__all__ = ["CheckpointSaver"]

ModelEntry = tuple  # (module, arch) or (module, arch, arch_kwargs)


class CheckpointSaver:
    """Periodic checkpoints with retention: the last ``keep_last`` plus the best by a metric.

    Layout of ``directory``::

        iter_{N}/{name}.safetensors   one native file per model (EMA + raw weights if given)
        iter_{N}/training_state.pt    optimizer/scheduler/RNG/counters (if given)
        iter_{N}/manifest.json        iteration, files, metric
        latest.json                   {"latest": "iter_N", "iteration": N, "best": {...} | null}

    Each ``iter_N`` is written in full to a hidden temp folder and renamed into place; only then is
    ``latest.json`` updated (atomically) and are old checkpoints pruned, so a crash never loses
    the last good checkpoint. ``keep_last=None`` keeps everything. ``best_metric`` names the
    metric; ``mode`` is ``"max"`` (higher is better) or ``"min"``.

    Temp folders left by a crash are removed by :meth:`remove_stale`, which only the process that
    owns the folder may call (the loop does, holding the run lock): another trainer's temp folder
    may be a save in progress. Before a save the free space is checked against the estimated size
    (:data:`SPACE_MARGIN`, :data:`SPACE_RESERVE`); a failing write (a full disk, any ``OSError``)
    becomes one :class:`CheckpointError` naming the folder, the free space and the size needed.
    """

    POINTER = "latest.json"
    MANIFEST = "manifest.json"
    STATE = "training_state.pt"
    SPACE_MARGIN = 1.1  # free space needed before a save: estimated size x margin + reserve
    SPACE_RESERVE = 16 * 2**20

    def __init__(
        self, directory: str | os.PathLike, keep_last: int | None = 3, best_metric: str | None = None, mode: str = "max"
    ) -> None:
        if mode not in ("max", "min"):
            raise CheckpointError(f"CheckpointSaver: mode must be 'max' or 'min', got {mode!r}")
        if keep_last is not None and (not isinstance(keep_last, int) or keep_last < 1):
            raise CheckpointError(f"CheckpointSaver: keep_last must be a positive integer or None, got {keep_last!r}")
        self.directory = Path(directory)
        self.keep_last, self.best_metric, self.mode = keep_last, best_metric, mode
        self.directory.mkdir(parents=True, exist_ok=True)
        self._best: dict[str, Any] | None = self._scan_best()

    def remove_stale(self) -> list[Path]:
        """Delete what a crash mid-save leaves behind (``.iter_N.tmp*`` folders, ``.latest.json.*.tmp``
        and other hidden ``.tmp`` files); returns what was removed. Call it only while holding the run."""
        removed = []
        for stale in sorted(self.directory.glob(".*.tmp*")):
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    stale.unlink()
            removed.append(stale)
        return removed

    # -- queries ------------------------------------------------------------------------------
    def checkpoints(self) -> list[Path]:
        """Complete checkpoint folders, oldest iteration first."""
        found = []
        for p in self.directory.glob("iter_*"):
            m = re.fullmatch(r"iter_(\d+)", p.name)
            if m and p.is_dir() and (p / self.MANIFEST).is_file():
                found.append((int(m.group(1)), p))
        return [p for _, p in sorted(found)]

    def latest(self) -> Path | None:
        """The folder to resume from: the ``latest.json`` target, else the highest complete iteration."""
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            pointer = json.loads((self.directory / self.POINTER).read_text())
            target = self.directory / pointer["latest"]
            if (target / self.MANIFEST).is_file():
                return target
        found = self.checkpoints()
        return found[-1] if found else None

    def best(self) -> Path | None:
        """The folder with the best metric so far (None if no metric was ever given)."""
        if self._best is None:
            return None
        target = self.directory / self._best["checkpoint"]
        return target if target.is_dir() else None

    def _scan_best(self) -> dict[str, Any] | None:
        best = None
        for p in self.checkpoints():
            with contextlib.suppress(OSError, ValueError):
                man = json.loads((p / self.MANIFEST).read_text())
                value = man.get("metric")
                if value is not None and man.get("metric_name") == self.best_metric and self._better(value, best):
                    best = {"checkpoint": p.name, "iteration": man["iteration"], "metric": value}
        return best

    def _better(self, value: float, best: Mapping[str, Any] | None) -> bool:
        if value != value:  # NaN never wins
            return False
        if best is None:
            return True
        return value > best["metric"] if self.mode == "max" else value < best["metric"]

    # -- saving -------------------------------------------------------------------------------
    def save(
        self,
        iteration: int,
        *,
        models: Mapping[str, ModelEntry],
        ema: Mapping[str, nn.Module] | None = None,
        training_state: Mapping[str, Any] | None = None,
        metric: float | None = None,
        metrics: Mapping[str, float] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> Path:
        """Write ``iter_{iteration}`` and return its folder.

        ``models`` maps a file stem to ``(module, arch)`` or ``(module, arch, arch_kwargs)``;
        ``ema`` maps the same stems to EMA copies (stored in the same file, see :func:`save_model`).
        ``metric`` ranks checkpoints for "best" (default: ``metrics[best_metric]``).
        """
        if not isinstance(iteration, int) or iteration < 0:
            raise CheckpointError(f"CheckpointSaver.save: iteration must be a non-negative int, got {iteration!r}")
        ema = dict(ema or {})
        unknown = sorted(set(ema) - set(models))
        if unknown:
            raise CheckpointError(f"CheckpointSaver.save: EMA given for unknown models {unknown}; models: {sorted(models)}")
        if metric is None and self.best_metric and metrics and self.best_metric in metrics:
            metric = metrics[self.best_metric]
        metric = None if metric is None else float(metric)
        name = f"iter_{iteration}"
        final = self.directory / name
        needed = _estimated_bytes(models, ema, training_state)
        free = _free_bytes(self.directory)
        if free is not None and free < needed * self.SPACE_MARGIN + self.SPACE_RESERVE:
            raise CheckpointError(
                f"{self.directory}: not enough disk space for checkpoint {name}: {_size(free)} free, it needs about "
                f"{_size(needed)} (+{self.SPACE_MARGIN - 1:.0%} and {_size(self.SPACE_RESERVE)} margin); "
                f"{self._untouched()}. Free some space or train into another folder (--out)"
            )
        try:
            self._write(name, final, models, ema, training_state, metric, metrics, extra, iteration)
        except (OSError, RuntimeError) as exc:
            reason = _write_failure(exc)
            if reason is None:
                raise
            raise CheckpointError(
                f"{final}: writing the checkpoint failed: {reason}; {_size(_free_bytes(self.directory))} free on "
                f"that disk, the checkpoint needs about {_size(needed)}; {self._untouched()}"
            ) from exc
        self._prune(keep=final)
        return final

    def _untouched(self) -> str:
        latest = self.latest()
        return f"the last good checkpoint ({latest.name if latest else 'none'}) and {self.POINTER} are untouched"

    def _write(self, name, final, models, ema, training_state, metric, metrics, extra, iteration) -> None:
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp", dir=self.directory))
        try:
            os.chmod(tmp, umask_mode(directory=True))  # mkdtemp makes it 0o700
            files = {}
            for stem, entry in models.items():
                if not isinstance(entry, tuple) or len(entry) not in (2, 3):
                    raise CheckpointError(f"CheckpointSaver.save: models[{stem!r}] must be (module, arch[, arch_kwargs])")
                module, arch = entry[0], entry[1]
                kwargs = entry[2] if len(entry) == 3 else {}
                save_model(tmp / f"{stem}.safetensors", module, arch=arch, arch_kwargs=kwargs, ema_model=ema.get(stem),
                           iteration=iteration, metrics=metrics, extra=extra)
                files[stem] = {"file": f"{stem}.safetensors", "arch": arch, "ema": stem in ema}
            if training_state is not None:
                save_training_state(tmp / self.STATE, training_state)
            manifest = {
                "iteration": iteration, "models": files, "training_state": self.STATE if training_state is not None else None,
                "metric_name": self.best_metric, "metric": metric, "metrics": dict(metrics or {}),
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            }
            atomic_write(tmp / self.MANIFEST, lambda f: f.write(json.dumps(manifest, indent=1).encode()))
            if final.exists():  # re-saving an iteration (e.g. after a resume): swap, then drop the old copy
                trash = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-old", dir=self.directory))
                os.replace(final, trash / name)
                os.replace(tmp, final)
                shutil.rmtree(trash, ignore_errors=True)
            else:
                os.replace(tmp, final)
            fsync_dir(self.directory)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        best = self._best
        if metric is not None and self._better(metric, self._best):
            best = {"checkpoint": name, "iteration": iteration, "metric": metric}
        elif self._best is not None and self._best["checkpoint"] == name:  # re-saved the best iteration
            best = self._scan_best()
        pointer = {"latest": name, "iteration": iteration,
                   "best": None if best is None else {**best, "name": self.best_metric, "mode": self.mode}}
        atomic_write(self.directory / self.POINTER, lambda f: f.write(json.dumps(pointer, indent=1).encode()))
        self._best = best

    def _prune(self, keep: Path) -> None:
        if self.keep_last is None:
            return
        found = self.checkpoints()
        protected = set(found[-self.keep_last:]) | {keep}
        if self.best() is not None:
            protected.add(self.best())
        for p in found:
            if p not in protected:
                shutil.rmtree(p, ignore_errors=True)

    # -- resuming -----------------------------------------------------------------------------
    def restore(
        self,
        checkpoint: str | os.PathLike | None = None,
        *,
        models: Mapping[str, nn.Module] | None = None,
        ema: Mapping[str, nn.Module] | None = None,
        map_location: str | torch.device = "cpu",
    ) -> dict[str, Any] | None:
        """Load weights into ``models`` (raw weights) and ``ema`` (EMA weights) strictly and return the
        training state (``{}`` if none was saved) from ``checkpoint`` (default :meth:`latest`);
        None when there is nothing to resume from."""
        folder = Path(checkpoint) if checkpoint is not None else self.latest()
        if folder is None:
            return None
        for stems, prefer_ema in ((models or {}, False), (ema or {}, True)):
            for stem, module in stems.items():
                file = folder / f"{stem}.safetensors"
                if not file.is_file():
                    raise CheckpointError(f"{folder}: no weights for model {stem!r} (expected {file.name})")
                ckpt = read_checkpoint(file, prefer_ema=prefer_ema)
                if prefer_ema and not ckpt.ema:
                    warnings.warn(f"{file}: holds no EMA weights; initialising EMA {stem!r} from the model weights",
                                  stacklevel=2)
                load_state_dict_strict(unwrap_module(module), ckpt.state_dict, source=file)
        state_file = folder / self.STATE
        return load_training_state(state_file, map_location=map_location) if state_file.is_file() else {}


# -- disk space -----------------------------------------------------------------------------------

_TORCH_WRITE_FAILURES = ("inline_container", "PytorchStreamWriter", "unexpected pos", "file write failed")


def _write_failure(exc: BaseException) -> str | None:
    """What went wrong writing a file, for an ``OSError`` or torch's writer ``RuntimeError``; None for
    other errors (bugs), which propagate unchanged."""
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror or first_line(exc)}{where}"
    if isinstance(exc, RuntimeError) and any(s in str(exc) for s in _TORCH_WRITE_FAILURES):
        return f"{first_line(exc)} (torch.save could not write the file: usually a full disk)"
    return None


def _free_bytes(directory: Path) -> int | None:
    try:
        return shutil.disk_usage(directory).free
    except OSError:
        return None


def _size(n: int | float | None) -> str:
    if n is None:
        return "unknown space"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _tensor_bytes(obj: Any) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, nn.Module):
        return sum(_tensor_bytes(t) for t in obj.state_dict().values())
    if isinstance(obj, Mapping):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple, set)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def _estimated_bytes(models: Mapping[str, ModelEntry], ema: Mapping[str, nn.Module] | None,
                     training_state: Mapping[str, Any] | None) -> int:
    """Size of a checkpoint: its tensors (weights, EMA copies, optimizer state) plus 64 KiB per file."""
    weights = sum(_tensor_bytes(entry[0]) for entry in models.values() if isinstance(entry, tuple) and entry)
    return weights + _tensor_bytes(dict(ema or {})) + _tensor_bytes(training_state) + 64 * 1024 * (len(models) + 2)
