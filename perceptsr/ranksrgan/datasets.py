"""RankSRGAN stage 2 data: the patches of a rank dataset grouped by location, and the Siamese pairs.

Reads the folder written by :func:`perceptsr.ranksrgan.rank_data.build_rank_dataset` or one built by
the RankSRGAN release (spec §2.5-2.7): :class:`RankGroups` groups one split's labelled patches by
location (levels best first), and :class:`RankPairDataset` draws one pair of levels per location
(uniformly, or with the hard pair, the two gap levels, ``hard_pair_weight`` times as likely).

Layouts of split ``S`` (``valid`` also answers to the release's name ``test``)::

    perceptsr rank-data   S_label.txt            train_patch_<level>/, valid_patch_all/
    RankSRGAN release     <D>_S_patch_label.txt  <D>_S_patch_<level>/ or <D>_S_patch_all/  (D e.g. DF2K)

A label file holds ``<n>_<level>.png <score>`` lines, higher = worse. Without perceptsr's
``summary.json`` the level order is the release's (esrgan, srgan, srres; hard pair esrgan-srgan)
when the levels are the release's, else the order of their mean labels (no hard pair).
"""

from __future__ import annotations

import json
import os
import re
from itertools import combinations
from pathlib import Path

import numpy as np
import torch

from perceptsr.errors import ConfigError, ImageReadError
from perceptsr.ranksrgan.rank_data import SUMMARY

__all__ = ["read_rank_labels", "load_patch", "same_window", "RankGroups", "RankPairDataset"]

_NAME = re.compile(r"^(\d+)_(.+)\.png$")
RELEASE_LEVELS = ("esrgan", "srgan", "srres")  # the release's levels, best first; the first two are its gap pair
SPLIT_ALIASES = {"valid": ("valid", "test")}  # the release's Ranker config names its valid files *_test_*


def read_rank_labels(path) -> list[tuple[str, float]]:
    """``[(file name, score)]`` from a RankSRGAN label file (``name score`` per line)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ImageReadError(f"{path}: cannot read the label file ({exc.strerror or exc})") from None
    out = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            if len(parts) != 2:
                raise ValueError
            out.append((parts[0], float(parts[1])))
        except ValueError:
            raise ConfigError(f"{path}:{i}: expected 'name score', got {line!r}") from None
    return out


def _locate(root: Path, split: str) -> tuple[Path, list[str]]:
    """(label file, the folders that may hold its patches, ``{level}`` to fill in) of ``split``."""
    aliases = SPLIT_ALIASES.get(split, (split,))
    own = root / f"{split}_label.txt"
    if own.is_file():
        stem = ""
        label = own
    else:
        found = sorted({p for a in aliases for p in root.glob(f"*_{a}_patch_label.txt")})
        if not found:
            raise ConfigError(f"{root}: no {own.name} (perceptsr rank-data) nor *_{split}_patch_label.txt (the "
                              f"RankSRGAN release, e.g. DF2K_{split}_patch_label.txt); is this a rank dataset?")
        if len(found) > 1:
            raise ConfigError(f"{root}: several label files for the {split} split: "
                              f"{', '.join(p.name for p in found)}; keep one")
        label = found[0]
        stem = next(label.name[: -len(f"{a}_patch_label.txt")] for a in aliases
                    if label.name.endswith(f"_{a}_patch_label.txt"))
    return label, [f"{stem}{a}_patch_{kind}" for a in aliases for kind in ("{level}", "all")]


def _level_order(levels: set[str], by_id: dict, summary: dict) -> tuple[list[str], tuple[str, ...]]:
    """(levels best first, hard pair) from ``summary.json``, the release's names, or the mean labels."""
    if summary.get("levels"):
        order = [lv["name"] for lv in summary["levels"]]
        known = [lv for lv in order if lv in levels]
        return known + sorted(levels - set(known)), tuple(summary.get("gap_levels", ()))
    if levels <= set(RELEASE_LEVELS):
        hard = RELEASE_LEVELS[:2] if set(RELEASE_LEVELS[:2]) <= levels else ()
        return [lv for lv in RELEASE_LEVELS if lv in levels], tuple(hard)
    means = {lv: float(np.mean([g[lv][1] for g in by_id.values() if lv in g])) for lv in levels}
    return sorted(levels, key=lambda lv: (means[lv], lv)), ()


class RankGroups:
    """The patches of one split grouped by location: ``groups[i] = [(level, path, score), ...]``,
    levels in the dataset's order (best first). ``hard_pair`` holds the gap levels when known.
    Reads perceptsr's and the release's layouts (module docstring)."""

    def __init__(self, root, split: str = "train"):
        self.root = Path(root)
        label_file, patterns = _locate(self.root, split)
        summary_file = self.root / SUMMARY
        summary = json.loads(summary_file.read_text(encoding="utf-8")) if summary_file.is_file() else {}
        listings: dict[str, set[str]] = {}

        def find(name: str, level: str) -> Path | None:
            for pattern in patterns:
                folder = pattern.format(level=level)
                if folder not in listings:
                    d = self.root / folder
                    listings[folder] = set(os.listdir(d)) if d.is_dir() else set()
                if name in listings[folder]:
                    return self.root / folder / name
            return None

        by_id: dict[int, dict[str, tuple[Path, float]]] = {}
        for name, score in read_rank_labels(label_file):
            m = _NAME.match(name)
            if not m:
                raise ConfigError(f"{label_file}: file name {name!r} is not '<n>_<level>.png'")
            n, level = int(m.group(1)), m.group(2)
            path = find(name, level)
            if path is None:
                where = ", ".join(f"{p.format(level=level)}/" for p in patterns)
                raise ImageReadError(f"{label_file}: {name} is listed but is in none of {where} under {self.root}")
            by_id.setdefault(n, {})[level] = (path, score)
        self.levels, self.hard_pair = _level_order({lv for g in by_id.values() for lv in g}, by_id, summary)
        self.ids = sorted(by_id)
        self.groups = [[(lv, *by_id[n][lv]) for lv in self.levels if lv in by_id[n]] for n in self.ids]
        if any(len(g) < 2 for g in self.groups):
            bad = next(n for n, g in zip(self.ids, self.groups) if len(g) < 2)
            raise ConfigError(f"{label_file}: location {bad} has fewer than two labelled levels")

    def __len__(self) -> int:
        return len(self.groups)


def load_patch(path: Path) -> torch.Tensor:
    """One patch file as a (3, H, W) float32 RGB tensor in [0, 1]."""
    from perceptsr.data.io import read_image

    return torch.from_numpy(np.ascontiguousarray(read_image(path, mode="rgb").transpose(2, 0, 1)))


def same_window(patches, size: int, rng: np.random.Generator | None, path: Path):
    """The same ``size`` x ``size`` window of each patch: drawn from ``rng``, or the centre one."""
    h, w = patches[0].shape[-2:]
    if size > min(h, w):
        raise ConfigError(f"{path}: a {h}x{w} patch is smaller than the Ranker crop {size}")
    top = int(rng.integers(0, h - size + 1)) if rng is not None else (h - size) // 2
    left = int(rng.integers(0, w - size + 1)) if rng is not None else (w - size) // 2
    return tuple(p[..., top : top + size, left : left + size] for p in patches)


class RankPairDataset(torch.utils.data.Dataset):
    """Siamese pairs: item ``(epoch, j)`` is one pair of levels of location ``j % len``, drawn from
    ``(seed, epoch, j)``: ``{"img1", "img2"}`` (3, H, W) float32 in [0, 1], ``{"score1", "score2"}``;
    ``img1`` is the better level's patch, as in the release (pairs (esrgan, srgan), (esrgan, srres),
    (srgan, srres)), unless ``swap_order``, which swaps each pair with probability 1/2. The order
    matters only when the two sides go through the Ranker in separate forward passes (train-mode
    BatchNorm per side; see :class:`~perceptsr.ranksrgan.config.RankerObjectiveConfig`).

    Pairs are uniform over the location's level pairs, except that the hard pair (the two gap
    levels) is ``hard_pair_weight`` times as likely (3 gives the release's commented 3:1:1 mix).
    No augmentation, as in the release. ``crop`` > 0 cuts one random ``crop`` x ``crop`` window,
    the same for both patches of the pair, from ``(seed, epoch, j)``; the labels stay those of the
    whole patches (see :class:`~perceptsr.ranksrgan.config.RankerObjectiveConfig`)."""

    def __init__(self, root, split: str = "train", *, seed: int = 0, hard_pair_weight: float = 1.0,
                 swap_order: bool = False, crop: int = 0):
        self.data = RankGroups(root, split)
        if not len(self.data):
            raise ConfigError(f"{root}: the {split} split is empty")
        self.crop = int(crop)
        self.seed = int(seed)
        self.hard_pair_weight = float(hard_pair_weight)
        self.swap_order = bool(swap_order)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.data)

    def pair_weights(self, group) -> tuple[list[tuple[int, int]], np.ndarray]:
        pairs = list(combinations(range(len(group)), 2))
        hard = set(self.data.hard_pair)
        w = np.array([self.hard_pair_weight if {group[a][0], group[b][0]} == hard else 1.0 for a, b in pairs])
        return pairs, w / w.sum()

    def __getitem__(self, key) -> dict:
        epoch, j = key if isinstance(key, tuple) else (self.epoch, key)
        group = self.data.groups[j % len(self.data)]
        pairs, p = self.pair_weights(group)
        rng = np.random.default_rng([self.seed, epoch, j])
        a, b = pairs[int(rng.choice(len(pairs), p=p))]  # the better level first, as the release
        if rng.random() < 0.5 and self.swap_order:
            a, b = b, a
        x1, x2 = load_patch(group[a][1]), load_patch(group[b][1])
        if self.crop:
            x1, x2 = same_window((x1, x2), self.crop, rng, group[a][1])
        return {"img1": x1, "img2": x2,
                "score1": torch.tensor(group[a][2], dtype=torch.float32),
                "score2": torch.tensor(group[b][2], dtype=torch.float32)}
