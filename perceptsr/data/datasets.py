"""Paired HR/LR datasets for SR training and validation, with seeding and sharding that survive DDP.

A training sample is addressed by ``(epoch, index)``; its crop and augmentation come from a
generator seeded by ``(seed, epoch, index)`` alone, so a run gives the same batches whatever the
number of workers, the worker that loads a sample or the process rank. LR images come from a
folder (paired by file stem) or are made from the modcropped HR with MATLAB bicubic on the
integer grid, exactly as MATLAB made the benchmark LR folders.
"""

from __future__ import annotations

import functools
import random
import re
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from perceptsr.data.color import modcrop
from perceptsr.data.imresize import imresize
from perceptsr.data.io import list_images, read_image, read_image_info
from perceptsr.distributed import current as current_group
from perceptsr.errors import ConfigError, ImageReadError

__all__ = [
    "pair_files",
    "PairedImageDataset",
    "PairedValDataset",
    "EpochSampler",
    "worker_init_fn",
    "build_train_loader",
    "build_val_loader",
]

_MAX_LISTED = 10


def _names(paths) -> str:
    names = [Path(p).name for p in paths]
    more = f" ... and {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else ""
    return ", ".join(names[:_MAX_LISTED]) + more


def pair_files(hr_dir, lr_dir, scale: int) -> list[tuple[Path, Path]]:
    """Pair HR and LR files by stem; an LR stem may carry BasicSR's scale suffix (``babyx4``).

    Raises :class:`ConfigError` listing unmatched, duplicated or ambiguous names.
    """
    hr_files, lr_files = list_images(hr_dir), list_images(lr_dir)
    suffix = re.compile(rf"[_-]?[xX]{scale}$")
    for folder, files in ((hr_dir, hr_files), (lr_dir, lr_files)):
        stems = [p.stem for p in files]
        dupes = sorted({p.name for p in files if stems.count(p.stem) > 1})
        if dupes:
            raise ConfigError(f"{folder}: several files share a name stem: {', '.join(dupes)}")
    exact = {p.stem: p for p in lr_files}
    suffixed: dict[str, list[Path]] = {}
    for p in lr_files:
        key = suffix.sub("", p.stem)
        if key != p.stem:
            suffixed.setdefault(key, []).append(p)
    pairs, missing = [], []
    for hr in hr_files:
        candidates = ([exact[hr.stem]] if hr.stem in exact else []) + suffixed.get(hr.stem, [])
        if len(candidates) > 1:
            raise ConfigError(f"{lr_dir}: several LR files match {hr.name}: {_names(candidates)}")
        if candidates:
            pairs.append((hr, candidates[0]))
        else:
            missing.append(hr)
    extra = sorted(set(lr_files) - {lr for _, lr in pairs})
    if missing or extra:
        lines = [f"HR folder {hr_dir} and LR folder {lr_dir} (x{scale}) do not pair up by file name:"]
        if missing:
            lines.append(f"  HR without LR ({len(missing)}): {_names(missing)}")
        if extra:
            lines.append(f"  LR without HR ({len(extra)}): {_names(extra)}")
        raise ConfigError("\n".join(lines))
    return pairs


def _on_grid(img: np.ndarray, bits: int) -> np.ndarray:
    """A float [0, 1] image from a ``bits``-deep file as the file's integers (exact), or unchanged if float."""
    if bits not in (8, 16):
        return img
    top = 2**bits - 1
    return np.floor(img.astype(np.float64) * top + 0.5).astype(np.uint8 if bits == 8 else np.uint16)


def _to_tensor(img: np.ndarray) -> torch.Tensor:
    """HWC integer-grid or float image -> float32 CHW tensor in [0, 1]."""
    if img.dtype.kind == "u":
        img = img.astype(np.float32) / np.iinfo(img.dtype).max
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32))


class _TooSmall(ConfigError):
    """An image smaller than the patch: a config error, or skipped with ``skip_bad``."""


class _PairedBase(Dataset):
    """File pairing, up-front checks, bad-file handling and caching shared by train and val sets."""

    def __init__(self, hr_dir, lr_dir=None, *, scale: int, min_lr_size: int = 1, cache: bool = False,
                 skip_bad: bool = False):
        if int(scale) != scale or scale < 1:
            raise ConfigError(f"scale must be a positive integer, got {scale!r}")
        self.scale = int(scale)
        self.hr_dir, self.lr_dir = Path(hr_dir), (Path(lr_dir) if lr_dir is not None else None)
        pairs = (
            pair_files(self.hr_dir, self.lr_dir, self.scale)
            if self.lr_dir is not None
            else [(p, None) for p in list_images(self.hr_dir)]
        )
        self.bad_files: list[tuple[Path, str]] = []  # (file, reason) of skipped pairs
        self._pairs: list[tuple[Path, Path | None, int, int]] = []  # hr, lr, hr bits, lr bits
        self._cache: list[tuple[np.ndarray, np.ndarray]] | None = [] if cache else None
        for hr, lr in pairs:
            try:
                entry = self._check(hr, lr, min_lr_size)
                if cache or skip_bad:  # full decode: finds truncated files that headers hide
                    loaded = self._decode(*entry)
            except (ImageReadError, _TooSmall) as exc:
                if not skip_bad:
                    raise
                path = lr if lr is not None and str(exc).startswith(str(lr)) else hr
                self.bad_files.append((path, str(exc)))
                what = "too small" if isinstance(exc, _TooSmall) else "unreadable"
                warnings.warn(f"skipping {what} image {exc}", stacklevel=2)
                continue
            self._pairs.append(entry)
            if cache:
                self._cache.append(loaded)
        if not self._pairs:
            raise ConfigError(f"{self.hr_dir}: no readable images found")

    def _check(self, hr: Path, lr: Path | None, min_lr_size: int):
        """Header-level checks: readable, LR x scale == modcropped HR, LR at least ``min_lr_size``."""
        hr_info = read_image_info(hr)
        h, w = hr_info.height, hr_info.width
        if lr is None:
            lr_bits, lh, lw = hr_info.bits, h // self.scale, w // self.scale
        else:
            lr_info = read_image_info(lr)
            lr_bits, lh, lw = lr_info.bits, lr_info.height, lr_info.width
            if (h // self.scale, w // self.scale) != (lh, lw):
                raise ConfigError(
                    f"{hr} ({h}x{w}) is not {self.scale}x {lr} ({lh}x{lw}), even after modcrop"
                )
        if min(lh, lw) < min_lr_size:
            raise _TooSmall(
                f"{hr}: LR size {lh}x{lw} is smaller than the LR patch {min_lr_size}x{min_lr_size}"
            )
        return hr, lr, hr_info.bits, lr_bits

    def _decode(self, hr: Path, lr: Path | None, hr_bits: int, lr_bits: int) -> tuple[np.ndarray, np.ndarray]:
        """Modcropped HR and LR as HWC arrays on the files' integer grid (float for float files)."""
        hr_img = modcrop(_on_grid(read_image(hr), hr_bits), self.scale)
        if lr is None:
            lr_img = imresize(hr_img, 1 / self.scale)
        else:
            lr_img = _on_grid(read_image(lr), lr_bits)
        return np.ascontiguousarray(hr_img), lr_img

    def _load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self._cache[i] if self._cache is not None else self._decode(*self._pairs[i])

    def __len__(self) -> int:
        return len(self._pairs)


class PairedImageDataset(_PairedBase):
    """Aligned random HR/LR patches with flip/rot90 augmentation, for training.

    ``dataset[(epoch, j)]`` (what :class:`EpochSampler` yields) returns sample ``j % len(dataset)``
    with a crop/augmentation drawn from ``(seed, epoch, j)``; ``dataset[j]`` uses
    :attr:`epoch`, set by :meth:`set_epoch` (which persistent workers do not see). Items are
    ``{"lr": (3, p/s, p/s), "hr": (3, p, p), "name": str}`` float32 in [0, 1].
    ``cache=True`` keeps every decoded pair in RAM (on the integer grid: 1 byte per 8-bit sample);
    ``skip_bad=True`` decodes every file once up front and skips unreadable ones and those smaller
    than the patch, listing them in :attr:`bad_files` and warning about each; otherwise a bad file
    raises ``ImageReadError`` (a too-small one ``ConfigError``).
    """

    def __init__(self, hr_dir, lr_dir=None, *, scale: int, patch_size: int, seed: int = 0, hflip: bool = True,
                 vflip: bool = True, rot90: bool = True, cache: bool = False, skip_bad: bool = False):
        if patch_size < 1 or patch_size % scale:
            raise ConfigError(f"patch_size must be a positive multiple of scale {scale}, got {patch_size!r}")
        super().__init__(hr_dir, lr_dir, scale=scale, min_lr_size=patch_size // scale, cache=cache,
                         skip_bad=skip_bad)
        self.patch_size = patch_size
        self.seed = int(seed)
        self.hflip, self.vflip, self.rot90 = hflip, vflip, rot90
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Epoch used for plain integer indices."""
        self.epoch = int(epoch)

    def __getitem__(self, key) -> dict:
        epoch, j = key if isinstance(key, tuple) else (self.epoch, key)
        i = j % len(self)
        hr, lr = self._load(i)
        rng = np.random.default_rng([self.seed, epoch, j])
        lp, s = self.patch_size // self.scale, self.scale
        top = int(rng.integers(0, lr.shape[0] - lp + 1))
        left = int(rng.integers(0, lr.shape[1] - lp + 1))
        lr = lr[top : top + lp, left : left + lp]
        hr = hr[top * s : (top + lp) * s, left * s : (left + lp) * s]
        flip_h, flip_v, transpose = rng.random(3) < 0.5  # always drawn: flags never shift the stream
        if self.hflip and flip_h:
            lr, hr = lr[:, ::-1], hr[:, ::-1]
        if self.vflip and flip_v:
            lr, hr = lr[::-1], hr[::-1]
        if self.rot90 and transpose:
            lr, hr = lr.transpose(1, 0, 2), hr.transpose(1, 0, 2)
        return {"lr": _to_tensor(lr), "hr": _to_tensor(hr), "name": self._pairs[i][0].stem}


class PairedValDataset(_PairedBase):
    """Whole modcropped HR images with their LR, for validation: ``{"lr", "hr", "name"}`` CHW float32."""

    def __getitem__(self, i: int) -> dict:
        hr, lr = self._load(i)
        return {"lr": _to_tensor(lr), "hr": _to_tensor(hr), "name": self._pairs[i][0].stem}


class EpochSampler(Sampler):
    """``DistributedSampler`` semantics, yielding ``(epoch, index)`` keys for :class:`PairedImageDataset`.

    Epoch ``e`` shuffles ``range(length * repeat)`` with a generator seeded by ``(seed, e)``, pads it
    (or drops the tail if ``drop_last``) to a multiple of the world size and gives rank ``r`` every
    world-size-th index from ``r``: ranks see disjoint shards. ``repeat`` lengthens epochs of tiny
    sets; repeated indices get their own crops. Call :meth:`set_epoch` before each epoch.
    """

    def __init__(self, length: int, *, seed: int = 0, shuffle: bool = True, repeat: int = 1,
                 rank: int | None = None, world_size: int | None = None, drop_last: bool = False):
        group = current_group()
        dist_rank, dist_world = group.rank, group.world_size
        self.rank = dist_rank if rank is None else rank
        self.world_size = dist_world if world_size is None else world_size
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside world size {self.world_size}")
        if length < 1 or repeat < 1:
            raise ValueError(f"length and repeat must be positive, got {length} and {repeat}")
        self.total = length * repeat
        self.seed, self.shuffle, self.drop_last = int(seed), shuffle, drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        if self.drop_last:
            return self.total // self.world_size
        return -(-self.total // self.world_size)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(int(np.random.SeedSequence([self.seed, self.epoch]).generate_state(1, np.uint64)[0] >> 1))
            order = torch.randperm(self.total, generator=g).tolist()
        else:
            order = list(range(self.total))
        size = len(self) * self.world_size
        order = (order * -(-size // self.total))[:size]  # pad by wrapping around, or drop the tail
        for j in order[self.rank :: self.world_size]:
            yield self.epoch, j


def worker_init_fn(worker_id: int, *, seed: int = 0, rank: int = 0) -> None:
    """Seed ``random``, NumPy's global generator and torch from ``(seed, rank, worker_id)``.

    The datasets here do not use global generators; this keeps user transforms reproducible and
    different between workers and ranks. Bind ``seed``/``rank`` with ``functools.partial``.
    """
    state = np.random.SeedSequence([seed, rank, worker_id]).generate_state(2, np.uint32)
    random.seed(int(state[0]))
    np.random.seed(int(state[0]))
    torch.manual_seed((int(state[1]) << 32) | int(state[0]))


def build_train_loader(hr_dir, lr_dir=None, *, scale: int, patch_size: int, batch_size: int, num_workers: int = 0,
                       seed: int = 0, cache: bool = False, hflip: bool = True, vflip: bool = True,
                       rot90: bool = True, repeat: int = 1, skip_bad: bool = False,
                       pin_memory: bool = False) -> DataLoader:
    """A training ``DataLoader`` over this rank's shard: :class:`PairedImageDataset` + :class:`EpochSampler`.

    Incomplete batches are dropped. Call ``loader.sampler.set_epoch(epoch)`` at the start of each
    epoch; persistent workers are safe because the epoch travels with every index.
    """
    dataset = PairedImageDataset(hr_dir, lr_dir, scale=scale, patch_size=patch_size, seed=seed, hflip=hflip,
                                 vflip=vflip, rot90=rot90, cache=cache, skip_bad=skip_bad)
    sampler = EpochSampler(len(dataset), seed=seed, repeat=repeat)
    if len(sampler) < batch_size:
        raise ConfigError(
            f"{hr_dir}: {len(sampler)} samples per process (x{repeat} repeat) is less than one batch of {batch_size}"
        )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=True,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        worker_init_fn=functools.partial(worker_init_fn, seed=seed, rank=sampler.rank),
        generator=torch.Generator().manual_seed(seed),
    )


def build_val_loader(hr_dir, lr_dir=None, *, scale: int, num_workers: int = 0, cache: bool = False,
                     skip_bad: bool = False) -> DataLoader:
    """A validation ``DataLoader`` of whole images (batch size 1, file order), on every rank."""
    dataset = PairedValDataset(hr_dir, lr_dir, scale=scale, cache=cache, skip_bad=skip_bad)
    return DataLoader(dataset, batch_size=1, shuffle=False, num_workers=num_workers)
