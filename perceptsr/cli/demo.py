"""``perceptsr demo [--out DIR]``: both papers' controlled comparisons at the demo scale, offline."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo_out", help="output folder (default: demo_out); a re-run continues it")
    parser.add_argument("--profile", default="demo", choices=["demo", "tiny"],
                        help="demo (default: minutes on 2 CPU cores) or tiny (seconds; the numbers mean nothing)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from perceptsr.demo import run_demo

    run_demo(args.out, profile=args.profile, progress=not args.no_progress)
    return 0
