"""Speed of tiled and untiled inference: output megapixels per second, printed as a table.

Random-weight x4 generators (MSRResNet, SRResNet) on a random LR image, on the current device:

    .venv/bin/python benchmarks/upscale.py                      # defaults for the device
    .venv/bin/python benchmarks/upscale.py --size 512 --tiles 128 256 --batches 1 4 --bf16

Each configuration runs once as warm-up, then ``--repeat`` timed runs; the best is reported.
"""

from __future__ import annotations

import argparse

import torch

from timing import best_time

from perceptsr.archs import build_arch
from perceptsr.inference import upscale_tensor


def main(argv: list[str] | None = None) -> None:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--archs", nargs="+", default=["msrresnet", "srresnet"])
    parser.add_argument("--size", type=int, default=512 if cuda else 128, help="LR image side")
    parser.add_argument("--tiles", type=int, nargs="+", default=[128, 256, 512] if cuda else [32, 64])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8] if cuda else [1, 4])
    parser.add_argument("--tile-pad", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.bf16 else None
    scale = 4
    gen = torch.Generator().manual_seed(0)
    x = torch.rand((1, 3, args.size, args.size), generator=gen)
    out_mp = (args.size * scale) ** 2 / 1e6
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"device: {name}; LR {args.size}x{args.size} -> x{scale} ({out_mp:.2f} MP out); "
          f"tile_pad {args.tile_pad}; {'bf16 autocast' if dtype else 'fp32'}; best of {args.repeat}")
    header = f"{'arch':<10} {'tile':>6} {'batch':>5} {'seconds':>9} {'MP/s out':>9}"
    print(header)
    print("-" * len(header))
    for arch in args.archs:
        torch.manual_seed(0)
        model = build_arch(arch, upscale=scale).to(device).eval()
        configs = [(None, 1)] + [(t, b) for t in args.tiles for b in args.batches]
        for tile, batch in configs:
            def fn(tile=tile, batch=batch):
                upscale_tensor(model, x, scale=scale, tile=tile, tile_pad=args.tile_pad,
                               batch_size=batch, device=device, dtype=dtype)

            try:
                seconds = best_time(fn, device, args.repeat)
                row = f"{seconds:9.3f} {out_mp / seconds:9.2f}"
            except torch.OutOfMemoryError:
                row = f"{'OOM':>9} {'-':>9}"
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            print(f"{arch:<10} {tile or 'none':>6} {batch if tile else '-':>5} {row}", flush=True)
        del model


if __name__ == "__main__":
    main()
