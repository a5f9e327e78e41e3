"""``perceptsr metric NAME IMAGE [REF]``: a metric on one image (pair) or on two folders.

NAME may list several metrics separated by commas (``psnr,ssim``). Folder mode pairs the files of
IMAGE and REF by file stem (``--pair order`` pairs the sorted lists instead), prints one line per
image and the mean, and writes ``--out results.csv`` or ``results.json`` when asked. Same-size
images are batched. Every result records the protocol (preset, colour, crop, rounding) used.
In folder mode an image that cannot be read, or that a metric refuses (too small, wrong range),
is skipped for that metric, named with the reason and counted, as ``perceptsr eval`` does; the
means are over the images that were measured. A single image that fails is an error naming it.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

from perceptsr.cli.argtypes import int_at_least


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME", help="metric name(s), comma separated: psnr, ssim, niqe, ma, pi, lpips, dists, ...")
    parser.add_argument("image", metavar="IMAGE", help="an image file or a folder of images")
    parser.add_argument("ref", metavar="REF", nargs="?", help="reference image or folder (full-reference metrics)")
    parser.add_argument("--preset", default=None, help="protocol: preset pirm, sr-y or sr-rgb, or 'validation' (the training rule per metric); "
                        "RGB-only metrics keep RGB")
    parser.add_argument("--scale", type=int_at_least(1), default=None, help="SR scale for presets sr-y/sr-rgb (crop = scale)")
    parser.add_argument("--color", choices=("rgb", "y", "gray"), default=None, help="colour space (default: the metric's)")
    parser.add_argument("--crop-border", type=int_at_least(0), default=None, help="pixels cropped from each border")
    rounding = parser.add_mutually_exclusive_group()
    rounding.add_argument("--round-uint8", dest="round_uint8", action="store_true", default=None,
                          help="snap inputs and converted channels to the uint8 grid (MATLAB uint8)")
    rounding.add_argument("--no-round-uint8", dest="round_uint8", action="store_false")
    parser.add_argument("--pair", choices=("stem", "order"), default="stem",
                        help="folder mode: pair files by stem (default) or by sorted order")
    parser.add_argument("--batch-size", type=int_at_least(1), default=16, help="images per batch (same size only)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    parser.add_argument("--out", default=None, help="write per-image values and the mean to a .csv or .json file")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _read(path: Path):
    import torch

    from perceptsr.data.io import read_image

    arr = read_image(path, mode="keep")
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()[None]


def _pairs(image: Path, ref: Path | None, mode: str) -> list[tuple[Path, Path | None]]:
    from perceptsr.data.io import list_images
    from perceptsr.errors import ImageReadError

    images = list_images(image)
    if not images:
        raise ImageReadError(f"{image}: no images in this folder")
    if ref is None:
        return [(p, None) for p in images]
    refs = list_images(ref)
    if mode == "order":
        if len(images) != len(refs):
            raise ImageReadError(f"--pair order needs equal counts: {len(images)} in {image}, {len(refs)} in {ref}")
        return list(zip(images, refs))
    by_stem = {p.stem: p for p in refs}
    missing = [p.name for p in images if p.stem not in by_stem]
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise ImageReadError(
            f"{len(missing)} file(s) of {image} have no reference with the same stem in {ref}: {shown} "
            "(rename them, or use --pair order to pair the sorted lists)"
        )
    return [(p, by_stem[p.stem]) for p in images]


def _evaluate(metrics, pairs, args, device, skipped: list[dict] | None):
    """Per-pair values {metric: [float]} with same-size batching; images that cannot be read or that
    a metric refuses get NaN and a ``{"image", "metric", "reason"}`` entry in ``skipped`` (with
    ``skipped=None`` they raise, naming the file)."""
    import torch

    from perceptsr.errors import ImageReadError, MetricInputError
    from perceptsr.metrics.protocol import match_channels

    values = {name: [math.nan] * len(pairs) for name in metrics}
    loaded, usable = [], []
    for i, (a_path, b_path) in enumerate(pairs):
        try:
            loaded.append((_read(a_path), _read(b_path) if b_path is not None else None))
            usable.append(i)
        except ImageReadError as exc:
            if skipped is None:
                raise
            loaded.append(None)
            skipped.extend({"image": str(a_path), "metric": name, "reason": str(exc)} for name in metrics)

    def measure(metric, chunk, prepared):
        x = torch.cat([prepared[i][0] for i in chunk]).to(device)
        ref = None
        if prepared[chunk[0]][1] is not None:
            ref = torch.cat([prepared[i][1] for i in chunk]).to(device)
        with torch.no_grad():
            return metric(x, ref) if metric.full_reference else metric(x)

    bar = None
    if not args.quiet and len(pairs) > 1:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(pairs) * len(metrics), desc="metric", unit="img", leave=False)
    for name, metric in metrics.items():
        prepared = {i: match_channels(*loaded[i], metric) for i in usable}
        groups: dict[tuple, list[int]] = {}
        for i, (a, b) in prepared.items():
            groups.setdefault((tuple(a.shape), None if b is None else tuple(b.shape)), []).append(i)
        for idx in groups.values():
            for start in range(0, len(idx), args.batch_size):
                chunk = idx[start : start + args.batch_size]
                try:
                    results = list(zip(chunk, measure(metric, chunk, prepared).double().cpu().tolist()))
                except MetricInputError:  # find which images of the batch the metric refuses
                    results = []
                    for i in chunk:
                        try:
                            results.append((i, float(measure(metric, [i], prepared)[0])))
                        except MetricInputError as exc:
                            if skipped is None:
                                raise MetricInputError(f"{pairs[i][0]}: {exc}") from None
                            skipped.append({"image": str(pairs[i][0]), "metric": name,
                                            "reason": f"{pairs[i][0]}: {exc}"})
                for i, v in results:
                    values[name][i] = v
                if bar is not None:
                    bar.update(len(chunk))
    if bar is not None:
        bar.close()
    return values


def _mean(vals: list[float]) -> float:
    measured = [v for v in vals if not math.isnan(v)]
    return sum(measured) / len(measured) if measured else math.nan


def run(args: argparse.Namespace) -> int:
    import torch

    from perceptsr.errors import ConfigError, ImageReadError
    from perceptsr.metrics.protocol import VALIDATION, build_metrics

    names = [n.strip() for n in args.name.split(",") if n.strip()]
    if not names:
        raise ConfigError("no metric name given")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    options = {k: getattr(args, k) for k in ("color", "crop_border", "round_uint8", "scale")
               if getattr(args, k) is not None}
    # --scale is an explicit option (an error where a preset has no use for it), except under the
    # validation protocol, whose per-metric presets take it where they crop by scale.
    scale = options.pop("scale", None) if args.preset == VALIDATION else None
    metrics, _ = build_metrics(names, args.preset, scale=scale, device=device, options=options, strict=True)
    for n, m in metrics.items():
        if m.full_reference and args.ref is None:
            raise ConfigError(f"metric {n!r} is full-reference: give REF")
        if not m.full_reference and args.ref is not None and len(metrics) == 1:
            print(f"note: {n} is no-reference; REF is ignored", file=sys.stderr)

    image = Path(args.image)
    ref = Path(args.ref) if args.ref is not None else None
    if not image.exists():
        raise ImageReadError(f"{image}: not found")
    if ref is not None and not ref.exists():
        raise ImageReadError(f"{ref}: not found")
    any_fr = any(m.full_reference for m in metrics.values())
    folder = image.is_dir()
    if folder:
        if ref is not None and not ref.is_dir():
            raise ImageReadError(f"{image} is a folder, so REF must be a folder too: {ref}")
        pairs = _pairs(image, ref if any_fr else None, args.pair)
    else:
        if ref is not None and ref.is_dir():
            raise ImageReadError(f"{image} is a file, so REF must be a file too: {ref}")
        pairs = [(image, ref if any_fr else None)]

    skipped: list[dict] | None = [] if folder else None
    values = _evaluate(metrics, pairs, args, device, skipped)
    skipped = skipped or []
    protocols = {n: m.protocol for n, m in metrics.items()}
    means = {n: _mean(v) for n, v in values.items()}
    counts = {n: sum(not math.isnan(v) for v in vals) for n, vals in values.items()}
    rows = [
        {"image": str(a), "ref": None if b is None else str(b), **{n: values[n][i] for n in names}}
        for i, (a, b) in enumerate(pairs)
    ]
    result = {"metrics": names, "preset": args.preset, "protocol": protocols, "mean": means,
              "count": len(pairs), "measured": counts, "images": rows, "skipped": skipped}

    if args.out:
        _write(Path(args.out), result, names)
    if args.json:
        _report_skipped(skipped, counts, len(pairs))
        print(json.dumps(result if folder else {**result, "value": {n: values[n][0] for n in names}}, indent=2))
        return 0
    if folder:
        width = max(len(Path(r["image"]).name) for r in rows)
        print(f"{'image':{width}s}  " + "  ".join(f"{n:>12s}" for n in names))
        for r in rows:
            print(f"{Path(r['image']).name:{width}s}  " + "  ".join(f"{r[n]:12.6f}" for n in names))
        print(f"{'mean':{width}s}  " + "  ".join(f"{means[n]:12.6f}" for n in names))
        _report_skipped(skipped, counts, len(pairs))
    else:
        for n in names:
            print(f"{n}: {values[n][0]:.6f}")
    for n in names:
        print(f"protocol[{n}]: {protocols[n]}", file=sys.stderr)
    return 0


def _report_skipped(skipped: list[dict], counts: dict[str, int], total: int) -> None:
    """One stderr line per skipped image and metric, then the count measured per metric."""
    if not skipped:
        return
    for s in skipped:
        print(f"skipped ({s['metric']}): {s['reason']}", file=sys.stderr)
    print(f"skipped {len(skipped)} image/metric pair(s); measured "
          + ", ".join(f"{n} on {c} of {total}" for n, c in counts.items()), file=sys.stderr)


def _write(path: Path, result: dict, names: list[str]) -> None:
    from perceptsr.errors import ConfigError

    suffix = path.suffix.lower()
    if suffix not in (".csv", ".json"):
        raise ConfigError(f"--out must end in .csv or .json, got {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if suffix == ".json":
        tmp.write_text(json.dumps(result, indent=2) + "\n")
    else:
        with open(tmp, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["image", "ref", *names])
            for r in result["images"]:
                w.writerow([r["image"], r["ref"] or "", *(repr(r[n]) for n in names)])
            w.writerow(["mean", "", *(repr(result["mean"][n]) for n in names)])
            for s in result["skipped"]:
                w.writerow([f"# skipped[{s['metric']}]", s["image"], s["reason"]])
            for n in names:
                w.writerow([f"# protocol[{n}]", "", result["protocol"][n]])
    tmp.replace(path)
