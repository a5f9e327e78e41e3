"""Architecture registry: name -> :class:`ArchSpec`, on the generic :class:`perceptsr.registry.Registry`.

Three sources:

1. the built-in families, each declared by the spec constants of its ``*_support`` module
   (``_BUILTINS``; a support module is imported only when one of its names is looked up, and its
   network module only when the network is built, so one broken arch cannot break the others);
2. architectures registered at run time with :func:`register_arch`;
3. the ``perceptsr.archs`` entry-point group of installed packages, e.g. in a plugin's
   ``pyproject.toml``: ``[project.entry-points."perceptsr.archs"] mynet = "mypkg.arch:MyNet"``.

Names are case-insensitive (``"RRDBNet"`` finds ``"rrdbnet"``) and a few BasicSR class names are
aliases. A builder's kind (generator, discriminator, ranker) comes from its spec or from the
``kind`` given to :func:`register_arch`, else from the builder's ``arch_kind`` attribute, else
``"generator"``. Besides building, a spec may say how to recognise its state dicts, convert their
legacy key layouts and what input sizes it takes; :mod:`perceptsr.checkpoint` and
:mod:`perceptsr.inference` ask the specs (:func:`arch_specs`, :func:`spec_of`) and name no network.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import warnings
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

from perceptsr.errors import ConfigError
from perceptsr.registry import Registry, import_target

__all__ = [
    "ARCH_KINDS", "ArchSpec", "arch_specs", "build_arch", "get_arch", "list_archs", "register_arch", "spec_of",
]

ARCH_KINDS = ("generator", "discriminator", "ranker")
ENTRY_POINT_GROUP = "perceptsr.archs"

# name -> the support module's spec, in priority order: checkpoint loading tries legacy layouts and
# detectors in this order (rrdbnet before msrresnet: mmsr RRDBNet files also carry HRconv/upconv1).
_BUILTINS: dict[str, str] = {
    "srresnet": "perceptsr.archs.srresnet_support:SRRESNET",
    "rrdbnet": "perceptsr.archs.rrdbnet_support:RRDBNET",
    "msrresnet": "perceptsr.archs.srresnet_support:MSRRESNET",
    "ranker": "perceptsr.archs.ranker_support:RANKER",
    "vgg_discriminator": "perceptsr.archs.discriminator_support:VGG_DISCRIMINATOR",
    "vgg_discriminator_128": "perceptsr.archs.discriminator_support:VGG_DISCRIMINATOR_128",
    "vgg_discriminator_296": "perceptsr.archs.discriminator_support:VGG_DISCRIMINATOR_296",
    "swinir": "perceptsr.archs.swinir_support:SWINIR",
    "srvggnet_compact": "perceptsr.archs.srvggnet_support:SRVGGNET_COMPACT",  # only body.{i} keys: claims no other
}

# other spellings users bring from BasicSR/mmsr configs -> canonical name
_ALIASES: dict[str, str] = {
    "vggstylediscriminator": "vgg_discriminator",
    "discriminator_vgg_128": "vgg_discriminator_128",
    "discriminator_vgg_296": "vgg_discriminator_296",
    "ranker_vgg12": "ranker",
    "ranker_vgg12_296": "ranker",
    "srvggnetcompact": "srvggnet_compact",
}

StateDict = Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class ArchSpec:
    """One architecture: ``builder(**{**defaults, **kwargs})`` makes the module.

    ``builder`` may be a lazy ``"module:attr"`` string and ``kind`` None in a declaration;
    :func:`get_arch` returns specs with both resolved. The optional support fields:

    * ``detect(state_dict) -> kwargs | None``: builder arguments inferred from a state dict in
      perceptsr key names (legacy layouts already converted), or None when it is not this network's;
    * ``legacy_layouts``: layout name -> ``convert(state_dict) -> state_dict | None``, renaming a
      foreign key layout to ours (None when the dict is not in that layout; CheckpointError
      when it is but does not fit);
    * ``input_multiple(module) -> int``: the multiple that input height and width must be;
    * ``fusion_defaults``: keyword defaults of the fusion weight regressor released for this
      backbone (:class:`perceptsr.fusion.AttentionConfig` arguments).
    """

    name: str
    builder: Callable[..., Any] | str
    kind: str | None = None
    defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    source: str = "builtin"  # "builtin", "user" or "entry point <value>"
    detect: Callable[[StateDict], dict[str, Any] | None] | None = None
    legacy_layouts: Mapping[str, Callable[[StateDict], dict[str, Any] | None]] = dataclasses.field(default_factory=dict)
    input_multiple: Callable[[Any], int] | None = None
    fusion_defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)

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


def _builtin_registry() -> Registry[ArchSpec]:
    """A registry holding the built-in specs only (lazily: nothing is imported)."""
    registry: Registry[ArchSpec] = Registry("architecture", fold=lambda n: n.lower().replace("-", "_"), aliases=_ALIASES)
    for name, target in _BUILTINS.items():
        registry.lazy(name, target)
    return registry


_ARCHS = _builtin_registry()
_entry_points: dict[str, Any] | None = None


def register_arch(
    name: str, cls_or_factory: Callable[..., Any] | str, *, kind: str | None = None, defaults: Mapping[str, Any] | None = None,
    overwrite: bool = False, detect: Callable[[StateDict], dict[str, Any] | None] | None = None,
    legacy_layouts: Mapping[str, Callable[[StateDict], dict[str, Any] | None]] | None = None,
    input_multiple: Callable[[Any], int] | None = None, fusion_defaults: Mapping[str, Any] | None = None,
) -> None:
    """Register a builder (a class, a factory function or a lazy ``"module:attr"`` string) under ``name``.

    ``kind`` is one of ``ARCH_KINDS`` (default: the builder's ``arch_kind`` attribute, else
    generator); ``defaults`` are keyword presets; the other keywords are the :class:`ArchSpec`
    support fields. Replacing an existing name needs ``overwrite=True``.
    """
    key = _ARCHS.key(name)
    if kind is not None and kind not in ARCH_KINDS:
        raise ConfigError(f"register_arch({name!r}): kind must be one of {list(ARCH_KINDS)}, got {kind!r}")
    if isinstance(cls_or_factory, str):
        if ":" not in cls_or_factory:
            raise ConfigError(
                f"register_arch({name!r}): a lazy target must look like 'package.module:Class', got {cls_or_factory!r}"
            )
    elif not callable(cls_or_factory):
        raise ConfigError(f"register_arch({name!r}): expected a class, a factory or 'module:Class', got {cls_or_factory!r}")
    spec = ArchSpec(key, cls_or_factory, kind, dict(defaults or {}), "user", detect, dict(legacy_layouts or {}),
                    input_multiple, dict(fusion_defaults or {}))
    _ARCHS.register(key, spec, overwrite=overwrite)


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
            found.setdefault(_ARCHS.key(ep.name), ep)
        _entry_points = found
    return _entry_points


def _known_names() -> list[str]:
    return sorted(set(_ARCHS.names()) | set(_discover_entry_points()))


def _unknown(name: str) -> NoReturn:
    """The unknown-name error: did-you-mean over every known name, entry points included."""
    _ARCHS.unknown(name, _known_names())


def _from_entry_point(key: str, ep: Any) -> ArchSpec:
    try:
        builder = ep.load()
    except Exception as exc:
        raise ConfigError(
            f"architecture {key!r} from entry point {ep.value!r} (group {ENTRY_POINT_GROUP!r}) failed to load: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    return ArchSpec(key, builder, source=f"entry point {ep.value}")


def get_arch(name: str) -> ArchSpec:
    """Look up ``name`` (importing its builder); unknown names raise ConfigError with a "did you
    mean" hint and all names."""
    key = _ARCHS.key(name)
    if key not in _ARCHS:
        ep = _discover_entry_points().get(key)
        if ep is None:
            _unknown(name)
        _ARCHS.register(key, _from_entry_point(key, ep))
    spec = _ARCHS.get(key)
    if isinstance(spec.builder, str) or spec.kind is None:
        builder = import_target(spec.builder, f"architecture {key!r}") if isinstance(spec.builder, str) else spec.builder
        kind = spec.kind or getattr(builder, "arch_kind", "generator")
        if kind not in ARCH_KINDS:
            raise ConfigError(f"architecture {key!r} declares kind {kind!r}; expected one of {list(ARCH_KINDS)}")
        spec = dataclasses.replace(spec, builder=builder, kind=kind)
        _ARCHS.register(key, spec, overwrite=True)
    return spec


def arch_specs() -> list[ArchSpec]:
    """Every registered spec as declared (builders not imported), in priority order: built-ins in
    ``_BUILTINS`` order, then the others by name. Entry-point plugins count once looked up; a spec
    that fails to import is skipped with a warning."""
    specs = []
    for name in [*_BUILTINS, *(n for n in _ARCHS.names() if n not in _BUILTINS)]:
        try:
            specs.append(_ARCHS.get(name))
        except ConfigError as exc:
            warnings.warn(str(exc), stacklevel=2)
    return specs


def spec_of(module: object) -> ArchSpec | None:
    """The spec (resolved, as :func:`get_arch` gives it) whose builder class built ``module``: its class
    or, failing that, its nearest base class with a spec; None when no registered class built it
    (factory functions, foreign classes). Several names of one class (presets) give the first."""
    specs = arch_specs()
    for cls in type(module).__mro__:
        target = f"{cls.__module__}:{cls.__qualname__}"
        for spec in specs:
            if spec.builder is cls or spec.builder == target:
                return get_arch(spec.name)
    return None


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
    """Sorted registry names, optionally only those of one kind (this imports the builders whose kind
    only they know: user builders registered without a kind, entry points)."""
    if kind is None:
        return _known_names()
    if kind not in ARCH_KINDS:
        raise ConfigError(f"kind must be one of {list(ARCH_KINDS)} or None, got {kind!r}")
    out = []
    for name in _known_names():
        try:
            spec = _ARCHS.get(name) if name in _ARCHS else None
            if spec is None or spec.kind is None:
                spec = get_arch(name)
        except ConfigError as exc:
            warnings.warn(str(exc), stacklevel=2)
            continue
        if spec.kind == kind:
            out.append(name)
    return out
