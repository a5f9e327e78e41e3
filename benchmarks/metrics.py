"""Speed of every available metric: milliseconds per image, printed as a table.

Per metric, image size (480x320 and 1020x1020 by default) and batch size (1 and batched), on the
current device; then NIQE on all 100 BSD100 HR images (same-size images batched) when ../shared is
present, and NIQE at batch 1 on the first ``--basicsr-images`` BSD100 images side by side with
BasicSR 1.4.2's NumPy port (``calculate_niqe``), with the speed ratio and the largest difference of
the values, when BasicSR's metric modules can be found. Metrics whose module or assets are missing
are listed as skipped with the reason.

    .venv/bin/python benchmarks/metrics.py
    .venv/bin/python benchmarks/metrics.py --metrics psnr ssim niqe --threads 2 --repeat 5
    .venv/bin/python benchmarks/metrics.py --metrics niqe --basicsr-root /tmp/basicsr-1.4.2

BasicSR is found as an installed ``basicsr`` distribution (the ``bench`` extra:
``pip install -e .[bench]``) or in an unpacked sdist given by ``--basicsr-root`` /
``BASICSR_ROOT`` (``pip download basicsr==1.4.2 --no-deps`` and untar it). Its package is not
imported (``import basicsr`` pulls torchvision, whose current releases break it): the three
modules NIQE needs are loaded by file path under minimal package stubs, without OpenCV.

Each configuration runs once as warm-up, then ``--repeat`` timed runs; the best is reported
(CUDA is synchronised around every timed call). Calls slower than 2 s are timed once, and batched
runs expected to exceed ``--max-seconds`` are shown as ``slow`` (VGG metrics on CPU).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
import types
from pathlib import Path

import torch

from timing import best_time, sync

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


def _basicsr_niqe(root: str | None):
    """BasicSR's ``calculate_niqe`` loaded by file path, or ``None`` and why not."""
    if root:
        pkg = Path(root) / "basicsr" if (Path(root) / "basicsr").is_dir() else Path(root)
    else:
        spec = importlib.util.find_spec("basicsr")  # locates the package without importing it
        if spec is None or not spec.submodule_search_locations:
            return None, "basicsr not installed (pip install -e .[bench], or --basicsr-root an unpacked sdist)"
        pkg = Path(list(spec.submodule_search_locations)[0])
    needed = ["metrics/niqe.py", "metrics/metric_util.py", "metrics/niqe_pris_params.npz",
              "utils/color_util.py", "utils/matlab_functions.py", "utils/registry.py"]
    missing = [n for n in needed if not (pkg / n).is_file()]
    if missing:
        return None, f"{pkg} lacks {', '.join(missing)}"
    saved = {k: v for k, v in sys.modules.items() if k == "basicsr" or k.startswith("basicsr.") or k == "cv2"}

    def stub(name, path=None):
        mod = types.ModuleType(name)
        if path is not None:
            mod.__path__ = [str(path)]
        sys.modules[name] = mod
        return mod

    def load(name, rel):
        spec = importlib.util.spec_from_file_location(name, pkg / rel)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
        return mod

    try:
        import warnings

        if "cv2" not in sys.modules:
            stub("cv2")  # only its convert_to='gray' branch uses OpenCV
        stub("basicsr", pkg)
        utils = stub("basicsr.utils", pkg / "utils")
        stub("basicsr.metrics", pkg / "metrics")
        load("basicsr.utils.registry", "utils/registry.py")
        utils.bgr2ycbcr = load("basicsr.utils.color_util", "utils/color_util.py").bgr2ycbcr
        load("basicsr.utils.matlab_functions", "utils/matlab_functions.py")
        load("basicsr.metrics.metric_util", "metrics/metric_util.py")
        with warnings.catch_warnings():  # scipy.ndimage.filters is deprecated
            warnings.simplefilter("ignore", DeprecationWarning)
            niqe = load("basicsr.metrics.niqe", "metrics/niqe.py")
        return niqe.calculate_niqe, None
    except Exception as exc:  # noqa: BLE001 - report any failure of the foreign code
        return None, f"cannot load BasicSR's NIQE from {pkg}: {type(exc).__name__}: {exc}"
    finally:
        for k in [k for k in sys.modules if k == "basicsr" or k.startswith("basicsr.") or k == "cv2"]:
            del sys.modules[k]
        sys.modules.update(saved)


def _versus_basicsr(device: torch.device, repeat: int, count: int, root: str | None) -> list[str]:
    """NIQE at batch 1 against BasicSR 1.4.2 on the first ``count`` BSD100 HR images, interleaved."""
    folder = SHARED / "datasets" / "benchmark" / "BSD100" / "HR"
    if not folder.is_dir():
        return [f"NIQE vs BasicSR: skipped ({folder} not found)"]
    import numpy as np

    from perceptsr.data.io import list_images, read_image

    try:
        metric = create_metric("niqe", device=device)
    except PerceptsrError as exc:
        return [f"NIQE vs BasicSR: skipped ({exc})"]
    files = list_images(folder)[:count]
    rgb = [read_image(p) for p in files]  # float32 [0, 1] HWC, exactly k/255
    tensors = [torch.from_numpy(a).permute(2, 0, 1)[None].to(device) for a in rgb]

    def ours():
        return [float(metric(t)) for t in tensors]

    calculate_niqe, why = _basicsr_niqe(root)

    def seconds(fn) -> float:
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        return time.perf_counter() - start

    ours()  # warm-up (tables, caches)
    if calculate_niqe is None:
        t = min(seconds(ours) for _ in range(repeat))
        return [f"NIQE batch 1, {len(files)} BSD100 HR images: perceptsr {t:.2f} s "
                f"({1000 * t / len(files):.1f} ms/image); BasicSR: skipped ({why})"]
    bgr = [np.round(a[..., ::-1] * 255).astype(np.uint8) for a in rgb]  # what cv2.imread gives

    def theirs():
        return [calculate_niqe(im, crop_border=0) for im in bgr]

    theirs()
    ours_t, theirs_t = [], []
    for _ in range(repeat):  # alternate, so that both see the same machine load
        ours_t.append(seconds(ours))
        theirs_t.append(seconds(theirs))
    a, b = np.array(ours()), np.array(theirs())
    rel = np.abs(a / b - 1)
    t_ours, t_theirs = min(ours_t), min(theirs_t)
    return [
        f"NIQE batch 1, {len(files)} BSD100 HR images (best of {repeat}, interleaved): "
        f"perceptsr {t_ours:.3f} s ({1000 * t_ours / len(files):.1f} ms/image), "
        f"BasicSR 1.4.2 {t_theirs:.3f} s ({1000 * t_theirs / len(files):.1f} ms/image): "
        f"{t_theirs / t_ours:.2f}x faster",
        f"  values vs BasicSR: median |rel diff| {np.median(rel):.1e}, max {rel.max():.1e} "
        f"({files[int(rel.argmax())].name}: {a[rel.argmax()]:.6f} vs {b[rel.argmax()]:.6f}); "
        f"{int((rel > 1e-3).sum())} of {len(files)} differ by more than 1e-3",
    ]


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
    parser.add_argument("--basicsr-images", type=int, default=30,
                        help="BSD100 images for the NIQE comparison with BasicSR (0: skip it)")
    parser.add_argument("--basicsr-root", default=os.environ.get("BASICSR_ROOT"),
                        help="unpacked basicsr sdist (default: the installed basicsr, if any)")
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
    if args.basicsr_images > 0 and (args.metrics is None or "niqe" in args.metrics):
        for line in _versus_basicsr(device, args.repeat, args.basicsr_images, args.basicsr_root):
            print(line)


if __name__ == "__main__":
    main()
