"""What the loop hands an objective: the :class:`RunContext`.

Data flows one way, config -> loop -> objective -> checkpoint: an objective never imports the
engine. Whatever it needs from the run comes in here:

- :class:`Runtime`: device, numerics (bf16, channels_last, compile), DDP wrapping, grad clipping;
- :class:`RunLog`: console + ``log.txt`` lines and TensorBoard scalars, images and figures;
- :class:`Artifacts`: files under the run folder, written atomically by rank 0 only;
- :meth:`RunContext.validate`: the loop's own validation (same images, metrics and protocol),
  for methods that need scores beyond the loop's periodic validation.

A context without a run folder (``RunContext(Runtime(device))``) serves tests and benchmarks:
logging and artifacts are then no-ops, and :meth:`RunContext.validate` raises.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from perceptsr.distributed import DistInfo, all_true
from perceptsr.errors import ConfigError

__all__ = ["Artifacts", "RunContext", "RunLog", "Runtime"]


@dataclass
class Runtime:
    """Device, numerics and distributed wrapping."""

    device: torch.device
    dist: DistInfo = field(default_factory=DistInfo)
    bf16: bool = False
    channels_last: bool = False
    compile: bool = False
    grad_clip: float | None = None

    def autocast(self):
        """bf16 autocast for forward passes when enabled (CPU or CUDA), else a no-op."""
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def prepare_module(self, module: nn.Module) -> nn.Module:
        """Move to the device (and channels_last) in place; returns ``module``."""
        module.to(self.device)
        if self.channels_last:
            module.to(memory_format=torch.channels_last)
        return module

    def wrap(self, module: nn.Module) -> nn.Module:
        """The module to run forward passes through: DDP-wrapped when distributed, then compiled.

        Keep the unwrapped module for state dicts; only trainable modules should be wrapped.
        """
        wrapped = module
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            wrapped = nn.parallel.DistributedDataParallel(module, device_ids=ids)
        if self.compile:
            wrapped = torch.compile(wrapped)
        return wrapped

    def all_finite(self, value: torch.Tensor) -> bool:
        """True when ``value`` is finite on every rank (the same answer everywhere)."""
        return all_true(bool(torch.isfinite(value).all()), self.dist, self.device)


class RunLog:
    """Lines to the console (through tqdm) and ``log.txt``; scalars, images and figures to TensorBoard."""

    def __init__(self, run_dir: Path | None, enabled: bool, console: bool = True):
        self.enabled = enabled
        self.console = console and enabled
        self.file = open(run_dir / "log.txt", "a", encoding="utf-8") if enabled and run_dir else None
        self.writer = None
        if enabled and run_dir:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(run_dir / "tb"))

    def info(self, message: str) -> None:
        if not self.enabled:
            return
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}"
        if self.file:
            self.file.write(line + "\n")
            self.file.flush()
        if self.console:
            from tqdm import tqdm

            tqdm.write(line, file=sys.stderr)

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        if self.writer:
            for k, v in values.items():
                self.writer.add_scalar(k, v, step)

    def image(self, tag: str, chw: torch.Tensor, step: int) -> None:
        if self.writer:
            self.writer.add_image(tag, chw.clamp(0, 1).cpu(), step, dataformats="CHW")

    def figure(self, tag: str, figure: Any, step: int) -> None:
        """A matplotlib figure to TensorBoard (closed afterwards)."""
        if self.writer:
            self.writer.add_figure(tag, figure, step, close=True)

    def close(self) -> None:
        if self.writer:
            self.writer.flush()
            self.writer.close()
        if self.file:
            self.file.close()


class Artifacts:
    """Files a method writes into the run folder besides checkpoints (populations, phase logs).

    Only rank 0 writes (``enabled``); every write is atomic (temp file + rename), so an interrupted
    run never leaves half a file behind.
    """

    def __init__(self, run_dir: Path | None, enabled: bool):
        self.root = run_dir
        self.enabled = enabled and run_dir is not None

    def path(self, *parts: str | Path) -> Path:
        if self.root is None:
            raise ConfigError("this objective needs a run folder (it was built without one)")
        return self.root.joinpath(*parts)

    def write_json(self, relative: str | Path, obj: Any) -> Path | None:
        if not self.enabled:
            return None
        from perceptsr.checkpoint import atomic_write

        path = self.path(relative)
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(obj, indent=2, sort_keys=True) + "\n"
        atomic_write(path, lambda f: f.write(text.encode("utf-8")))
        return path

    def rewrite_jsonl(self, relative: str | Path, keep: Callable[[dict], bool], new_rows: Iterable[dict]) -> None:
        """Keep the lines whose record passes ``keep``, then append ``new_rows``; atomic.

        A resumed run drops what it logged after its checkpoint, so the log matches an
        uninterrupted run.
        """
        if not self.enabled:
            return
        from perceptsr.checkpoint import atomic_write

        path = self.path(relative)
        kept = []
        if path.is_file():
            kept = [line for line in path.read_text(encoding="utf-8").splitlines()
                    if line.strip() and keep(json.loads(line))]
        kept += [json.dumps(row) for row in new_rows]
        text = "".join(line + "\n" for line in kept)
        atomic_write(path, lambda f: f.write(text.encode("utf-8")))


@dataclass
class RunContext:
    """Everything an objective may use from the run; see the module docstring."""

    runtime: Runtime
    run_dir: Path | None = None
    log: RunLog = field(default_factory=lambda: RunLog(None, enabled=False))
    artifacts: Artifacts = field(default_factory=lambda: Artifacts(None, enabled=False))
    #: the loop's :class:`~perceptsr.train.validation.Validator` (None without ``data.val``, and on ranks > 0)
    validator: Callable[..., dict[str, float]] | None = None

    def validate(self, model: nn.Module, *, prefix: str = "val/", step: int | None = None) -> dict[str, float]:
        """``{prefix + metric: mean over data.val}`` for ``model``, exactly as the loop validates."""
        if self.validator is None:
            raise ConfigError("this run has no validation set (config section 'data.val') on this process")
        return self.validator(model, prefix=prefix, step=step)

    @property
    def dist(self) -> DistInfo:
        return self.runtime.dist

    @property
    def is_main(self) -> bool:
        return self.runtime.dist.is_main
