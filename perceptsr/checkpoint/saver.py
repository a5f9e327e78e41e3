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
from perceptsr.checkpoint.loading import load_state_dict_strict
from perceptsr.checkpoint.training_state import load_training_state, save_training_state
from perceptsr.errors import CheckpointError

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
    """

    POINTER = "latest.json"
    MANIFEST = "manifest.json"
    STATE = "training_state.pt"

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
        for stale in self.directory.glob(".iter_*.tmp*"):  # left behind by a crash mid-save
            shutil.rmtree(stale, ignore_errors=True)
        self._best: dict[str, Any] | None = self._scan_best()

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
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp", dir=self.directory))
        try:
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
        if metric is not None and self._better(metric, self._best):
            self._best = {"checkpoint": name, "iteration": iteration, "metric": metric}
        elif self._best is not None and self._best["checkpoint"] == name:  # re-saved the best iteration
            self._best = self._scan_best()
        pointer = {"latest": name, "iteration": iteration,
                   "best": None if self._best is None else {**self._best, "name": self.best_metric, "mode": self.mode}}
        atomic_write(self.directory / self.POINTER, lambda f: f.write(json.dumps(pointer, indent=1).encode()))
        self._prune(keep=final)
        return final

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
