"""What a configuration value is, judged one way everywhere: the run's configuration
(:mod:`growformer.training.config`), policy options (:mod:`growformer.policies.base`),
task options (:mod:`growformer.data.tasks.common`) and architectures
(:mod:`growformer.arch`). Each of those words its own one-line error; the judgement is
here.

A boolean is never a number (JSON ``true`` is not ``1``). Values that may arrive as text
from a command line (task options) are read from strings with ``strings=True``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any


def key_list(keys: Iterable[str]) -> str:
    """Keys for a one-line message: sorted, comma-separated, each quoted where it is not
    plain text (a key holding a line break or surrounding spaces would hide or break the
    message)."""
    return ", ".join(
        k if k and k.isprintable() and k.strip() == k and "," not in k else repr(k)
        for k in sorted(keys)
    )


def is_int(value: Any) -> bool:
    """An integer, and not a boolean."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """An integer or a float, and not a boolean (finite or not: see :func:`is_finite`)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_finite(value: int | float) -> bool:
    """Neither NaN nor infinite, nor an integer too large for a float."""
    return abs(value) <= sys.float_info.max


def int_from(value: Any, *, strings: bool = False) -> int | None:
    """``value`` as an integer (with ``strings``: also from digits, e.g. ``"12"``), else None."""
    if is_int(value):
        return value
    if strings and isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


def number_from(value: Any, *, strings: bool = False) -> float | None:
    """``value`` as a float (with ``strings``: also from text Python reads as one), else
    None; not finite values are returned as they are, for the caller to judge."""
    if is_number(value):
        return float(value) if is_finite(value) else value
    if strings and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def bool_from(value: Any, *, strings: bool = False) -> bool | None:
    """``value`` as a boolean (with ``strings``: also ``"true"`` / ``"false"``, any case),
    else None."""
    if isinstance(value, bool):
        return value
    if strings and isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    return None
