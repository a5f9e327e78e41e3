"""RankSRGAN stages 1 and 2: the rank dataset and the Ranker's training (spec ``shared/specs/ranksrgan.md``).

Stage 1, :func:`build_rank_dataset` (``perceptsr rank-data``). Given N >= 2 *levels* (folders of SR
outputs of the same images, best level first; optionally the HR images as a level), per image:

1. cut aligned ``patch_size`` patches on a ``stride`` grid (top-left corners 0, stride, ... while the
   patch fits: RankSRGAN's MATLAB grid, 0-based);
2. texture filter: keep a location when the :func:`sharpness` of the *texture level's* patch (the
   best SR level by default) is >= ``texture_threshold``;
3. gap filter: keep it when the metric of the two *gap levels* (the two best SR levels by default)
   differs by more than ``min_gap``; the metric runs there with the filter protocol of the release
   (``computequality`` on the RGB uint8 patch: gray, no shave) unless ``gap_preset`` is given;
4. cap: at most ``max_patches`` locations per image (a seeded random subset);
5. label every level's patch with the metric under ``preset`` (``pirm``: Y of MATLAB ``rgb2ycbcr``
   on uint8, shave 4) and write the patches and labels.

Labels follow the Ranker's convention *higher = worse*: lower-is-better metrics (NIQE, PI) are kept
as they are, Ma becomes ``10 - Ma`` (as the release logs it), other higher-is-better metrics are
negated (``label_transform="auto"``).

Output layout (RankSRGAN-compatible names; ``n`` numbers the kept locations from 1)::

    train_patch_<level>/<n>_<level>.png    one folder per level (the release's DF2K_train_patch_*)
    valid_patch_all/<n>_<level>.png        the valid split in one folder, as its Ranker config expects
    train_label.txt, valid_label.txt       "<n>_<level>.png <score with 6 decimals>", worst level first
    summary.json                           levels, options, metric protocol, counts
    progress.jsonl                         one line per finished image (resume); .work/ scratch

A location goes to the valid split with probability ``valid_fraction``, drawn from ``(seed, n)``
(``split_by="patch"``, the release's per-triplet split) or from ``(seed, image name)``
(``split_by="image"``: no overlapping patches across the split). Everything is seeded and the
images are processed in sorted order, so a run gives the same files whatever ``workers`` is, and a
killed run resumed on the same folder continues after its last finished image.

Stage 2: :class:`RankPairDataset` draws one pair of levels per location (uniformly, or with the hard
pair, the two gap levels, ``hard_pair_weight`` times as likely), :func:`ranking_loss` is
``MarginRankingLoss(margin)`` on scores clamped to ``[-clamp, clamp]`` with target +1 when the first
image's label is >= the second's (higher score = worse image), :func:`regression_loss` the L1/L2
regression variant, and :class:`RankerObjective` (objective type ``ranker``) trains the Ranker in
the engine's loop and validates it with :func:`evaluate_ranker` (pairwise ordering accuracy within
each location, Spearman and Kendall correlation of scores and labels over the valid split).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import time
import zlib
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from perceptsr.errors import ConfigError, ImageReadError, PerceptsrError
from perceptsr.train.objectives import Objective, register_objective

__all__ = [
    "RankLevel",
    "RankDataOptions",
    "patch_grid",
    "sharpness",
    "label_patches",
    "label_transform",
    "prepare_level",
    "build_rank_dataset",
    "read_rank_labels",
    "RankGroups",
    "RankPairDataset",
    "ranking_loss",
    "regression_loss",
    "pairwise_accuracy",
    "rank_correlations",
    "evaluate_ranker",
    "RankerObjective",
]

FORMAT = "perceptsr-rank-data/1"
PROGRESS = "progress.jsonl"
SUMMARY = "summary.json"
WORK = ".work"
_NAME = re.compile(r"^(\d+)_(.+)\.png$")


# ================================================================================================
# stage 1: rank dataset


@dataclass(frozen=True)
class RankLevel:
    """One level: a folder of images named like the other levels'. ``hr`` marks the HR level."""

    name: str
    folder: str
    hr: bool = False


@dataclass(frozen=True)
class RankDataOptions:
    """Options of :func:`build_rank_dataset` (defaults: the RankSRGAN release, spec §2)."""

    patch_size: int = 296
    stride: int = 148
    texture_threshold: float = 40.0
    texture_level: str | None = None  # None = the first non-HR level
    gap_levels: tuple[str, str] | None = None  # None = the first two non-HR levels
    min_gap: float = 0.1  # keep when |metric(a) - metric(b)| > min_gap; 0 keeps all
    gap_preset: str | None = None  # None = release filter protocol (gray, no shave); else a preset
    max_patches: int = 200
    valid_fraction: float = 0.1
    split_by: str = "patch"  # "patch" (release) or "image"
    seed: int = 0
    metric: str = "niqe"
    metric_options: dict = field(default_factory=dict)
    preset: str | None = "pirm"
    label_transform: str = "auto"  # auto, none, negate, ten_minus
    scale: int = 4  # a level may exceed the others by < scale px per side (HR before modcrop)
    label_batch: int = 64  # patches per metric call

    def __post_init__(self):
        checks = [
            (self.patch_size >= 8, "patch_size", "must be >= 8"),
            (0 < self.stride, "stride", "must be positive"),
            (self.max_patches >= 1, "max_patches", "must be >= 1"),
            (0.0 <= self.valid_fraction < 1.0, "valid_fraction", "must be in [0, 1)"),
            (self.split_by in ("patch", "image"), "split_by", "must be 'patch' or 'image'"),
            (self.min_gap >= 0, "min_gap", "must be >= 0"),
            (self.label_transform in ("auto", "none", "negate", "ten_minus"), "label_transform",
             "must be auto, none, negate or ten_minus"),
            (self.label_batch >= 1, "label_batch", "must be >= 1"),
        ]
        for ok, key, message in checks:
            if not ok:
                raise ConfigError(f"rank-data option {key}: {message}, got {getattr(self, key)!r}")


def patch_grid(height: int, width: int, size: int, stride: int) -> list[tuple[int, int]]:
    """0-based top-left corners of the ``size`` patches on a ``stride`` grid that fit the image."""
    tops = range(0, height - size + 1, stride)
    lefts = range(0, width - size + 1, stride)
    return [(t, l) for t in tops for l in lefts]


def _gauss_taps() -> np.ndarray:
    r = np.arange(7, dtype=np.float64) - 3
    g = np.exp(-(r * r) / (2 * (7 / 6) ** 2))
    return g / g.sum()


def sharpness(patches: np.ndarray, block: int = 96) -> np.ndarray:
    """Texture score of uint8 RGB patches ``(P, H, W, 3)`` (or one ``(H, W, 3)``), spec §2.3.

    MATLAB ``rgb2gray`` (rounded uint8), local standard deviation ``sqrt(G * (I - G * I)^2)`` with
    the normalised 7x7 Gaussian (sigma 7/6) and replicate borders, then the sum over ``block`` x
    ``block`` blocks of their mean, partial blocks zero-padded as ``blkproc`` does.
    """
    from scipy.ndimage import correlate1d

    from perceptsr.data.color import rgb2gray

    single = patches.ndim == 3
    batch = patches[None] if single else patches
    if batch.dtype != np.uint8 or batch.shape[-1] != 3:
        raise ValueError(f"sharpness expects uint8 RGB patches (P, H, W, 3), got {batch.dtype} {batch.shape}")
    gray = np.stack([rgb2gray(p) for p in batch]).astype(np.float64)
    taps = _gauss_taps()

    def blur(x):
        return correlate1d(correlate1d(x, taps, axis=-1, mode="nearest"), taps, axis=-2, mode="nearest")

    dev = gray - blur(gray)
    sigma = np.sqrt(blur(dev * dev))
    h, w = sigma.shape[-2:]
    ph, pw = -(-h // block) * block, -(-w // block) * block
    padded = np.zeros((sigma.shape[0], ph, pw))
    padded[:, :h, :w] = sigma
    means = padded.reshape(sigma.shape[0], ph // block, block, pw // block, block).mean(axis=(2, 4))
    out = means.sum(axis=(1, 2))
    return out[0] if single else out


def label_transform(metric, kind: str = "auto") -> tuple[str, float, float]:
    """``(kind, a, b)`` with label = ``a * value + b`` making higher = worse for ``metric``."""
    if kind == "auto":
        kind = "none" if metric.lower_better else ("ten_minus" if metric.name == "ma" else "negate")
    return kind, *{"none": (1.0, 0.0), "negate": (-1.0, 0.0), "ten_minus": (-1.0, 10.0)}[kind]


def label_patches(metric, patches: np.ndarray, batch: int = 64) -> np.ndarray:
    """``metric`` of uint8 RGB patches ``(P, H, W, 3)``, ``batch`` at a time, as float64 ``(P,)``."""
    out = []
    for i in range(0, len(patches), batch):
        t = torch.from_numpy(np.ascontiguousarray(patches[i : i + batch])).to(metric.device)
        t = t.permute(0, 3, 1, 2).float().div_(255)
        out.append(metric(t).double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def _metrics_for(opts: RankDataOptions, device) -> tuple[Any, Any]:
    """(label metric, gap metric) built on ``device``; the gap metric may be the label metric."""
    from perceptsr.metrics import create_metric, metric_class

    label = create_metric(opts.metric, preset=opts.preset, device=device, **opts.metric_options)
    if opts.gap_preset is not None and opts.gap_preset == opts.preset:
        return label, label
    if opts.gap_preset is not None:
        gap = create_metric(opts.metric, preset=opts.gap_preset, device=device, **opts.metric_options)
    elif "gray" in metric_class(opts.metric).allowed_colors:
        gap = create_metric(opts.metric, device=device, color="gray", crop_border=0, round_uint8=True,
                            **opts.metric_options)
    else:  # no gray mode: the release protocol cannot apply, use the label protocol
        gap = label
    return label, gap


def _read_uint8(path: Path) -> np.ndarray:
    from perceptsr.data.io import read_image

    return np.clip(np.floor(read_image(path, mode="rgb") * 255 + 0.5), 0, 255).astype(np.uint8)


_WORKER: dict = {}


def _init_worker(opts: RankDataOptions, device: str, threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)
    _WORKER["opts"] = opts
    try:
        _WORKER["metrics"] = _metrics_for(opts, device)
    except Exception as exc:  # raised from the first task: a failing initializer makes Pool respawn forever
        _WORKER["error"] = exc


def _seed(*parts) -> np.random.Generator:
    return np.random.default_rng([int(p) if not isinstance(p, str) else zlib.crc32(p.encode()) for p in parts])


def _process_image(task: tuple) -> dict:
    """Cut, filter and label one image's locations; writes ``.work/<stem>/<k>_<level>.png``."""
    from perceptsr.data.io import write_image

    if "error" in _WORKER:
        raise _WORKER["error"]
    stem, files, level_names, texture_i, gap_i, work_dir = task
    opts: RankDataOptions = _WORKER["opts"]
    label_metric, gap_metric = _WORKER["metrics"]
    images = [_read_uint8(f) for f in files]
    h, w = min(im.shape[0] for im in images), min(im.shape[1] for im in images)
    images = [im[:h, :w] for im in images]
    grid = patch_grid(h, w, opts.patch_size, opts.stride)
    stats = {"candidates": len(grid), "textured": 0, "gap": 0, "kept": 0}
    ps = opts.patch_size

    def cut(level: int, locs) -> np.ndarray:
        if not locs:
            return np.zeros((0, ps, ps, 3), np.uint8)
        return np.stack([images[level][t : t + ps, l : l + ps] for t, l in locs])

    locs = list(grid)
    if locs:
        sharp = sharpness(cut(texture_i, locs))
        locs = [loc for loc, s in zip(locs, sharp) if s >= opts.texture_threshold]
    stats["textured"] = len(locs)
    labels: dict[int, np.ndarray] = {}
    if locs and opts.min_gap > 0:
        a, b = (label_patches(gap_metric, cut(i, locs), opts.label_batch) for i in gap_i)
        keep = np.abs(a - b) > opts.min_gap
        if gap_metric is label_metric:
            labels = {gap_i[0]: a[keep], gap_i[1]: b[keep]}
        locs = [loc for loc, k in zip(locs, keep) if k]
    stats["gap"] = len(locs)
    if len(locs) > opts.max_patches:
        chosen = np.sort(_seed(opts.seed, stem).permutation(len(locs))[: opts.max_patches])
        labels = {i: v[chosen] for i, v in labels.items()}
        locs = [locs[i] for i in chosen]
    stats["kept"] = len(locs)
    raw = {}
    for i, name in enumerate(level_names):
        patches = cut(i, locs)
        raw[name] = labels[i] if i in labels else label_patches(label_metric, patches, opts.label_batch)
        for k, p in enumerate(patches):
            write_image(Path(work_dir) / f"{k}_{name}.png", p)
    return {"image": stem, "locations": [list(x) for x in locs], "raw": {k: v.tolist() for k, v in raw.items()},
            "stats": stats}


def prepare_level(name: str, source: str, lr_dir: str | None, out_dir, *, scale: int = 4, device=None,
                  tile=None, progress: bool = True) -> RankLevel:
    """A folder level from ``source``: a folder (as is), ``"bicubic"`` (MATLAB bicubic of ``lr_dir``)
    or a checkpoint (run on ``lr_dir`` with :mod:`perceptsr.inference`); generated outputs go to
    ``out_dir/levels/<name>/``, and files already there are kept (resume)."""
    from tqdm import tqdm

    from perceptsr.data.io import list_images, read_image, write_image

    src = Path(source)
    if src.is_dir():
        return RankLevel(name, str(src))
    if source != "bicubic" and not src.is_file():
        raise ConfigError(f"level {name!r}: {source} is neither a folder, a checkpoint file nor 'bicubic'")
    if lr_dir is None:
        raise ConfigError(f"level {name!r}: generating it from {source} needs the LR folder (--lr)")
    target = Path(out_dir) / "levels" / name
    target.mkdir(parents=True, exist_ok=True)
    model = None
    if source != "bicubic":
        from perceptsr.checkpoint import load_model

        dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model = load_model(src, device=dev)
    files = list_images(lr_dir)
    if not files:
        raise ImageReadError(f"{lr_dir}: no images found in this folder")
    for path in tqdm(files, desc=f"level {name}", unit="img", disable=not progress, dynamic_ncols=True):
        out = target / f"{path.stem}.png"
        if out.is_file():
            continue
        if model is None:
            from perceptsr.data.imresize import imresize

            sr = np.clip(imresize(read_image(path, mode="rgb"), scale), 0, 1)
        else:
            from perceptsr.inference import upscale_image

            sr = upscale_image(model, read_image(path, mode="rgb"), tile=tile)
        write_image(out, sr)
    return RankLevel(name, str(target))


def _match_files(levels: Sequence[RankLevel], scale: int) -> list[tuple[str, list[Path]]]:
    """``[(stem, [file per level])]`` sorted by stem, after checking names and sizes."""
    from perceptsr.data.io import list_images, read_image_info

    per_level = []
    for lv in levels:
        files = list_images(lv.folder)
        if not files:
            raise ImageReadError(f"level {lv.name!r}: {lv.folder} has no images")
        by_stem = {}
        for f in files:
            if f.stem in by_stem:
                raise ConfigError(f"level {lv.name!r}: {by_stem[f.stem]} and {f} have the same name")
            by_stem[f.stem] = f
        per_level.append(by_stem)
    stems = sorted(per_level[0])
    for lv, by_stem in zip(levels[1:], per_level[1:]):
        missing, extra = sorted(set(stems) - set(by_stem)), sorted(set(by_stem) - set(stems))
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing in {lv.folder}: {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else ""))
            if extra:
                parts.append(f"not in {levels[0].folder}: {', '.join(extra[:5])}" + (" ..." if len(extra) > 5 else ""))
            raise ConfigError(f"levels {levels[0].name!r} and {lv.name!r} do not hold the same file names ("
                              + "; ".join(parts) + ")")
    matched = []
    for stem in stems:
        files = [by_stem[stem] for by_stem in per_level]
        sizes = [(read_image_info(f).height, read_image_info(f).width) for f in files]
        h, w = min(s[0] for s in sizes), min(s[1] for s in sizes)
        for f, (fh, fw) in zip(files, sizes):
            if fh - h >= scale or fw - w >= scale:
                listing = ", ".join(f"{g} ({gh}x{gw})" for g, (gh, gw) in zip(files, sizes))
                raise ConfigError(f"image {stem!r} has different sizes across levels: {listing}")
        matched.append((stem, files))
    return matched


def _read_progress(path: Path) -> tuple[dict | None, list[dict]]:
    """(header, records) of a progress file, dropping a torn last line (a kill mid-write)."""
    if not path.is_file():
        return None, []
    lines = path.read_text(encoding="utf-8").splitlines()
    parsed = []
    for i, line in enumerate(lines):
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:
            if i != len(lines) - 1:
                raise PerceptsrError(f"{path}: line {i + 1} is corrupt; delete the folder and start again") from None
    if not parsed:
        return None, []
    return parsed[0], parsed[1:]


def _append_line(path: Path, obj: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(obj) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _split_of(opts: RankDataOptions, n: int, stem: str) -> str:
    if opts.valid_fraction <= 0:
        return "train"
    draw = _seed(opts.seed, 1, n) if opts.split_by == "patch" else _seed(opts.seed, 2, stem)
    return "valid" if draw.random() < opts.valid_fraction else "train"


def _patch_path(out: Path, split: str, n: int, level: str) -> Path:
    folder = f"train_patch_{level}" if split == "train" else "valid_patch_all"
    return out / folder / f"{n}_{level}.png"


def build_rank_dataset(
    levels: Sequence[RankLevel],
    out_dir,
    options: RankDataOptions | None = None,
    *,
    workers: int = 0,
    device=None,
    progress: bool = True,
    stop_after: int | None = None,
) -> dict:
    """Build (or resume) a rank dataset in ``out_dir``; see the module docstring. Returns the summary.

    ``levels`` are best first. ``workers`` > 0 labels in that many CPU processes (``fork``); with
    ``workers=0`` everything runs here, on ``device`` (default: CUDA when available), with patches
    batched per image. ``stop_after`` stops after that many images of this call (as a kill would,
    minus the torn write); the summary then has ``"complete": False``.
    """
    from tqdm import tqdm

    opts = options or RankDataOptions()
    levels = list(levels)
    names = [lv.name for lv in levels]
    if len(levels) < 2:
        raise ConfigError(f"rank-data needs at least two levels, got {len(levels)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"rank-data: level names must differ, got {names}")
    for n in names:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.-]*", n) or "_" in n:
            raise ConfigError(f"rank-data: level name {n!r} must be letters, digits, '.' or '-'")
    sr_levels = [lv.name for lv in levels if not lv.hr]
    texture = opts.texture_level or (sr_levels or names)[0]
    gap = tuple(opts.gap_levels or (sr_levels if len(sr_levels) >= 2 else names)[:2])
    for key, value in (("texture_level", [texture]), ("gap_levels", list(gap))):
        unknown = [v for v in value if v not in names]
        if unknown:
            raise ConfigError(f"rank-data option {key}: unknown level {unknown[0]!r}; levels: {', '.join(names)}")
    if len(set(gap)) != 2:
        raise ConfigError(f"rank-data option gap_levels: needs two different levels, got {list(gap)}")
    texture_i, gap_i = names.index(texture), (names.index(gap[0]), names.index(gap[1]))

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    matched = _match_files(levels, opts.scale)
    dev = str(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    _metrics_for(opts, "cpu")  # unknown metric, bad options or missing assets: fail here, not in a worker
    header = {
        "format": FORMAT,
        "levels": [{"name": lv.name, "folder": str(Path(lv.folder).resolve()), "hr": lv.hr} for lv in levels],
        "texture_level": texture,
        "gap_levels": list(gap),
        "options": json.loads(json.dumps(dataclasses.asdict(opts))),
    }
    progress_path = out / PROGRESS
    old_header, records = _read_progress(progress_path)
    if old_header is not None:
        for key in header:
            if old_header.get(key) != header[key]:
                raise PerceptsrError(
                    f"{out}: this folder holds a rank dataset started with other settings ({key}: "
                    f"{old_header.get(key)!r} then, {header[key]!r} now); use another output folder or delete it"
                )
    _write_text_atomic(progress_path, "".join(json.dumps(x) + "\n" for x in [header, *records]))
    done = {r["image"] for r in records}
    next_id = 1 + sum(len(r["locations"]) for r in records)
    todo = [(stem, files) for stem, files in matched if stem not in done]
    shutil.rmtree(out / WORK, ignore_errors=True)

    tasks = [(stem, [str(f) for f in files], names, texture_i, gap_i, str(out / WORK / stem)) for stem, files in todo]
    if stop_after is not None:
        tasks = tasks[:stop_after]
    t0 = time.perf_counter()
    bar = tqdm(total=len(matched), initial=len(done), unit="img", desc="rank-data", disable=not progress,
               dynamic_ncols=True)
    pool = None
    try:
        if workers > 0 and not dev.startswith("cuda"):
            import multiprocessing as mp

            ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
            pool = ctx.Pool(workers, initializer=_init_worker, initargs=(opts, "cpu", 1))
            results = pool.imap(_process_image, tasks)
        else:
            _init_worker(opts, dev, None)
            results = map(_process_image, tasks)
        for result in results:
            record = _commit(out, opts, result, names, next_id)
            next_id += len(record["locations"])
            _append_line(progress_path, record)
            records.append(record)
            bar.update(1)
            bar.set_postfix(patches=next_id - 1, refresh=False)
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
            pool.join()
    complete = len(records) == len(matched)
    summary = _summarize(out, header, records, complete, time.perf_counter() - t0)
    if complete:
        shutil.rmtree(out / WORK, ignore_errors=True)
    return summary


def _commit(out: Path, opts: RankDataOptions, result: dict, names: list[str], first: int) -> dict:
    """Move one image's scratch patches to their final names and return its progress record."""
    from perceptsr.metrics import metric_class

    cls = metric_class(opts.metric)
    _, a, b = label_transform(cls, opts.label_transform)
    work = out / WORK / result["image"]
    splits, scores = [], {name: [] for name in names}
    for k in range(len(result["locations"])):
        n = first + k
        split = _split_of(opts, n, result["image"])
        splits.append(split)
        for name in names:
            target = _patch_path(out, split, n, name)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(work / f"{k}_{name}.png", target)
            scores[name].append(a * result["raw"][name][k] + b)
    shutil.rmtree(work, ignore_errors=True)
    return {**result, "first": first, "splits": splits, "scores": scores}


def _summarize(out: Path, header: dict, records: list[dict], complete: bool, seconds: float) -> dict:
    """Write the label files and ``summary.json`` from the progress records; returns the summary."""
    from perceptsr.metrics import create_metric, metric_class

    names = [lv["name"] for lv in header["levels"]]
    opts = header["options"]
    lines = {"train": [], "valid": []}
    for r in records:
        for k, split in enumerate(r["splits"]):
            n = r["first"] + k
            for name in reversed(names):  # worst level first, as the release's label scripts
                lines[split].append(f"{n}_{name}.png {r['scores'][name][k]:.6f}\n")
    for split, rows in lines.items():
        _write_text_atomic(out / f"{split}_label.txt", "".join(rows))
    totals = {key: sum(r["stats"][key] for r in records) for key in ("candidates", "textured", "gap", "kept")}
    cls = metric_class(opts["metric"])
    kind, a, b = label_transform(cls, opts["label_transform"])
    try:
        protocol = create_metric(opts["metric"], preset=opts["preset"], **opts["metric_options"]).protocol
    except PerceptsrError as exc:  # e.g. assets absent here: the summary still gets written
        protocol = f"unavailable ({exc})"
    summary = {
        **header,
        "complete": complete,
        "images": len(records),
        "triplets": {split: sum(s == split for r in records for s in r["splits"]) for split in lines},
        "filters": totals,
        "label": {"metric": opts["metric"], "protocol": protocol, "transform": kind, "a": a, "b": b,
                  "convention": "higher label = worse image"},
        "layout": {"train": "train_patch_<level>/<n>_<level>.png", "valid": "valid_patch_all/<n>_<level>.png",
                   "labels": {"train": "train_label.txt", "valid": "valid_label.txt"}},
        "seconds_this_run": round(seconds, 3),
    }
    _write_text_atomic(out / SUMMARY, json.dumps(summary, indent=1) + "\n")
    return summary


# ================================================================================================
# stage 2: Ranker data, losses, validation


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


class RankGroups:
    """The patches of one split grouped by location: ``groups[i] = [(level, path, score), ...]``,
    levels in the dataset's order (best first). ``hard_pair`` holds the gap levels when known."""

    def __init__(self, root, split: str = "train"):
        self.root = Path(root)
        label_file = self.root / f"{split}_label.txt"
        if not label_file.is_file():
            raise ConfigError(f"{self.root}: no {label_file.name}; is this a folder written by perceptsr rank-data?")
        summary_file = self.root / SUMMARY
        summary = json.loads(summary_file.read_text(encoding="utf-8")) if summary_file.is_file() else {}
        order = [lv["name"] for lv in summary.get("levels", [])]
        self.hard_pair = tuple(summary.get("gap_levels", ()))
        by_id: dict[int, dict[str, tuple[Path, float]]] = {}
        for name, score in read_rank_labels(label_file):
            m = _NAME.match(name)
            if not m:
                raise ConfigError(f"{label_file}: file name {name!r} is not '<n>_<level>.png'")
            n, level = int(m.group(1)), m.group(2)
            path = self.root / (f"train_patch_{level}" if split == "train" else f"{split}_patch_all") / name
            if not path.is_file():
                raise ImageReadError(f"{label_file}: {name} is listed but {path} does not exist")
            by_id.setdefault(n, {})[level] = (path, score)
        levels_seen = sorted({lv for g in by_id.values() for lv in g})
        self.levels = [lv for lv in order if lv in levels_seen] + [lv for lv in levels_seen if lv not in order]
        self.ids = sorted(by_id)
        self.groups = [[(lv, *by_id[n][lv]) for lv in self.levels if lv in by_id[n]] for n in self.ids]
        if any(len(g) < 2 for g in self.groups):
            bad = next(n for n, g in zip(self.ids, self.groups) if len(g) < 2)
            raise ConfigError(f"{label_file}: location {bad} has fewer than two labelled levels")

    def __len__(self) -> int:
        return len(self.groups)


def _load_patch(path: Path) -> torch.Tensor:
    from perceptsr.data.io import read_image

    return torch.from_numpy(np.ascontiguousarray(read_image(path, mode="rgb").transpose(2, 0, 1)))


class RankPairDataset(torch.utils.data.Dataset):
    """Siamese pairs: item ``(epoch, j)`` is one pair of levels of location ``j % len``, drawn from
    ``(seed, epoch, j)``: ``{"img1", "img2"}`` (3, H, W) float32 in [0, 1], ``{"score1", "score2"}``;
    ``img1`` is the better level's patch, as in the release (pairs (esrgan, srgan), (esrgan, srres),
    (srgan, srres)), unless ``swap_order``, which swaps each pair with probability 1/2. With the
    release's two forward passes, train-mode BatchNorm normalises each side by its own batch, so a
    fixed order lets training lean on per-side statistics that the eval-mode Ranker does not see.

    Pairs are uniform over the location's level pairs, except that the hard pair (the two gap
    levels) is ``hard_pair_weight`` times as likely (3 gives the release's commented 3:1:1 mix).
    No augmentation, as in the release."""

    def __init__(self, root, split: str = "train", *, seed: int = 0, hard_pair_weight: float = 1.0,
                 swap_order: bool = False):
        self.data = RankGroups(root, split)
        if not len(self.data):
            raise ConfigError(f"{root}: the {split} split is empty")
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
        return {"img1": _load_patch(group[a][1]), "img2": _load_patch(group[b][1]),
                "score1": torch.tensor(group[a][2], dtype=torch.float32),
                "score2": torch.tensor(group[b][2], dtype=torch.float32)}


def ranking_loss(s1: torch.Tensor, s2: torch.Tensor, label1: torch.Tensor, label2: torch.Tensor, *,
                 margin: float = 0.5, clamp: float | None = 5.0) -> torch.Tensor:
    """``MarginRankingLoss(margin)`` of scores clamped to ``[-clamp, clamp]``; target +1 where
    ``label1 >= label2`` (image 1 is worse, ties included), so R learns higher score = worse."""
    s1, s2 = s1.reshape(-1), s2.reshape(-1)
    if clamp:
        s1, s2 = s1.clamp(-clamp, clamp), s2.clamp(-clamp, clamp)
    target = torch.where(label1.reshape(-1) >= label2.reshape(-1), 1.0, -1.0).to(s1)
    return F.margin_ranking_loss(s1, s2, target, margin=margin)


def regression_loss(pred: torch.Tensor, label: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    """The regression variant: L1 or L2 between predicted scores and the metric labels."""
    pred, label = pred.reshape(-1), label.reshape(-1).to(pred)
    if kind == "l1":
        return F.l1_loss(pred, label)
    if kind == "l2":
        return F.mse_loss(pred, label)
    raise ValueError(f"unknown regression loss {kind!r}")


def pairwise_accuracy(scores, labels, groups: Iterable[Sequence[int]], pairs: Iterable[tuple] | None = None) -> float:
    """Share of within-group pairs (i, j) whose predicted order ``s_i >= s_j`` matches ``l_i >= l_j``
    (the release's ``rank_pair_test``). ``pairs`` optionally restricts to those level-index pairs."""
    s, lab = np.asarray(scores, np.float64), np.asarray(labels, np.float64)
    allowed = None if pairs is None else {tuple(p) for p in pairs}
    correct = total = 0
    for idx in groups:
        for a, b in combinations(range(len(idx)), 2):
            if allowed is not None and (a, b) not in allowed:
                continue
            i, j = idx[a], idx[b]
            total += 1
            correct += bool((s[i] >= s[j]) == (lab[i] >= lab[j]))
    return correct / total if total else math.nan


def rank_correlations(scores, labels) -> dict[str, float]:
    """Spearman (SROCC) and Kendall (tau-b) correlation of scores and labels (NaN when undefined)."""
    from scipy import stats

    s, lab = np.asarray(scores, np.float64), np.asarray(labels, np.float64)
    if len(s) < 2 or np.ptp(s) == 0 or np.ptp(lab) == 0:
        return {"srocc": math.nan, "kendall": math.nan}
    return {"srocc": float(stats.spearmanr(s, lab)[0]), "kendall": float(stats.kendalltau(s, lab)[0])}


@torch.no_grad()
def evaluate_ranker(model: nn.Module, data: RankGroups, device, batch_size: int = 16) -> dict[str, float]:
    """Score every patch of ``data`` with ``model`` in eval mode (BN running statistics) and return
    ``srocc``, ``kendall``, ``accuracy`` (all within-location pairs) and ``hard_accuracy`` (the gap
    levels' pair only, NaN when unknown)."""
    was_training = model.training
    model.eval()
    paths, labels, groups = [], [], []
    for group in data.groups:
        groups.append(list(range(len(paths), len(paths) + len(group))))
        paths += [p for _, p, _ in group]
        labels += [score for _, _, score in group]
    scores = []
    try:
        for i in range(0, len(paths), batch_size):
            x = torch.stack([_load_patch(p) for p in paths[i : i + batch_size]]).to(device)
            scores.append(model(x).float().reshape(-1).cpu())
    finally:
        model.train(was_training)
    s = torch.cat(scores).numpy() if scores else np.zeros(0)
    out = rank_correlations(s, labels)
    out["accuracy"] = pairwise_accuracy(s, labels, groups)
    hard = set(data.hard_pair)
    hard_groups = []
    for group, idx in zip(data.groups, groups):
        members = [k for k, (lv, _, _) in enumerate(group) if lv in hard]
        if len(members) == 2:
            hard_groups.append([idx[k] for k in members])
    out["hard_accuracy"] = pairwise_accuracy(s, labels, hard_groups) if hard_groups else math.nan
    return out


# ================================================================================================
# the engine objective


@register_objective("ranker")
class RankerObjective(Objective):
    """RankSRGAN stage 2 in the training loop: ``model.arch: ranker`` is the trained network,
    ``data.train.hr_dir`` the folder written by ``perceptsr rank-data``; see
    :class:`perceptsr.config.RankerObjectiveConfig`."""

    own_validation = True

    def __init__(self, generator: nn.Module, cfg, runtime):
        super().__init__(generator, cfg, runtime)
        from perceptsr.archs.ranker_arch import Ranker
        from perceptsr.train.optim import build_optimizer, build_scheduler

        if not isinstance(generator, Ranker):
            raise ConfigError(f"config key 'model.arch': the ranker objective trains a Ranker (arch 'ranker'), "
                              f"got {cfg.model.arch!r}")
        opts = cfg.objective
        self.best_metric = (opts.best_metric, True)
        self.net_r = runtime.wrap(generator)
        self.optimizer = build_optimizer(generator.parameters(), cfg.optim)
        self.scheduler = build_scheduler(self.optimizer, cfg.schedule)
        self._valid: RankGroups | None = None

    def train_dataset(self):
        o = self.options
        return RankPairDataset(self.cfg.data.train.hr_dir, o.train_split, seed=self.cfg.seed,
                               hard_pair_weight=o.hard_pair_weight, swap_order=o.swap_order)

    def optimizers(self):
        return {"net_g": self.optimizer}

    def schedulers(self):
        return {"net_g": self.scheduler}

    def step(self, batch, iteration):
        o = self.options
        x1, x2 = self.runtime.to_device(batch["img1"]), self.runtime.to_device(batch["img2"])
        l1, l2 = batch["score1"].to(self.runtime.device), batch["score2"].to(self.runtime.device)
        self.net_r.train()
        with self.runtime.autocast():  # two passes: BatchNorm statistics per side, as the release
            s1 = self.net_r(x1).float().reshape(-1)
            s2 = self.net_r(x2).float().reshape(-1)
        if o.loss == "margin":
            loss = ranking_loss(s1, s2, l1, l2, margin=o.margin, clamp=o.clamp or None)
        else:
            loss = regression_loss(torch.cat([s1, s2]), torch.cat([l1, l2]), o.loss)
        self.optimize(loss, self.optimizer, self.generator, name=f"ranker {o.loss} loss")
        agree = ((s1 >= s2) == (l1 >= l2)).float().mean()
        return {f"loss/{o.loss}": loss.item(), "train/pair_accuracy": agree.item()}

    def validate(self, model: nn.Module, iteration: int) -> dict[str, float]:
        if self._valid is None:
            self._valid = RankGroups(self.cfg.data.train.hr_dir, self.options.valid_split)
            if not len(self._valid):
                raise ConfigError(f"{self.cfg.data.train.hr_dir}: the {self.options.valid_split} split is empty")
        metrics = evaluate_ranker(model, self._valid, self.runtime.device, self.options.val_batch_size)
        best = self.options.best_metric
        return {best: metrics.pop(best), **metrics}  # the best-checkpoint metric first
