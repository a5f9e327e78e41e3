"""``perceptsr train CONFIG.yml [--set key.sub=value ...] [--resume [PATH]] [--out ROOT]``.

Multi-GPU / multi-process: ``torchrun --nproc_per_node N -m perceptsr train CONFIG.yml`` (torchrun
sets RANK/WORLD_SIZE/LOCAL_RANK; ``data.train.batch_size`` is the total over all processes).

Exit codes: 0 finished, 1 error (one line naming the file or key), 75 (:data:`EXIT_STOPPED`, BSD's
``EX_TEMPFAIL``) stopped by SIGTERM/SIGUSR1 with a checkpoint saved: "stopped, resumable", rerun
with ``--resume``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys

EXIT_STOPPED = 75  # preempted with a checkpoint saved; resume with --resume


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML config (see configs/paper and configs/cpu)")
    parser.add_argument(
        "--set", dest="overrides", metavar="KEY=VALUE", action="extend", nargs="+", default=[],
        help="override a config key, value parsed as YAML, e.g. --set optim.lr=1e-4 train.iterations=5000",
    )
    parser.add_argument(
        "--resume", nargs="?", const=True, default=None, metavar="PATH",
        help="continue from the latest checkpoint of this run (no PATH), or from PATH: a checkpoint "
             "folder (.../checkpoints/iter_N) or a run folder; give it after CONFIG",
    )
    parser.add_argument("--out", metavar="ROOT", help="output root (overrides output_root); the run goes to ROOT/NAME")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar or console log (log.txt still written)")


def run(args: argparse.Namespace) -> int:
    from perceptsr.config import TrainConfig, dump_config, load_config

    cfg = load_config(args.config, TrainConfig, overrides=args.overrides)
    if args.out:
        cfg = dataclasses.replace(cfg, output_root=args.out)
    if args.print_config:
        sys.stdout.write(dump_config(cfg))
        return 0
    from perceptsr.train.engine import train

    command = shlex.join(["perceptsr", "train", *sys.argv[sys.argv.index("train") + 1:]]) \
        if "train" in sys.argv else shlex.join(sys.argv)
    result = train(cfg, resume=args.resume, command=command, progress=not args.no_progress)
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in result.val_metrics.items())
    main_rank = os.environ.get("RANK", "0") == "0"
    if result.stopped_early:
        if main_rank:
            print(f"stopped, resumable: {result.run_dir} at iteration {result.iteration} of {cfg.train.iterations}, "
                  f"checkpoint {result.last_checkpoint}; continue with --resume")
        return EXIT_STOPPED
    if main_rank:
        print(f"done: {result.run_dir} at iteration {result.iteration}" + (f" ({metrics})" if metrics else ""))
    return 0
