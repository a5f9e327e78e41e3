"""State-dict keys: the wrapper prefixes stripped from them, and THE report of how a state dict's
keys and shapes differ from the ones a module expects (:func:`key_report`, used by every strict
loader so all mismatches read alike)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from perceptsr.errors import CheckpointError

__all__ = ["MAX_LISTED", "key_report", "listing", "strip_prefixes"]

MAX_LISTED = 8


def listing(items: Sequence[str], limit: int | None = MAX_LISTED) -> str:
    """``"a, b, c, ... and 5 more"``: the first ``limit`` items (all with None)."""
    items = list(items)
    limit = len(items) if limit is None else limit
    shown = ", ".join(items[:limit])
    return shown + (f", ... and {len(items) - limit} more" if len(items) > limit else "")


def _natural_key(key: str) -> list[Any]:
    """Sort "body.2" before "body.10"."""
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in key.split(".")]


def strip_prefixes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop leading ``module.`` (DataParallel/DDP) and any ``_orig_mod.`` (torch.compile) segments."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        new = key
        while new.startswith("module."):
            new = new[len("module."):]
        if "_orig_mod" in new:
            new = ".".join(p for p in new.split(".") if p != "_orig_mod")
        if new in out:
            raise CheckpointError(f"key {key!r} collides with another key after stripping prefixes ({new!r})")
        out[new] = value
    return out


def key_report(
    expected: Mapping[str, torch.Tensor], got: Mapping[str, Any], *, what: str, strict: bool = True,
    labels: tuple[str, str] = ("expected", "found"), hint: str | None = None, limit: int | None = MAX_LISTED,
) -> str | None:
    """How ``got`` differs from ``expected``, key by key, or None when it fits.

    The report's first line is ``"{what}: M missing, U unexpected, S with a different shape"``;
    then, each list truncated: missing keys (in ``expected`` order), unexpected keys (natural
    order, ``body.2`` before ``body.10``), shape mismatches (``key: expected [..], found [..]``,
    the two words from ``labels``) and expected keys whose values are not tensors; ``hint``, if
    given, is the last line. With ``strict=False`` missing and unexpected keys alone give None.
    ``limit`` caps each list (None: every key, for small modules such as a VGG backbone).
    """
    missing = [k for k in expected if k not in got]
    unexpected = sorted((k for k in got if k not in expected), key=_natural_key)
    present = [k for k in expected if k in got]
    not_tensors = [k for k in present if not isinstance(got[k], torch.Tensor)]
    mis_shaped = [k for k in present if k not in not_tensors and tuple(got[k].shape) != tuple(expected[k].shape)]
    if not (mis_shaped or not_tensors or (strict and (missing or unexpected))):
        return None
    lines = [f"{what}: {len(missing)} missing, {len(unexpected)} unexpected, {len(mis_shaped)} with a different shape"]
    if missing:
        lines.append(f"  missing keys ({len(missing)}): {listing(missing, limit)}")
    if unexpected:
        lines.append(f"  unexpected keys ({len(unexpected)}): {listing(unexpected, limit)}")
    if mis_shaped:
        want, found = labels
        shown = [f"{k}: {want} {list(expected[k].shape)}, {found} {list(got[k].shape)}" for k in mis_shaped[:MAX_LISTED]]
        more = f"; ... and {len(mis_shaped) - MAX_LISTED} more" if len(mis_shaped) > MAX_LISTED else ""
        lines.append(f"  shape mismatches ({len(mis_shaped)}): " + "; ".join(shown) + more)
    if not_tensors:
        lines.append(f"  not tensors ({len(not_tensors)}): {listing(not_tensors, limit)}")
    if hint:
        lines.append(f"  {hint}")
    return "\n".join(lines)
