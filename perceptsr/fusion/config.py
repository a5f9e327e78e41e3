"""EA-Adam stage B's config schema (objective type ``fusion``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from perceptsr.config import GANObjectiveConfig, ObjectiveConfig, check_field


@ObjectiveConfig.register("fusion")
@dataclass(frozen=True)
class FusionObjectiveConfig(GANObjectiveConfig):
    """EA-Adam stage B (``perceptsr.fusion``): the GAN objective (defaults: pixel L1 1e-2, VGG19-54,
    vanilla GAN 5e-3, the released SRResNet fusion run) training only the attention regressors of a
    dynamic network over ``experts`` (a stage-A population folder, ``member_<i>`` files sorted by
    index). ``discriminator.pretrained``: a stage-A discriminator. ``model.arch`` must be the
    experts' architecture. ``static_policy``: what tensors outside the dynamic layers that differ
    between experts become (``error``; ``average``: their mean, e.g. SwinIR's relative-position bias
    tables; ``first``: expert 0's), the same in stage B and C."""

    type: str = "fusion"
    experts: str = ""
    attention: dict[str, Any] = field(default_factory=dict)  # AttentionConfig overrides (kernel_size, num_feat, ...)
    attention_seed: Optional[int] = None  # seeds the regressors' initialisation; null = seed
    static_policy: Literal["error", "average", "first"] = "error"

    def __post_init__(self):
        super().__post_init__()
        check_field(bool(self.experts), "experts", self.experts, "is required (a stage-A population folder)")


