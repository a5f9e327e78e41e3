"""``perceptsr demo [--out DIR] [--data DIR]``: the whole system at CPU scale on embedded images."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo_out", help="output folder (default: demo_out); a re-run continues it")
    parser.add_argument("--data", metavar="DIR", help="your own images instead of scikit-image's samples "
                        "(sorted; the last fifth is held out for evaluation)")
    parser.add_argument("--stages", metavar="NAME[,NAME]", help="run only these stages (finished ones are skipped anyway)")
    parser.add_argument("--iterations-scale", type=float, default=1.0, metavar="F",
                        help="multiply every stage's iterations by F (e.g. 0.1 for a smoke run)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from perceptsr.demo import run_demo

    stages = [s.strip() for s in args.stages.split(",") if s.strip()] if args.stages else None
    run_demo(args.out, data=args.data, iterations_scale=args.iterations_scale, progress=not args.no_progress,
             stages=stages)
    return 0
