"""EA-Adam stage A's config schema (objective type ``ea_adam``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from perceptsr.config import ModelConfig, ObjectiveConfig, PerceptualLossConfig, check_field


@ObjectiveConfig.register("ea_adam")
@dataclass(frozen=True)
class EAAdamObjectiveConfig(ObjectiveConfig):
    """EA-Adam stage A (``perceptsr.ea_adam``; defaults = the released MSRResNet run).

    ``population`` generators start from ``model.pretrained``; individual i has the preference
    ``(1 - i/(n-1), i/(n-1))`` over (L1, perceptual + ``gan_weight`` * adversarial). An *epoch* is
    ``epoch_iterations`` iterations (null: floor(training images x ``data.train.repeat`` /
    ``data.train.batch_size``), as the loop counts them); the EA phase (``t_ea`` generations) runs at
    the start of iteration t whenever t - 1 is a positive multiple of ``t_adam`` epochs.

    ``plane_metric``: after each EA phase the population is plotted as PSNR against this metric,
    both scored by the loop's own validation (``data.val``, same images, presets and 8-bit
    rounding), so it must be one of ``data.val.metrics`` (a ConfigError at startup otherwise; e.g.
    ``data.val.metrics: [psnr, ssim, lpips]``). Null, or no ``data.val``: no plot.

    The best checkpoint is picked by the population, not by individual 0: the hypervolume of the
    members in the (PSNR, ``plane_metric``) plane on ``data.val`` up to ``hypervolume_reference``
    (PSNR dB, metric value; null = the fixed default of ``perceptsr.ea_adam.objective.HV_REFERENCE``:
    PSNR 0 dB, and LPIPS 1, DISTS 1, SSIM 0), or without a plane metric the members' mean of the
    first ``data.val`` metric.
    """

    type: str = "ea_adam"
    population: int = 5
    freeze_first: bool = True  # individual 0 stays the PSNR model: no Adam steps, no discriminator
    protect_first: Optional[bool] = None  # never replaced by an EA child; null = freeze_first (RRDB release: false)
    perceptual: PerceptualLossConfig = field(default_factory=PerceptualLossConfig)
    gan_type: Literal["vanilla", "ragan"] = "vanilla"
    gan_weight: float = 5e-3
    discriminator: ModelConfig = field(default_factory=lambda: ModelConfig(arch="vgg_discriminator_128"))
    t_adam: int = 10  # epochs of Adam steps between EA phases
    epoch_iterations: Optional[int] = None
    t_ea: int = 200  # generations per EA phase
    fitness: tuple[str, str] = ("l1", "perceptual")  # "perceptual" = the loss above (VGG only); or metric names
    selection: Literal["moead", "nsga2"] = "moead"
    neighbourhood: int = 3
    p_crossover: float = 0.9
    p_neighbour: float = 0.7
    p_mutation: float = 0.2
    eta: float = 20.0
    p_element: float = 0.02
    sigma: float = 0.03
    faithful_bias_revert: bool = False
    adam_mode: Literal["normalised", "weighted_sum"] = "normalised"  # weighted_sum: the plain λ-weighted loss (the baseline)
    eval_hr_dir: Optional[str] = None  # EA fitness images; null = data.train.hr_dir (first eval_images, sorted)
    eval_lr_dir: Optional[str] = None  # null = data.train.lr_dir (or MATLAB bicubic of the HR)
    eval_images: int = 16
    eval_patch_size: int = 128
    eval_max_patches: int = 100  # more patches than this: keep #25..#74, as released
    eval_batch_size: int = 50
    cache_device: Optional[Literal["cpu"]] = None  # HR VGG feature cache; null = the training device, cpu = host memory
    fitness_dtype: Literal["float32", "bfloat16"] = "float32"  # bfloat16: opt-in autocast, ~2x, values to ~1e-2
    plane_metric: Optional[str] = "lpips"  # per-phase PSNR-vs-this plot; must be in data.val.metrics; null = no plot
    hypervolume_reference: Optional[tuple[float, float]] = None  # (PSNR dB, plane_metric); null = HV_REFERENCE

    def __post_init__(self):
        check_field(self.population >= 2, "population", self.population, "must be >= 2")
        for name in ("t_adam", "t_ea", "eval_images", "eval_patch_size", "eval_max_patches", "eval_batch_size"):
            check_field(getattr(self, name) >= 1, name, getattr(self, name), "must be >= 1")
        check_field(self.epoch_iterations is None or self.epoch_iterations >= 1, "epoch_iterations",
               self.epoch_iterations, "must be >= 1 or null")
        check_field(1 <= self.neighbourhood <= self.population, "neighbourhood", self.neighbourhood,
               f"must be in [1, population={self.population}]")
        for name in ("p_crossover", "p_neighbour", "p_mutation", "p_element"):
            check_field(0 <= getattr(self, name) <= 1, name, getattr(self, name), "must be a probability in [0, 1]")
        check_field(self.gan_weight >= 0, "gan_weight", self.gan_weight, "must be >= 0")


