"""Architecture registry: name -> builder, without import-time scanning.

Three sources, looked up in this order:

1. architectures registered at run time with :func:`register_arch`;
2. the built-in table ``_BUILTINS`` of lazily imported ``"module:attr"`` targets (a module is
   imported only when one of its names is used, so one broken arch cannot break the others);
3. the ``perceptsr.archs`` entry-point group of installed packages, e.g. in a plugin's
   ``pyproject.toml``: ``[project.entry-points."perceptsr.archs"] mynet = "mypkg.arch:MyNet"``.

Names are case-insensitive (``"RRDBNet"`` finds ``"rrdbnet"``) and a few BasicSR class names are
aliases. A builder's kind (generator, discriminator, ranker) comes from the table or from the
``kind`` given to :func:`register_arch`, else from the builder's ``arch_kind`` attribute, else
``"generator"``.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import inspect
import warnings
from collections.abc import Callable, Mapping
from typing import Any

from perceptsr.errors import ConfigError

__all__ = ["ARCH_KINDS", "ArchSpec", "build_arch", "get_arch", "list_archs", "register_arch", "resolve_arch_name"]

ARCH_KINDS = ("generator", "discriminator", "ranker")
ENTRY_POINT_GROUP = "perceptsr.archs"

# name -> (lazy target, kind, preset keyword defaults). Presets let one class serve several names.
_BUILTINS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "srresnet": ("perceptsr.archs.srresnet_arch:SRResNet", "generator", {}),
    "msrresnet": ("perceptsr.archs.srresnet_arch:MSRResNet", "generator", {}),
    "rrdbnet": ("perceptsr.archs.rrdbnet_arch:RRDBNet", "generator", {}),
    "swinir": ("perceptsr.archs.swinir_arch:SwinIR", "generator", {}),
    "vgg_discriminator": ("perceptsr.archs.discriminator_arch:VGGDiscriminator", "discriminator", {}),
    "vgg_discriminator_128": (
        "perceptsr.archs.discriminator_arch:VGGDiscriminator", "discriminator", {"input_size": 128},
    ),
    "vgg_discriminator_296": (
        "perceptsr.archs.discriminator_arch:VGGDiscriminator", "discriminator", {"input_size": 296},
    ),
    "ranker": ("perceptsr.archs.ranker_arch:Ranker", "ranker", {}),
}

# other spellings users bring from BasicSR/mmsr configs -> canonical name
_ALIASES: dict[str, str] = {
    "vggstylediscriminator": "vgg_discriminator",
    "discriminator_vgg_128": "vgg_discriminator_128",
    "discriminator_vgg_296": "vgg_discriminator_296",
    "ranker_vgg12": "ranker",
    "ranker_vgg12_296": "ranker",
}


@dataclasses.dataclass(frozen=True)
class ArchSpec:
    """A resolved registry entry: ``builder(**{**defaults, **kwargs})`` makes the module."""

    name: str
    builder: Callable[..., Any]
    kind: str
    defaults: Mapping[str, Any]
    source: str  # "builtin", "user" or "entry point <value>"

    def allowed_kwargs(self) -> list[str] | None:
        """Keyword names the builder accepts, or None when it takes ``**kwargs`` (or is opaque)."""
        try:
            sig = inspect.signature(self.builder)
        except (TypeError, ValueError):
            return None
        names = []
        for p in sig.parameters.values():
            if p.kind is p.VAR_KEYWORD:
                return None
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
                names.append(p.name)
        return names


_user: dict[str, tuple[Any, str | None, dict[str, Any]]] = {}
_resolved: dict[str, ArchSpec] = {}
_entry_points: dict[str, Any] | None = None


def _key(name: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"architecture name must be a non-empty string, got {name!r}")
    key = name.strip().lower().replace("-", "_")
    return _ALIASES.get(key, key)


def register_arch(
    name: str, cls_or_factory: Callable[..., Any] | str, *, kind: str | None = None, defaults: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> None:
    """Register a builder (a class, a factory function or a lazy ``"module:attr"`` string) under ``name``.

    ``kind`` is one of ``ARCH_KINDS`` (default: the builder's ``arch_kind`` attribute, else
    generator); ``defaults`` are keyword presets. Replacing an existing name needs ``overwrite=True``.
    """
    key = _key(name)
    if kind is not None and kind not in ARCH_KINDS:
        raise ConfigError(f"register_arch({name!r}): kind must be one of {list(ARCH_KINDS)}, got {kind!r}")
    if isinstance(cls_or_factory, str):
        if ":" not in cls_or_factory:
            raise ConfigError(
                f"register_arch({name!r}): a lazy target must look like 'package.module:Class', got {cls_or_factory!r}"
            )
    elif not callable(cls_or_factory):
        raise ConfigError(f"register_arch({name!r}): expected a class, a factory or 'module:Class', got {cls_or_factory!r}")
    if not overwrite and (key in _user or key in _BUILTINS):
        raise ConfigError(f"architecture {key!r} is already registered; pass overwrite=True to replace it")
    _user[key] = (cls_or_factory, kind, dict(defaults or {}))
    _resolved.pop(key, None)


def _import_target(target: str, what: str) -> Callable[..., Any]:
    module_name, _, attr = target.partition(":")
    try:
        obj = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"architecture {what}: cannot import {target!r}: {type(exc).__name__}: {exc}") from exc
    return obj


def _discover_entry_points() -> dict[str, Any]:
    global _entry_points
    if _entry_points is None:
        from importlib.metadata import entry_points

        found: dict[str, Any] = {}
        try:
            eps = entry_points(group=ENTRY_POINT_GROUP)
        except Exception as exc:  # a broken distribution must not break the registry
            warnings.warn(f"could not read entry points {ENTRY_POINT_GROUP!r}: {exc}", stacklevel=3)
            eps = ()
        for ep in sorted(eps, key=lambda e: e.name):
            found.setdefault(_key(ep.name), ep)
        _entry_points = found
    return _entry_points


def _known_names() -> list[str]:
    return sorted(set(_BUILTINS) | set(_user) | set(_discover_entry_points()))


def resolve_arch_name(name: str) -> str:
    """The canonical registry name for ``name`` (case and alias folded); ConfigError if unknown."""
    return get_arch(name).name


def get_arch(name: str) -> ArchSpec:
    """Look up ``name``; unknown names raise ConfigError with a "did you mean" hint and all names."""
    key = _key(name)
    if key in _resolved:
        return _resolved[key]
    if key in _user:
        target, kind, defaults = _user[key]
        builder = _import_target(target, repr(key)) if isinstance(target, str) else target
        spec = ArchSpec(key, builder, kind or getattr(builder, "arch_kind", "generator"), defaults, "user")
    elif key in _BUILTINS:
        target, kind, defaults = _BUILTINS[key]
        spec = ArchSpec(key, _import_target(target, repr(key)), kind, defaults, "builtin")
    elif key in _discover_entry_points():
        ep = _discover_entry_points()[key]
        try:
            builder = ep.load()
        except Exception as exc:
            raise ConfigError(
                f"architecture {key!r} from entry point {ep.value!r} (group {ENTRY_POINT_GROUP!r}) failed to load: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        spec = ArchSpec(key, builder, getattr(builder, "arch_kind", "generator"), {}, f"entry point {ep.value}")
    else:
        names = _known_names()
        close = difflib.get_close_matches(key, names + list(_ALIASES), n=3, cutoff=0.5)
        close = list(dict.fromkeys(_ALIASES.get(c, c) for c in close))
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise ConfigError(f"unknown architecture {name!r}.{hint} Known architectures: {', '.join(names)}.")
    if spec.kind not in ARCH_KINDS:
        raise ConfigError(f"architecture {key!r} declares kind {spec.kind!r}; expected one of {list(ARCH_KINDS)}")
    _resolved[key] = spec
    return spec


def build_arch(name: str, **kwargs: Any) -> Any:
    """Build architecture ``name`` with keyword arguments; unknown keywords raise ConfigError."""
    spec = get_arch(name)
    allowed = spec.allowed_kwargs()
    if allowed is not None:
        bad = [k for k in kwargs if k not in allowed]
        if bad:
            hints = []
            for k in bad:
                close = difflib.get_close_matches(k, allowed, n=1, cutoff=0.6)
                hints.append(f"{k!r} (did you mean {close[0]!r}?)" if close else repr(k))
            raise ConfigError(
                f"architecture {spec.name!r} got unknown argument{'s' if len(bad) > 1 else ''} {', '.join(hints)}; "
                f"allowed: {', '.join(allowed) if allowed else '(none)'}"
            )
    merged = {**spec.defaults, **kwargs}
    if allowed is not None:
        try:
            inspect.signature(spec.builder).bind(**merged)
        except TypeError as exc:  # e.g. a required argument of a user builder is missing
            raise ConfigError(f"architecture {spec.name!r}: {exc}") from exc
    return spec.builder(**merged)


def list_archs(kind: str | None = None) -> list[str]:
    """Sorted registry names, optionally only those of one kind (this imports the builders it checks)."""
    if kind is None:
        return _known_names()
    if kind not in ARCH_KINDS:
        raise ConfigError(f"kind must be one of {list(ARCH_KINDS)} or None, got {kind!r}")
    out = []
    for name in _known_names():
        if name in _BUILTINS and name not in _user:
            if _BUILTINS[name][1] == kind:
                out.append(name)
            continue
        try:
            spec = get_arch(name)
        except ConfigError as exc:
            warnings.warn(str(exc), stacklevel=2)
            continue
        if spec.kind == kind:
            out.append(name)
    return out
