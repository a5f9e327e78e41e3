"""Resumable, idempotent stages of a reproduction folder ``DIR``.

* ``DIR/reproduce.json`` (the manifest): experiment, profile name and settings, seeds, ablations
  (:mod:`perceptsr.reproduce.graph`; a later run may add more) and every invocation. A later run on ``DIR`` must name the same experiment and profile with the same
  settings; it may add seeds (``--seeds 5`` after ``--seeds 3``), never drop them. Anything else is
  refused with a :class:`ReproduceError` naming the difference, before any file is touched.
* A stage ``KEY`` (``common/data``, ``seed_0/srgan``, ...) works in ``DIR/KEY/`` and ends by writing
  ``DIR/KEY/done.json`` atomically (its results, paths included, and its seconds). A stage with a
  ``done.json`` is skipped; an interrupted one is run again, and its own work resumes where it can
  (training runs continue their latest checkpoint, the rank dataset its last finished image).
* Progress: one tqdm bar over all stages (its ETA counts stages), plus the bars of the stages.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from perceptsr.errors import PerceptsrError

__all__ = ["FORMAT", "MANIFEST", "ReproduceError", "StageStopped", "Stage", "Runner", "write_json", "mean_std"]

FORMAT = "perceptsr-reproduce/1"
MANIFEST = "reproduce.json"
DONE = "done.json"


class ReproduceError(PerceptsrError):
    """A reproduction folder cannot be used as asked (other profile, fewer seeds, ...)."""


class StageStopped(ReproduceError):
    """A training stage stopped on SIGTERM / SIGUSR1 with a checkpoint; the same command continues it."""


def write_json(path: Path, data: Any) -> Path:
    """``data`` as indented JSON, atomically (a temp file renamed into place)."""
    from perceptsr.checkpoint import atomic_write

    text = json.dumps(data, indent=2, allow_nan=False, default=str) + "\n"
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def _finite(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def mean_std(values: list) -> dict:
    """``{"mean", "std", "n"}`` of the finite numbers in ``values``; std is the sample std (n - 1),
    null below two values; both null when there is none."""
    xs = [float(v) for v in values if _finite(v)]
    if not xs:
        return {"mean": None, "std": None, "n": 0}
    mean = sum(xs) / len(xs)
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else None
    return {"mean": mean, "std": std, "n": len(xs)}


def clean(value):
    """JSON-safe copy: NaN/inf become null, tuples lists."""
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@dataclass
class Stage:
    key: str  # folder under DIR, e.g. "seed_0/srgan"
    title: str
    run: Callable[[Path], dict]  # gets its folder, returns its results (JSON-able)
    seed: int | None = None


@dataclass
class Runner:
    """A reproduction folder: the manifest check, then :meth:`run` for each stage."""

    out: Path
    experiment: str
    profile: str
    settings: dict
    seeds: list[int]
    command: str
    progress: bool = True
    ablations: list[str] = field(default_factory=list)  # labels asked now; the manifest keeps all
    defaults: dict = field(default_factory=dict)  # the settings' field defaults (profiles.field_defaults)
    results: dict[str, dict] = field(default_factory=dict)
    stages: list[Stage] = field(default_factory=list)
    _bar: Any = None

    def __post_init__(self) -> None:
        self.out = Path(self.out).resolve()

    # ---- manifest

    def open(self) -> dict:
        """Check (or create) the manifest; returns it. Refuses another experiment/profile or fewer seeds."""
        from perceptsr import __version__

        path = self.out / MANIFEST
        invocation = {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "command": self.command,
                      "perceptsr_version": __version__}
        if path.is_file():
            try:
                old = json.loads(path.read_text(encoding="utf-8"))
            except ValueError as exc:
                raise ReproduceError(f"{path}: not readable ({exc}); move the folder away or repair the file") from None
            old = {**old, "settings": _with_new_fields(old.get("settings"), self.settings, self.defaults)}
            self._check(path, old)
            seeds = sorted(set(old["seeds"]) | set(self.seeds))
            if seeds != old["seeds"]:
                self.say(f"adding seed(s) {sorted(set(seeds) - set(old['seeds']))} to {self.out}")
            known = old.get("ablations", [])
            added = [a for a in self.ablations if a not in known]
            if added:
                self.say(f"adding ablation(s) {added} to {self.out}")
            manifest = {**old, "seeds": seeds, "ablations": known + added,
                        "invocations": [*old.get("invocations", []), invocation]}
        else:
            if self.out.is_dir() and any(self.out.iterdir()):
                raise ReproduceError(f"{self.out}: the folder is not empty and holds no {MANIFEST}; "
                                     f"choose a new --out folder")
            manifest = {"format": FORMAT, "experiment": self.experiment, "profile": self.profile,
                        "settings": self.settings, "seeds": sorted(self.seeds), "ablations": list(self.ablations),
                        "invocations": [invocation]}
        self.out.mkdir(parents=True, exist_ok=True)
        write_json(path, manifest)
        return manifest

    def _check(self, path: Path, old: dict) -> None:
        if old.get("format") != FORMAT:
            raise ReproduceError(f"{path}: format {old.get('format')!r}, expected {FORMAT!r}")
        if old.get("experiment") != self.experiment:
            raise ReproduceError(f"{self.out} holds a {old.get('experiment')!r} reproduction, not {self.experiment!r}; "
                                 f"choose another --out folder")
        if old.get("profile") != self.profile:
            raise ReproduceError(f"{self.out} was started with --profile {old.get('profile')}, not --profile "
                                 f"{self.profile}; re-run with --profile {old.get('profile')} to continue it, or choose "
                                 f"another --out folder")
        if old.get("settings") != self.settings:
            diff = _first_difference(old.get("settings"), self.settings)
            raise ReproduceError(f"{self.out}: profile {self.profile!r} has changed since this folder was started "
                                 f"({diff}); its results would mix two settings, so choose another --out folder")
        missing = sorted(set(old["seeds"]) - set(self.seeds))
        if missing:
            raise ReproduceError(f"{self.out} holds seeds {old['seeds']} but --seeds asks for {self.seeds} "
                                 f"(without {missing}); pass --seeds {len(old['seeds'])} or more (more seeds are "
                                 f"added), or choose another --out folder")

    # ---- stages

    def say(self, message: str) -> None:
        from tqdm import tqdm

        tqdm.write(f"[reproduce] {message}", file=sys.stdout)
        sys.stdout.flush()

    def run_all(self, stages: list[Stage], on_seed_done: Callable[[int], None] | None = None) -> None:
        """Run (or skip) every stage in order; ``on_seed_done(seed)`` after a seed's last stage."""
        from tqdm import tqdm

        self.stages = list(stages)
        last = {}
        for i, s in enumerate(stages):
            if s.seed is not None:
                last[s.seed] = i
        t0 = time.perf_counter()
        self._bar = tqdm(total=len(stages), desc=f"reproduce {self.experiment} ({self.profile})", unit="stage",
                         disable=not self.progress, dynamic_ncols=True, position=0, leave=True)
        try:
            for i, stage in enumerate(stages):
                self.run(stage, i + 1, len(stages))
                self._bar.update(1)
                if stage.seed is not None and last[stage.seed] == i and on_seed_done is not None:
                    on_seed_done(stage.seed)
        finally:
            self._bar.close()
        self.say(f"all {len(stages)} stages done ({time.perf_counter() - t0:.0f} s in this invocation); "
                 f"outputs under {self.out}")

    def run(self, stage: Stage, index: int = 1, total: int = 1) -> dict:
        folder = self.out / stage.key
        marker = folder / DONE
        if marker.is_file():
            self.results[stage.key] = json.loads(marker.read_text(encoding="utf-8"))
            self.say(f"{index}/{total} {stage.key}: {stage.title}: already done")
            return self.results[stage.key]
        self.say(f"{index}/{total} {stage.key}: {stage.title} ...")
        if self._bar is not None:
            self._bar.set_postfix_str(stage.key, refresh=True)
        folder.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        result = clean(stage.run(folder))
        result["seconds"] = round(time.perf_counter() - t0, 1)
        write_json(marker, result)
        self.results[stage.key] = result
        self.say(f"{stage.key}: done in {result['seconds']} s")
        return result

    def done(self, key: str) -> dict | None:
        """The results of a finished stage (this invocation or an earlier one), else None."""
        if key in self.results:
            return self.results[key]
        marker = self.out / key / DONE
        return json.loads(marker.read_text(encoding="utf-8")) if marker.is_file() else None

    def all_done(self) -> dict[str, dict]:
        """Results of every finished stage of the plan, by key."""
        found = {s.key: self.done(s.key) for s in self.stages}
        return {k: v for k, v in found.items() if v is not None}


def _with_new_fields(old, new, defaults):
    """``old`` settings plus each field of ``new`` it lacks whose value is that field's default (a
    field added since the folder was started, at the value that keeps the old behaviour)."""
    if not (isinstance(old, dict) and isinstance(new, dict) and isinstance(defaults, dict)):
        return old
    out = {k: _with_new_fields(v, new.get(k), defaults.get(k)) for k, v in old.items()}
    for k, v in new.items():
        if k not in old and k in defaults and defaults[k] == v:
            out[k] = v
    return out


def _first_difference(a, b, where: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                return _first_difference(a.get(k), b.get(k), f"{where}.{k}" if where else k)
    return f"{where or 'settings'}: {a!r} then, {b!r} now"


def train_stage(config: dict, folder: Path, name: str, command: str, progress: bool) -> dict:
    """One engine run ``folder/<name>/`` (resumed from its latest checkpoint when interrupted)."""
    from perceptsr.config import TrainConfig, config_from_dict
    from perceptsr.train.engine import train
    from perceptsr.train.objectives import objective_class

    cfg = config_from_dict(TrainConfig, {**config, "name": name, "output_root": str(folder)})
    result = train(cfg, resume=True, command=command, progress=progress)
    if result.stopped_early:
        raise StageStopped(f"{result.run_dir}: training stopped at iteration {result.iteration} (a stop signal, "
                           f"checkpoint saved); run the same command again to continue")
    trained = objective_class(cfg.objective.type).trained_network
    return {"run_dir": str(result.run_dir), "checkpoint": str(result.last_checkpoint),
            "model": str(Path(result.last_checkpoint) / f"{trained}.safetensors"),
            "config": str(result.run_dir / "config.yml"), "iterations": cfg.train.iterations,
            "command": f"perceptsr train {result.run_dir / 'config.yml'} --resume",
            "val": {k: v for k, v in result.val_metrics.items()}}


def loop_section(iterations: int, val_points: int, *, ema_decay: float = 0.0, log_points: int = 10) -> dict:
    """The ``train`` section of a stage: ``val_points`` validations spread over the run, a checkpoint
    every tenth of it (where an interrupted stage resumes), the last two kept."""
    return {"iterations": iterations, "ema_decay": ema_decay, "log_every": max(1, iterations // log_points),
            "val_every": max(1, math.ceil(iterations / max(1, val_points))),
            "save_every": max(1, math.ceil(iterations / 10)), "keep_last": 2}
