"""Speed of every available metric: milliseconds per image, printed as a table.

Per metric, image size (480x320 and 1020x1020 by default) and batch size (1 and batched), on the
current device; then NIQE on all 100 BSD100 HR images (same-size images batched) when ../shared is
present. Metrics whose module or assets are missing are listed as skipped with the reason.

    .venv/bin/python benchmarks/metrics.py
    .venv/bin/python benchmarks/metrics.py --metrics psnr ssim niqe --threads 2 --repeat 5

Each configuration runs once as warm-up, then ``--repeat`` timed runs; the best is reported
(CUDA is synchronised around every timed call). Calls slower than 2 s are timed once, and batched
runs expected to exceed ``--max-seconds`` are shown as ``slow`` (VGG metrics on CPU).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from timing import best_time

from perceptsr.errors import PerceptsrError
from perceptsr.metrics import create_metric, list_metrics

SHARED = Path(os.environ.get("PERCEPTSR_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))


def _images(n: int, h: int, w: int, device, seed: int = 0):
    """Natural-ish test images (smooth pattern + texture), quantised to uint8 like files."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    base = 0.5 + 0.35 * torch.sin(9 * xx + 5 * yy) * torch.cos(4 * yy)
    x = (base[None, None] + 0.12 * torch.rand(n, 3, h, w, generator=g)).clamp(0, 1)
    ref = (x + 0.05 * torch.randn(n, 3, h, w, generator=g)).clamp(0, 1)
    q = lambda t: torch.floor(t * 255 + 0.5) / 255
    return q(x).to(device), q(ref).to(device)


def _bsd100(device: torch.device, repeat: int) -> str:
    folder = SHARED / "datasets" / "benchmark" / "BSD100" / "HR"
    if not folder.is_dir():
        return f"NIQE on BSD100: skipped ({folder} not found)"
    from perceptsr.data.io import list_images, read_image

    try:
        metric = create_metric("niqe", device=device)
    except PerceptsrError as exc:
        return f"NIQE on BSD100: skipped ({exc})"
    start = time.perf_counter()
    groups: dict[tuple, list[torch.Tensor]] = {}
    files = list_images(folder)
    for path in files:
        t = torch.from_numpy(read_image(path)).permute(2, 0, 1)
        groups.setdefault(tuple(t.shape), []).append(t)
    batches = [torch.stack(v).to(device) for v in groups.values()]
    read_s = time.perf_counter() - start
    seconds = best_time(lambda: [metric(b) for b in batches], device, repeat, slow_seconds=2.0)
    sizes = ", ".join(f"{len(v)} x {k[1]}x{k[2]}" for k, v in groups.items())
    return (f"NIQE on BSD100 HR ({len(files)} images: {sizes}): {seconds:.2f} s total "
            f"({1000 * seconds / len(files):.1f} ms/image; reading the files took {read_s:.2f} s more)")


def main(argv: list[str] | None = None) -> None:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--metrics", nargs="+", default=None, help="default: all registered")
    parser.add_argument("--sizes", nargs="+", default=["320x480", "1020x1020"], help="HxW")
    parser.add_argument("--batch", type=int, default=8, help="batched size (per-image time reported)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--no-bsd100", action="store_true")
    parser.add_argument("--max-seconds", type=float, default=30.0,
                        help="skip a batched run expected to take longer than this ('slow')")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes]

    print(f"device {device}" + ("" if device.type == "cuda" else f", {torch.get_num_threads()} threads")
          + f"; best of {args.repeat}; ms per image")
    header = f"{'metric':10s}" + "".join(
        f"{f'{h}x{w} b1':>16s}{f'{h}x{w} b{args.batch}':>16s}" for h, w in sizes
    )
    print(header)
    print("-" * len(header))
    skipped = []
    for name in args.metrics or list_metrics():
        try:
            metric = create_metric(name, device=device)
        except PerceptsrError as exc:
            skipped.append((name, str(exc).split(". ")[0]))
            continue
        cells = []
        for h, w in sizes:
            single = None
            for n in (1, args.batch):
                if n > 1 and single is not None and single * n > args.max_seconds:
                    cells.append(f"{'slow':>16s}")
                    continue
                try:
                    x, ref = _images(n, h, w, device)
                    call = (lambda: metric(x, ref)) if metric.full_reference else (lambda: metric(x))
                    with torch.no_grad():
                        seconds = best_time(call, device, args.repeat, slow_seconds=2.0)
                    single = seconds if n == 1 else single
                    cells.append(f"{1000 * seconds / n:16.2f}")
                except (PerceptsrError, RuntimeError) as exc:  # too small, out of memory, ...
                    cells.append(f"{'n/a':>16s}")
                    skipped.append((f"{name} {h}x{w} b{n}", str(exc).splitlines()[0][:100]))
        print(f"{name:10s}" + "".join(cells))
    for name, reason in skipped:
        print(f"skipped {name}: {reason}")
    if not args.no_bsd100:
        print(_bsd100(device, args.repeat))


if __name__ == "__main__":
    main()
