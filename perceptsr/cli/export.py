"""``perceptsr export MODEL --format onnx OUT.onnx``: a deployable graph with dynamic batch, height and
width, verified with onnxruntime against PyTorch (see :mod:`perceptsr.export`)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from perceptsr.cli.argtypes import int_at_least
    from perceptsr.export import DEFAULT_OPSET

    parser.add_argument("model", metavar="MODEL", help="generator checkpoint (any supported format and layout)")
    parser.add_argument("output", metavar="OUT", help="file to write (e.g. model.onnx)")
    parser.add_argument("--format", choices=["onnx"], required=True, help="export format (onnx)")
    parser.add_argument("--opset", type=int_at_least(DEFAULT_OPSET), default=DEFAULT_OPSET,
                        help=f"ONNX opset (default {DEFAULT_OPSET})")
    parser.add_argument("--fp16", action="store_true", help="float16 weights, input and output")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from perceptsr.errors import ExportError
    from perceptsr.export import export_onnx

    out = Path(args.output)
    if out.exists() and not args.overwrite:
        raise ExportError(f"{out}: already exists (pass --overwrite to replace it)")
    report = export_onnx(args.model, out, fp16=args.fp16, opset=args.opset)
    for check in report.checks:
        shape = "x".join(map(str, check.shape))
        print(f"{check.label} ({shape}): max abs difference onnxruntime vs PyTorch {check.max_abs_diff:.3g}")
    pad = f", any H, W >= {report.multiple} (padded inside)" if report.multiple > 1 else ""
    print(f"wrote {report.path}: opset {report.opset}, {'float16' if report.fp16 else 'float32'}, x{report.scale}"
          f"{pad}; verified within {report.tolerance:g}")
    return 0
