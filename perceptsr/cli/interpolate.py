"""``perceptsr interpolate A B --steps K --out DIR``: the K networks ``(1 - a) A + a B`` (ESRGAN's
net_interp), optionally scored with ``--eval`` and drawn on the perception-distortion plane (see
:mod:`perceptsr.interpolation`)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from perceptsr.cli.argtypes import int_at_least, tile_size

    parser.add_argument("a", metavar="A", help="first model (alpha 0), e.g. the PSNR-oriented network")
    parser.add_argument("b", metavar="B", help="second model (alpha 1), e.g. its GAN fine-tune")
    parser.add_argument("--steps", type=int_at_least(2), required=True, help="number of models, A and B included")
    parser.add_argument("--out", required=True, help="output folder (step checkpoints, interpolation.json, eval/)")
    parser.add_argument("--eval", nargs="+", default=None, metavar="DIR_OR_NAME",
                        help="also score every step on these datasets (as perceptsr eval) and write eval/report.html")
    parser.add_argument("--metrics", default="psnr,lpips",
                        help="comma-separated metrics for --eval (default psnr,lpips; the curve needs PSNR and "
                        "LPIPS or NIQE)")
    parser.add_argument("--protocol", default="sr-y", help="metric protocol for --eval (default sr-y)")
    parser.add_argument("--tradeoff", default=None, metavar="POPULATION_OR_FUSED",
                        help="with --eval, also score EA-Adam's trade-off models at t = each alpha (a population "
                        "folder or a fused model, as upscale --tradeoff takes) and draw their curve beside it")
    parser.add_argument("--data-root", default=None, help="folder holding datasets by name (as perceptsr eval)")
    parser.add_argument("--tile", type=tile_size, default="auto", help="tile size in LR pixels for --eval (default auto)")
    parser.add_argument("--device", default=None, help="torch device for --eval (default: cuda if available)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    import sys
    import warnings
    from pathlib import Path

    from perceptsr.errors import ConfigError
    from perceptsr.evaluation import markdown_table
    from perceptsr.interpolation import evaluate_sweep, interpolate_files

    if args.tradeoff is not None and args.eval is None:
        raise ConfigError("--tradeoff needs --eval DATASETS (the curves are drawn from the scores)")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sweep = interpolate_files(args.a, args.b, args.steps, args.out)
    for w in caught:
        print(f"perceptsr interpolate: warning: {w.message}", file=sys.stderr)
    print(f"weight cosine similarity of A and B: {sweep.similarity:.4f}")
    for alpha, path in zip(sweep.alphas, sweep.files):
        print(f"alpha {alpha:.3f}: {path}")
    if args.eval is not None:
        results, report = evaluate_sweep(
            sweep, args.eval, Path(args.out) / "eval", metrics=args.metrics.split(","), protocol=args.protocol,
            tradeoff=args.tradeoff, data_root=args.data_root, tile=args.tile, device=args.device,
            progress=not args.quiet,
        )
        print(markdown_table(results))
        print(f"report written to {report}")
    return 0
