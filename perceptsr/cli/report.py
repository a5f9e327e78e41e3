"""``perceptsr report``: a self-contained HTML page from eval results and training runs."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sources", nargs="+", metavar="RUN_DIR_OR_RESULTS",
                        help="results.json files, folders holding them, and/or run folders with TensorBoard logs")
    parser.add_argument("--out", default=None, help="HTML file (default: report.html in the first source folder)")
    parser.add_argument("--max-crops", type=int, default=6, help="most crop figures (default 6)")


def run(args: argparse.Namespace) -> int:
    from perceptsr.report import build_report

    path = build_report(args.sources, args.out, max_crops=args.max_crops)
    print(f"report written to {path}")
    return 0
