"""Numbers with units as people type and read them: ``2.5MHz``, ``20ms``, ``-2mm``.

An argument's description (procdesc) gives its unit and scale: the value an experiment
gets is in SI units, a user interface shows ``value / scale`` followed by the unit
(``NumberValue(5e6, unit="MHz")`` shows ``5MHz``). ``parse_quantity`` reads a number
followed by the argument's unit (``2.5MHz``), by the same unit with another SI prefix
(``2500kHz``, ``2.5e6Hz``), or by a prefix put in front of the unit (``mGauss``), and
returns the SI value. A number without a unit is taken as it is when the scale is 1 (or
the argument has no unit); for an argument in scaled units (``MHz``) it is refused,
since ``2.5`` could mean 2.5 MHz (the dashboard's reading) or 2.5 Hz (``artiq_client``'s),
except 0. ``format_quantity`` is the reverse, for showing values.
"""

import re

__all__ = ["QuantityError", "parse_quantity", "split_number", "format_quantity",
           "PREFIXES"]

#: SI prefixes and their factors ("u" and "µ" are both micro).
PREFIXES = {"f": 1e-15, "p": 1e-12, "n": 1e-9, "u": 1e-6, "µ": 1e-6, "μ": 1e-6,
            "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}

_NUMBER = re.compile(r"\s*([-+]?(?:(?:\d[\d_]*)?\.?\d[\d_]*(?:[eE][-+]?\d+)?|inf|nan))"
                     r"\s*(.*?)\s*$", re.IGNORECASE)


class QuantityError(ValueError):
    """A text that is not a number in the expected unit (the message says what is)."""


def split_number(text: str) -> tuple[float, str]:
    """(the number, the unit text after it) of ``2.5 MHz``; QuantityError when the
    text does not start with a number."""
    match = _NUMBER.fullmatch(text)
    if match is None:
        raise QuantityError(f"{text!r} is not a number")
    try:
        return float(match.group(1)), match.group(2)
    except ValueError:
        raise QuantityError(f"{text!r} is not a number") from None


def _unit_factor(given: str, unit: str, scale: float) -> float | None:
    """The factor from a number in ``given`` to SI, for an argument in ``unit`` of
    ``scale``; None when ``given`` is not that unit, prefixed or not."""
    if given == unit:
        return scale
    factors = {}
    for prefix, factor in PREFIXES.items():
        factors[prefix + unit] = factor * scale
    for prefix, factor in PREFIXES.items():  # unit = prefix + base: any prefix of base
        base = unit[len(prefix):]
        if unit.startswith(prefix) and base:
            factors.setdefault(base, scale / factor)
            for other, other_factor in PREFIXES.items():
                factors.setdefault(other + base, other_factor * scale / factor)
    return factors.get(given)


def parse_quantity(text: str, unit: str = "", scale: float = 1.0,
                   default_unit: str | None = None) -> float:
    """The SI value of text (see the module docstring). ``default_unit``: the unit of a
    number typed without one (a scan's other values gave it). QuantityError says
    what was expected."""
    number, given = split_number(text)
    if not given and default_unit:
        given = default_unit
    if not given:
        if scale == 1 or not unit or number == 0:
            return number
        raise QuantityError(f"give a unit with {text.strip()!r}, e.g. "
                            f"{text.strip()}{unit} (the argument is in {unit}: "
                            "a plain number would be ambiguous)")
    factor = _unit_factor(given, unit, scale) if unit else None
    if factor is None:
        expected = (f"{unit} or a prefixed unit (e.g. 2.5{unit})"
                    if unit else "a plain number (the argument has no unit)")
        raise QuantityError(f"unknown unit {given!r} in {text.strip()!r}: expected "
                            f"{expected}")
    return number * factor


def format_quantity(value: object, unit: str = "", scale: float = 1.0) -> str:
    """``5MHz`` for 5e6 in MHz (six significant digits); a non-number as ``repr``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return repr(value)
    shown = value / scale if scale not in (0, 1) else value
    return f"{shown:g}{unit}" if isinstance(shown, float) else f"{shown}{unit}"
