"""EA-Adam stage B in the training loop (config ``objective.type: fusion``), spec
``shared/specs/eaadam.md`` §3: the GAN objective over the :class:`DynamicNetwork` of the stage-A
experts, training only its attention regressors.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from perceptsr.errors import ConfigError
from perceptsr.fusion.files import FUSION_ARCH
from perceptsr.fusion.layers import AttentionConfig
from perceptsr.fusion.network import DynamicNetwork
from perceptsr.train.objectives import GANObjective, register_objective

__all__ = ["attention_for", "FusionObjective"]


def attention_for(cfg: Any) -> AttentionConfig:
    """The released regressor for ``cfg.model.arch`` (its architecture's ``fusion_defaults``) with
    ``objective.attention`` overrides."""
    from perceptsr.archs import get_arch

    base = AttentionConfig(**get_arch(cfg.model.arch).fusion_defaults)
    try:
        return dataclasses.replace(base, **cfg.objective.attention)
    except TypeError as exc:
        fields = ", ".join(f.name for f in dataclasses.fields(AttentionConfig))
        raise ConfigError(f"config key 'objective.attention': {exc} (valid keys: {fields})") from None


@register_objective("fusion")
class FusionObjective(GANObjective):
    """EA-Adam stage B (config ``objective.type: fusion``): :class:`GANObjective` whose generator is
    the :class:`DynamicNetwork` over the stage-A experts; only the attention regressors have
    ``requires_grad`` and so only they are optimised. Checkpoints hold the whole dynamic net
    (arch ``fusion_dynamic``); stage C is :func:`perceptsr.fusion.fuse_run` (``perceptsr fuse``)."""

    @classmethod
    def build_generator(cls, cfg: Any) -> tuple[nn.Module, str, dict]:
        from perceptsr.archs import get_arch

        o = cfg.objective
        if cfg.model.pretrained:
            raise ConfigError("config key 'model.pretrained': not used by the fusion objective (the experts come "
                              "from objective.experts); remove it")
        att = attention_for(cfg)
        net = DynamicNetwork.from_files(o.experts, attention=att, static_policy=o.static_policy,
                                        seed=cfg.seed if o.attention_seed is None else o.attention_seed)
        want = get_arch(cfg.model.arch).name
        clash = {k: (v, net.arch_kwargs.get(k)) for k, v in cfg.model.kwargs.items() if net.arch_kwargs.get(k, v) != v}
        if net.arch != want or clash:
            raise ConfigError(f"config key 'model': the experts in {o.experts} are {net.arch} {net.arch_kwargs}, "
                              f"not {want} {dict(cfg.model.kwargs)}")
        scale = net.perceptsr_meta.get("scale")
        if scale is not None and scale != cfg.scale:
            raise ConfigError(f"config key 'scale' ({cfg.scale}) differs from the experts' scale {scale}")
        kwargs = {"backbone": net.arch, "backbone_kwargs": net.arch_kwargs, "experts": net.expert_sources,
                  "num_experts": net.num_experts, "attention": dataclasses.asdict(att),
                  "static_policy": net.static_policy, "static_keys": net.static_keys}
        return net, FUSION_ARCH, kwargs
