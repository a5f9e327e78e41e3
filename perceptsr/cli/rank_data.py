"""``perceptsr rank-data``: RankSRGAN stage 1, the rank dataset (patches + metric labels).

    perceptsr rank-data --out rank_niqe --lr DIV2K/LR_bicubic/X4 \\
        --level esrgan=esrgan.pth --level srgan=srgan.pth --level srres=srresnet.pth --workers 2

Levels are given best first as ``NAME=SOURCE``: a folder of SR outputs (file names matching across
levels), a checkpoint (run on ``--lr``) or ``bicubic`` (MATLAB bicubic of ``--lr``). ``--hr DIR``
adds the HR images as the best level ``hr`` (the RankSRGAN-HR variant). Running the same command
again on the same ``--out`` resumes after the last finished image.
"""

from __future__ import annotations

import argparse


def _level(value: str) -> tuple[str, str]:
    name, sep, source = value.partition("=")
    if not sep or not name or not source:
        raise argparse.ArgumentTypeError(f"expected NAME=SOURCE (folder, checkpoint or 'bicubic'), got {value!r}")
    return name, source


def _pair(value: str) -> tuple[str, str]:
    parts = value.split(",")
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected two level names A,B, got {value!r}")
    return parts[0], parts[1]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder (resumed when it holds an unfinished run)")
    parser.add_argument("--level", dest="levels", action="append", type=_level, default=[], metavar="NAME=SOURCE",
                        help="a level, best first: a folder, a checkpoint or 'bicubic' (repeat; >= 2 with --hr)")
    parser.add_argument("--lr", default=None, help="LR folder, for checkpoint and bicubic levels")
    parser.add_argument("--hr", default=None, help="HR folder, added as the best level 'hr' (RankSRGAN-HR)")
    parser.add_argument("--scale", type=int, default=4, help="SR scale (bicubic levels, HR modcrop tolerance)")
    parser.add_argument("--patch-size", type=int, default=296)
    parser.add_argument("--stride", type=int, default=148)
    parser.add_argument("--texture-threshold", type=float, default=40.0,
                        help="minimum sharpness of the texture level's patch (default 40)")
    parser.add_argument("--texture-level", default=None, help="level whose patch is texture-filtered (default: first SR level)")
    parser.add_argument("--gap-levels", type=_pair, default=None, metavar="A,B",
                        help="levels whose metric gap is filtered (default: the first two SR levels)")
    parser.add_argument("--min-gap", type=float, default=0.1, help="keep when |metric(A) - metric(B)| > this (0 = off)")
    parser.add_argument("--gap-preset", default=None,
                        help="protocol of the gap metric (default: the release's gray, no shave; 'pirm' reuses the labels)")
    parser.add_argument("--max-patches", type=int, default=200, help="locations kept per image at most")
    parser.add_argument("--valid-fraction", type=float, default=0.1)
    parser.add_argument("--split-by", choices=("patch", "image"), default="patch",
                        help="valid split per location (release) or per source image")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--metric", default="niqe", help="no-reference label metric: niqe, ma, pi or a registered one")
    parser.add_argument("--preset", default="pirm", help="label protocol preset (default pirm: Y, uint8, shave 4)")
    parser.add_argument("--label-transform", choices=("auto", "none", "negate", "ten_minus"), default="auto",
                        help="make higher labels worse (auto: Ma -> 10 - Ma, other higher-is-better -> -value)")
    parser.add_argument("--label-batch", type=int, default=64, help="patches per metric call")
    parser.add_argument("--workers", type=int, default=0,
                        help="CPU worker processes (0 = this process; on CUDA labels are batched on the GPU instead)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--tile", type=int, default=None, help="LR tile for checkpoint levels (default whole images)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from perceptsr.errors import ConfigError
    from perceptsr.ranksrgan import RankDataOptions, RankLevel, build_rank_dataset, format_consistency, prepare_level

    levels = []
    if args.hr:
        levels.append(RankLevel("hr", args.hr, hr=True))
    for name, source in args.levels:
        levels.append(prepare_level(name, source, args.lr, args.out, scale=args.scale, device=args.device,
                                    tile=args.tile, progress=not args.quiet))
    if len(levels) < 2:
        raise ConfigError("rank-data needs at least two levels (--level NAME=SOURCE, and optionally --hr)")
    opts = RankDataOptions(
        patch_size=args.patch_size, stride=args.stride, texture_threshold=args.texture_threshold,
        texture_level=args.texture_level, gap_levels=args.gap_levels, min_gap=args.min_gap,
        gap_preset=args.gap_preset, max_patches=args.max_patches, valid_fraction=args.valid_fraction,
        split_by=args.split_by, seed=args.seed, metric=args.metric, preset=args.preset,
        label_transform=args.label_transform, scale=args.scale, label_batch=args.label_batch,
    )
    summary = build_rank_dataset(levels, args.out, opts, workers=args.workers, device=args.device,
                                 progress=not args.quiet)
    f = summary["filters"]
    print(f"{summary['images']} images: {f['candidates']} locations, {f['textured']} textured, "
          f"{f['gap']} past the gap filter, {f['kept']} kept")
    print(f"triplets: {summary['triplets']['train']} train, {summary['triplets']['valid']} valid; "
          f"labels: {summary['label']['metric']} ({summary['label']['transform']}); written to {args.out}")
    print(format_consistency(summary["consistency"]))
    return 0
