"""SI unit constants for experiment code, and the scale of a unit name.

The same names (and the same set) as ARTIQ's units, so that ``100*MHz`` or ``5*us`` read the same. Values
are plain floats: ``MHz == 1e6``.

``unit_scale(unit)`` gives the scale an argument processor uses when only the unit is
given (``"MHz"`` -> 1e6); an unknown unit is a ``KeyError`` with ARTIQ's message
("Unit xyz is unknown, you must specify the scale manually").
"""

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
