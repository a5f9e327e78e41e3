"""EA-Adam stage A in the training loop: :class:`EAAdamObjective` (config ``objective.type: ea_adam``).

Everything it needs from the run comes through its :class:`~perceptsr.train.context.RunContext`:
the run folder's files through ``ctx.artifacts`` (rank 0 only), TensorBoard through ``ctx.log``,
and the perception-distortion plane's scores through ``ctx.validate``, the loop's own validation.
The run's best checkpoint is chosen by a population-level value (:meth:`EAAdamObjective.summarize_validation`).
"""

from __future__ import annotations

import copy
import dataclasses
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from perceptsr.config import TrainConfig
from perceptsr.ea_adam.fitness import (
    FitnessEvaluator,
    FitnessTerm,
    L1Fitness,
    PerceptualFitness,
    as_fitness_term,
    build_eval_set,
)
from perceptsr.ea_adam.gradients import normalised_gradient_mix, weighted_sum_gradient
from perceptsr.ea_adam.operators import VariationConfig
from perceptsr.ea_adam.phase import EAPhaseReport, GenerationRecord, run_ea_phase
from perceptsr.ea_adam.population import (
    CHILDREN_LOG,
    PHASES_LOG,
    PLANE_DIR,
    discriminator_name,
    generator_name,
    member_file,
    neighbourhoods,
    population_folder,
    preference_vectors,
)
from perceptsr.ea_adam.selection import MOEADSelector, NSGA2Selector, Selector, hypervolume
from perceptsr.errors import ConfigError
from perceptsr.losses.gan import discriminator_loss, generator_loss
from perceptsr.train.context import RunContext
from perceptsr.train.networks import build_discriminator, build_generator, build_perceptual_loss, set_requires_grad
from perceptsr.train.objectives import NonFiniteLossError, Objective, register_objective
from perceptsr.train.optim import build_optimizer, build_scheduler

__all__ = ["EAAdamObjective", "HV_REFERENCE"]

#: the fixed reference point of the best-checkpoint hypervolume, per plane coordinate: PSNR 0 dB and
#: the worst value of the bounded perceptual metrics (``objective.hypervolume_reference`` overrides)
HV_REFERENCE: dict[str, float] = {"psnr": 0.0, "lpips": 1.0, "dists": 1.0, "ssim": 0.0}


@register_objective("ea_adam")
class EAAdamObjective(Objective):
    """EA-Adam stage A in the training loop (config ``objective.type: ea_adam``).

    The loop's generator is individual 0 (``net_g``); individuals 1..n-1 are ``net_g_<i>`` and the
    discriminators ``net_d_<i>`` (none for a frozen individual 0), all checkpointed by the loop.
    Each iteration: for every trainable individual, L1 and perceptual + ``gan_weight`` x adversarial
    are back-propagated separately, mixed by :func:`~perceptsr.ea_adam.gradients.normalised_gradient_mix`
    with its preference vector and applied by its own Adam; then its discriminator takes an ordinary
    step. If one individual's losses are not finite, NonFiniteLossError is raised for it (the
    individuals before it have stepped already). At the start of iteration t with t - 1 a positive
    multiple of ``t_adam`` epochs, :func:`~perceptsr.ea_adam.phase.run_ea_phase` runs ``t_ea``
    generations on the fixed sorted patch set (discriminators unused), the population is copied back
    and the generators' Adam moments are reset; the phase's scalars (``ea/...``) are returned to the
    loop's log. Per phase, on rank 0: ``ea_phases.jsonl`` and ``ea_children.jsonl`` in the run folder,
    the population exported to ``population/phase_<k>/member_<i>.safetensors``, and a
    PSNR-vs-``plane_metric`` plot of the population (``ea_adam/plane_phase_<k>.png`` and TensorBoard
    ``ea/plane``), scored by the loop's validation. The last iteration exports ``population/final``.
    With several processes, gradients are averaged over ranks before normalisation and fitness
    evaluation is split over ranks.

    The best checkpoint: :meth:`summarize_validation` puts ``val/hypervolume`` (the members in the
    (PSNR, ``plane_metric``) plane up to the fixed reference point, :data:`HV_REFERENCE` or
    ``objective.hypervolume_reference``) first, or ``val/mean_<metric>`` (the members' mean of the
    first validation metric) without a plane metric; :attr:`best_metric` names it.
    """

    def __init__(self, generator: nn.Module, cfg: TrainConfig, ctx: RunContext):
        super().__init__(generator, cfg, ctx)
        runtime = ctx.runtime
        opts = cfg.objective
        if cfg.train.ema_decay > 0:
            raise ConfigError("config key 'train.ema_decay': EA-Adam needs 0 (the EA phase replaces individuals "
                              "wholesale, so an EMA of individual 0 would mix unrelated models)")
        self.plane_metric = _plane_metric(cfg)
        self.best_metric, self.hv_reference = _best_criterion(cfg, self.plane_metric)
        n = opts.population
        self.n = n
        self.weights = preference_vectors(n)
        self.trainable = list(range(1 if opts.freeze_first else 0, n))
        protect = opts.freeze_first if opts.protect_first is None else opts.protect_first
        self.protected = (0,) if protect else ()
        other, self.arch_kwargs = build_generator(cfg)  # same init as net_g (model.pretrained)
        other.load_state_dict(generator.state_dict())
        self.individuals: list[nn.Module] = [generator] + [copy.deepcopy(other) for _ in range(n - 2)] + [other]
        for g in self.individuals[1:]:
            runtime.prepare_module(g)
        self.perceptual = runtime.prepare_module(build_perceptual_loss(opts.perceptual))
        self.perceptual_fitness = PerceptualFitness(self.perceptual)
        self.discriminators: dict[int, nn.Module] = {}
        self.net_d: dict[int, nn.Module] = {}
        for i in self.trainable:
            d, self.d_arch, self.d_kwargs = build_discriminator(opts.discriminator, cfg.data.train.patch_size)
            self.discriminators[i] = runtime.prepare_module(d)
            self.net_d[i] = runtime.wrap(d)
        self._optimizers: dict[str, torch.optim.Optimizer] = {}
        self._schedulers = {}
        for i in self.trainable:
            for name, params in ((generator_name(i), self.individuals[i].parameters()),
                                 (discriminator_name(i), self.discriminators[i].parameters())):
                self._optimizers[name] = build_optimizer(params, cfg.optim)
                self._schedulers[name] = build_scheduler(self._optimizers[name], cfg.schedule)
        self.period = opts.t_adam * (opts.epoch_iterations or self._epoch_iterations(cfg))
        self.phases_done = 0
        self.fitness: torch.Tensor | None = None
        self.ideal: torch.Tensor | None = None
        self.nadir: torch.Tensor | None = None
        self.objective_names: list[str] = []
        self._evaluator: FitnessEvaluator | None = None
        self._scratch: nn.Module | None = None

    # ---- bookkeeping for the loop

    @staticmethod
    def _epoch_iterations(cfg: TrainConfig) -> int:
        from perceptsr.data import list_images

        d = cfg.data.train
        return max(1, len(list_images(d.hr_dir)) * d.repeat // d.batch_size)

    def networks(self):
        arch = self.cfg.model.arch
        out = {generator_name(i): (self.individuals[i], arch, self.arch_kwargs) for i in range(1, self.n)}
        out.update({discriminator_name(i): (d, self.d_arch, self.d_kwargs) for i, d in self.discriminators.items()})
        return out

    def optimizers(self):
        return self._optimizers

    def schedulers(self):
        return self._schedulers

    def validation_models(self, default: nn.Module) -> dict[str, nn.Module]:
        return {f"ind{i}": g for i, g in enumerate(self.individuals)}

    def summarize_validation(self, metrics: dict[str, float]) -> dict[str, float]:
        """``metrics`` (``val/ind<i>/<metric>``) with the population's value first (see the class docstring)."""
        name, _ = self.best_metric
        if self.hv_reference is None:
            first = self.cfg.data.val.metrics[0]
            value = sum(metrics[f"val/ind{i}/{first}"] for i in range(self.n)) / self.n
        else:
            points = [self._minimised(metrics[f"val/ind{i}/psnr"], metrics[f"val/ind{i}/{self.plane_metric}"])
                      for i in range(self.n)]
            value = hypervolume(points, self._minimised(*self.hv_reference))
        return {f"val/{name}": value, **metrics}

    def _minimised(self, psnr: float, metric: float) -> list[float]:
        """A plane point as a minimised pair: (-PSNR, the plane metric, negated when higher is better)."""
        from perceptsr.metrics import metric_class

        return [-psnr, metric if metric_class(self.plane_metric).lower_better else -metric]

    def extra_state(self) -> dict:
        return {"phases_done": self.phases_done, "fitness": self.fitness, "ideal": self.ideal, "nadir": self.nadir,
                "objective_names": list(self.objective_names)}

    def load_extra_state(self, state: dict) -> None:
        self.phases_done = int(state.get("phases_done", 0))
        self.fitness, self.ideal, self.nadir = state.get("fitness"), state.get("ideal"), state.get("nadir")
        self.objective_names = list(state.get("objective_names", []))

    # ---- Adam phase

    def _reduce(self, grads: list[torch.Tensor | None]) -> list[torch.Tensor | None]:
        world = self.ctx.dist.world_size
        out = []
        for g in grads:
            if g is not None:
                g = g.contiguous().clone()
                torch.distributed.all_reduce(g)
                g /= world
            out.append(g)
        return out

    def step(self, batch: dict, iteration: int) -> dict[str, float]:
        logs: dict[str, float] = {}
        if iteration > 1 and (iteration - 1) % self.period == 0:
            logs.update(self.run_phase(iteration))
        opts = self.options
        lr = self.runtime.to_device(batch["lr"])
        hr = self.runtime.to_device(batch["hr"])
        with torch.no_grad():
            hr_feats = self.perceptual_fitness.prepare_hr(hr)
        reduce = self._reduce if self.ctx.dist.enabled else None
        for i in self.trainable:
            g, d = self.individuals[i], self.discriminators[i]
            g.train()
            d.train()
            with self.runtime.autocast():
                sr = g(lr)
            l_dst = F.l1_loss(sr.float(), hr)
            set_requires_grad(d, False)
            try:
                with self.runtime.autocast():
                    perc = self.perceptual_fitness(sr, hr, hr_feats).float().mean()
                    adv = sr.new_zeros((), dtype=torch.float32)
                    if opts.gan_weight > 0:
                        real = None
                        if opts.gan_type == "ragan":
                            with torch.no_grad():
                                real = d(hr)
                        adv = generator_loss(opts.gan_type, d(sr), real)
                l_perp = perc + opts.gan_weight * adv
                both = torch.stack([l_dst.detach(), l_perp.detach()])
                if not self.runtime.all_finite(both):
                    raise NonFiniteLossError(f"individual {i} losses (l1, perception)", float(both.sum()))
                mix = weighted_sum_gradient if opts.adam_mode == "weighted_sum" else normalised_gradient_mix
                mix(g, [l_dst, l_perp], self.weights[i].tolist(), reduce=reduce)
                self._optimizers[generator_name(i)].step()
            finally:
                set_requires_grad(d, True)
            with self.runtime.autocast():
                real_logits = self.net_d[i](hr)
                fake_logits = self.net_d[i](sr.detach())
            loss_d = discriminator_loss(opts.gan_type, real_logits, fake_logits)
            self.optimize(loss_d, self._optimizers[discriminator_name(i)], d,
                          name=f"individual {i} discriminator loss")
            logs.update({f"ind{i}/l1": l_dst.item(), f"ind{i}/perceptual": perc.item(), f"ind{i}/gan": adv.item(),
                         f"ind{i}/d": loss_d.item()})
        if iteration == self.cfg.train.iterations:
            self._export(population_folder(), iteration)
        return logs

    # ---- EA phase

    def _fitness_term(self, name: str) -> FitnessTerm:
        if name == "l1":
            return L1Fitness()
        if name == "perceptual":
            return self.perceptual_fitness
        return as_fitness_term(name)

    def evaluator(self) -> FitnessEvaluator:
        """The fitness evaluator on the fixed, sorted patch set (built on first use)."""
        if self._evaluator is None:
            o, train = self.options, self.cfg.data.train
            hr_dir = o.eval_hr_dir or train.hr_dir
            lr_dir = o.eval_lr_dir if o.eval_hr_dir else (o.eval_lr_dir or train.lr_dir)
            eval_set = build_eval_set(hr_dir, lr_dir, scale=self.cfg.scale, patch_size=o.eval_patch_size,
                                      num_images=o.eval_images, max_patches=o.eval_max_patches)
            self._evaluator = FitnessEvaluator(eval_set, [self._fitness_term(f) for f in o.fitness],
                                               batch_size=o.eval_batch_size, device=self.runtime.device,
                                               cache_device=o.cache_device, dtype=o.fitness_dtype)
        return self._evaluator

    def run_phase(self, iteration: int) -> dict[str, float]:
        """One EA phase on the current population (every rank); returns scalars to log."""
        o = self.options
        phase = self.phases_done
        evaluator = self.evaluator()
        if o.selection == "moead":
            selector: Selector = MOEADSelector(self.weights, neighbourhoods(self.n, o.neighbourhood),
                                               protected=self.protected)
        else:
            selector = NSGA2Selector(protected=self.protected)
        if self._scratch is None:  # a copy, not a fresh build: the global RNG stays untouched
            self._scratch = copy.deepcopy(self.individuals[0])
        generator = torch.Generator().manual_seed(int(self.cfg.seed) * 1_000_003 + phase)
        children: list[dict] = []

        def record(rec: GenerationRecord) -> None:
            for c, parent in enumerate(rec.parents):
                children.append({
                    "phase": phase, "iteration": iteration, "generation": rec.generation, "parent": parent,
                    "mate": rec.mates[c], "crossover": rec.crossover[c], "mutation": rec.mutation[c],
                    "fitness": rec.children_fitness[c].tolist(),
                    "replaced": [r.slot for r in rec.replacements if r.parent == parent],
                })

        report = run_ea_phase(
            [g.state_dict() for g in self.individuals], selector, evaluator, self._scratch, o.t_ea, generator,
            variation=VariationConfig(**{f.name: getattr(o, f.name) for f in dataclasses.fields(VariationConfig)}),
            neighbourhoods=neighbourhoods(self.n, o.neighbourhood), distributed=self.ctx.dist.enabled,
            on_generation=record, progress=self.ctx.is_main and sys.stderr.isatty(),
        )
        with torch.no_grad():
            for g, sd in zip(self.individuals, report.population):
                g.load_state_dict(sd, strict=True)
        for i in self.trainable:  # fresh Adam moments for every generator (the release re-creates them)
            self._optimizers[generator_name(i)].state.clear()
        self.phases_done = phase + 1
        self.fitness, self.ideal, self.nadir = report.fitness, report.ideal, report.nadir
        self.objective_names = list(report.objective_names)
        if self.ctx.is_main:
            self._log_phase(phase, iteration, report, children)
        logs = {"ea/replacements": float(len(report.replacements)), "ea/seconds": report.seconds}
        for i in range(self.n):
            for j, name in enumerate(self.objective_names):
                logs[f"ea/ind{i}/{name}"] = float(report.fitness[i, j])
        return logs

    # ---- what a phase leaves in the run folder (rank 0)

    def _export(self, folder: Path, iteration: int) -> None:
        """Every individual as a plain generator checkpoint in run-folder-relative ``folder``."""
        artifacts = self.ctx.artifacts
        if not artifacts.enabled:
            return
        from perceptsr.checkpoint import save_model

        out = artifacts.path(folder)
        out.mkdir(parents=True, exist_ok=True)
        for i, g in enumerate(self.individuals):
            save_model(member_file(out, i), g, arch=self.cfg.model.arch, arch_kwargs=self.arch_kwargs,
                       iteration=iteration, extra={"ea_adam": {"individual": i, "phases_done": self.phases_done,
                                                               "preference": self.weights[i].tolist()}})

    def _log_phase(self, phase: int, iteration: int, report: EAPhaseReport, children: list[dict]) -> None:
        folder = population_folder(phase + 1)
        self._export(folder, iteration)
        plane = self._plane() if self.plane_metric and self.ctx.validator is not None else None
        summary = {
            "phase": phase, "iteration": iteration, "generations": len(report.generations),
            "evaluations": report.evaluations, "seconds": report.seconds, "objectives": report.objective_names,
            "selection": self.options.selection, "protected": list(self.protected),
            "preferences": self.weights.tolist(), "neighbourhoods": neighbourhoods(self.n, self.options.neighbourhood),
            "initial_fitness": report.initial_fitness.tolist(), "fitness": report.fitness.tolist(),
            "ideal": report.ideal.tolist(), "nadir": report.nadir.tolist(),
            "replacements": len(report.replacements),
            "replaced_slots": [sum(r.slot == k for r in report.replacements) for k in range(self.n)],
            "population": str(folder), "plane": plane,
        }
        self.ctx.artifacts.rewrite_jsonl(PHASES_LOG, lambda r: r["phase"] < phase, [summary])
        self.ctx.artifacts.rewrite_jsonl(CHILDREN_LOG, lambda r: r["phase"] < phase, children)
        if plane is not None:
            fig = _plane_figure(plane, f"EA-Adam phase {phase + 1} (iteration {iteration})")
            self._save_figure(fig, Path(PLANE_DIR) / f"plane_phase_{phase + 1:03d}.png")
            self.ctx.log.figure("ea/plane", fig, iteration)

    def _save_figure(self, fig: Any, relative: Path) -> None:
        if not self.ctx.artifacts.enabled:
            return
        from perceptsr.checkpoint import atomic_write

        path = self.ctx.artifacts.path(relative)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))

    def _plane(self) -> dict[str, Any]:
        """PSNR and ``plane_metric`` of every individual, as the loop validates them on ``data.val``."""
        from perceptsr.metrics import metric_class

        name = self.plane_metric
        values: dict[str, list[float]] = {key: [] for key in ("psnr", name)}
        for g in self.individuals:
            scores = self.ctx.validate(g, prefix="")
            for key, column in values.items():
                column.append(scores[key])
        return {"metric": name, "lower_better": bool(metric_class(name).lower_better), **values}


def _plane_metric(cfg: TrainConfig) -> str | None:
    """``objective.plane_metric`` when there is a plane to plot; it must be one of ``data.val.metrics``."""
    name = cfg.objective.plane_metric
    if not name or cfg.data.val is None:
        return None
    if name not in cfg.data.val.metrics:
        raise ConfigError(
            f"config key 'objective.plane_metric': {name!r} is not validated; add it to data.val.metrics "
            f"(now {list(cfg.data.val.metrics)}) or set objective.plane_metric: null (no plane plot)"
        )
    return name


def _best_criterion(cfg: TrainConfig, plane_metric: str | None) -> tuple[tuple[str, bool], tuple[float, float] | None]:
    """``(best_metric, hypervolume reference)``: the hypervolume in the (PSNR, plane metric) plane, or
    without a plane metric the members' mean of the first validation metric (reference None)."""
    from perceptsr.metrics import metric_class

    if cfg.data.val is None:  # no validation: nothing to pick by
        return ("hypervolume", True), None
    if plane_metric is None:
        first = cfg.data.val.metrics[0]
        return (f"mean_{first}", not metric_class(first).lower_better), None
    reference = cfg.objective.hypervolume_reference
    if reference is None:
        if plane_metric not in HV_REFERENCE:
            raise ConfigError(f"config key 'objective.hypervolume_reference': no default reference point for "
                              f"plane_metric {plane_metric!r} (defaults exist for {sorted(HV_REFERENCE)}); give "
                              "[PSNR dB, metric value], a point every useful member beats")
        reference = (HV_REFERENCE["psnr"], HV_REFERENCE[plane_metric])
    return ("hypervolume", True), (float(reference[0]), float(reference[1]))


def _plane_figure(plane: Mapping[str, Any], title: str):
    """Population in the perception-distortion plane (x: the perceptual metric, y: PSNR)."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

    name = plane["metric"]
    fig = Figure(figsize=(5, 4))
    ax = fig.add_subplot()
    ax.plot(plane[name], plane["psnr"], "o-", color="tab:blue")
    for i, (x, y) in enumerate(zip(plane[name], plane["psnr"])):
        ax.annotate(str(i), (x, y), textcoords="offset points", xytext=(4, 4))
    ax.set_xlabel(f"{name} ({'lower' if plane['lower_better'] else 'higher'} is better)")
    ax.set_ylabel("PSNR (Y) [dB]")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return fig
