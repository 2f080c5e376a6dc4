"""Sizes and durations as users write them: `512M`, `2G`, `30`, `1.5s`, `500ms`, `2m`.

Every option that takes a size or a duration goes through one of these two functions, so
they all accept the same forms and refuse the same things: a number that is not finite (`nan`,
`inf`), zero or negative, or too small to mean anything once rounded. Such values used to
slip through as floats and turn into endless waits or instant failures far from the flag
that caused them.
"""

from __future__ import annotations

import math
import re

from .errors import InvalidSize

_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_DURATION_UNITS = {"": 1.0, "S": 1.0, "MS": 0.001, "M": 60.0, "H": 3600.0}
_NUMBER_AND_UNIT = re.compile(r"([0-9.eE+-]+)\s*([A-Za-z]*)")

MIN_DURATION = 0.001
"""A millisecond. Shorter deadlines are refused: no call can answer within one, so it would
only turn every read into an EIO."""

MAX_DURATION = 365 * 24 * 3600.0
"""A year. Longer deadlines are refused: gRPC adds the timeout to the clock and a huge one
overflows there, and nobody means to wait longer than this for one call."""


def parse_size(text: str) -> int:
    """A number of bytes: `100000`, or with a binary unit, `512M`, `2G`, `1.5T`, `64KiB`."""
    number, unit = _split(text)
    unit = unit.removesuffix("B").removesuffix("I")
    if unit not in _SIZE_UNITS:
        raise InvalidSize(f"{text!r} is not a size; use e.g. 512M or 2G")
    value = _positive(text, number, "a size")
    size = value * _SIZE_UNITS[unit]
    if size < 1:
        raise InvalidSize(f"{text!r}: less than one byte")
    return int(size)


def parse_duration(text: str) -> float:
    """Seconds: `30`, `1.5`, or with a unit, `500ms`, `10s`, `2m`, `1h`."""
    number, unit = _split(text)
    if unit not in _DURATION_UNITS:
        raise InvalidSize(f"{text!r} is not a duration; use seconds, e.g. 30, 2.5 or 500ms")
    seconds = _positive(text, number, "a duration") * _DURATION_UNITS[unit]
    if seconds < MIN_DURATION:
        raise InvalidSize(f"{text!r}: shorter than a millisecond")
    if seconds > MAX_DURATION:
        raise InvalidSize(f"{text!r}: longer than a year")
    return seconds


def _split(text: str) -> tuple[str, str]:
    stripped = text.strip()
    try:
        float(stripped)
    except ValueError:
        pass
    else:
        return stripped, ""  # nan and inf included, to be refused by name
    match = _NUMBER_AND_UNIT.fullmatch(stripped)
    if match is None:
        return text, "?"
    return match[1], match[2].upper()


def _positive(text: str, number: str, what: str) -> float:
    try:
        value = float(number)
    except ValueError:
        raise InvalidSize(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise InvalidSize(f"{text!r}: {what} must be a finite number")
    if value <= 0:
        raise InvalidSize(f"{text!r}: {what} must be more than zero")
    return value
