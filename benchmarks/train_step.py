"""Speed of the PSNR training step (MSRResNet x4) and its share of the device's peak FLOP/s.

    python benchmarks/train_step.py [--device cpu|cuda] [--batch 16] [--lr-patch 32] [--iters 10]

For each variant (fp32, channels_last, bf16 autocast, thread counts on CPU) it times the full
objective step (forward, L1 loss, backward, Adam step, as the training loop runs it) and prints
iterations/s, images/s, the achieved conv FLOP/s and that as a share of the measured peak.

FLOPs are counted analytically: every Conv2d costs ``2 * C_in/groups * k_h * k_w * C_out * H_out *
W_out`` per image in the forward pass (hooks record the shapes once); forward + backward is taken
as 3x the forward (the backward computes a gradient for the input and one for the weights, each as
costly as the forward). Element-wise work, pixel shuffle, the loss and Adam are not counted, so
the share is a slight under-estimate of useful work. "Peak" is measured on the same device and
dtype: the best of a large square matmul and a large 3x3 convolution (64 -> 64 channels).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from perceptsr.archs import build_arch  # noqa: E402
from perceptsr.config import config_from_dict, TrainConfig  # noqa: E402
from perceptsr.train.context import RunContext, Runtime  # noqa: E402
from perceptsr.train.objectives import build_objective  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def conv_forward_flops(model: nn.Module, x: torch.Tensor) -> int:
    total = 0

    def hook(module: nn.Conv2d, inputs, output):
        nonlocal total
        k_h, k_w = module.kernel_size
        per_out = 2 * (module.in_channels // module.groups) * k_h * k_w
        total += per_out * output.numel()

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return total


def timed(fn, device, iters: int, warmup: int) -> tuple[float, float]:
    """(best, median) seconds per call. The best is reported: on a shared machine it is the least
    disturbed estimate, and the peak is measured the same way."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[0], times[len(times) // 2]


def peak_flops(device: torch.device, dtype: torch.dtype) -> tuple[float, str]:
    """Best of a large matmul and a large 3x3 conv (64 -> 64 channels, channels_last), FLOP/s."""
    cpu = device.type == "cpu"
    reps = 3 if cpu else 50
    n = 2048 if cpu else 8192
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    mm = 2 * n**3 / timed(lambda: torch.mm(a, b), device, iters=reps, warmup=1)[0]
    batch, side = (8, 64) if cpu else (64, 128)
    conv = nn.Conv2d(64, 64, 3, 1, 1, bias=False).to(device=device, dtype=dtype, memory_format=torch.channels_last)
    x = torch.randn(batch, 64, side, side, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        cv = 2 * 64 * 9 * 64 * side * side * batch / timed(lambda: conv(x), device, iters=reps, warmup=1)[0]
    return (mm, "matmul") if mm >= cv else (cv, "conv3x3")


def make_step(device, batch, lr_patch, bf16, channels_last, compile=False):
    cfg = config_from_dict(TrainConfig, {
        "name": "bench", "model": {"arch": "msrresnet"}, "data": {"train": {"hr_dir": "-", "patch_size": lr_patch * 4}},
        "train": {"iterations": 1, "bf16": bf16, "channels_last": channels_last},
    })
    torch.manual_seed(0)
    model = build_arch("msrresnet", num_feat=64, num_block=16, upscale=4)
    runtime = Runtime(device=device, bf16=bf16, channels_last=channels_last, compile=compile)
    runtime.prepare_module(model)
    objective = build_objective(model, cfg, RunContext(runtime))
    batch_data = {"lr": torch.rand(batch, 3, lr_patch, lr_patch), "hr": torch.rand(batch, 3, lr_patch * 4, lr_patch * 4)}
    flops = 3 * conv_forward_flops(model, runtime.to_device(batch_data["lr"]))
    state = {"it": 0}

    def step():
        state["it"] += 1
        objective.set_iteration(state["it"])
        objective.step(batch_data, state["it"])

    return step, flops


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr-patch", type=int, default=32)
    parser.add_argument("--iters", type=int, default=None, help="steps per timing round")
    parser.add_argument("--rounds", type=int, default=4, help="alternating peak/step timing rounds")
    parser.add_argument("--threads", type=int, nargs="*", default=None, help="CPU thread counts to try")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd variants (slow to build)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    cpu = device.type == "cpu"
    iters = args.iters or (1 if cpu else 20)
    warmup = 1 if cpu else 10
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    threads = args.threads or ([torch.get_num_threads()] if not cpu else sorted({1, os.cpu_count() or 1}))

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    print(f"MSRResNet x4 (nf 64, nb 16) PSNR step: batch {args.batch}, LR patch {args.lr_patch}, {name}, "
          f"torch {torch.__version__}")
    rows = []
    variants = [("fp32", False, False), ("fp32 channels_last", False, True), ("bf16 autocast", True, False),
                ("bf16 channels_last", True, True)]
    if args.compile:
        variants += [("fp32 cl compile", False, True, True), ("bf16 cl compile", True, True, True)]
    for n_threads in threads:
        if cpu:
            torch.set_num_threads(n_threads)
        for label, bf16, cl, *compiled in variants:
            dtype = torch.bfloat16 if bf16 else torch.float32
            step, flops = make_step(device, args.batch, args.lr_patch, bf16, cl, bool(compiled and compiled[0]))
            for _ in range(warmup):
                step()
            # Peak and step are measured in alternation so that both see the same (possibly shared) machine.
            peak, peak_kind, times = 0.0, "", []
            for _ in range(args.rounds):
                p, kind = peak_flops(device, dtype)
                if p > peak:
                    peak, peak_kind = p, kind
                times.append(timed(step, device, iters, 0)[0])
            times.sort()
            seconds, median = times[0], times[len(times) // 2]
            rows.append((label, n_threads if cpu else "-", 1 / seconds, 1 / median, args.batch / seconds,
                         flops / seconds / 1e9, peak / 1e9, peak_kind, 100 * flops / seconds / peak))
    header = (f"{'variant':<20} {'threads':>7} {'it/s':>8} {'(median)':>8} {'img/s':>8} {'GFLOP/s':>9} "
              f"{'peak GFLOP/s':>13} {'of peak':>8}")
    print(f"conv FLOPs per step (fwd+bwd = 3x fwd): {flops / 1e9:.2f} GFLOP")
    print(header)
    print("-" * len(header))
    for label, th, its, its_median, ips, achieved, peak, kind, share in rows:
        print(f"{label:<20} {th:>7} {its:>8.3f} {its_median:>8.3f} {ips:>8.2f} {achieved:>9.1f} {peak:>9.1f} "
              f"{kind[:3]:>3} {share:>7.1f}%")
    print("it/s, img/s, GFLOP/s and 'of peak' use the best round (median in brackets); peak = best of a "
          "matmul and a conv3x3 in the same dtype and thread count, timed in alternation with the step.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
