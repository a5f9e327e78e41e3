"""EA-Adam EA phase: children evaluated per second, perceptsr vs the released code's way, as a table.

Population of 5 MSRResNet x4 (64 features, 16 blocks); fitness = (L1, VGG19 conv5_4 perceptual) on a
fixed set of HR 128 / LR 32 patches (synthetic random images, or ``--hr-dir`` with real images).

* released way (csslc/EA-Adam ``train_EA-Adam_srresnet.py`` + ``EA_operator/gen.py``): per child five
  deep copies of whole models (parent, two mates, two offspring), autograd left on during fitness
  evaluation, one image (<= 50 patches) per forward pass, HR VGG features recomputed for every child;
* perceptsr (:mod:`perceptsr.ea_adam`): children as state dicts loaded into one scratch model,
  ``torch.inference_mode``, patches batched across images, HR VGG features cached once, inputs in
  channels_last (the ``FitnessEvaluator`` defaults);
* perceptsr NCHW: the same without channels_last (what perceptsr did before, for reference);
* perceptsr bf16: the opt-in ``fitness_dtype: bfloat16`` (values move by a few 1e-3: not the float32 ones).

    .venv/bin/python benchmarks/ea_step.py --images 2 --patches 5     # CPU: reduced set (the default there)
    .venv/bin/python benchmarks/ea_step.py --images 16 --patches 50 --children 20   # the full set (GPU)
    .venv/bin/python benchmarks/ea_step.py --images 16 --patches 50 --tf32          # TF32 convs for every way
    .venv/bin/python benchmarks/ea_step.py --hr-dir ../shared/datasets/train/BSD200/HR

VGG weights: the ``vgg19_caffe`` asset (../shared/assets when present), else ``vgg19`` (torchvision),
else random weights; the output says which. Every way scores the same children, one child per way in
turn (alternating order, so that load drifts hit every way alike); child 0 is warm-up. The table gives
the minimum and median seconds per child and each way's largest relative fitness difference from the
released way; the float32 ways must stay within 1e-6 (float32 summation order only).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from timing import sync

from perceptsr.archs import build_arch
from perceptsr.data import imresize
from perceptsr.ea_adam import (
    EvalSet,
    FitnessEvaluator,
    L1Fitness,
    PerceptualFitness,
    build_eval_set,
    make_child,
    neighbourhoods,
)
from perceptsr.errors import AssetError
from perceptsr.losses import PerceptualLoss

REPO = Path(__file__).resolve().parents[1]
SHARED_ASSETS = REPO.parent / "shared" / "assets"


def _perceptual_loss(device: torch.device) -> tuple[PerceptualLoss, str]:
    if SHARED_ASSETS.is_dir():
        os.environ.setdefault("PERCEPTSR_ASSETS", str(SHARED_ASSETS))
    os.environ.setdefault("PERCEPTSR_OFFLINE", "1")
    for weights, text in (("caffe", "vgg19_caffe weights"), ("torchvision", "torchvision vgg19 weights")):
        try:
            return PerceptualLoss({"conv5_4": 1.0}, weights=weights).to(device), text
        except AssetError:
            continue
    loss = PerceptualLoss({"conv5_4": 1.0}, weights=None, generator=torch.Generator().manual_seed(0))
    return loss.to(device), "RANDOM weights (no VGG19 asset found)"


def _eval_set(args) -> tuple[EvalSet, str]:
    if args.hr_dir:
        es = build_eval_set(args.hr_dir, scale=4, patch_size=128, num_images=args.images)
        return es, f"first {es.num_images} images of {args.hr_dir}"
    g = torch.Generator().manual_seed(0)
    n = args.images * args.patches
    hr = torch.rand(n, 3, 128, 128, generator=g)
    lr = imresize(hr, 0.25).clamp_(0, 1)
    idx = torch.arange(args.images).repeat_interleave(args.patches)
    return EvalSet(lr, hr, idx), f"{args.images} synthetic images x {args.patches} patches"


def _sbx_released(net, pt1, pt2, g: torch.Generator):
    """``gen_cross`` of the release: two deep copies, SBX on every weight/bias, load both children."""
    net_g2 = copy.deepcopy(net)
    child = copy.deepcopy(net)
    sd1, sd2 = pt1.state_dict(), pt2.state_dict()
    new1, new2 = {}, {}
    for k, v in sd1.items():
        if k[-1] in "ts":
            u = float(torch.rand((), generator=g))
            beta = (2 * u) ** (1 / 21) if u < 0.5 else (2 - 2 * u) ** (-1 / 21)
            new1[k] = 0.5 * ((1 + beta) * v + (1 - beta) * sd2[k])
            new2[k] = 0.5 * ((1 - beta) * v + (1 + beta) * sd2[k])
        else:
            new1[k], new2[k] = v, sd2[k]
    child.load_state_dict(new1)
    net_g2.load_state_dict(new2)
    return child


def _released_fitness(net, images, perceptual: PerceptualLoss) -> list[float]:
    """Grad-enabled evaluation, one image per batch, HR features recomputed inside the loss."""
    l1_sum, per_sum = 0.0, 0.0
    for lr, hr in images:
        sr = net(lr)  # autograd on, as in the release
        l1_sum += F.l1_loss(sr, hr).item()
        per_sum += perceptual(sr, hr).item()
    return [l1_sum / len(images), per_sum / len(images)]


@torch.inference_mode()
def _forward_costs(net, perceptual: PerceptualLoss, es: EvalSet, batch: int, device, repeat: int = 3):
    """Median seconds of (the generator on every LR patch, VGG19 up to conv5_4 on every SR patch)."""
    net = net.eval().to(memory_format=torch.channels_last)
    vgg = perceptual.vgg.eval().to(memory_format=torch.channels_last)
    lrs = [es.lr[i : i + batch].contiguous(memory_format=torch.channels_last) for i in range(0, es.num_patches, batch)]
    g_times, v_times = [], []
    for _ in range(repeat + 1):
        sync(device)
        t0 = time.perf_counter()
        srs = [net(x) for x in lrs]
        sync(device)
        t1 = time.perf_counter()
        for sr in srs:
            vgg(sr)  # the extractor normalises its input itself
        sync(device)
        g_times.append(t1 - t0)
        v_times.append(time.perf_counter() - t1)
    return statistics.median(g_times[1:]), statistics.median(v_times[1:])


def main(argv: list[str] | None = None) -> None:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--images", type=int, default=16 if cuda else 2)
    parser.add_argument("--patches", type=int, default=50 if cuda else 5, help="per image (synthetic set)")
    parser.add_argument("--children", type=int, default=10 if cuda else 5, help="timed children per way")
    parser.add_argument("--batch", type=int, default=100 if cuda else 10, help="perceptsr patch batch size")
    parser.add_argument("--hr-dir", default=None, help="HR folder for the evaluation set (first --images files)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--tf32", action="store_true",
                        help="allow TF32 convolutions on CUDA for every way (default off: float32 values comparable)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = args.tf32

    es, data_text = _eval_set(args)
    perceptual, vgg_text = _perceptual_loss(device)
    torch.manual_seed(0)
    n_pop = 5
    models = [build_arch("msrresnet", num_feat=64, num_block=16, upscale=4).to(device) for _ in range(n_pop)]
    states = [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in models]
    nb = neighbourhoods(n_pop)
    evaluators = {  # one per perceptsr way: each keeps its own HR feature cache
        way: FitnessEvaluator(es, [L1Fitness(), PerceptualFitness(perceptual)], batch_size=args.batch,
                              device=device, **kwargs)
        for way, kwargs in (("perceptsr", {}), ("nchw", {"channels_last": False}), ("bf16", {"dtype": "bfloat16"}))
    }
    on_device = es.to(device)
    images = [(on_device.lr[on_device.image_index == j], on_device.hr[on_device.image_index == j])
              for j in range(es.num_images)]
    scratch = build_arch("msrresnet", num_feat=64, num_block=16, upscale=4).to(device)

    if device.type == "cuda":
        name = f"{torch.cuda.get_device_name(device)} (TF32 {'on' if args.tf32 else 'off'})"
    else:
        name = f"cpu ({torch.get_num_threads()} threads)"
    print(f"device: {name}")
    print(f"eval set: {data_text} = {es.num_patches} patches (HR 128, LR 32); MSRResNet x4 64f/16b; "
          f"population {n_pop}; objectives L1 + VGG19 conv5_4 ({vgg_text})")
    if device.type == "cpu" and (args.images, args.patches) != (16, 50) and not args.hr_dir:
        print(f"NOTE: CPU run on a reduced set (--images {args.images} --patches {args.patches}); "
              "the released setting is --images 16 --patches 50 (use a GPU)")

    # children: the same sequence of (parent, mate) for every way
    gen = torch.Generator().manual_seed(0)
    plan = []
    for c in range(args.children + 1):
        i = c % n_pop
        child, info = make_child(states, i, nb[i], generator=gen, p_crossover=1.0, p_mutation=0.0)
        plan.append((i, info.mate, child))

    def one_child(way: str, c: int) -> tuple[float, float, list[float]]:
        i, mate, child_state = plan[c]
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        sync(device)
        t0 = time.perf_counter()
        if way == "released":
            pt1, pt2 = copy.deepcopy(models[i]), copy.deepcopy(models[mate])
            pt3 = copy.deepcopy(models[mate])  # noqa: F841 - the release copies a third parent too
            net = _sbx_released(models[i], pt1, pt2, torch.Generator().manual_seed(c))
            net.load_state_dict(child_state)  # score exactly the same child as perceptsr
            net.train()
            f = _released_fitness(net, images, perceptual)
        else:
            make_child(states, i, nb[i], generator=torch.Generator().manual_seed(c), p_crossover=1.0, p_mutation=0.0)
            f = evaluators[way].evaluate_state(scratch, child_state).tolist()
        sync(device)
        seconds = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
        return seconds, peak, f

    labels = {
        "released": "released (deep copies, autograd on, HR feats/child)",
        "perceptsr": "perceptsr (inference, cached HR, channels_last)",
        "nchw": "perceptsr NCHW (as before channels_last)",
        "bf16": "perceptsr bf16 (opt-in fitness_dtype)",
    }
    ways = tuple(labels)
    times: dict[str, list[float]] = {w: [] for w in ways}
    peaks: dict[str, float] = {w: float("nan") for w in ways}
    fits: dict[str, list[list[float]]] = {w: [] for w in ways}
    for c in range(len(plan)):  # interleaved, alternating order, so that load drifts hit every way
        for way in (ways if c % 2 == 0 else ways[::-1]):
            sec, peak, f = one_child(way, c)
            if c > 0:  # child 0 is warm-up (allocator, cudnn autotune, the HR feature cache)
                times[way].append(sec)
            peaks[way] = peak if peaks[way] != peaks[way] else max(peaks[way], peak)
            fits[way].append(f)
    header = (f"{'way':<52} {'children/s':>10} {'min s/child':>11} {'median s/child':>14} "
              f"{'speed-up min/med':>16} {'max rel diff':>12} {'peak MiB':>9}")
    print(header)
    print("-" * len(header))
    base_min, base_med = min(times["released"]), statistics.median(times["released"])
    for way in ways:
        low, med = min(times[way]), statistics.median(times[way])
        diff = max(abs(a - b) / max(abs(a), 1e-12)
                   for fa, fb in zip(fits["released"], fits[way]) for a, b in zip(fa, fb))
        peak_text = f"{peaks[way]:9.0f}" if peaks[way] == peaks[way] else f"{'-':>9}"
        speedup = f"{base_min / low:.2f}x / {base_med / med:.2f}x"
        print(f"{labels[way]:<52} {1 / med:10.3f} {low:11.3f} {med:14.3f} {speedup:>16} {diff:12.2e} {peak_text}")
    g_time, v_time = _forward_costs(scratch, perceptual, on_device, args.batch, device)
    bound = base_med / (g_time + v_time)
    print(f"one child's unavoidable float32 work (channels_last, inference, batch {args.batch}): generator "
          f"{g_time:.3f} s + VGG19 on SR {v_time:.3f} s = {g_time + v_time:.3f} s; the released way also runs VGG19 "
          f"on HR per child. Bound on any float32 way that scores every patch: {bound:.2f}x the released median")
    worst = max(abs(a - b) / max(abs(a), 1e-12) for way in ("perceptsr", "nchw")
                for fa, fb in zip(fits["released"], fits[way]) for a, b in zip(fa, fb))
    print(f"children/s = 1 / median s/child; speed-up = released min (median) / this way's min (median); "
          f"float32 fitness vs released: {worst:.2e} ({'within' if worst <= 1e-6 else 'OUTSIDE'} 1e-6)")

if __name__ == "__main__":
    main()
