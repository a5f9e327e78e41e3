"""Networks a training run builds from its config: the generator, discriminators and the VGG
feature loss. Shared by the loop and every objective, so no objective imports the engine."""

from __future__ import annotations

from torch import nn

from perceptsr.config import ModelConfig, PerceptualLossConfig, TrainConfig
from perceptsr.errors import ConfigError

__all__ = ["build_discriminator", "build_generator", "build_perceptual_loss", "set_requires_grad"]


def build_generator(cfg: TrainConfig) -> tuple[nn.Module, dict]:
    """The generator from ``cfg.model`` (scale injected as ``upscale``/``scale``), optionally pretrained.

    Returns the module and the keyword arguments that rebuild it (stored in checkpoints).
    """
    from perceptsr.archs import build_arch, get_arch

    kwargs = dict(cfg.model.kwargs)
    allowed = get_arch(cfg.model.arch).allowed_kwargs() or []
    for key in ("upscale", "scale"):
        if key in allowed:
            if key in kwargs and kwargs[key] != cfg.scale:
                raise ConfigError(
                    f"config key 'model.kwargs.{key}' ({kwargs[key]}) disagrees with 'scale' ({cfg.scale})"
                )
            kwargs[key] = cfg.scale
            break
    model = build_arch(cfg.model.arch, **kwargs)
    if cfg.model.pretrained:
        from perceptsr.checkpoint import load_pretrained

        load_pretrained(model, cfg.model.pretrained, key=cfg.model.pretrained_key, strict=cfg.model.strict)
    return model, kwargs


def build_discriminator(model_cfg: ModelConfig, patch_size: int,
                        key: str = "objective.discriminator") -> tuple[nn.Module, str, dict]:
    """A discriminator from config section ``key`` (a registered discriminator, optionally pretrained);
    returns the module, its canonical registry name and its keyword arguments (for checkpoints)."""
    from perceptsr.archs import build_arch, get_arch

    where = f"config key '{key}"
    try:
        spec = get_arch(model_cfg.arch)
    except ConfigError as exc:
        raise ConfigError(f"{where}.arch': {exc}") from None
    if spec.kind != "discriminator":
        raise ConfigError(f"{where}.arch': {model_cfg.arch!r} is a {spec.kind}, not a discriminator")
    try:
        net_d = build_arch(spec.name, **model_cfg.kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{where}.kwargs': {exc}") from None
    size = getattr(net_d, "input_size", None)
    if size is not None and size != patch_size:
        raise ConfigError(
            f"{where}': {spec.name} takes {size}x{size} inputs but data.train.patch_size is {patch_size}; "
            f"set {key}.kwargs.input_size: {patch_size} (or pick a matching arch)"
        )
    if model_cfg.pretrained:
        from perceptsr.checkpoint import load_pretrained

        load_pretrained(net_d, model_cfg.pretrained, key=model_cfg.pretrained_key, strict=model_cfg.strict)
    return net_d, spec.name, dict(model_cfg.kwargs)


def build_perceptual_loss(p: PerceptualLossConfig, key: str = "objective.perceptual") -> nn.Module:
    """A :class:`~perceptsr.losses.PerceptualLoss` from its config section ``key``."""
    from perceptsr.losses import PerceptualLoss

    try:
        return PerceptualLoss(layer_weights=p.layer_weights, vgg_type=p.vgg_type, weights=p.weights,
                              use_input_norm=p.use_input_norm, criterion=p.criterion, range_norm=p.range_norm,
                              loss_weight=p.weight)
    except (ValueError, KeyError) as exc:
        raise ConfigError(f"config key '{key}': {exc}") from None


def set_requires_grad(module: nn.Module, flag: bool) -> None:
    """Freeze (False) or unfreeze a module's parameters, e.g. D during a generator step."""
    for p in module.parameters():
        p.requires_grad_(flag)
