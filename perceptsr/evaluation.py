"""Benchmark evaluation: SR models, folders of SR outputs and the bicubic baseline, scored on benchmark
sets with a named metric protocol; results as JSON, CSV and a Markdown table.

>>> from perceptsr.evaluation import evaluate, write_results
>>> res = evaluate({"mine": "net_g.safetensors", "bicubic": "bicubic"}, ["Set5"],
...                metrics=["psnr", "ssim"], protocol="sr-y")          # doctest: +SKIP
>>> write_results(res, "results/")                                    # doctest: +SKIP

Conventions (the usual MATLAB ones):

* **Datasets.** A dataset is a folder holding ``HR/`` (and optionally ``LR_bicubic/X<scale>/``) or a
  plain folder of HR images, or a *name* looked up in a data root (see :func:`default_data_root`;
  names match case-insensitively). HR is modcropped to the scale. LR files pair with HR by stem (an
  ``x4``/``_x4`` suffix is allowed); a missing LR is made from the HR with MATLAB bicubic on the
  file's integer grid, as the benchmark LR folders were made.
* **SR outputs.** Model and bicubic outputs are snapped to the integer grid of the input (8-bit,
  or 16-bit for deeper files) before scoring, so they score exactly as the saved PNG would.
* **SR folders** (published results) pair with HR by file stem: an SR file matches HR ``baby`` when
  its stem is ``baby`` or ``baby`` followed by ``_``, ``-``, ``.`` or ``x<scale>`` and anything
  after (``baby_x4``, ``baby_SR``, ``babyx4``, ``baby-RankSRGAN``), case-insensitively; an exact
  stem wins, then the longest HR stem that fits. A folder may hold one sub-folder per dataset
  (``DIR/Set5/...``, also matched case-insensitively), else its images are used for every dataset.
* **Grey images.** Files are used with their own channels (a grey LR gives a grey SR). A grey/colour
  SR-HR pair is matched per metric as MATLAB scripts do, by
  :func:`perceptsr.metrics.protocol.match_channels`: the colour image is reduced to the metric's Y or
  grey channel (the grey image is repeated to RGB for RGB metrics), as ``perceptsr metric`` does.
* **Failures.** Unreadable or size-mismatched images are skipped and listed with the reason; every
  mean records how many images it covers (``count`` of ``total``), and the Markdown table states
  ``n/N images`` whenever fewer than all were scored. A metric whose asset is missing (``ma``/``pi``
  without ``model.mat``) is left out with a message instead of stopping the run.
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from perceptsr.errors import ConfigError, ImageReadError, PerceptsrError

__all__ = [
    "DatasetSpec",
    "default_data_root",
    "evaluate",
    "load_metrics",
    "load_results",
    "markdown_table",
    "match_sr_files",
    "resolve_dataset",
    "table_cells",
    "write_results",
]

logger = logging.getLogger(__name__)

#: Environment variable naming the folder that holds benchmark datasets by name.
DATA_ENV = "PERCEPTSR_DATA"
#: Folders tried (relative to the working directory) when neither ``data_root`` nor the variable is set.
DEFAULT_DATA_ROOTS = ("datasets/benchmark", "../shared/datasets/benchmark")
#: Entry name / source of the model-free baseline.
BICUBIC = "bicubic"
#: ``model`` of a skipped row that concerns every entry (an unreadable HR or LR file).
ALL = "(all)"
#: Display precision per metric in the Markdown/HTML tables (others: 4 significant digits).
DISPLAY_FORMAT = {"psnr": ".2f", "ssim": ".4f", "lpips": ".4f", "lpips-vgg": ".4f", "dists": ".4f",
                  "niqe": ".3f", "ma": ".3f", "pi": ".3f"}
RESULTS_FILES = ("results.json", "results.csv", "per_image.csv", "results.md")


# ----------------------------------------------------------------------------------------- datasets


@dataclass(frozen=True)
class DatasetSpec:
    """A benchmark set: its ``name``, HR folder and LR folder (``None``: LR made by bicubic)."""

    name: str
    hr_dir: Path
    lr_dir: Path | None


def default_data_root() -> Path | None:
    """``$PERCEPTSR_DATA`` if set, else the first existing folder of :data:`DEFAULT_DATA_ROOTS`."""
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env)
    for candidate in DEFAULT_DATA_ROOTS:
        if Path(candidate).is_dir():
            return Path(candidate)
    return None


def _child(folder: Path, name: str) -> Path | None:
    """``folder/name``, matched exactly or else case-insensitively (a unique match only)."""
    if (folder / name).is_dir():
        return folder / name
    if not folder.is_dir():
        return None
    found = [p for p in folder.iterdir() if p.is_dir() and p.name.lower() == name.lower()]
    return found[0] if len(found) == 1 else None


def resolve_dataset(spec: str | os.PathLike, *, data_root: str | os.PathLike | None = None, scale: int = 4) -> DatasetSpec:
    """A dataset from a folder (with ``HR/`` or of HR images) or a name under the data root."""
    path = Path(spec)
    if path.is_dir():
        base = path
    else:
        root = Path(data_root) if data_root is not None else default_data_root()
        if root is None:
            raise ConfigError(
                f"dataset {str(spec)!r} is not a folder and no data root is known: pass --data-root DIR "
                f"(a folder of NAME/HR, NAME/LR_bicubic/X{scale}) or set {DATA_ENV}"
            )
        found = _child(root, str(spec))
        if found is None:
            known = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
            raise ConfigError(
                f"dataset {str(spec)!r}: not a folder, and not found in the data root {root}"
                + (f" (it has: {', '.join(known)})" if known else " (no such folder)" if not root.is_dir() else "")
            )
        base = found
    hr = _child(base, "HR") or base
    lr_base = _child(base, "LR_bicubic")
    lr = _child(lr_base, f"X{scale}") if lr_base is not None else None
    name = base.resolve().parent.name if base.name.upper() == "HR" else base.resolve().name
    return DatasetSpec(name=name, hr_dir=hr, lr_dir=lr)


def _pair_lr(hr_files: list[Path], lr_dir: Path | None, scale: int) -> dict[str, Path]:
    """HR stem -> LR file (same stem, or with an ``x<scale>`` suffix)."""
    if lr_dir is None:
        return {}
    from perceptsr.data.io import list_images

    suffix = re.compile(rf"[_-]?[xX]{scale}$")
    by_key: dict[str, Path] = {}
    for p in list_images(lr_dir):
        by_key.setdefault(p.stem, p)
    for p in list_images(lr_dir):
        by_key.setdefault(suffix.sub("", p.stem), p)
    return {h.stem: by_key[h.stem] for h in hr_files if h.stem in by_key}


def match_sr_files(hr_stems: Sequence[str], files: Sequence[Path], scale: int = 4) -> tuple[dict[str, Path], dict[str, list[Path]]]:
    """Pair SR files with HR stems by the rule in the module docstring.

    Returns ``(matched, ambiguous)``: HR stem -> SR file, and HR stem -> the several files that fit it
    equally well (those images are skipped). Files that fit no HR stem are ignored.
    """
    stems = sorted(hr_stems, key=len, reverse=True)
    lower = {s.lower(): s for s in stems}
    tail = re.compile(rf"^(?:[_\-.]|[xX]{scale}(?:$|[_\-.]))")
    candidates: dict[str, list[Path]] = {}
    exact: dict[str, list[Path]] = {}
    for f in sorted(files):
        key = f.stem.lower()
        if key in lower:
            exact.setdefault(lower[key], []).append(f)
            continue
        for s in stems:
            if key.startswith(s.lower()) and tail.match(key[len(s):]):
                candidates.setdefault(s, []).append(f)
                break
    matched: dict[str, Path] = {}
    ambiguous: dict[str, list[Path]] = {}
    for s in hr_stems:
        found = exact.get(s) or candidates.get(s) or []
        if len(found) == 1:
            matched[s] = found[0]
        elif found:
            ambiguous[s] = found
    return matched, ambiguous


# ----------------------------------------------------------------------------------------- images


def _bits(path: Path) -> int:
    from perceptsr.data.io import read_image_info

    return 16 if read_image_info(path).bits > 8 else 8


def _snap(img: np.ndarray, bits: int) -> np.ndarray:
    """Float [0, 1] image on the ``bits``-deep integer grid (MATLAB rounding)."""
    top = 2**bits - 1
    return (np.floor(np.clip(img, 0, 1).astype(np.float64) * top + 0.5) / top).astype(np.float32)


def _integers(img: np.ndarray, bits: int) -> np.ndarray:
    top = 2**bits - 1
    return np.floor(img.astype(np.float64) * top + 0.5).astype(np.uint8 if bits == 8 else np.uint16)


def _bicubic_up(lr: np.ndarray, scale: int, bits: int) -> np.ndarray:
    """MATLAB ``imresize(lr, scale)`` on the LR's integer grid (so the result is rounded like MATLAB's)."""
    from perceptsr.data.imresize import imresize

    out = imresize(_integers(lr, bits), scale)
    return (out.astype(np.float32) / np.float32(2**bits - 1)).astype(np.float32)


def _tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32))[None]


def _load_pair(hr_path: Path, lr_path: Path | None, scale: int) -> tuple[np.ndarray, np.ndarray, int, str]:
    """Modcropped HR, LR (read or made), LR bits and where the LR came from; raises on bad files."""
    from perceptsr.data.color import modcrop
    from perceptsr.data.imresize import imresize
    from perceptsr.data.io import read_image

    hr = modcrop(read_image(hr_path, mode="keep"), scale)
    hr_bits = _bits(hr_path)
    if min(hr.shape[:2]) < scale:
        raise ImageReadError(f"{hr_path}: {hr.shape[0]}x{hr.shape[1]} is smaller than the scale {scale}")
    if lr_path is None:
        lr = imresize(_integers(hr, hr_bits), 1 / scale).astype(np.float32) / np.float32(2**hr_bits - 1)
        return hr, lr, hr_bits, BICUBIC
    lr = read_image(lr_path, mode="keep")
    if (lr.shape[0] * scale, lr.shape[1] * scale) != hr.shape[:2]:
        raise ImageReadError(
            f"{lr_path}: size mismatch: LR {lr.shape[0]}x{lr.shape[1]} x{scale} is not the "
            f"modcropped HR {hr.shape[0]}x{hr.shape[1]} of {hr_path}"
        )
    return hr, lr, _bits(lr_path), str(lr_path.resolve())


# ----------------------------------------------------------------------------------------- entries


@dataclass
class _Entry:
    name: str
    kind: str  # "model", "sr_dir" or "bicubic"
    source: str
    model: torch.nn.Module | None = None


def _entry_name(source: Any, used: set[str]) -> str:
    if isinstance(source, torch.nn.Module):
        base = type(source).__name__.lower()
    else:
        p = Path(str(source))
        base = p.stem if p.stem not in ("net_g", "model", "generator", "last", "best") else f"{p.parent.name}_{p.stem}"
    name, k = base, 2
    while name in used:
        name, k = f"{base}_{k}", k + 1
    return name


def _entries(models, sr_dirs, device) -> list[_Entry]:
    from perceptsr.checkpoint import load_model

    items = list(models.items()) if isinstance(models, Mapping) else [
        src if isinstance(src, tuple) else (None, src) for src in models or ()
    ]
    used = {name for name, _ in items if name is not None} | set(sr_dirs or {})
    named = []
    for name, src in items:
        if name is None:
            name = BICUBIC if str(src) == BICUBIC and BICUBIC not in used else _entry_name(src, used)
            used.add(name)
        named.append((name, src))
    named += list((sr_dirs or {}).items())
    entries, seen = [], set()
    sr_names = set((sr_dirs or {}).keys())
    for name, src in named:
        if name in seen:
            raise ConfigError(f"two evaluated entries are both called {name!r}: give them distinct names")
        seen.add(name)
        if name in sr_names and not isinstance(src, torch.nn.Module):
            folder = Path(src)
            if not folder.is_dir():
                raise ImageReadError(f"{folder}: SR folder for {name!r} not found")
            entries.append(_Entry(name, "sr_dir", str(folder.resolve())))
        elif isinstance(src, torch.nn.Module):
            entries.append(_Entry(name, "model", type(src).__name__, src.to(device).eval()))
        elif str(src) == BICUBIC:
            entries.append(_Entry(name, "bicubic", BICUBIC))
        else:
            entries.append(_Entry(name, "model", str(Path(src).resolve()), load_model(src, device=device)))
    if not entries:
        raise ConfigError("nothing to evaluate: give at least one model, SR folder or 'bicubic'")
    return entries


def _scale(entries: list[_Entry], scale: int | None) -> int:
    scales = {}
    for e in entries:
        meta = getattr(e.model, "perceptsr_meta", None) or {}
        s = meta.get("scale", getattr(e.model, "scale", None)) if e.model is not None else None
        if s is not None:
            scales[e.name] = int(s)
    if scale is None:
        found = set(scales.values())
        if len(found) > 1:
            raise ConfigError(f"the models have different scales {scales}: evaluate them separately")
        return found.pop() if found else 4
    wrong = {k: v for k, v in scales.items() if v != scale}
    if wrong:
        raise ConfigError(f"scale {scale} was asked for but these models have another scale: {wrong}")
    return int(scale)


# ----------------------------------------------------------------------------------------- metrics


def load_metrics(names: Sequence[str], protocol: str, *, scale: int = 4, device=None) -> tuple[dict, dict[str, str]]:
    """Build each metric once under ``protocol``: ``({name: Metric}, {name: why left out})``.

    Unknown names raise; a metric that cannot be built (missing asset, unreadable weights) is left
    out with the reason. See :func:`perceptsr.metrics.protocol.build_metrics` for the per-metric rule.
    """
    from perceptsr.metrics.protocol import build_metrics

    return build_metrics(names, protocol, scale=scale, device=device)


def _score(metrics: dict, sr: np.ndarray, hr: np.ndarray) -> tuple[dict[str, float | None], dict[str, str]]:
    from perceptsr.metrics.protocol import match_channels

    sr_t, hr_t = _tensor(sr), _tensor(hr)
    values, errors = {}, {}
    for name, metric in metrics.items():
        x, ref = match_channels(sr_t, hr_t, metric)
        try:
            with torch.no_grad():
                out = metric(x, ref) if metric.full_reference else metric(x)
            values[name] = float(out[0])
        except PerceptsrError as exc:
            values[name], errors[name] = None, str(exc)
    return values, errors


# ----------------------------------------------------------------------------------------- evaluate


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", name) or "_"


def evaluate(
    models: Sequence[Any] | Mapping[str, Any] = (),
    datasets: Sequence[str | os.PathLike | DatasetSpec] = (),
    *,
    sr_dirs: Mapping[str, str | os.PathLike] | None = None,
    metrics: Sequence[str] = ("psnr", "ssim"),
    protocol: str = "sr-y",
    scale: int | None = None,
    data_root: str | os.PathLike | None = None,
    tile: int | str | None = "auto",
    tile_pad: int = 16,
    device: str | torch.device | None = None,
    save_images: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict:
    """Score models, SR folders and the bicubic baseline on datasets; returns the results dict.

    ``models``: checkpoint paths, loaded modules or ``"bicubic"``, as a mapping name -> source or a
    list of sources and ``(name, source)`` pairs (a name of ``None`` or a bare source: the file
    stem). ``sr_dirs``: name -> folder of existing SR outputs. ``datasets``: names
    (looked up in ``data_root``), folders or :class:`DatasetSpec`. ``metrics`` are built once under
    ``protocol`` (a preset or ``"validation"``, see :mod:`perceptsr.metrics.protocol`).
    ``tile``/``tile_pad`` as in :func:`perceptsr.inference.upscale_image`.
    ``save_images``: a folder to write model and bicubic outputs to (``<folder>/<dataset>/<entry>/<stem>.png``).
    The dict (see :func:`write_results`) holds ``summary`` (means per dataset and entry with
    ``count``/``total``), ``images`` (per-image values), ``skipped`` and the protocol of each metric.
    """
    from tqdm.auto import tqdm

    from perceptsr import __version__
    from perceptsr.data.io import list_images, read_image, write_image
    from perceptsr.inference import AutoTile, upscale_image

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    entries = _entries(models, sr_dirs, device)
    scale = _scale(entries, scale)
    specs = [d if isinstance(d, DatasetSpec) else resolve_dataset(d, data_root=data_root, scale=scale) for d in datasets]
    if not specs:
        raise ConfigError("no dataset given")
    names = [n.strip() for n in metrics if n.strip()]
    built, missing = load_metrics(names, protocol, scale=scale, device=device)
    for name, reason in missing.items():
        logger.warning("metric %s is left out: %s", name, reason)
    if not built:
        raise ConfigError(f"none of the metrics {', '.join(names)} could be built: {missing}")
    tile_state = AutoTile() if tile == "auto" else tile
    save_root = Path(save_images) if save_images is not None else None

    images, skipped, summary, datasets_info = [], [], [], []
    for spec in specs:
        hr_files = list_images(spec.hr_dir)
        if not hr_files:
            raise ImageReadError(f"{spec.hr_dir}: no images in dataset {spec.name}")
        lr_files = _pair_lr(hr_files, spec.lr_dir, scale)
        sr_files = {}
        for e in entries:
            if e.kind == "sr_dir":
                folder = _child(Path(e.source), spec.name) or Path(e.source)
                matched, ambiguous = match_sr_files([p.stem for p in hr_files], list_images(folder), scale)
                sr_files[e.name] = (folder, matched, ambiguous)
        datasets_info.append({"name": spec.name, "hr_dir": str(spec.hr_dir.resolve()),
                              "lr_dir": None if spec.lr_dir is None else str(spec.lr_dir.resolve()),
                              "total": len(hr_files)})
        rows = {e.name: [] for e in entries}
        bar = tqdm(total=len(hr_files) * len(entries), desc=f"eval {spec.name}", unit="img",
                   disable=not progress, dynamic_ncols=True)
        for hr_path in hr_files:
            try:
                hr, lr, bits, lr_source = _load_pair(hr_path, lr_files.get(hr_path.stem), scale)
            except (PerceptsrError, OSError, ValueError) as exc:
                named = any(str(p) in str(exc) for p in (hr_path, lr_files.get(hr_path.stem)) if p is not None)
                reason = str(exc) if named else f"{hr_path}: {exc}"
                skipped.append({"dataset": spec.name, "model": ALL, "image": hr_path.stem, "reason": reason})
                bar.update(len(entries))
                continue
            for e in entries:
                bar.set_postfix_str(f"{e.name}: {hr_path.name}", refresh=False)
                sr_path = None
                try:
                    if e.kind == "sr_dir":
                        folder, matched, ambiguous = sr_files[e.name]
                        if hr_path.stem in ambiguous:
                            listed = ", ".join(p.name for p in ambiguous[hr_path.stem])
                            raise ImageReadError(f"{folder}: several SR files match {hr_path.stem}: {listed}")
                        if hr_path.stem not in matched:
                            raise ImageReadError(f"{folder}: no SR file for {hr_path.name}")
                        sr_path = matched[hr_path.stem]
                        sr = read_image(sr_path, mode="keep")
                    elif e.kind == "bicubic":
                        sr = _bicubic_up(lr, scale, bits)
                    else:
                        sr = _snap(upscale_image(e.model, lr, scale=scale, tile=tile_state, tile_pad=tile_pad,
                                                 device=device), bits)
                    if sr.shape[:2] != hr.shape[:2]:
                        where = sr_path or e.name
                        raise ImageReadError(
                            f"{where}: size mismatch: SR {sr.shape[0]}x{sr.shape[1]} vs modcropped HR "
                            f"{hr.shape[0]}x{hr.shape[1]} ({hr_path})"
                        )
                    if save_root is not None and e.kind != "sr_dir":
                        sr_path = save_root / _safe(spec.name) / _safe(e.name) / f"{hr_path.stem}.png"
                        write_image(sr_path, sr, bits=bits)
                except (PerceptsrError, OSError, ValueError) as exc:
                    skipped.append({"dataset": spec.name, "model": e.name, "image": hr_path.stem, "reason": str(exc)})
                    bar.update()
                    continue
                values, errors = _score(built, sr, hr)
                row = {"dataset": spec.name, "model": e.name, "image": hr_path.stem, "hr": str(hr_path.resolve()),
                       "lr": lr_source, "sr": None if sr_path is None else str(Path(sr_path).resolve()), **values}
                if errors:
                    row["errors"] = errors
                images.append(row)
                rows[e.name].append(row)
                bar.update()
        bar.close()
        for e in entries:
            summary.append(_summarise(spec.name, e.name, rows[e.name], list(built), len(hr_files)))

    return {
        "protocol": protocol,
        "scale": scale,
        "metrics": list(built),
        "metric_info": {n: {"lower_better": bool(m.lower_better), "protocol": m.protocol} for n, m in built.items()},
        "missing_metrics": missing,
        "models": [{"name": e.name, "kind": e.kind, "source": e.source} for e in entries],
        "datasets": datasets_info,
        "summary": summary,
        "images": images,
        "skipped": skipped,
        "images_dir": None if save_root is None else str(save_root),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "perceptsr_version": __version__,
    }


def _summarise(dataset: str, model: str, rows: list[dict], names: list[str], total: int) -> dict:
    mean, count = {}, {}
    for n in names:
        vals = [r[n] for r in rows if r.get(n) is not None and not math.isnan(r[n])]
        mean[n] = sum(vals) / len(vals) if vals else None
        count[n] = len(vals)
    return {"dataset": dataset, "model": model, "total": total, "scored": len(rows), "mean": mean, "count": count}


# ----------------------------------------------------------------------------------------- output


def load_results(path: str | os.PathLike) -> dict:
    """Read a ``results.json`` written by :func:`write_results` (a folder holding one also works)."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ImageReadError(f"{path}: no results file (run `perceptsr eval --out DIR` first)") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not a readable results file ({exc})") from exc
    if not isinstance(data, dict) or "summary" not in data or "metrics" not in data:
        raise ConfigError(f"{path}: not a perceptsr results file (no 'summary'/'metrics')")
    return data


def _fmt(name: str, value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return format(value, DISPLAY_FORMAT.get(name, ".4g"))


def table_cells(results: dict) -> tuple[list[str], list[list[dict]]]:
    """Headers and per-row cells ``{"text", "best", "note"}`` shared by the Markdown and HTML tables.

    The best mean per dataset and metric (compared at display precision, ties included) is marked
    ``best``; ``note`` is ``"n/N images"`` when a mean covers fewer images than the dataset has.
    """
    names = results["metrics"]
    info = results.get("metric_info", {})
    headers = ["dataset", "model"] + [
        f"{n.upper() if len(n) <= 5 else n} {'↓' if info.get(n, {}).get('lower_better') else '↑'}" for n in names
    ]
    best: dict[tuple[str, str], str] = {}
    for n in names:
        lower = info.get(n, {}).get("lower_better", False)
        for ds in dict.fromkeys(s["dataset"] for s in results["summary"]):
            shown = [float(_fmt(n, s["mean"].get(n))) for s in results["summary"]
                     if s["dataset"] == ds and _fmt(n, s["mean"].get(n)) != "n/a"]
            if len(shown) > 1:
                best[(ds, n)] = _fmt(n, min(shown) if lower else max(shown))
    rows = []
    for s in results["summary"]:
        cells = [{"text": s["dataset"], "best": False, "note": ""}, {"text": s["model"], "best": False, "note": ""}]
        for n in names:
            text = _fmt(n, s["mean"].get(n))
            count = s["count"].get(n, 0)
            note = f"{count}/{s['total']} images" if count < s["total"] else ""
            is_best = text != "n/a" and best.get((s["dataset"], n)) == text
            cells.append({"text": text, "best": is_best, "note": note})
        rows.append(cells)
    return headers, rows


def markdown_table(results: dict) -> str:
    """The mean per dataset and entry as a Markdown table (best bold, ↑/↓ = higher/lower is better)."""
    headers, rows = table_cells(results)
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for cells in rows:
        parts = []
        for c in cells:
            text = f"**{c['text']}**" if c["best"] else c["text"]
            parts.append(f"{text} ({c['note']})" if c["note"] else text)
        lines.append("| " + " | ".join(parts) + " |")
    scale = results.get("scale")
    lines += ["", f"Protocol `{results['protocol']}`, x{scale}; ↑ higher is better, ↓ lower is better; "
              "best value per dataset in bold."]
    for n, reason in results.get("missing_metrics", {}).items():
        lines.append(f"- `{n}` left out: {reason}")
    if results.get("skipped"):
        lines.append("")
        lines.append(f"Skipped ({len(results['skipped'])}):")
        for s in results["skipped"]:
            lines.append(f"- {s['dataset']} / {s['model']} / {s['image']}: {s['reason']}")
    failures = [(r, n, e) for r in results["images"] for n, e in (r.get("errors") or {}).items()]
    if failures:
        lines.append("")
        lines.append(f"Metric failures ({len(failures)}):")
        for r, n, e in failures:
            lines.append(f"- {r['dataset']} / {r['model']} / {r['image']} / {n}: {e}")
    return "\n".join(lines) + "\n"


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _csv_text(header: list[str], rows: list[list]) -> str:
    import io

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def write_results(results: dict, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``results.json``, ``results.csv`` (means), ``per_image.csv`` and ``results.md`` to ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = results["metrics"]
    paths = {k: out / k for k in RESULTS_FILES}
    _write_text(paths["results.json"], json.dumps(results, indent=2) + "\n")

    def num(v):
        return "" if v is None else repr(float(v))

    summary_rows = [[s["dataset"], s["model"], *(num(s["mean"][n]) for n in names),
                     *(s["count"][n] for n in names), s["total"]] for s in results["summary"]]
    _write_text(paths["results.csv"], _csv_text(
        ["dataset", "model", *names, *(f"{n}_count" for n in names), "total"], summary_rows))
    image_rows = [[r["dataset"], r["model"], r["image"], "ok", "", *(num(r.get(n)) for n in names)]
                  for r in results["images"]]
    image_rows += [[s["dataset"], s["model"], s["image"], "skipped", s["reason"], *([""] * len(names))]
                   for s in results["skipped"]]
    _write_text(paths["per_image.csv"], _csv_text(["dataset", "model", "image", "status", "reason", *names], image_rows))
    _write_text(paths["results.md"], markdown_table(results))
    return paths
