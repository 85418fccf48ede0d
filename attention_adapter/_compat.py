"""Deprecated aliases of renamed keyword arguments and attributes (one helper, one message)."""

from __future__ import annotations

import warnings
from typing import Any

__all__ = ["renamed_kwarg", "warn_renamed"]


def warn_renamed(old: str, new: str, stacklevel: int = 3) -> None:
    """Emit the ``DeprecationWarning`` for a name ``old`` renamed to ``new``."""
    warnings.warn(f"{old} is deprecated and will be removed; use {new}", DeprecationWarning, stacklevel=stacklevel)


def renamed_kwarg(owner: str, old: str, new: str, old_value: Any, new_value: Any) -> Any:
    """The value of keyword ``new``, accepting the deprecated keyword ``old`` (``None`` = not given).

    Raises
    ------
    TypeError
        Both ``old`` and ``new`` were given.
    """
    if old_value is None:
        return new_value
    if new_value is not None:
        raise TypeError(f"{owner}: expected {new}= only, received both {new}= and its deprecated alias {old}=")
    warn_renamed(f"{owner}({old}=...)", f"{new}=...", stacklevel=4)
    return old_value
