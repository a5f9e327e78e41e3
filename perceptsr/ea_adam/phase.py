"""One EA phase (:func:`run_ea_phase`) and what it reports.

Children are made by :mod:`~perceptsr.ea_adam.operators`, scored by a
:class:`~perceptsr.ea_adam.fitness.FitnessEvaluator` and kept or dropped by a
:class:`~perceptsr.ea_adam.selection.Selector`; the population lives as state dicts on the
evaluator's device, with one scratch model for scoring.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from perceptsr.ea_adam import population
from perceptsr.ea_adam.fitness import FitnessEvaluator
from perceptsr.ea_adam.operators import ChildInfo, VariationConfig, make_child
from perceptsr.ea_adam.population import StateDict
from perceptsr.ea_adam.selection import Selector

__all__ = ["Replacement", "GenerationRecord", "EAPhaseReport", "run_ea_phase"]


@dataclasses.dataclass(frozen=True)
class Replacement:
    """Slot ``slot`` took the child that parent ``parent`` produced in generation ``generation``."""

    generation: int
    parent: int
    slot: int


@dataclasses.dataclass
class GenerationRecord:
    """One generation: per child (in creation order) its parent, mate, operators and fitness."""

    generation: int
    parents: list[int]
    mates: list[int | None]
    crossover: list[bool]
    mutation: list[bool]
    children_fitness: torch.Tensor  # (c, m) float64
    replacements: list[Replacement]


@dataclasses.dataclass
class EAPhaseReport:
    """Outcome of :func:`run_ea_phase`. ``population`` holds the final state dicts (slot order)."""

    population: list[StateDict]
    initial_fitness: torch.Tensor
    fitness: torch.Tensor
    ideal: torch.Tensor
    nadir: torch.Tensor
    generations: list[GenerationRecord]
    replacements: list[Replacement]
    evaluations: int
    seconds: float
    objective_names: list[str] = dataclasses.field(default_factory=list)


def _own(state: Mapping[str, torch.Tensor] | nn.Module, device: torch.device) -> StateDict:
    sd = state.state_dict() if isinstance(state, nn.Module) else state
    return {k: v.detach().to(device, copy=True) for k, v in sd.items()}


@torch.no_grad()
def _copy_into(slot: StateDict, child: Mapping[str, torch.Tensor]) -> None:
    for k, v in slot.items():
        v.copy_(child[k])


def run_ea_phase(
    population_states: Sequence[Mapping[str, torch.Tensor] | nn.Module],
    selector: Selector,
    evaluator: FitnessEvaluator,
    make_model: Callable[[], nn.Module] | nn.Module,
    generations: int,
    generator: torch.Generator,
    *,
    variation: VariationConfig = VariationConfig(),
    neighbourhoods: Sequence[Sequence[int]] | None = None,
    initial_fitness: torch.Tensor | None = None,
    distributed: bool = False,
    on_generation: Callable[[GenerationRecord], None] | None = None,
    progress: bool = False,
) -> EAPhaseReport:
    """One EA phase (spec §1.3/§1.6); deterministic given ``generator`` and the inputs.

    The population is copied once onto ``evaluator.device``; children live as state dicts and are
    loaded into ONE scratch model (``make_model()``, or the module given) for scoring; a child is
    copied into slot ``k`` only when it replaces it. At the start every individual is scored (unless
    ``initial_fitness`` is given) and ``selector.initialise`` sets ``F``, ideal and nadir.

    * Steady-state selector (MOEA/D, the release): per generation, for ``i = 0..n-1`` in order, make a
      child of ``i``, score it, offer it; replacements take effect before the next child is made.
    * Generational selector (NSGA-II): per generation, ``n`` children from the current population,
      scored together (split over ranks when ``distributed``), then one selection.

    Mating neighbourhoods: ``neighbourhoods``, else the selector's, else
    :func:`~perceptsr.ea_adam.population.neighbourhoods`.
    With ``distributed=True`` every rank must run the same call with an identically seeded generator.
    """
    if generations < 0:
        raise ValueError(f"run_ea_phase: generations must be >= 0, got {generations}")
    start = time.perf_counter()
    device = evaluator.device
    pop = [_own(s, device) for s in population_states]
    n = len(pop)
    if n < 2:
        raise ValueError(f"run_ea_phase: need at least 2 individuals, got {n}")
    scratch = make_model if isinstance(make_model, nn.Module) else make_model()
    scratch.to(device)
    nb = neighbourhoods if neighbourhoods is not None else getattr(selector, "neighbourhoods", None)
    if nb is None:
        nb = population.neighbourhoods(n, min(3, n))
    if len(nb) != n:
        raise ValueError(f"run_ea_phase: {len(nb)} neighbourhoods for {n} individuals")
    evaluations = 0
    if initial_fitness is None:
        f0 = evaluator.evaluate_states(scratch, pop, distributed=distributed)
        evaluations += n
    else:
        f0 = torch.as_tensor(initial_fitness, dtype=torch.float64, device="cpu").detach()
    selector.initialise(f0)
    kw = variation.kwargs()
    records: list[GenerationRecord] = []
    all_repl: list[Replacement] = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=generations * n, desc="EA phase", unit="child", leave=False)
    for g in range(generations):
        infos: list[ChildInfo] = []
        fits: list[torch.Tensor] = []
        repl: list[Replacement] = []
        if selector.steady_state:
            for i in range(n):
                child, info = make_child(pop, i, nb[i], generator=generator, **kw)
                f = evaluator.evaluate_state(scratch, child, distributed=distributed)
                evaluations += 1
                for _, k in selector.select([i], f[None]):
                    _copy_into(pop[k], child)
                    repl.append(Replacement(g, i, k))
                infos.append(info)
                fits.append(f)
                if bar is not None:
                    bar.update(1)
        else:
            made = [make_child(pop, i, nb[i], generator=generator, **kw) for i in range(n)]
            children = [c for c, _ in made]
            infos = [info for _, info in made]
            cf = evaluator.evaluate_states(scratch, children, distributed=distributed)
            evaluations += n
            fits = list(cf)
            for c, k in selector.select([info.parent for info in infos], cf):
                _copy_into(pop[k], children[c])
                repl.append(Replacement(g, infos[c].parent, k))
            if bar is not None:
                bar.update(n)
        rec = GenerationRecord(
            generation=g,
            parents=[x.parent for x in infos],
            mates=[x.mate for x in infos],
            crossover=[x.crossover for x in infos],
            mutation=[x.mutation for x in infos],
            children_fitness=torch.stack(fits) if fits else torch.zeros(0, evaluator.num_objectives),
            replacements=repl,
        )
        records.append(rec)
        all_repl += repl
        if on_generation is not None:
            on_generation(rec)
    if bar is not None:
        bar.close()
    return EAPhaseReport(
        population=pop,
        initial_fitness=f0.clone(),
        fitness=selector.fitness,
        ideal=selector.ideal.clone(),
        nadir=selector.nadir.clone(),
        generations=records,
        replacements=all_repl,
        evaluations=evaluations,
        seconds=time.perf_counter() - start,
        objective_names=list(evaluator.names),
    )
