"""The one registry class: a name -> object table used for architectures, metrics, objectives and
config schemas.

- Registering a name twice is an error (pass ``overwrite=True`` to replace deliberately).
- Unknown names raise :class:`~perceptsr.errors.ConfigError` with "did you mean" and every known name.
- Names may be folded (case, ``-`` vs ``_``) and may have aliases.
- Entries can be lazy, so nothing is imported until a name is used and one broken module cannot
  break the others: :meth:`Registry.lazy` registers a ``"package.module:attr"`` target;
  :meth:`Registry.provided_by` names a module whose import registers the name itself (how a
  method package registers its own objective and config schema).
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from perceptsr.errors import ConfigError

__all__ = ["Registry", "import_target"]

T = TypeVar("T")
_MISSING = object()


def import_target(target: str, what: str) -> Any:
    """Import ``"package.module:attr"`` (``attr`` may be dotted); ConfigError naming ``what`` on failure."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"{what}: a lazy target must look like 'package.module:Name', got {target!r}")
    try:
        obj = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"{what}: cannot import {target!r}: {type(exc).__name__}: {exc}") from exc
    return obj


class _Lazy:
    __slots__ = ("target",)

    def __init__(self, target: str) -> None:
        self.target = target


class Registry(Generic[T]):
    """Names -> objects of one kind (``what`` and its plural are used in messages, e.g. "architecture")."""

    def __init__(self, what: str, *, plural: str | None = None, fold: Callable[[str], str] | None = None,
                 aliases: dict[str, str] | None = None) -> None:
        self.what = what
        self.plural = plural or f"{what}s"
        self._fold = fold or (lambda name: name)
        self._entries: dict[str, Any] = {}
        self._providers: dict[str, str] = {}
        self._aliases = {self._fold(k): self._fold(v) for k, v in (aliases or {}).items()}

    # --- registering ---------------------------------------------------------------------
    def key(self, name: str) -> str:
        """The canonical key for ``name`` (folded, alias resolved)."""
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"{self.what} name must be a non-empty string, got {name!r}")
        key = self._fold(name.strip())
        return self._aliases.get(key, key)

    def register(self, name: str, obj: Any = _MISSING, *, overwrite: bool = False):
        """Register ``obj`` under ``name``; without ``obj``, return a decorator that does."""
        if obj is _MISSING:
            def deco(target):
                self.register(name, target, overwrite=overwrite)
                return target

            return deco
        key = self.key(name)
        if not overwrite and key in self._entries:
            raise ConfigError(f"{self.what} {key!r} is already registered; pass overwrite=True to replace it")
        self._entries[key] = obj
        return obj

    def lazy(self, name: str, target: str, *, overwrite: bool = False) -> None:
        """Register ``"package.module:attr"``, imported when ``name`` is first looked up."""
        if not isinstance(target, str) or ":" not in target:
            raise ConfigError(f"{self.what} {name!r}: a lazy target must look like 'package.module:Name', got {target!r}")
        self.register(name, _Lazy(target), overwrite=overwrite)

    def provided_by(self, name: str, module: str) -> None:
        """``name`` is registered by importing ``module`` (done on first lookup of ``name``)."""
        self._providers[self.key(name)] = module

    def add_alias(self, alias: str, name: str) -> None:
        self._aliases[self._fold(alias)] = self.key(name)

    # --- looking up ----------------------------------------------------------------------
    def __contains__(self, name: object) -> bool:
        try:
            key = self.key(name)  # type: ignore[arg-type]
        except ConfigError:
            return False
        return key in self._entries or key in self._providers

    def names(self) -> list[str]:
        """Every known name (registered or provided), sorted; nothing is imported."""
        return sorted(set(self._entries) | set(self._providers))

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def is_loaded(self, name: str) -> bool:
        """True when ``name`` is registered and needs no import to be looked up."""
        key = self.key(name)
        return key in self._entries and not isinstance(self._entries[key], _Lazy)

    def raw(self, name: str) -> Any:
        """The entry as registered (a lazy target stays a ``"module:attr"`` string); no import."""
        entry = self._entries.get(self.key(name), _MISSING)
        if entry is _MISSING:
            self.unknown(name)
        return entry.target if isinstance(entry, _Lazy) else entry

    def get(self, name: str) -> T:
        """The object registered as ``name``, importing it if needed; ConfigError if unknown."""
        key = self.key(name)
        if key not in self._entries and key in self._providers:
            import_target(f"{self._providers[key]}:__name__", f"{self.what} {key!r}")
            if key not in self._entries:
                raise ConfigError(f"{self.what} {key!r}: importing {self._providers[key]} did not register it")
        if key not in self._entries:
            self.unknown(name)
        entry = self._entries[key]
        if isinstance(entry, _Lazy):
            entry = import_target(entry.target, f"{self.what} {key!r}")
            self._entries[key] = entry
        return entry

    def unknown(self, name: str, names: list[str] | None = None):
        """Raise the "unknown name" error (with did-you-mean over ``names``, default all)."""
        names = self.names() if names is None else names
        near = difflib.get_close_matches(self._fold(str(name)), names + list(self._aliases), n=3, cutoff=0.5)
        near = list(dict.fromkeys(self._aliases.get(n, n) for n in near))
        hint = f" Did you mean {' or '.join(repr(n) for n in near)}?" if near else ""
        raise ConfigError(f"unknown {self.what} {name!r}.{hint} Known {self.plural}: {', '.join(names) or '(none)'}.")
