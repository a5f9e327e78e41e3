"""EA-Adam stages B and C: dynamic experts, averaged per-layer fusion weights, collapse to one plain
network, and perception-distortion trade-off models (spec ``shared/specs/eaadam.md`` §0, §3, §4.2, §9).

* :mod:`~perceptsr.fusion.layers`: the attention regressor and the dynamic Conv2d/Linear/LayerNorm;
* :mod:`~perceptsr.fusion.plan`: which layers of a backbone become dynamic, strict expert checks, the
  static policy for differing tensors outside those layers;
* :mod:`~perceptsr.fusion.network`: :class:`DynamicNetwork`, :func:`load_attention`, :func:`collapse`;
* :mod:`~perceptsr.fusion.average`: stage C's weights averaged over LR images, and the output gap
  between the dynamic network and the collapsed model;
* :mod:`~perceptsr.fusion.files`: expert file order, the fused model and ``fusion_weights.json``;
* :mod:`~perceptsr.fusion.tradeoff`: plain models at perceptual preference ``t`` (expert position
  ``t (K - 1)`` on both the population and the fused path; ``perceptsr upscale --tradeoff``);
* :mod:`~perceptsr.fusion.objective`: stage B in the training loop (``objective.type: fusion``);
* :mod:`~perceptsr.fusion.run`: stage C from a stage-B run (``perceptsr fuse``);
* :mod:`~perceptsr.fusion.config`: the ``fusion`` config schema.

Differences from the released code, all deliberate (``docs/ea_adam.md``):

* fusion weights are keyed by layer name (the release pairs them by call order), and experts are
  sorted by individual index (the release uses ``os.listdir`` order);
* tensors outside the dynamic layers that differ between experts (SwinIR's relative-position bias
  tables) follow an explicit ``static_policy`` (the release keeps the last expert's);
* ``perceptsr fuse`` reports the output gap between the dynamic network and the collapsed model, and
  ``--tradeoff`` (not in the release) has one calibrated meaning on both paths.

Importing the package registers the ``fusion`` config schema and objective.
"""

from perceptsr.fusion.average import average_fusion_weights, center_crop_half, output_gap
from perceptsr.fusion.config import FusionObjectiveConfig
from perceptsr.fusion.files import (
    FUSION_ARCH, FUSION_WEIGHTS_FILE, load_fusion_weights, member_index, save_fused_model, sort_expert_files,
)
from perceptsr.fusion.layers import (
    LAYER_TYPES, AttentionConfig, AttentionRegressor, DynamicConv2d, DynamicLayerNorm, DynamicLinear,
    default_attention_config,
)
from perceptsr.fusion.network import DynamicNetwork, collapse, fuse_state_dicts, load_attention
from perceptsr.fusion.objective import FusionObjective, attention_for
from perceptsr.fusion.plan import STATIC_POLICIES
from perceptsr.fusion.run import fuse_run
from perceptsr.fusion.positions import expert_position, fused_tradeoff
from perceptsr.fusion.tradeoff import (
    build_tradeoff_model, interpolate_fusion_weights, interpolate_population, load_tradeoff_model,
)

__all__ = [
    "AttentionConfig", "default_attention_config", "AttentionRegressor", "DynamicConv2d", "DynamicLinear",
    "DynamicLayerNorm", "LAYER_TYPES", "DynamicNetwork", "load_attention", "fuse_state_dicts", "collapse",
    "STATIC_POLICIES", "center_crop_half", "average_fusion_weights", "output_gap", "FUSION_ARCH", "FUSION_WEIGHTS_FILE", "member_index",
    "sort_expert_files", "save_fused_model", "load_fusion_weights", "interpolate_population",
    "interpolate_fusion_weights", "expert_position", "fused_tradeoff", "build_tradeoff_model", "load_tradeoff_model", "FusionObjectiveConfig",
    "FusionObjective", "attention_for", "fuse_run",
]
