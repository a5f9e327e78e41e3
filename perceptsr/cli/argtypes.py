"""Argument types shared by several subcommands (argparse ``type=`` callables with clear messages)."""

from __future__ import annotations

import argparse


def int_at_least(minimum: int):
    """A whole number >= ``minimum``."""

    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
        if number < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {number}")
        return number

    return parse


def tile_size(value: str):
    """``auto``, or a tile size in LR pixels (``0`` = whole images, no tiling -> None)."""
    if value.strip().lower() == "auto":
        return "auto"
    try:
        size = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a whole number of pixels, got {value!r}") from None
    if size < 0:
        raise argparse.ArgumentTypeError(f"tile must be >= 0 (0 = no tiling), got {size}")
    return size or None
