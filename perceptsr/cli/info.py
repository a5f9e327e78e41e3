"""``perceptsr info MODEL``: architecture, scale, parameter count, training iteration, provenance and the
scores stamped by ``perceptsr eval --stamp`` (see :mod:`perceptsr.cards`)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help="model checkpoint (any supported format and layout)")
    parser.add_argument("--json", action="store_true", help="print the information as JSON")


def run(args: argparse.Namespace) -> int:
    import json

    from perceptsr.cards import format_info, model_info

    info = model_info(args.model)
    print(json.dumps(info, indent=2, sort_keys=True, default=str) if args.json else format_info(info))
    return 0
