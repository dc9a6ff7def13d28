"""SI unit constants for experiment code, and the scale of a unit name.

The same names (and the same set) as ARTIQ's units (``__all__`` holds only them), so
that ``100*MHz`` or ``5*us`` read the same. Values are plain floats: ``MHz == 1e6``.

``unit_scale(unit)`` gives the scale an argument processor uses when only the unit is
given (``"MHz"`` -> 1e6); an unknown unit is a ``KeyError`` with ARTIQ's message
("Unit xyz is unknown, you must specify the scale manually"). ``format_value(value,
unit, scale)`` writes a value as users read it, in the argument's unit (``12 MHz`` for
12e6 in MHz, never the SI number), for messages about argument values.
"""

import numbers
from typing import Any

__all__ = ["ps", "ns", "us", "ms", "s",
           "mHz", "Hz", "kHz", "MHz", "GHz",
           "dB",
           "uV", "mV", "V", "kV",
           "uA", "mA", "A",
           "nW", "uW", "mW", "W"]

ps = 1e-12
ns = 1e-9
us = 1e-6
ms = 1e-3
s = 1.0

mHz = 1e-3
Hz = 1.0
kHz = 1e3
MHz = 1e6
GHz = 1e9

dB = 1.0

uV = 1e-6
mV = 1e-3
V = 1.0
kV = 1e3

uA = 1e-6
mA = 1e-3
A = 1.0

nW = 1e-9
uW = 1e-6
mW = 1e-3
W = 1.0

_SCALES: dict[str, float] = {name: globals()[name] for name in __all__}


def unit_scale(unit: str) -> float:
    """The scale of a unit name: 1.0 for ``""``, 1e6 for ``"MHz"``, ...

    Raises ``KeyError`` for a unit this table does not know; give the argument an
    explicit ``scale`` then.
    """
    if unit == "":
        return 1.0
    try:
        return _SCALES[unit]
    except KeyError:
        raise KeyError(f"Unit {unit} is unknown, you must specify the scale "
                       "manually") from None


def format_value(value: Any, unit: str = "", scale: Any = 1.0) -> str:
    """value as a user reads it: ``12 MHz`` for 12e6 with unit ``"MHz"`` and scale 1e6
    (twelve significant digits, so that the division's rounding does not show), the
    value's ``repr`` without a unit (``5000``, ``2.5``) or when it is not a number."""
    if (not unit or isinstance(value, bool) or not isinstance(value, numbers.Real)
            or isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not scale):
        return repr(value)
    try:
        shown = float(value) / float(scale)
    except (OverflowError, ZeroDivisionError):
        return repr(value)
    return f"{shown:.12g} {unit}"
