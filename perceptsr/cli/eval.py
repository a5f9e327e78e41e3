"""``perceptsr eval``: score models, folders of SR outputs and the bicubic baseline on benchmark sets.

Writes ``results.json``, ``results.csv`` (means), ``per_image.csv`` and ``results.md`` (Markdown
table) to ``--out``; see :mod:`perceptsr.evaluation` for the dataset, pairing and protocol rules.
"""

from __future__ import annotations

import argparse
import sys


def _named(value: str) -> tuple[str | None, str]:
    """``NAME=PATH`` -> (NAME, PATH); a plain path (or ``bicubic``) -> (None, value)."""
    name, sep, path = value.partition("=")
    if sep and name and "/" not in name and "\\" not in name:
        return name, path
    return None, value


def _sr_dir(value: str) -> tuple[str, str]:
    name, path = _named(value)
    if name is None:
        raise argparse.ArgumentTypeError(f"expected NAME=DIR, got {value!r}")
    return name, path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from perceptsr.cli.argtypes import tile_size

    parser.add_argument("--model", action="append", default=[], metavar="[NAME=]CHECKPOINT",
                        help="a generator checkpoint, or 'bicubic' for the baseline (repeatable; "
                        "named by file stem unless NAME= is given)")
    parser.add_argument("--sr-dir", action="append", default=[], type=_sr_dir, metavar="NAME=DIR",
                        help="a folder of existing SR outputs to score as entry NAME (repeatable); files pair "
                        "with HR by stem, suffixes like _x4/_SR allowed; DIR/<dataset>/ is used when present")
    parser.add_argument("--datasets", nargs="+", required=True, metavar="DIR_OR_NAME",
                        help="dataset folders (with HR/ and LR_bicubic/X<scale>/, or of HR images) or names in the data root")
    parser.add_argument("--metrics", default="psnr,ssim", help="comma-separated metrics (default psnr,ssim)")
    parser.add_argument("--protocol", default="sr-y", help="metric protocol: preset sr-y (default), pirm or sr-rgb, or 'validation' "
                        "(the training rule: sr-y/sr-rgb for full-reference metrics, pirm for no-reference ones)")
    parser.add_argument("--out", required=True, help="output folder for the result files")
    parser.add_argument("--data-root", default=None,
                        help="folder holding datasets by name (default $PERCEPTSR_DATA, else ./datasets/benchmark "
                        "or ../shared/datasets/benchmark)")
    parser.add_argument("--scale", type=int, default=None, help="SR scale (default: the models', else 4)")
    parser.add_argument("--tile", type=tile_size, default="auto",
                        help="tile size in LR pixels, 'auto' (default) or 0 for whole images")
    parser.add_argument("--tile-pad", type=int, default=16, help="LR context pixels around each tile (default 16)")
    parser.add_argument("--save-images", action="store_true",
                        help="also write the SR outputs to OUT/images/<dataset>/<entry>/ (the report's crops need them)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--stamp", action="store_true",
                        help="also write each model's scores into its safetensors metadata (model card, shown by "
                        "perceptsr info); the models must be safetensors files")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from perceptsr.evaluation import evaluate, write_results

    out = Path(args.out)
    models = [_named(value) for value in args.model]
    if args.stamp:
        from perceptsr.cards import read_card

        for _, source in models:
            if source != "bicubic":
                read_card(source)  # fail before evaluating: only readable safetensors files take a card
    results = evaluate(
        models, args.datasets, sr_dirs=dict(args.sr_dir), metrics=args.metrics.split(","), protocol=args.protocol,
        scale=args.scale, data_root=args.data_root, tile=args.tile, tile_pad=args.tile_pad, device=args.device,
        save_images=out / "images" if args.save_images else None, progress=not args.quiet,
    )
    paths = write_results(results, out)
    print(paths["results.md"].read_text(encoding="utf-8"))
    print(f"results written to {out} ({', '.join(p.name for p in paths.values())})", file=sys.stderr)
    if args.stamp:
        from perceptsr.cards import stamp_evaluation

        for entry in results["models"]:
            if entry["kind"] == "model":
                stamp_evaluation(entry["source"], results, entry["name"])
                print(f"scores stamped into {entry['source']}", file=sys.stderr)
    return 0
