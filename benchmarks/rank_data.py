"""RankSRGAN rank-data labelling speed: NIQE-labelled 296x296 patches per second, as a table.

The labels of ``perceptsr rank-data`` (NIQE, preset ``pirm``: Y of MATLAB rgb2ycbcr on uint8, shave
4, so 288x288 = 3x3 NIQE blocks per patch), computed the ways the command runs them: in this
process (``--workers 0``; torch threads as set, patches batched ``--batch`` at a time) and in 1..N
worker processes (one torch thread each, as the command's pool). Patches are cut at stride 148 from
BSD200 HR images when ../shared is present, else from synthetic textures; each configuration
labels the same ``--patches`` patches after a warm-up, and every configuration's labels are checked
to agree.

    .venv/bin/python benchmarks/rank_data.py                  # CPU: in-process, 1 and 2 workers
    .venv/bin/python benchmarks/rank_data.py --workers 1 2 4 --patches 96 --device cuda
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time
from pathlib import Path

import numpy as np
import torch

from perceptsr.ranksrgan import label_patches, patch_grid

SHARED = Path(os.environ.get("PERCEPTSR_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
if (SHARED / "assets").is_dir():
    os.environ.setdefault("PERCEPTSR_ASSETS", str(SHARED / "assets"))


def _patches(n: int) -> tuple[np.ndarray, str]:
    folder = SHARED / "datasets" / "train" / "BSD200" / "HR"
    out = []
    if folder.is_dir():
        from perceptsr.data.io import list_images, read_image

        for path in list_images(folder):
            img = np.clip(np.floor(read_image(path) * 255 + 0.5), 0, 255).astype(np.uint8)
            out += [img[t : t + 296, l : l + 296] for t, l in patch_grid(*img.shape[:2], 296, 148)]
            if len(out) >= n:
                return np.stack(out[:n]), f"BSD200 HR patches ({folder})"
    rng = np.random.default_rng(0)
    yy, xx = np.meshgrid(np.linspace(0, 1, 296), np.linspace(0, 1, 296), indexing="ij")
    for _ in range(n):
        base = 0.5 + 0.3 * np.sin(rng.uniform(3, 12) * xx + rng.uniform(3, 12) * yy)
        img = np.clip(base[..., None] + 0.15 * rng.random((296, 296, 3)), 0, 1)
        out.append(np.floor(img * 255 + 0.5).astype(np.uint8))
    return np.stack(out), "synthetic textures"


_METRIC = {}


def _init(threads: int) -> None:
    torch.set_num_threads(threads)
    from perceptsr.metrics import create_metric

    _METRIC["m"] = create_metric("niqe", preset="pirm")


def _label(chunk: np.ndarray) -> np.ndarray:
    return label_patches(_METRIC["m"], chunk, batch=len(chunk))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patches", type=int, default=48)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the in-process run")
    parser.add_argument("--batch", type=int, default=16, help="patches per metric call (in-process)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    patches, source = _patches(args.patches)
    print(f"{len(patches)} patches of 296x296 from {source}; NIQE preset pirm; torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs")
    rows = []
    from perceptsr.metrics import create_metric

    torch.set_num_threads(args.threads)
    metric = create_metric("niqe", preset="pirm", device=args.device)
    label_patches(metric, patches[:2], batch=2)  # warm-up
    t0 = time.perf_counter()
    reference = label_patches(metric, patches, batch=args.batch)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    rows.append((f"in-process ({args.device}, {args.threads} threads, batch {args.batch})", time.perf_counter() - t0))
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    for w in args.workers:
        with ctx.Pool(w, initializer=_init, initargs=(1,)) as pool:
            pool.map(_label, [patches[:1]] * w)  # warm-up: every worker builds its metric
            chunks = np.array_split(patches, len(patches))  # one patch per task, as the pool's image tasks
            t0 = time.perf_counter()
            labels = np.concatenate(pool.map(_label, chunks, chunksize=1))
            rows.append((f"{w} worker process{'es' if w > 1 else ''} (cpu, 1 thread each)", time.perf_counter() - t0))
        diff = float(np.abs(labels - reference).max())
        if diff > 1e-4:
            raise SystemExit(f"labels of {w} workers differ from the in-process ones by {diff}")

    width = max(len(r[0]) for r in rows)
    print(f"\n{'configuration':<{width}}  {'seconds':>8}  {'patches/s':>9}  {'ms/patch':>8}")
    for name, seconds in rows:
        print(f"{name:<{width}}  {seconds:8.2f}  {len(patches) / seconds:9.2f}  {1000 * seconds / len(patches):8.1f}")
    print(f"\nlabels: mean NIQE {reference.mean():.4f} (min {reference.min():.4f}, max {reference.max():.4f}); "
          "all configurations agree to 1e-4")


if __name__ == "__main__":
    main()
