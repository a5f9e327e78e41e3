"""One seed's stages as a small graph, and which of them an ablation runs again.

Each experiment declares its per-seed stages once (:class:`SeedStage`): what a stage reads from the
profile (``reads``, dotted field prefixes) and which earlier stages' results it uses (``after``).

An *ablation* (``--ablation rank_bn_mode=train``) is the profile with a few fields changed
(:func:`perceptsr.reproduce.profiles.override_profile`). Its stages are those that read a changed
field, and everything downstream of them; they run in ``seed_<s>/ablation/<label>/<stage>/`` and
every other stage's result is the seed's own one, reused. So ``rank_weight=0.01`` trains one more
RankSRGAN from the seed's PSNR model and Ranker against the seed's SRGAN control, and evaluates
only that model.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from perceptsr.errors import ConfigError
from perceptsr.reproduce.runner import Runner, Stage

__all__ = ["Ablation", "SeedStage", "SeedContext", "parse_ablation", "rerun", "seed_contexts", "seed_plan"]

_LABEL = re.compile(r"^[A-Za-z0-9_.:=,+-]+$")


@dataclass(frozen=True)
class Ablation:
    """A named profile change: ``label`` is the command-line text (``rank_weight=0.01,rank_bn_mode=train``)."""

    label: str
    overrides: dict[str, str]


def parse_ablation(text: str) -> Ablation:
    """``KEY=VALUE[,KEY=VALUE ...]`` -> :class:`Ablation` (the label is the text itself)."""
    text = text.strip()
    if not text or not _LABEL.match(text):
        raise ConfigError(f"--ablation {text!r}: expected KEY=VALUE[,KEY=VALUE] with letters, digits and _ . : + -")
    overrides = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or not key or not value:
            raise ConfigError(f"--ablation {text!r}: {part!r} is not KEY=VALUE")
        if key in overrides:
            raise ConfigError(f"--ablation {text!r}: {key!r} is given twice")
        overrides[key] = value
    return Ablation(text, overrides)


@dataclass(frozen=True)
class SeedStage:
    name: str  # folder name under seed_<s>/ (or the ablation's folder)
    title: str
    run: Callable[[SeedContext, Path], dict]
    reads: tuple[str, ...] = ()  # profile fields its result depends on ("gan", "ranker.iterations")
    after: tuple[str, ...] = ()  # earlier stages of the seed whose results it uses


@dataclass
class SeedContext:
    """What a seed stage sees: the runner, the (possibly ablated) profile, the seed, and where each
    stage's results are (``keys``: the ablation's own folder for the stages it reruns, ``fresh``)."""

    runner: Runner
    profile: Any
    seed: int
    keys: dict[str, str]
    fresh: frozenset[str]
    ablation: Ablation | None = None
    first_seed: bool = field(default=True)

    def done(self, name: str) -> dict | None:
        return self.runner.done(self.keys[name])

    def command(self, name: str) -> str:
        return f"perceptsr reproduce (stage {self.keys[name]})"

    def metric_table(self, name: str = "eval") -> dict[str, dict[str, dict]]:
        """``{dataset: {model: metrics}}`` of the seed's evaluation, with an ablation's own evaluation
        (of the models it retrained) laid over it."""
        from perceptsr.reproduce.summary import metric_table

        table = metric_table(self.runner.done(f"seed_{self.seed}/{name}")["results"])
        if self.ablation is not None and name in self.fresh:
            for ds, models in metric_table(self.done(name)["results"]).items():
                table.setdefault(ds, {}).update(models)
        return table


def _touches(key: str, read: str) -> bool:
    return key == read or key.startswith(read + ".") or read.startswith(key + ".")


def rerun(stages: list[SeedStage], overrides: dict[str, str]) -> list[str]:
    """The stages an ablation with ``overrides`` runs again: those reading a changed field, and their
    descendants (in plan order)."""
    dirty: list[str] = []
    for s in stages:
        if any(_touches(k, r) for k in overrides for r in s.reads) or any(a in dirty for a in s.after):
            dirty.append(s.name)
    return dirty


def seed_contexts(runner: Runner, profile, seeds: list[int], stages: list[SeedStage],
                  ablation: Ablation | None = None) -> list[SeedContext]:
    """One context per seed: the profile's own stages, or ``ablation``'s (its profile and folders)."""
    from perceptsr.reproduce.profiles import override_profile

    names = [s.name for s in stages]
    if ablation is None:
        fresh, prof = names, profile
    else:
        fresh, prof = rerun(stages, ablation.overrides), override_profile(profile, ablation.overrides)
    out = []
    for seed in seeds:
        keys = {n: f"seed_{seed}/{n}" for n in names}
        if ablation is not None:
            keys.update({n: f"seed_{seed}/ablation/{ablation.label}/{n}" for n in fresh})
        out.append(SeedContext(runner, prof, seed, keys, frozenset(fresh), ablation, seed == min(seeds)))
    return out


def seed_plan(runner: Runner, profile, seeds: list[int], stages: list[SeedStage],
              ablations: list[Ablation] = ()) -> list[Stage]:
    """Per seed: its stages, then those of each ablation."""
    per_variant = [seed_contexts(runner, profile, seeds, stages, a) for a in (None, *ablations)]
    plan = []
    for i, seed in enumerate(seeds):
        for contexts in per_variant:
            ctx = contexts[i]
            where = "" if ctx.ablation is None else f" [ablation {ctx.ablation.label}]"
            plan += [Stage(ctx.keys[s.name], s.title + where, lambda d, s=s, ctx=ctx: s.run(ctx, d), seed)
                     for s in stages if s.name in ctx.fresh]
    return plan
