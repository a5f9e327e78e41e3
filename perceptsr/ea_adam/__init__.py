"""EA-Adam stage A (Sun et al., TIP 2024; spec ``shared/specs/eaadam.md``), one module per job.

EA-Adam trains a population of ``n`` SR generators, individual ``i`` owning the preference vector
``λ_i = (1 - i/(n-1), i/(n-1))`` over (distortion, perception). Two phases alternate:

* **Adam phase**: each generator follows ``Σ_m λ_m ĝ_m`` where ``ĝ_m`` is the gradient of objective
  ``m`` normalised per parameter tensor (:func:`normalised_gradient_mix`), then a plain Adam step.
* **EA phase** (:func:`run_ea_phase`): steady-state MOEA/D. For each individual in turn a child is
  made (whole-tensor SBX with a mate, sparse Gaussian mutation; :func:`make_child`), scored on a fixed
  patch set without gradients (:class:`FitnessEvaluator`), and it replaces every neighbour whose
  normalised Tchebycheff value it strictly lowers (:class:`MOEADSelector`). An NSGA-II environmental
  selection (:class:`NSGA2Selector`, shipped but unused by the released code) is available for
  generational runs behind the same :class:`Selector` interface.

Modules:

- :mod:`~perceptsr.ea_adam.population`: preference vectors, neighbourhoods, and the run-folder
  names (population folders, member files, phase logs, network names) that stage B and the demo import;
- :mod:`~perceptsr.ea_adam.gradients`: the Adam phase's normalised gradient mix;
- :mod:`~perceptsr.ea_adam.operators`: SBX crossover, Gaussian mutation, :func:`make_child`;
- :mod:`~perceptsr.ea_adam.selection`: Tchebycheff, MOEA/D and NSGA-II selection, the hypervolume;
- :mod:`~perceptsr.ea_adam.fitness`: the fixed patch set, the fitness terms, the evaluator;
- :mod:`~perceptsr.ea_adam.phase`: one EA phase and its records;
- :mod:`~perceptsr.ea_adam.objective`: :class:`EAAdamObjective`, both phases in the training loop
  (the loop checkpoints the population, discriminators and optimizers, so a run resumes bit-exactly);
- :mod:`~perceptsr.ea_adam.config`: its config schema. Importing the package registers both.

Differences from the released code, all deliberate (see the spec §1.3, §1.5, §9):

* Fitness is computed under ``torch.inference_mode`` with the HR-side features cached once, patches
  batched across images, and children kept as state dicts loaded into one scratch model (the release
  evaluates with autograd on, recomputes HR VGG features for every child and deep-copies up to five
  whole models per child). The values are the same up to float32 summation order.
* Evaluation files are the first ``K`` in *sorted* order (the release uses ``os.listdir`` order).
* When mutation follows crossover, the release rebuilds the child from parent ``i`` and overwrites only
  ``weight`` tensors, so the child's biases silently revert to parent ``i``'s. ``make_child`` keeps the
  crossed biases by default; ``faithful_bias_revert=True`` reproduces the release.
* A child whose fitness is not finite never replaces anyone and does not move the ideal/nadir points
  (the release would let NaN/inf into its running min/max).
* Randomness comes from one explicit ``torch.Generator`` (the release mixes ``numpy.random`` and the
  global torch RNG), so a phase is reproducible.
* Fitness objectives may be any perceptsr metric (NIQE, PI, LPIPS, ...) besides L1 and the VGG
  loss, since the EA step needs no gradients.
* In the loop, the EA phase runs after ``t_adam`` whole epochs of Adam steps each time (the
  release's first phase comes after 9 epochs, its later ones after 10), and takes no iterations.
* Under ``torchrun`` the per-objective gradients are averaged over ranks before normalisation and
  the fitness evaluation is split over ranks (the release is single-GPU).
* A run's best checkpoint is picked by the population's hypervolume in the (PSNR, plane metric)
  plane on ``data.val`` up to a fixed reference point, not by individual 0.

State dicts produced here never share storage with their inputs, so population slots can be updated
in place without aliasing surprises.
"""

from perceptsr.ea_adam.config import EAAdamObjectiveConfig
from perceptsr.ea_adam.fitness import (
    EvalSet,
    FitnessEvaluator,
    FitnessLike,
    FitnessTerm,
    FunctionFitness,
    L1Fitness,
    MetricFitness,
    PerceptualFitness,
    as_fitness_term,
    build_eval_set,
    grid_patches,
)
from perceptsr.ea_adam.gradients import normalised_gradient_mix
from perceptsr.ea_adam.objective import EAAdamObjective
from perceptsr.ea_adam.operators import (
    ChildInfo,
    KeySelector,
    VariationConfig,
    gaussian_mutation,
    make_child,
    sbx_beta,
    sbx_crossover,
)
from perceptsr.ea_adam.phase import EAPhaseReport, GenerationRecord, Replacement, run_ea_phase
from perceptsr.ea_adam.population import (
    CHILDREN_LOG,
    FINAL_POPULATION,
    PHASES_LOG,
    PLANE_DIR,
    POPULATION_DIR,
    StateDict,
    discriminator_name,
    generator_name,
    member_file,
    neighbourhoods,
    population_folder,
    preference_vectors,
)
from perceptsr.ea_adam.selection import (
    MOEADSelector,
    NSGA2Selector,
    Selector,
    crowding_distance,
    non_dominated_sort,
    tchebycheff,
)

__all__ = [
    "EAAdamObjectiveConfig",
    "EAAdamObjective",
    # population layout and run-folder names
    "StateDict",
    "preference_vectors",
    "neighbourhoods",
    "POPULATION_DIR",
    "FINAL_POPULATION",
    "PHASES_LOG",
    "CHILDREN_LOG",
    "PLANE_DIR",
    "population_folder",
    "member_file",
    "generator_name",
    "discriminator_name",
    # Adam phase
    "normalised_gradient_mix",
    # variation
    "KeySelector",
    "sbx_beta",
    "sbx_crossover",
    "gaussian_mutation",
    "ChildInfo",
    "VariationConfig",
    "make_child",
    # selection
    "tchebycheff",
    "non_dominated_sort",
    "crowding_distance",
    "Selector",
    "MOEADSelector",
    "NSGA2Selector",
    # fitness
    "EvalSet",
    "grid_patches",
    "build_eval_set",
    "FitnessTerm",
    "L1Fitness",
    "PerceptualFitness",
    "MetricFitness",
    "FunctionFitness",
    "FitnessLike",
    "as_fitness_term",
    "FitnessEvaluator",
    # EA phase
    "Replacement",
    "GenerationRecord",
    "EAPhaseReport",
    "run_ea_phase",
]
