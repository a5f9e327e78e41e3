"""Typed configs: YAML in, validated frozen dataclasses out.

The machinery is generic (any dataclass tree); the training schema lives at the bottom.

- :func:`load_config` reads YAML, applies dotted overrides (``train.lr=2e-4``; values parsed as
  YAML) and builds the dataclass tree, checking every value against its annotation.
- Supported annotations: ``int``, ``float``, ``bool``, ``str``, ``Literal[...]``, ``Optional[X]``,
  ``list[X]``, ``tuple[X, ...]``, ``tuple[X, Y]``, ``dict[str, X]``, ``Any`` and nested dataclasses.
  Numeric strings are accepted for numbers because PyYAML reads ``5e3`` and ``1e-4`` as strings.
- Unknown keys, wrong types and missing required keys raise :class:`~perceptsr.errors.ConfigError`
  naming the full dotted key, the value and what was expected (with "did you mean" for typos).
- Polymorphic sections: a base dataclass made with :func:`variant_base` picks its concrete class
  from its ``type`` key, so new objectives or schedules register their own option dataclasses
  (``@ObjectiveConfig.register("gan")``) without touching the loader.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from perceptsr.errors import ConfigError
from perceptsr.methods import METHOD_PACKAGES
from perceptsr.registry import Registry

__all__ = [
    "load_config",
    "config_from_dict",
    "config_to_dict",
    "dump_config",
    "apply_overrides",
    "parse_override",
    "variant_base",
    "check_field",
    "TrainConfig",
    "ModelConfig",
    "TrainDataConfig",
    "ValDataConfig",
    "DataConfig",
    "ObjectiveConfig",
    "PSNRObjectiveConfig",
    "GANObjectiveConfig",
    "PerceptualLossConfig",
    "OptimConfig",
    "ScheduleConfig",
    "ConstantScheduleConfig",
    "MultiStepScheduleConfig",
    "CosineRestartScheduleConfig",
    "LoopConfig",
]

_MISSING = object()


# --------------------------------------------------------------------------------------------
# Polymorphic sections
# --------------------------------------------------------------------------------------------


def variant_base(cls):
    """Class decorator: make dataclass ``cls`` a base whose concrete class is chosen by ``type``.

    Subclasses register with ``@cls.register("name")`` and must declare ``type: str = "name"``;
    ``cls.variants`` is their :class:`~perceptsr.registry.Registry` (a method package can be named
    as the provider of a type with ``cls.variants.provided_by``).
    """
    variants = Registry(f"{cls.__name__} type")

    def register(name: str):
        def deco(sub):
            if not (isinstance(sub, type) and issubclass(sub, cls)):
                raise TypeError(f"{sub!r} must subclass {cls.__name__} to register as {name!r}")
            return variants.register(name, sub)

        return deco

    cls.variants = variants
    cls.register = staticmethod(register)
    return cls


def _is_variant_base(tp) -> bool:
    return isinstance(tp, type) and "variants" in tp.__dict__


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def _key(path: str) -> str:
    return f"config key '{path}'" if path else "config"


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if tp is Any:
        return "any value"
    if tp is type(None):
        return "null"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (list, tuple, dict):
        args = typing.get_args(tp)
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return f"list of {_type_name(args[0])}"
        if origin is tuple:
            return f"list of {len(args)} items ({', '.join(_type_name(a) for a in args)})"
        if origin is list:
            return f"list of {_type_name(args[0])}" if args else "list"
        return "mapping"
    if dataclasses.is_dataclass(tp):
        return "mapping (section)"
    return getattr(tp, "__name__", str(tp))


def _fail(path: str, value: Any, tp, note: str = "") -> ConfigError:
    extra = f" ({note})" if note else ""
    return ConfigError(
        f"{_key(path)}: expected {_type_name(tp)}, got {_show(value)} ({type(value).__name__}){extra}"
    )


def _to_number(value: Any, path: str, tp):
    """The int or float for an int, float or numeric-string input (bools are refused), else raise."""
    if isinstance(value, bool):
        raise _fail(path, value, tp)
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
        try:
            return float(value.strip())
        except ValueError:
            raise _fail(path, value, tp) from None
    raise _fail(path, value, tp)


def _convert(value: Any, tp, path: str):
    """Check ``value`` against annotation ``tp`` and return the converted value."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)

    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        members = [a for a in args if a is not type(None)]
        errors = []
        for member in members:
            try:
                return _convert(value, member, path)
            except ConfigError as exc:
                errors.append(exc)
        if len(errors) == 1:
            raise errors[0]
        raise _fail(path, value, tp)
    if value is None:
        raise _fail(path, value, tp)
    if origin is Literal:
        if value in args and not (isinstance(value, bool) and not any(isinstance(a, bool) for a in args)):
            return value
        hint = ""
        if isinstance(value, str):
            near = difflib.get_close_matches(value, [a for a in args if isinstance(a, str)], n=1)
            if near:
                hint = f"; did you mean {near[0]!r}?"
        raise ConfigError(
            f"{_key(path)}: {_show(value)} is not allowed; expected one of "
            + ", ".join(repr(a) for a in args)
            + hint
        )
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _fail(path, value, tp, "use true or false")
    if tp is int:
        number = _to_number(value, path, tp)
        if isinstance(number, float):
            if not (math.isfinite(number) and number.is_integer()):
                raise _fail(path, value, tp, "not a whole number")
            number = int(number)
        return number
    if tp is float:
        return float(_to_number(value, path, tp))
    if tp is str:
        if isinstance(value, str):
            return value
        raise _fail(path, value, tp)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _fail(path, value, tp)
        if origin is list:
            item_tp = args[0] if args else Any
            return [_convert(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{path}[{i}]") for i, v in enumerate(value))
        if args and len(value) != len(args):
            raise _fail(path, value, tp, f"{len(value)} items")
        return tuple(_convert(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args or [Any] * len(value))))
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise _fail(path, value, tp)
        key_tp, val_tp = args if args else (Any, Any)
        out = {}
        for k, v in value.items():
            sub = f"{path}.{k}" if path else str(k)
            out[_convert(k, key_tp, sub)] = _convert(v, val_tp, sub)
        return out
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path)
    raise TypeError(f"unsupported annotation {tp!r} at {path!r}")


def _build(cls, data: Any, path: str):
    """Build dataclass ``cls`` (or its registered variant) from mapping ``data``."""
    if dataclasses.is_dataclass(data) and isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{_key(path)}: expected a mapping (section), got {_show(data)} ({type(data).__name__})")
    if _is_variant_base(cls):
        variants = cls.variants
        default = next((f.default for f in dataclasses.fields(cls) if f.name == "type"), _MISSING)
        name = data.get("type", default)
        sub = f"{path}.type" if path else "type"
        if name is _MISSING:
            raise ConfigError(f"{_key(sub)} is required; one of " + ", ".join(map(repr, variants.names())))
        if name not in variants:
            near = difflib.get_close_matches(str(name), variants.names(), n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise ConfigError(
                f"{_key(sub)}: unknown type {_show(name)}; registered: "
                + ", ".join(map(repr, variants.names()))
                + hint
            )
        cls = variants.get(name)
        data = {**data, "type": name}
        owner = f" for type {name!r}"
    else:
        owner = ""

    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        k = unknown[0]
        sub = f"{path}.{k}" if path else str(k)
        near = difflib.get_close_matches(str(k), list(fields), n=1, cutoff=0.6)
        hint = f"; did you mean '{(path + '.') if path else ''}{near[0]}'?" if near else ""
        raise ConfigError(
            f"unknown {_key(sub)} (value {_show(data[k])}){hint} "
            f"[valid keys{owner}: {', '.join(fields)}]"
        )
    kwargs = {}
    for name, f in fields.items():
        sub = f"{path}.{name}" if path else name
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], sub)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{_key(sub)} is required ({_type_name(hints[name])})")
    try:
        return cls(**kwargs)
    except _FieldError as exc:
        sub = f"{path}.{exc.key}" if path else exc.key
        raise ConfigError(f"{_key(sub)}: {exc.message}, got {_show(exc.value)}") from None


class _FieldError(ConfigError):
    def __init__(self, key: str, value: Any, message: str):
        super().__init__(f"config key '{key}': {message}, got {_show(value)}")
        self.key, self.value, self.message = key, value, message


def check_field(cond: bool, key: str, value: Any, message: str) -> None:
    """Range check for ``__post_init__``: ``key`` is relative to the section being built."""
    if not cond:
        raise _FieldError(key, value, message)


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def config_from_dict(cls, data: dict):
    """Validate mapping ``data`` against dataclass ``cls`` and return the instance."""
    return _build(cls, data, "")


def config_to_dict(cfg) -> dict:
    """Plain ``dict`` of a config (tuples become lists), suitable for YAML."""

    def plain(v):
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v) if f.init}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(cfg)


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``"a.b.c=value"`` into the dotted key and the YAML-parsed value."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.sub=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key part")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from None
    return key, value


def apply_overrides(data: dict, overrides) -> dict:
    """Return a copy of raw mapping ``data`` with dotted ``key=value`` overrides applied."""
    import copy

    out = copy.deepcopy(data)
    for text in overrides or ():
        key, value = parse_override(text) if isinstance(text, str) else text
        node = out
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(
                    f"override {key}={value!r}: '{'.'.join(parts[: i + 1])}' is {_show(child)}, not a section"
                )
            node = child
        node[parts[-1]] = value
    return out


def load_yaml(path) -> dict:
    """Read a YAML mapping, with errors naming the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level, got {type(data).__name__}")
    return data


def load_config(path, cls=None, overrides=None):
    """Load YAML ``path`` into dataclass ``cls`` (default :class:`TrainConfig`) after ``overrides``.

    ``overrides`` is a list of ``"dotted.key=value"`` strings; values are parsed as YAML, so
    ``optim.betas=[0.9,0.999]`` and ``model.pretrained=null`` work.
    """
    cls = TrainConfig if cls is None else cls
    data = apply_overrides(load_yaml(path), overrides)
    try:
        return config_from_dict(cls, data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


class _Dumper(yaml.SafeDumper):
    """Block-style mappings with short flow-style lists (``betas: [0.9, 0.99]``)."""


_Dumper.add_representer(list, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True))


def dump_config(cfg, path=None) -> str:
    """Write the resolved config as YAML to ``path`` (if given) and return the text."""
    text = yaml.dump(config_to_dict(cfg), Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=100)
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    return text


# --------------------------------------------------------------------------------------------
# Training schema
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelConfig:
    """The generator: a registered architecture, its keyword arguments and optional init weights."""

    arch: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    pretrained: Optional[str] = None  # checkpoint to initialise from (any format load_model reads)
    pretrained_key: Optional[str] = None  # e.g. "params" or "params_ema"; None = auto
    strict: bool = True


@dataclass(frozen=True)
class TrainDataConfig:
    """Training pairs and batching. Without ``lr_dir`` the LR is MATLAB-bicubic of the HR, made on the
    fly. ``hr_dir`` may be left out only by objectives that bring their own training set (the Ranker)."""

    hr_dir: Optional[str] = None
    lr_dir: Optional[str] = None
    patch_size: int = 128  # HR crop size; the LR crop is patch_size // scale
    batch_size: int = 16  # TOTAL over all processes (divided by WORLD_SIZE), as in mmsr
    num_workers: int = 4  # per process
    cache: bool = False  # keep decoded images in memory
    hflip: bool = True
    vflip: bool = True
    rot90: bool = True  # transpose (with the flips: all 8 dihedral transforms)
    skip_bad: bool = False  # drop unreadable/too-small images instead of failing
    repeat: int = 1  # dataset repetitions per epoch (DIV2K-style, for small folders)

    def __post_init__(self):
        check_field(self.patch_size > 0, "patch_size", self.patch_size, "must be positive")
        check_field(self.batch_size > 0, "batch_size", self.batch_size, "must be positive")
        check_field(self.num_workers >= 0, "num_workers", self.num_workers, "must be >= 0")
        check_field(self.repeat >= 1, "repeat", self.repeat, "must be >= 1")


@dataclass(frozen=True)
class ValDataConfig:
    """Held-out images for periodic metrics: names from ``perceptsr.metrics`` (full-reference ones on
    the Y channel with border crop = scale, no-reference ones under the PIRM protocol)."""

    hr_dir: str
    lr_dir: Optional[str] = None
    max_images: Optional[int] = None  # first N images in sorted order
    log_images: int = 3  # LR-bicubic / SR / HR crops sent to TensorBoard
    crop_size: int = 128  # HR size of those logged crops
    metrics: tuple[str, ...] = ("psnr", "ssim")  # e.g. [psnr, ssim, niqe]; PSNR picks the best checkpoint

    def __post_init__(self):
        check_field(self.max_images is None or self.max_images >= 1, "max_images", self.max_images,
                    "must be >= 1, or null for all images (remove data.val to turn validation off)")
        check_field(self.log_images >= 0, "log_images", self.log_images, "must be >= 0")
        check_field(self.crop_size > 0, "crop_size", self.crop_size, "must be positive")
        check_field(self.metrics[:1] == ("psnr",), "metrics", self.metrics,
               "must start with 'psnr' (it picks the best checkpoint)")
        check_field(len(set(self.metrics)) == len(self.metrics), "metrics", self.metrics, "lists a metric twice")


@dataclass(frozen=True)
class DataConfig:
    train: TrainDataConfig
    val: Optional[ValDataConfig] = None


@variant_base
@dataclass(frozen=True)
class ObjectiveConfig:
    """Base of objective options; ``type`` picks the registered subclass (psnr, later gan, ...)."""

    type: str = "psnr"


for _type, _package in METHOD_PACKAGES.items():  # method packages register their own schemas
    ObjectiveConfig.variants.provided_by(_type, _package)


@ObjectiveConfig.register("psnr")
@dataclass(frozen=True)
class PSNRObjectiveConfig(ObjectiveConfig):
    """Pixel-loss training of the generator alone."""

    type: str = "psnr"
    loss: Literal["l1", "l2", "charbonnier"] = "l1"
    charbonnier_eps: float = 1e-12  # BasicSR's default; the loss is mean(sqrt(d^2 + eps))

    def __post_init__(self):
        check_field(self.charbonnier_eps > 0, "charbonnier_eps", self.charbonnier_eps, "must be > 0")


@dataclass(frozen=True)
class OptimConfig:
    """Adam or AdamW. Reused by objectives with several optimizers (e.g. a discriminator's)."""

    type: Literal["adam", "adamw"] = "adam"
    lr: float = 2e-4
    betas: tuple[float, float] = (0.9, 0.99)
    eps: float = 1e-8
    weight_decay: float = 0.0

    def __post_init__(self):
        check_field(math.isfinite(self.lr) and self.lr >= 0, "lr", self.lr, "must be a finite number >= 0")
        check_field(all(0 <= b < 1 for b in self.betas), "betas", self.betas, "each beta must be in [0, 1)")
        check_field(math.isfinite(self.eps) and self.eps > 0, "eps", self.eps, "must be a finite number > 0")
        check_field(math.isfinite(self.weight_decay) and self.weight_decay >= 0, "weight_decay", self.weight_decay,
                    "must be a finite number >= 0")


@variant_base
@dataclass(frozen=True)
class ScheduleConfig:
    """Learning-rate schedule as a pure function of the (1-based) iteration; ``type`` picks it."""

    type: str = "constant"


@ScheduleConfig.register("constant")
@dataclass(frozen=True)
class ConstantScheduleConfig(ScheduleConfig):
    type: str = "constant"


@ScheduleConfig.register("multistep")
@dataclass(frozen=True)
class MultiStepScheduleConfig(ScheduleConfig):
    """lr = base * gamma ** (number of milestones <= iteration)."""

    type: str = "multistep"
    milestones: tuple[int, ...] = ()
    gamma: float = 0.5

    def __post_init__(self):
        ms = self.milestones
        check_field(list(ms) == sorted(ms), "milestones", ms, "must be increasing")


@ScheduleConfig.register("cosine")
@dataclass(frozen=True)
class CosineRestartScheduleConfig(ScheduleConfig):
    """BasicSR's CosineAnnealingRestartLR: cosine periods, each restart scaled by its weight."""

    type: str = "cosine"
    periods: tuple[int, ...] = (250000, 250000, 250000, 250000)
    restart_weights: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)
    eta_min: float = 1e-7

    def __post_init__(self):
        check_field(len(self.periods) > 0 and all(p > 0 for p in self.periods), "periods", self.periods,
               "needs at least one positive period")
        check_field(len(self.restart_weights) == len(self.periods), "restart_weights", self.restart_weights,
               f"needs one weight per period ({len(self.periods)})")


@dataclass(frozen=True)
class PerceptualLossConfig:
    """VGG feature loss (:class:`perceptsr.losses.PerceptualLoss`); ``weight: 0`` turns it off."""

    weight: float = 1.0
    layer_weights: dict[str, float] = field(default_factory=lambda: {"conv5_4": 1.0})  # conv5_4 = VGG19-54, before ReLU
    vgg_type: Literal["vgg19", "vgg16"] = "vgg19"
    weights: Optional[str] = "torchvision"  # torchvision | caffe | asset name or file | null (random; tests)
    criterion: Literal["l1", "l2", "fro"] = "l1"
    use_input_norm: bool = True
    range_norm: bool = False

    def __post_init__(self):
        check_field(self.weight >= 0, "weight", self.weight, "must be >= 0")
        check_field(bool(self.layer_weights), "layer_weights", self.layer_weights, "needs at least one layer")


@ObjectiveConfig.register("gan")
@dataclass(frozen=True)
class GANObjectiveConfig(ObjectiveConfig):
    """Adversarial training (SRGAN / ESRGAN defaults: pixel L1 1e-2, VGG19-54 L1 1.0, GAN 5e-3).

    ``optim_d`` / ``schedule_d`` default to the generator's ``optim`` / ``schedule``. As in BasicSR
    (``net_d_iters``, ``net_d_init_iters``) and mmsr (``D_update_ratio``, ``D_init_iters``), the
    generator steps at iterations ``t > net_d_init_iters`` with ``t % net_d_iters == 0``; the
    discriminator steps every iteration.
    """

    type: str = "gan"
    pixel_loss: Literal["l1", "l2", "charbonnier"] = "l1"
    pixel_weight: float = 1e-2
    charbonnier_eps: float = 1e-12
    perceptual: PerceptualLossConfig = field(default_factory=PerceptualLossConfig)
    gan_type: Literal["vanilla", "ragan", "lsgan"] = "vanilla"
    gan_weight: float = 5e-3
    discriminator: ModelConfig = field(default_factory=lambda: ModelConfig(arch="vgg_discriminator_128"))
    optim_d: Optional[OptimConfig] = None
    schedule_d: Optional[ScheduleConfig] = None
    net_d_iters: int = 1
    net_d_init_iters: int = 0

    def __post_init__(self):
        for name in ("pixel_weight", "gan_weight"):
            check_field(getattr(self, name) >= 0, name, getattr(self, name), "must be >= 0")
        check_field(self.charbonnier_eps > 0, "charbonnier_eps", self.charbonnier_eps, "must be > 0")
        check_field(self.net_d_iters >= 1, "net_d_iters", self.net_d_iters, "must be >= 1")
        check_field(self.net_d_init_iters >= 0, "net_d_init_iters", self.net_d_init_iters, "must be >= 0")
        check_field(any(w > 0 for w in self.loss_weights().values()), "gan_weight", self.gan_weight,
                    "the generator needs a loss: " + ", ".join(self.loss_weights()) + " are all 0")

    def loss_weights(self) -> dict[str, float]:
        """The generator's loss weights by config key (a subclass with more terms adds its own)."""
        return {"pixel_weight": self.pixel_weight, "perceptual.weight": self.perceptual.weight,
                "gan_weight": self.gan_weight}


@dataclass(frozen=True)
class LoopConfig:
    """The loop itself: length, numerics, logging and checkpoint cadence."""

    iterations: int
    grad_clip: Optional[float] = None  # max global grad norm; null or 0 = off
    ema_decay: float = 0.999  # EMA of generator weights; 0 = off
    bf16: bool = False  # bf16 autocast for forward passes (CPU and CUDA)
    channels_last: bool = False
    compile: bool = False  # torch.compile the generator
    device: str = "auto"  # auto = cuda:LOCAL_RANK when available, else cpu
    log_every: int = 100
    val_every: int = 5000
    save_every: int = 5000
    keep_last: int = 3
    nan_policy: Literal["stop", "skip"] = "stop"
    max_skips: int = 10  # with nan_policy skip: stop after this many consecutive bad steps
    deterministic: bool = False  # deterministic kernels, no cuDNN autotuning: bit-exact resume on CUDA (slower)

    def __post_init__(self):
        check_field(self.iterations > 0, "iterations", self.iterations, "must be positive")
        check_field(0.0 <= self.ema_decay < 1.0, "ema_decay", self.ema_decay, "must be in [0, 1)")
        for name in ("log_every", "val_every", "save_every", "keep_last", "max_skips"):
            check_field(getattr(self, name) > 0, name, getattr(self, name), "must be positive")
        check_field(self.grad_clip is None or (math.isfinite(self.grad_clip) and self.grad_clip >= 0), "grad_clip",
                    self.grad_clip, "must be a finite number >= 0 (null or 0 = off)")


def _plain_folder_name(name: str) -> bool:
    """True for a name that stays inside its parent folder: one path component, not ``.`` or ``..``."""
    return bool(name.strip()) and name not in (".", "..") and not any(c in name for c in "/\\\0")


@dataclass(frozen=True)
class TrainConfig:
    """One training run. Relative paths are resolved against the current working directory."""

    name: str
    model: ModelConfig
    data: DataConfig
    train: LoopConfig
    output_root: str = "runs"
    seed: int = 0
    scale: int = 4
    objective: ObjectiveConfig = field(default_factory=PSNRObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ConstantScheduleConfig)

    def __post_init__(self):
        check_field(self.scale in (1, 2, 3, 4, 8), "scale", self.scale, "must be 1, 2, 3, 4 or 8")
        check_field(_plain_folder_name(self.name), "name", self.name,
                    "must be a plain folder name (not '.', '..', and no '/' or '\\'): the run goes to output_root/name")
        ps = self.data.train.patch_size
        check_field(ps % self.scale == 0, "data.train.patch_size", ps, f"must be a multiple of scale {self.scale}")


