"""The one place values are checked, for every entry point (CLI flags, YAML presets, the Python API,
the server's requests): a value of the wrong type, NaN or infinity, or outside its documented range is
a one-line :class:`UserError` naming the flag. Seeds follow A1111: -1 is random, 0 to 2**32 - 1 are
seeds, anything else is an error."""
from __future__ import annotations

import math

from .errors import UserError

MAX_SEED = 2**32 - 1


def _type_name(kind: type) -> str:
    return {int: "a whole number", float: "a number", bool: "true or false", str: "text"}.get(kind, kind.__name__)


def check_value(flag: str, value, kind: type, low: float | None = None, high: float | None = None,
                above: float | None = None) -> None:
    """``value`` must be of ``kind`` (an int is a float too; a bool is neither), finite, ``>= low``,
    ``<= high`` and ``> above`` where given."""
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise UserError(f"{flag} {value!r}: must be {_type_name(kind)}")
    if kind not in (int, float):
        return
    if not math.isfinite(value):
        raise UserError(f"{flag} {value}: must be a finite number")
    if (low is not None and value < low) or (high is not None and value > high) or (above is not None and value <= above):
        raise UserError(f"{flag} {value}: {describe_range(low, high, above)}")


def describe_range(low: float | None = None, high: float | None = None, above: float | None = None) -> str:
    """'must be from 1 to 1000', 'must be above 0 and at most 1', ..."""
    def n(x):
        return f"{x:g}" if isinstance(x, float) else f"{x:,}".replace(",", "")
    parts = []
    if above is not None:
        parts.append(f"above {n(above)}")
    if low is not None and high is not None:
        return f"must be from {n(low)} to {n(high)}" if above is None else f"must be {parts[0]} and at most {n(high)}"
    if low is not None:
        parts.append(f"at least {n(low)}")
    if high is not None:
        parts.append(f"at most {n(high)}")
    return "must be " + " and ".join(parts)


def check_seed(flag: str, value) -> None:
    """A1111's seeds: -1 (random) or 0 to 2**32 - 1."""
    check_value(flag, value, int)
    if value != -1 and not 0 <= value <= MAX_SEED:
        raise UserError(f"{flag} {value}: must be -1 (random) or from 0 to {MAX_SEED}")
