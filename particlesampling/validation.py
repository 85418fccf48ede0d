"""Argument checks shared by the package and :mod:`attention_adapter`: one message format, one rule.

Every check returns the value it accepted (converted: ``int``, ``float``) or raises with the message
``expected <name> as <what>, received <value>``:

* a value of the wrong type raises :class:`ArgumentTypeError`, a ``TypeError`` that is also a
  ``ValueError`` (code written against either keeps working);
* a value of the right type outside its range raises ``ValueError``.

``bool`` is never accepted where a number is expected (``True`` is an ``int`` in Python, but
``num_threads=True`` is a mistake), and real numbers must be finite.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Optional, Sequence

__all__ = ["ArgumentTypeError", "check_int", "check_real", "check_bool", "check_choice"]


class ArgumentTypeError(TypeError, ValueError):
    """An argument of the wrong type (both a ``TypeError`` and a ``ValueError``)."""


def _int_text(minimum: Optional[int]) -> str:
    if minimum is None:
        return "an int"
    if minimum == 0:
        return "a non-negative int"
    if minimum == 1:
        return "a positive int"
    return f"an int >= {minimum}"


def check_int(name: str, value: Any, *, minimum: Optional[int] = None, optional: bool = False) -> Optional[int]:
    """``value`` as an ``int`` (``>= minimum`` if given); ``None`` passes when ``optional``.

    Integral NumPy scalars are accepted and converted; ``bool`` is refused.
    """
    if value is None and optional:
        return None
    what = _int_text(minimum) + (" or None" if optional else "")
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ArgumentTypeError(f"expected {name} as {what}, received {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"expected {name} as {what}, received {value!r}")
    return value


def check_real(name: str, value: Any, *, minimum: Optional[float] = None, inclusive: bool = True,
               optional: bool = False) -> Optional[float]:
    """``value`` as a finite ``float``, ``>= minimum`` (``> minimum`` with ``inclusive=False``).

    ``None`` passes when ``optional``. Real NumPy scalars are accepted; ``bool`` is refused.
    """
    if value is None and optional:
        return None
    tail = " or None" if optional else ""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ArgumentTypeError(f"expected {name} as a finite real number{tail}, received {value!r}")
    value = float(value)
    if minimum is not None and (value < minimum or (value == minimum and not inclusive)):
        bound = f"{'>=' if inclusive else '>'} {minimum:g}"
        raise ValueError(f"expected {name} {bound}{tail}, received {value!r}")
    return value


def check_bool(name: str, value: Any) -> bool:
    """``value`` if it is a ``bool`` (not merely truthy)."""
    if not isinstance(value, bool):
        raise ArgumentTypeError(f"expected {name} as a bool, received {value!r}")
    return value


def check_choice(name: str, value: Any, options: Sequence[Any]) -> Any:
    """``value`` if it is one of ``options`` (``ValueError`` naming them otherwise)."""
    if value not in tuple(options):
        raise ValueError(f"expected {name} in {tuple(options)}, received {value!r}")
    return value
