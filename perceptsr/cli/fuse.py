"""``perceptsr fuse RUN --lr-dir DIR --output FILE``: EA-Adam stage C.

Averages the per-layer weights that a trained fusion run (stage B) predicts over LR images (the
release: the first 100 DIV2K-train LR images, centre half crop) and collapses the experts into one
plain network, saved with ``fusion_weights.json`` beside it (loadable by ``perceptsr.load_model``
and ``perceptsr upscale``; ``perceptsr upscale --tradeoff t`` moves along the front from it). It
prints and records the output gap between the dynamic network (per-image weights) and the collapsed
model (weights averaged over the images), on those images or on ``--gap-dir``.
"""

from __future__ import annotations

import argparse

from perceptsr.cli.argtypes import int_at_least


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="fusion run folder (its latest checkpoint), a checkpoint folder or its "
                        "net_g.safetensors")
    parser.add_argument("--lr-dir", required=True, help="folder of LR images to average the weights over (sorted)")
    parser.add_argument("--output", required=True, help="fused checkpoint to write (.safetensors); "
                        "fusion_weights.json goes beside it")
    parser.add_argument("--experts", help="population folder (member_<i> files); default: the files the run recorded")
    parser.add_argument("--max-images", type=int_at_least(1), default=100, help="first N images of --lr-dir (default 100)")
    parser.add_argument("--no-crop", action="store_true", help="use whole images instead of their centre half")
    parser.add_argument("--gap-dir", help="LR images (e.g. a val set; whole images, sorted) to measure the output "
                        "gap between the dynamic network and the collapsed model on (default: the --lr-dir images "
                        "as averaged)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    import torch

    from perceptsr.fusion import fuse_run, load_fusion_weights

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    ckpt, json_path, weights = fuse_run(args.run, args.lr_dir, args.output, experts=args.experts,
                                        max_images=args.max_images, crop=not args.no_crop, gap_images=args.gap_dir,
                                        device=device, progress=not args.quiet)
    mean = torch.stack(list(weights.values())).mean(0)
    record = load_fusion_weights(json_path)[1]
    gap = record["output_gap"]
    print(f"fused {len(weights)} layers into {ckpt} (weights in {json_path}); "
          f"mean weight per expert: {', '.join(f'{w:.3f}' for w in mean.tolist())}; "
          f"--tradeoff {record['tradeoff_t']:.4f} is the fused model")
    print(f"output gap, dynamic network vs collapsed model on {gap['images']} image(s) ({gap['on']}): "
          f"max |diff| {gap['max_abs']:.4g}, mean |diff| {gap['mean_abs']:.4g}, PSNR {gap['psnr']:.2f} dB")
    return 0
