"""One entry point for every experiment: open the folder, run the plan, keep summary and report current."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from perceptsr.reproduce.profiles import field_defaults, get_profile, profile_dict
from perceptsr.reproduce.runner import Runner
from perceptsr.reproduce.summary import SUMMARY, write_summary

__all__ = ["EXPERIMENTS", "run_reproduce"]

#: experiment name -> module with ``plan(runner, profile, seeds, ablations)``, ``summarise(runner,
#: profile, seeds, ablations)`` and ``write_report(runner, body, path)``
EXPERIMENTS = {"ranksrgan": "perceptsr.reproduce.ranksrgan", "ea-adam": "perceptsr.reproduce.ea_adam"}
REPORT = "report.html"


def run_reproduce(experiment: str, profile: str, seeds: int, out: str | os.PathLike, *, progress: bool = True,
                  command: str | None = None, ablations: list[str] = ()) -> dict:
    """Run (or continue) ``experiment`` at ``profile`` for seeds ``0 .. seeds-1`` in ``out``; returns
    the summary written to ``out/summary.json`` (also rewritten after each finished seed).

    ``ablations`` (``"rank_bn_mode=train"``, see :mod:`perceptsr.reproduce.graph`) are added to those
    the folder already holds; each seed runs them after its own stages."""
    import json

    from perceptsr.reproduce.graph import parse_ablation
    from perceptsr.reproduce.profiles import override_profile

    os.environ.setdefault("PERCEPTSR_OFFLINE", "1")  # local assets only: a reproduction never downloads
    prof = get_profile(experiment, profile)
    if seeds < 1:
        from perceptsr.errors import ConfigError

        raise ConfigError(f"--seeds must be >= 1, got {seeds}")
    module = importlib.import_module(EXPERIMENTS[experiment])
    asked = [parse_ablation(a) for a in ablations]
    for a in asked:
        override_profile(prof, a.overrides)  # refuse a bad key before the folder is touched
    command = command or (f"perceptsr reproduce {experiment} --profile {profile} --seeds {seeds} --out {out}"
                          + "".join(f" --ablation {a.label}" for a in asked))
    runner = Runner(Path(out), experiment, profile, profile_dict(prof), list(range(seeds)), command, progress,
                    ablations=[a.label for a in asked], defaults=field_defaults(prof))
    manifest = runner.open()
    seed_list = manifest["seeds"]
    ablation_list = [parse_ablation(a) for a in manifest.get("ablations", [])]

    def refresh() -> None:
        body = module.summarise(runner, prof, seed_list, ablation_list)
        write_summary(runner, manifest, body)
        if body["seeds_done"]:
            module.write_report(runner, body, runner.out / REPORT)

    # after every seed but the last (the final refresh covers that one)
    runner.run_all(module.plan(runner, prof, seed_list, ablation_list),
                   on_seed_done=lambda seed: refresh() if seed != seed_list[-1] else None)
    refresh()
    runner.say(f"summary: {runner.out / SUMMARY}; report: {runner.out / REPORT}")
    return json.loads((runner.out / SUMMARY).read_text(encoding="utf-8"))
