"""RankSRGAN stage 1: the rank dataset (``perceptsr rank-data``; spec ``shared/specs/ranksrgan.md``).

:func:`build_rank_dataset`: given N >= 2 *levels* (folders of SR outputs of the same images, best
level first; optionally the HR images as a level), per image:

1. cut aligned ``patch_size`` patches on a ``stride`` grid (:func:`patch_grid`: MATLAB's
   ``1:stride:H-patch_size``, 0-based, so a patch never reaches the last row or column);
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

The valid split is drawn when the last image is done, as the release's ``move_valid.py`` runs
after the patches are cut: exactly ``int(valid_fraction * N)`` of the N triplets, a seeded random
subset (``split_by="patch"``, the release's split), or whole images until at least that many
(``split_by="image"``: no patch of the valid split overlaps a training patch). Until then every
patch is under ``train_patch_<level>/``. Everything is seeded and the images are processed in
sorted order, so a run gives the same files whatever ``workers`` is, and a killed run resumed on
the same folder continues after its last finished image.

``summary.json`` also reports how many locations each filter kept and how consistent the labels
are with the levels' order (:func:`~perceptsr.ranksrgan.consistency.level_consistency`): a Ranker cannot learn an order that the
labels do not have.

The Ranker's training reads this layout through :mod:`perceptsr.ranksrgan.datasets`.

(The module is a little over 600 lines: stage 1 is one resumable pipeline whose steps, from the
grid to the split, share the progress-record format, and splitting it would spread that format.)
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from perceptsr.errors import ConfigError, ImageReadError, PerceptsrError
from perceptsr.ranksrgan.consistency import level_consistency

__all__ = [
    "FORMAT",
    "SUMMARY",
    "RankLevel",
    "RankDataOptions",
    "patch_grid",
    "sharpness",
    "label_patches",
    "label_transform",
    "valid_count",
    "prepare_level",
    "build_rank_dataset",
]

FORMAT = "perceptsr-rank-data/1"
PROGRESS = "progress.jsonl"
SUMMARY = "summary.json"
WORK = ".work"


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
    """0-based top-left corners of RankSRGAN's patch grid: MATLAB's ``for h = 1:stride:H-size``, so
    the last 1-based top is at most ``H - size`` and the last 0-based one at most ``H - size - 1``.
    A patch therefore never touches the bottom or right edge, and a ``size``-px image gives none."""
    tops = range(0, height - size, stride)
    lefts = range(0, width - size, stride)
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


_WORKER: dict = {}  # this process's run state: options, metrics, or the error that setting them up raised


def _init_worker(opts: RankDataOptions, device: str, threads: int | None) -> None:
    """Set this process up for :func:`_process_image`, dropping whatever an earlier run left (a
    failure on another device included): each run starts from its own options and device."""
    _WORKER.clear()
    if threads:
        torch.set_num_threads(threads)
    _WORKER["opts"] = opts
    try:
        _WORKER["metrics"] = _metrics_for(opts, device)
    except PerceptsrError as exc:  # raised from the first task: a failing initializer makes Pool respawn forever
        _WORKER["error"] = exc
    except Exception as exc:  # e.g. CUDA unavailable or a bad device ordinal
        _WORKER["error"] = PerceptsrError(f"rank-data: cannot set up metric {opts.metric!r} on device {device!r} "
                                          f"({type(exc).__name__}: {exc})")


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


def valid_count(fraction: float, total: int) -> int:
    """How many of ``total`` triplets go to the valid split: ``int(fraction * total)``, as the
    release's ``move_valid.py`` (the 1e-9 only guards against ``0.29 * 100 = 28.999...``)."""
    return int(fraction * total + 1e-9)


def _valid_ids(opts: RankDataOptions, records: list[dict]) -> set[int]:
    """The triplet numbers of the valid split, drawn once the dataset is complete.

    ``split_by="patch"``: exactly :func:`valid_count` triplets, a seeded random subset (the release
    moves a random 10% of the triplet ids). ``split_by="image"``: whole images in a seeded random
    order until at least that many triplets are valid, never all images (no patch of a valid image
    overlaps a training patch)."""
    total = sum(len(r["locations"]) for r in records)
    want = valid_count(opts.valid_fraction, total)
    if want == 0:
        return set()
    if opts.split_by == "patch":
        return {int(i) + 1 for i in _seed(opts.seed, 1).choice(total, size=want, replace=False)}
    with_patches = [r for r in records if r["locations"]]
    chosen: set[int] = set()
    for i in _seed(opts.seed, 2).permutation(len(with_patches))[: len(with_patches) - 1]:
        r = with_patches[int(i)]
        chosen.update(range(r["first"], r["first"] + len(r["locations"])))
        if len(chosen) >= want:
            break
    return chosen


def _assign_splits(out: Path, opts: RankDataOptions, records: list[dict], names: list[str]) -> None:
    """Draw the valid split of a complete dataset and move its patches to ``valid_patch_all/`` (as the
    release's ``move_valid.py`` runs after the patches are cut); sets each record's ``splits``.
    Idempotent, and a move interrupted by a kill is finished by the next run."""
    valid = _valid_ids(opts, records)
    for r in records:
        r["splits"] = ["valid" if r["first"] + k in valid else "train" for k in range(len(r["locations"]))]
        for k, split in enumerate(r["splits"]):
            n = r["first"] + k
            for name in names:
                target = _patch_path(out, split, n, name)
                if target.is_file():
                    continue
                source = _patch_path(out, "train" if split == "valid" else "valid", n, name)
                if not source.is_file():
                    raise ImageReadError(f"{out}: {target.name} is in neither {target.parent.name}/ nor "
                                         f"{source.parent.name}/; delete the folder and build it again")
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(source, target)


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
        _WORKER.clear()  # no metrics (or GPU memory) held after the run, no state carried into the next
        if pool is not None:
            pool.terminate()
            pool.join()
    complete = len(records) == len(matched)
    if complete:
        _assign_splits(out, opts, records, names)
        _write_text_atomic(progress_path, "".join(json.dumps(x) + "\n" for x in [header, *records]))
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
        split = "train"  # until the dataset is complete: :func:`_assign_splits` draws the valid split
        splits.append(split)
        for name in names:
            target = _patch_path(out, split, n, name)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(work / f"{k}_{name}.png", target)
            scores[name].append(a * result["raw"][name][k] + b)
    shutil.rmtree(work, ignore_errors=True)
    return {**result, "first": first, "splits": splits, "scores": scores}


def _label_table(records: list[dict], names: list[str]) -> np.ndarray:
    """The labels of all kept triplets as an ``(N, levels)`` array, levels in ``names`` order."""
    rows = [[r["scores"][name][k] for name in names] for r in records for k in range(len(r["locations"]))]
    return np.array(rows, np.float64).reshape(-1, len(names))


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
        "consistency": level_consistency(_label_table(records, names), names),
        "label": {"metric": opts["metric"], "protocol": protocol, "transform": kind, "a": a, "b": b,
                  "convention": "higher label = worse image"},
        "layout": {"train": "train_patch_<level>/<n>_<level>.png", "valid": "valid_patch_all/<n>_<level>.png",
                   "labels": {"train": "train_label.txt", "valid": "valid_label.txt"}},
        "seconds_this_run": round(seconds, 3),
    }
    _write_text_atomic(out / SUMMARY, json.dumps(summary, indent=1) + "\n")
    return summary
