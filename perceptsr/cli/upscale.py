"""``perceptsr upscale``: super-resolve an image file or a folder of images to PNGs."""

from __future__ import annotations

import argparse
import sys

from perceptsr.cli.argtypes import int_at_least, tile_size


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="generator checkpoint (native .safetensors or legacy .pth); "
                        "with --tradeoff a population folder or a fused model")
    parser.add_argument("--input", required=True, help="an image file, or a folder (all its images, sorted)")
    parser.add_argument("--output", required=True, help="folder for the PNG results (created if missing)")
    parser.add_argument(
        "--tile", type=tile_size, default="auto",
        help="tile size in LR pixels, 'auto' (from free memory, halved on out-of-memory; default) or 0 for whole images",
    )
    parser.add_argument(
        "--tile-pad", type=int_at_least(0), default=16,
        help="LR pixels of context around each tile (default 16); tiles match the untiled result "
        "once this covers the model's receptive field",
    )
    parser.add_argument("--batch", type=int_at_least(1), default=4, help="tiles (or images) per forward pass (default 4)")
    parser.add_argument("--device", default=None, help="torch device, e.g. cuda, cuda:1, cpu (default: cuda if available)")
    parser.add_argument("--suffix", default="", help="appended to each output file name before .png (default none)")
    parser.add_argument("--bf16", action="store_true", help="run the model under bfloat16 autocast")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "--tradeoff", type=_unit, default=None, metavar="T",
        help="EA-Adam perception-distortion control (a perceptsr extension): the perceptual preference in [0, 1], "
        "i.e. expert position T*(K-1) of K (member i at T = i/(K-1); 0 = most faithful, 1 = most perceptual); "
        "--model is then a population folder (member_<i> files) or a fused model with fusion_weights.json "
        "beside it (the fused model itself is at its own T, the tradeoff_t that perceptsr fuse prints and records)",
    )


def _unit(value: str) -> float:
    try:
        t = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {value!r}") from None
    if not 0.0 <= t <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1] (0 = most faithful, 1 = most perceptual), got {t}")
    return t


def _prepare_model(args: argparse.Namespace, device: str):
    if args.tradeoff is not None:
        from perceptsr.fusion import load_tradeoff_model

        return load_tradeoff_model(args.model, args.tradeoff, device=device)
    from perceptsr.checkpoint import load_model

    return load_model(args.model, device=device)


def run(args: argparse.Namespace) -> int:
    import torch

    from perceptsr.inference import upscale_path

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = _prepare_model(args, device)
    summary = upscale_path(
        model,
        args.input,
        args.output,
        tile=args.tile,
        tile_pad=args.tile_pad,
        batch_size=args.batch,
        device=device,
        dtype=torch.bfloat16 if args.bf16 else None,
        suffix=args.suffix,
        progress=not args.quiet,
        report=(lambda reason: print(f"failed: {reason}", file=sys.stderr)) if args.quiet else None,
    )
    print(f"upscaled {len(summary.processed)} image(s) into {args.output}")
    if summary.failed:  # each failure was reported as it happened
        print(f"{len(summary.failed)} image(s) failed (listed above)", file=sys.stderr)
        return 1
    return 0
