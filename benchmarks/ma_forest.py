"""Speed of Ma's random-forest stage: 3 regression forests x 2000 trees, vectorised over trees and images.

    .venv/bin/python benchmarks/ma_forest.py                         # CPU, 1 and 2 threads
    .venv/bin/python benchmarks/ma_forest.py --threads 2 --batches 1 16 --device cuda

The forests are synthetic but shaped like Ma's ``model.mat`` (randomforest-matlab ``regRF_train``
on 1440 samples, node size 5: ``nrnodes`` = 577, 288 splits per tree), grown by splitting a random
leaf, which gives trees about 20-25 levels deep. Feature sizes 18 / 45 / 75. Each configuration
runs once as warm-up, then ``--repeat`` timed runs; the best is reported as ms per call and per image.
Optionally ``--features`` adds the feature extraction time of one random 512x512 image.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from timing import best_time  # noqa: E402

from perceptsr.metrics.random_forest import CompiledForests, synthetic_forest  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--trees", type=int, default=2000)
    ap.add_argument("--splits", type=int, default=288)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--features", action="store_true", help="also time ma_features on a 512x512 image")
    args = ap.parse_args()
    device = torch.device(args.device)

    t = time.perf_counter()
    forests = [synthetic_forest(args.trees, args.splits, d, seed=i) for i, d in enumerate((18, 45, 75))]
    compiled = CompiledForests(forests, device=device)
    build = time.perf_counter() - t
    print(f"3 forests x {args.trees} trees, {2 * args.splits + 1} nodes each, max depth {compiled.depth}; "
          f"built and compiled in {build:.1f} s; device {device}")
    print(f"{'threads':>7} {'batch':>5} {'ms/call':>9} {'ms/image':>9}")
    rng = np.random.default_rng(0)
    for threads in args.threads if device.type == "cpu" else [torch.get_num_threads()]:
        torch.set_num_threads(threads)
        for n in args.batches:
            feats = [torch.from_numpy(rng.standard_normal((n, d))).to(device) for d in (18, 45, 75)]
            sec = best_time(lambda: compiled(feats), device, args.repeat)
            print(f"{threads:>7} {n:>5} {sec * 1e3:>9.2f} {sec * 1e3 / n:>9.2f}")
    if args.features:
        from perceptsr.metrics.ma_features import ma_features

        img = torch.rand(1, 1, 512, 512, dtype=torch.float64, device=device)
        for threads in args.threads if device.type == "cpu" else [torch.get_num_threads()]:
            torch.set_num_threads(threads)
            sec = best_time(lambda: ma_features(img), device, max(1, args.repeat // 2))
            print(f"ma_features 512x512, {threads} thread(s): {sec * 1e3:.0f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
