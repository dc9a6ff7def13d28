"""Argument processors: what an experiment's arguments are, and how values are checked.

An experiment declares an argument with a processor, e.g.
``self.setattr_argument("n", NumberValue(10, min=1, max=100, step=1, precision=0))``.
Every processor has three methods:

- ``default()``: the default value (already processed), or raises ``DefaultMissing``;
- ``process(x)``: checks a submitted value and returns it converted (an int for an
  integer ``NumberValue``, a scan object for a ``Scannable``); a refused value raises
  ``ArgumentError`` with the reason, which the argument manager re-raises with the
  argument's name;
- ``describe()``: the argument's description (procdesc) as wire-compat.md gives it,
  which dashboards use to draw their widgets.

Values are in SI units: ``NumberValue(5*MHz, unit="MHz")`` has the default 5e6 and the
dashboard shows 5 MHz; refusals give values in the unit too (``12 MHz is above the
maximum 10 MHz``). Defaults are processed when the processor is made, so a bad default
fails at once. ``Scannable.check`` refuses what ``process`` refuses without making the
scan's points (the master checks submitted scans so).

A procdesc may carry one key of labpipe's besides wire-compat.md's: ``DEVICE_DB``
(``"device_db"``), ``"key"`` when the value is a key of the device database,
``"keys"`` when it is a list of them (plan arguments, ``labpipe.bluesky.plans``), so
that the master can refuse a device it does not have. ARTIQ's dashboard ignores it.

Integer or float, as ARTIQ decides it: a ``NumberValue`` of type ``"auto"`` (the
default) is an integer when its precision is 0, its scale 1 and its step an integer (the
default step is ``scale/10`` and the default precision 2, so ``NumberValue(5)`` is a
float and ``NumberValue(5, step=1, precision=0)`` an integer). ``type="int"`` asks for
an integer and, as in ARTIQ, needs exactly those settings: ``NumberValue(5,
type="int")`` is refused (precision 2, step 0.1); write ``NumberValue(5, precision=0,
step=1, type="int")``. The procdesc's ``"type"`` is the type the experiment gave
(``"auto"`` unless it chose), as ARTIQ's is; ``is_int`` is the resolved answer, which a
client rebuilding the processor from the procdesc gets the same way. The refusals
(``TypeError`` for a bad ``type``, ``ValueError`` for int-incompatible settings,
``KeyError`` for an unknown unit) carry ARTIQ's messages word for word, so that an
experiment file behaves the same under both.
"""

import math
import numbers
import warnings
from collections.abc import Iterable
from typing import Any, Protocol

import numpy

from labpipe.language.exceptions import ArgumentError, DefaultMissing
from labpipe.language.scans import ScanObject, extreme_points, scan_from_description
from labpipe.language.units import format_value, unit_scale
from labpipe.protocol import pyon

__all__ = ["NoDefault", "NumberValue", "StringValue", "BooleanValue",
           "EnumerationValue", "PYONValue", "Scannable", "ArgumentProcessor"]

#: The procdesc key saying that a value names devices (see the module docstring).
DEVICE_DB = "device_db"


class ArgumentProcessor(Protocol):
    """What an argument manager needs of a processor (see the module docstring)."""

    def default(self) -> Any: ...

    def process(self, x: Any) -> Any: ...

    def describe(self) -> dict[str, Any]: ...


class NoDefault:
    """Marks the absence of a default value (pass it, or leave the default out)."""


def _type_name(x: object) -> str:
    return type(x).__name__


def _check_range(value: Any, low: Any, high: Any, what: str = "", unit: str = "",
                 scale: Any = 1.0) -> None:
    """Refuse value outside [low, high] (either bound may be None); the message gives
    the values in the argument's unit (``12 MHz``), as users typed them."""
    if low is None and high is None:
        return

    def shown(x: Any) -> str:
        return format_value(x, unit, scale)
    if value != value:
        raise ArgumentError(f"nan is not within the {what}range "
                            f"[{shown(low)}, {shown(high)}]")
    if low is not None and not value >= low:
        raise ArgumentError(f"{shown(value)} is below the {what}minimum {shown(low)}")
    if high is not None and not value <= high:
        raise ArgumentError(f"{shown(value)} is above the {what}maximum {shown(high)}")


def _deprecated_ndecimals(precision: int, ndecimals: int | None) -> int:
    if ndecimals is None:
        return precision
    warnings.warn("'ndecimals' is deprecated, use 'precision'", DeprecationWarning,
                  stacklevel=3)
    return ndecimals


class _Processor:
    """Base of the simple processors: a default checked with ``process``."""

    ty = ""

    def __init__(self, default: Any = NoDefault):
        self._default: Any = NoDefault
        if default is not NoDefault:
            try:
                self._default = self.process(default)
            except ArgumentError as e:
                raise ArgumentError(f"invalid default {default!r}: {e.reason}") from None

    def default(self) -> Any:
        """The default value; raises ``DefaultMissing`` when there is none."""
        if self._default is NoDefault:
            raise DefaultMissing()
        return self._default

    def process(self, x: Any) -> Any:
        """Check a submitted value and return it, converted."""
        return x

    def describe(self) -> dict[str, Any]:
        """The procdesc of wire-compat.md."""
        desc: dict[str, Any] = {"ty": self.ty}
        if self._default is not NoDefault:
            desc["default"] = self._default
        return desc

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.describe()!r})"


#: ARTIQ's messages for the NumberValue definitions it refuses (the same words here).
INVALID_TYPE_MESSAGE = "type must be 'float', 'int' or 'auto'"
INT_INCOMPATIBLE_MESSAGE = ("Value marked as integer but settings are not compatible. "
                            "Please set precision = 0, scale = 1 and step to an integer")


class NumberValue(_Processor):
    """A number, integer or float, with an optional range.

    :param default: the default value (SI units).
    :param unit: the unit shown to users; its scale is looked up when ``scale`` is not
        given (``"MHz"`` -> 1e6).
    :param scale: the factor between the shown value and the value in SI units.
    :param step: the step of up/down buttons (default ``scale/10``).
    :param min, max: the allowed range, both included (``None``: unbounded).
    :param precision: decimals shown (default 2).
    :param type: ``"auto"``, ``"int"`` or ``"float"`` (see the module docstring).
    """

    ty = "NumberValue"

    def __init__(self, default: Any = NoDefault, unit: str = "", *, scale: Any = None,
                 step: Any = None, min: Any = None, max: Any = None, precision: int = 2,
                 type: str = "auto", ndecimals: int | None = None):
        precision = _deprecated_ndecimals(precision, ndecimals)
        self.unit = unit
        self.scale = unit_scale(unit) if scale is None else scale
        self.step = self.scale / 10 if step is None else step
        self.precision = precision
        self.min = min
        self.max = max
        self.type = type
        if type not in ("auto", "float", "int"):
            raise TypeError(INVALID_TYPE_MESSAGE)
        if type == "int" and not self._int_compatible():
            raise ValueError(INT_INCOMPATIBLE_MESSAGE)
        if min is not None and max is not None and min > max:
            raise ValueError(f"NumberValue min {min!r} is above max {max!r}")
        super().__init__(default)

    def _int_compatible(self) -> bool:
        try:
            step_is_int = int(self.step) == self.step
        except (TypeError, ValueError, OverflowError):
            step_is_int = False
        return self.precision == 0 and self.scale == 1 and step_is_int

    @property
    def is_int(self) -> bool:
        """Whether values are integers (``type`` resolved)."""
        return self.type == "int" or (self.type == "auto" and self._int_compatible())

    def process(self, x: Any) -> int | float:
        """An int or a float in [min, max]; integral floats are accepted as integers."""
        if isinstance(x, (bool, numpy.bool_)) or not isinstance(x, numbers.Real):
            raise ArgumentError(f"expected a number, got {x!r} ({_type_name(x)})")
        value: int | float
        if not self.is_int:
            value = float(x)
        elif isinstance(x, numbers.Integral):
            value = int(x)
        elif math.isfinite(x) and float(x).is_integer():
            value = int(float(x))
        else:
            raise ArgumentError(f"expected an integer, got {x!r}")
        _check_range(value, self.min, self.max, unit=self.unit, scale=self.scale)
        return value

    def describe(self) -> dict[str, Any]:
        desc = super().describe()
        desc.update(unit=self.unit, scale=self.scale, step=self.step, min=self.min,
                    max=self.max, precision=self.precision, type=self.type)
        return desc


class StringValue(_Processor):
    """A string."""

    ty = "StringValue"

    def process(self, x: Any) -> str:
        """The string itself; anything else is refused."""
        if not isinstance(x, str):
            raise ArgumentError(f"expected a string, got {x!r} ({_type_name(x)})")
        return x


class BooleanValue(_Processor):
    """True or False."""

    ty = "BooleanValue"

    def process(self, x: Any) -> bool:
        """A bool (numpy bools too); 0 and 1 are refused."""
        if not isinstance(x, (bool, numpy.bool_)):
            raise ArgumentError(f"expected True or False, got {x!r} ({_type_name(x)})")
        return bool(x)


class EnumerationValue(_Processor):
    """One of a list of choices (usually strings).

    :param choices: the allowed values, in the order a user interface shows them.
    :param quickstyle: a user interface may show the choices as buttons that submit the
        experiment at once.
    """

    ty = "EnumerationValue"

    def __init__(self, choices: Iterable[Any], default: Any = NoDefault,
                 quickstyle: bool = False):
        self.choices = list(choices)
        self.quickstyle = bool(quickstyle)
        super().__init__(default)

    def process(self, x: Any) -> Any:
        """The value, when it is one of the choices."""
        if x not in self.choices:
            listed = ", ".join(repr(c) for c in self.choices)
            raise ArgumentError(f"{x!r} is not one of the choices {listed}")
        return x

    def describe(self) -> dict[str, Any]:
        desc = super().describe()
        desc.update(choices=list(self.choices), quickstyle=self.quickstyle)
        return desc


class PYONValue(_Processor):
    """Any PYON-encodable value, submitted as PYON text.

    The default is a Python value; its description carries it as PYON text. Submitted
    text is decoded with ``labpipe.protocol.pyon.decode`` (never evaluated); a value
    that is not a string is taken as already decoded.
    """

    ty = "PYONValue"

    def __init__(self, default: Any = NoDefault):
        self._default = default
        if default is not NoDefault:
            try:
                pyon.encode(default)
            except TypeError as e:
                raise ArgumentError(f"invalid default {default!r}: {e}") from None

    def process(self, x: Any) -> Any:
        """The decoded value of PYON text."""
        if not isinstance(x, str):
            return x
        try:
            return pyon.decode(x)
        except ValueError as e:
            raise ArgumentError(f"cannot decode PYON text {x!r:.60}: {e}") from None

    def describe(self) -> dict[str, Any]:
        desc = super().describe()
        if "default" in desc:
            desc["default"] = pyon.encode(desc["default"])
        return desc


def _as_scan(x: Any) -> ScanObject:
    """A scan object from a scan object, a description, or a list whose first entry is
    the selected one (the shape of a Scannable's default in its description)."""
    if isinstance(x, list):
        if not x:
            raise ArgumentError("an empty list is not a scan")
        x = x[0]
    if isinstance(x, ScanObject):
        return x
    try:
        return scan_from_description(x)
    except (TypeError, ValueError) as e:
        raise ArgumentError(str(e)) from None


class Scannable:
    """An argument whose value is a scan (``NoScan``, ``RangeScan``, ``CenterScan``,
    ``ExplicitScan``); the experiment iterates over it.

    :param default: a scan object, or a list of them: the first is the default, the
        others preset the other scan types in a user interface.
    :param unit, scale: as for ``NumberValue``.
    :param global_step: the step of up/down buttons (default ``scale/10``).
    :param global_min, global_max: the range every point of the scan must lie in.
    :param precision: decimals shown.
    """

    ty = "Scannable"

    def __init__(self, default: Any = NoDefault, unit: str = "", scale: Any = None,
                 global_step: Any = None, global_min: Any = None, global_max: Any = None,
                 precision: int = 2, ndecimals: int | None = None):
        self.unit = unit
        self.scale = unit_scale(unit) if scale is None else scale
        self.global_step = self.scale / 10 if global_step is None else global_step
        self.global_min = global_min
        self.global_max = global_max
        self.precision = _deprecated_ndecimals(precision, ndecimals)
        self.default_values: list[ScanObject] = []
        if default is not NoDefault:
            defaults = default if isinstance(default, list) else [default]
            if not defaults:
                raise ValueError("Scannable default: give at least one scan")
            try:
                self.default_values = [self.process(d) for d in defaults]
            except ArgumentError as e:
                raise ArgumentError(f"invalid default: {e.reason}") from None

    def default(self) -> ScanObject:
        """The default scan; raises ``DefaultMissing`` when there is none."""
        if not self.default_values:
            raise DefaultMissing()
        return self.default_values[0]

    def process(self, x: Any) -> ScanObject:
        """A scan object from its description (a scan object or a list of
        descriptions is accepted too, the first entry of a list being the selected
        scan), with every point within [global_min, global_max]."""
        self.check(x)  # first: a scan out of range is refused before its points are made
        return _as_scan(x)

    def check(self, x: Any) -> None:
        """Refuse what ``process`` refuses, without making the scan's points (how the
        master checks a submitted scan: ``scans.extreme_points``); values in the
        messages are in the argument's unit."""
        if isinstance(x, list):
            if not x:
                raise ArgumentError("an empty list is not a scan")
            x = x[0]
        if isinstance(x, ScanObject):
            points = list(x)
        else:
            try:
                points = extreme_points(x)
            except (TypeError, ValueError) as e:
                raise ArgumentError(str(e)) from None
        if self.global_min is None and self.global_max is None:
            return
        for point in points:
            try:
                _check_range(point, self.global_min, self.global_max, "global ",
                             self.unit, self.scale)
            except TypeError:
                raise ArgumentError(f"scan point {point!r} is not a number") from None

    def describe(self) -> dict[str, Any]:
        """The procdesc of wire-compat.md."""
        desc: dict[str, Any] = {"ty": self.ty}
        if self.default_values:
            desc["default"] = [scan.describe() for scan in self.default_values]
        desc.update(unit=self.unit, scale=self.scale, global_step=self.global_step,
                    global_min=self.global_min, global_max=self.global_max,
                    precision=self.precision)
        return desc

    def __repr__(self) -> str:
        return f"Scannable({self.describe()!r})"
