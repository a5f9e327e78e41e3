"""``perceptsr reproduce {ranksrgan,ea-adam} --profile P --seeds N --out DIR``: a paper's controlled
comparison, resumable (run the same command again to continue).

Exit codes as ``perceptsr train``: 0 finished, 1 error (one line), 75 a training stage stopped on
SIGTERM / SIGUSR1 with a checkpoint (run the same command again)."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from perceptsr.reproduce.profiles import RANKSRGAN_PROFILES

    parser.add_argument("experiment", choices=["ranksrgan", "ea-adam"],
                        help="ranksrgan: RankSRGAN vs its SRGAN control; ea-adam: EA-Adam vs weighted-sum Adam")
    parser.add_argument("--profile", required=True, choices=list(RANKSRGAN_PROFILES),
                        help="scale: tiny (tests), demo (~10 min, 2 CPU cores), cpu (<= 60 min per seed on 2 cores), "
                             "gpu (~10 min on one GPU, untested), paper (configs/paper)")
    parser.add_argument("--seeds", type=int, default=1, metavar="N", help="seeds 0..N-1 (default 1); more seeds "
                        "can be added to a folder later, never fewer")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder; re-running continues it")
    parser.add_argument("--ablation", action="append", default=[], metavar="KEY=VALUE[,KEY=VALUE]",
                        help="also run each seed with these profile fields changed (e.g. rank_bn_mode=train, "
                             "rank_weight=0.01, ranker.iterations=2000, ea.t_ea=12; tuples: a:b); only the "
                             "stages that read them are run again. Repeatable; kept in the folder")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from perceptsr.cli.train import EXIT_STOPPED
    from perceptsr.reproduce import run_reproduce
    from perceptsr.reproduce.runner import StageStopped

    try:
        summary = run_reproduce(args.experiment, args.profile, args.seeds, args.out, progress=not args.no_progress,
                                ablations=args.ablation)
    except StageStopped as exc:
        print(f"perceptsr reproduce: {exc}", file=sys.stderr)
        return EXIT_STOPPED
    import importlib

    from perceptsr.reproduce import EXPERIMENTS
    from perceptsr.reproduce.figures import table_markdown

    if summary["seeds_done"]:
        print(table_markdown(*importlib.import_module(EXPERIMENTS[args.experiment]).results_table(summary)))
    print(f"seeds finished: {summary['seeds_done']} (asked: {summary['seeds']})")
    return 0
