"""Perception-distortion fronts of model sets: PSNR (Y, crop = scale) and LPIPS-alex (RGB, crop =
scale) per model on the first N images of a benchmark, and the hypervolume of each set in the
(PSNR, LPIPS) plane (PSNR maximised, LPIPS minimised) against one reference point shared by all
sets (the worst PSNR and worst LPIPS over all models, each 1% of its range further out).

    PERCEPTSR_ASSETS=../shared/assets python benchmarks/ea_adam_front.py \\
        --set ea_adam=runs/cpu_ea_adam_msrresnet_x4/population/final \\
        --set weighted_sum=runs/cpu_psnr/net_g.safetensors,runs/ws_025/...,... \\
        --hr ../shared/datasets/benchmark/BSD100/HR --lr ../shared/datasets/benchmark/BSD100/LR_bicubic/X4 --images 10

A set is a population folder (``member_<i>`` files) or a comma-separated list of checkpoints.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


def hypervolume(points: list[tuple[float, float]], ref: tuple[float, float]) -> float:
    """2-D hypervolume dominated by ``points`` (both coordinates minimised) up to ``ref``."""
    inside = sorted((a, b) for a, b in points if a < ref[0] and b < ref[1])
    volume, best_b = 0.0, ref[1]
    for i, (a, b) in enumerate(inside):
        if b >= best_b:
            continue  # dominated by a point with smaller a
        nxt = next((x for x, y in inside[i + 1:] if y < b), ref[0])
        volume += (nxt - a) * (ref[1] - b)
        best_b = b
    return volume


def model_files(spec: str) -> list[Path]:
    from perceptsr.fusion import sort_expert_files

    path = Path(spec)
    if path.is_dir():
        return sort_expert_files(p for p in path.iterdir() if p.suffix == ".safetensors")
    return [Path(p) for p in spec.split(",")]


@torch.no_grad()
def score(file: Path, pairs: list[dict], scale: int) -> tuple[float, float]:
    from perceptsr.checkpoint import load_model
    from perceptsr.inference import upscale_tensor
    from perceptsr.metrics import create_metric

    model = load_model(file)
    psnr = create_metric("psnr", preset="sr-y", scale=scale)
    lpips = create_metric("lpips", crop_border=scale)
    totals = [0.0, 0.0]
    for item in pairs:
        sr = upscale_tensor(model, item["lr"].unsqueeze(0), scale=scale)
        sr = torch.floor(sr.clamp(0, 1) * 255 + 0.5) / 255
        hr = item["hr"].unsqueeze(0)
        totals[0] += float(psnr(sr, hr).mean())
        totals[1] += float(lpips(sr, hr).mean())
    return totals[0] / len(pairs), totals[1] / len(pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", action="append", required=True, metavar="NAME=MODELS")
    parser.add_argument("--hr", required=True)
    parser.add_argument("--lr")
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--scale", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(2)
    from perceptsr.data.datasets import PairedValDataset

    data = PairedValDataset(args.hr, args.lr, scale=args.scale)
    pairs = [data[i] for i in range(min(args.images, len(data)))]
    sets = {}
    for spec in args.set:
        name, models = spec.split("=", 1)
        sets[name] = [(f, *score(f, pairs, args.scale)) for f in model_files(models)]
    values = [v for rows in sets.values() for v in rows]
    lo_p, hi_p = min(v[1] for v in values), max(v[1] for v in values)
    lo_l, hi_l = min(v[2] for v in values), max(v[2] for v in values)
    ref = (-(lo_p - 0.01 * (hi_p - lo_p)), hi_l + 0.01 * (hi_l - lo_l))
    print(f"{len(pairs)} images of {args.hr}; reference point PSNR {-ref[0]:.4f} dB, LPIPS {ref[1]:.4f}")
    print("| set | model | PSNR (Y) | LPIPS |\n|---|---|---|---|")
    for name, rows in sets.items():
        for f, p, lp in rows:
            print(f"| {name} | {f} | {p:.4f} | {lp:.4f} |")
    print("\n| set | models | hypervolume (dB x LPIPS) |\n|---|---|---|")
    for name, rows in sets.items():
        print(f"| {name} | {len(rows)} | {hypervolume([(-p, lp) for _, p, lp in rows], ref):.6f} |")


if __name__ == "__main__":
    main()
