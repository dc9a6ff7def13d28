"""Parameter checks of the RPC methods: types and ranges, before anything runs.

A method's spec is a tuple of ``Param(name, check, default)``; ``Method.bind(args,
kwargs)`` maps a call's arguments onto it and checks each given value. A refusal is a
builtin ``TypeError`` (wrong type, missing or unknown argument) or ``ValueError``
(right type, out of range, unknown key), so sipyco clients raise the same class, with
a one-line message naming the parameter (and the key inside it), the value (shortened)
and what is allowed::

    schedule.submit: priority must be an int from -9223372036854775808 to
    9223372036854775807, got True (bool)

Checks are values (``Int``, ``Number``, ``Bool``, ``Str``, ``Path``, ``Optional``,
``OneOf``, ``Sequence``, ``Mapping``, ``Record``, ``PyonValue``); each says what it
allows (``allowed``) and raises on a value it refuses (``check(value, path)``). Types
are exact: ``True`` is not an int, ``1.0`` and numpy integers are not RIDs.
``PyonValue`` accepts only what PYON encodes and decodes to the same value with the
same types, nested and sized within bounds, so a value accepted here can be published
and stored. These checks are about shape only; what a value means (is the RID
scheduled, may this file be run) is the method's business.
"""

from __future__ import annotations

import math
import reprlib
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy

from labpipe.protocol import pyon

__all__ = ["Check", "Int", "Number", "Bool", "Str", "Path", "Optional", "OneOf",
           "Sequence", "Mapping", "Record", "PyonValue", "Param", "Method", "REQUIRED",
           "shorten", "INT64_MIN", "INT64_MAX"]

INT64_MIN = -2 ** 63
INT64_MAX = 2 ** 63 - 1
#: ints inside PYON values: JSON's encoder refuses ints of more than 4300 digits
_MAX_VALUE_INT = 10 ** 1000
_HUGE_INT = 10 ** 40  # shown by size in messages, never converted to text


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


#: The default of a parameter that has none.
REQUIRED: Any = _Required()

_repr = reprlib.Repr()
_repr.maxlevel = 3
_repr.maxstring = 60
_repr.maxother = 60
_repr.maxlist = _repr.maxtuple = _repr.maxdict = _repr.maxset = 4
_repr.maxfrozenset = _repr.maxdeque = _repr.maxarray = 4
_repr.maxlong = 40


def _type_name(value: Any) -> str:
    cls = type(value)
    module = cls.__module__
    if module in ("builtins", None):
        return cls.__qualname__
    return f"{module.split('.')[0]}.{cls.__qualname__}"


def _short_repr(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= _HUGE_INT:
        return f"<an int of {value.bit_length()} bits>"
    if isinstance(value, Fraction) and (abs(value.numerator) >= _HUGE_INT
                                        or value.denominator >= _HUGE_INT):
        return (f"<a Fraction of {value.numerator.bit_length()}/"
                f"{value.denominator.bit_length()} bits>")
    try:
        text = _repr.repr(value)
    except Exception:
        return f"<a {_type_name(value)}>"
    return " ".join(text.split()) if ("\n" in text or "\r" in text) else text


def shorten(value: Any) -> str:
    """``repr(value)`` cut to a short single line, then its type: ``True (bool)``."""
    return f"{_short_repr(value)} ({_type_name(value)})"


def _refuse(cls: type[Exception], path: str, allowed: str, value: Any) -> Exception:
    return cls(f"{path} must be {allowed}, got {shorten(value)}")


def _key_path(path: str, key: Any) -> str:
    return f"{path}[{_short_repr(key)}]"


class Check:
    """What a parameter (or a value inside one) may be."""

    #: What is allowed, for messages: "an int", "None or a bool"...
    allowed: str = "anything"

    def check(self, value: Any, path: str) -> None:
        """Raise TypeError/ValueError (naming path) if value is refused."""
        raise NotImplementedError


class Int(Check):
    """An int (not a bool, not a numpy integer) from lo to hi."""

    def __init__(self, lo: int = INT64_MIN, hi: int = INT64_MAX, what: str = "an int"):
        self.lo, self.hi = lo, hi
        self.allowed = f"{what} from {lo} to {hi}"

    def check(self, value: Any, path: str) -> None:
        if type(value) is not int:
            raise _refuse(TypeError, path, self.allowed, value)
        if not self.lo <= value <= self.hi:
            raise _refuse(ValueError, path, self.allowed, value)


class Number(Check):
    """A finite int or float (not a bool, not a numpy scalar), from lo to hi."""

    def __init__(self, lo: float = -math.inf, hi: float = math.inf,
                 what: str = "a finite number"):
        self.lo, self.hi = lo, hi
        def text(bound: float) -> str:
            return str(int(bound)) if bound == int(bound) else repr(bound)
        if lo > -math.inf and hi < math.inf:
            self.allowed = f"{what} from {text(lo)} to {text(hi)}"
        elif lo > -math.inf:
            self.allowed = f"{what} >= {text(lo)}"
        elif hi < math.inf:
            self.allowed = f"{what} <= {text(hi)}"
        else:
            self.allowed = what

    def check(self, value: Any, path: str) -> None:
        if type(value) not in (int, float):
            raise _refuse(TypeError, path, self.allowed, value)
        try:
            as_float = float(value)
        except OverflowError:
            raise _refuse(ValueError, path, self.allowed, value) from None
        if not math.isfinite(as_float) or not self.lo <= as_float <= self.hi:
            raise _refuse(ValueError, path, self.allowed, value)


class Bool(Check):
    """True or False (not 0/1, not numpy.bool_)."""

    allowed = "a bool"

    def check(self, value: Any, path: str) -> None:
        if type(value) is not bool:
            raise _refuse(TypeError, path, self.allowed, value)


class Str(Check):
    """A str of min_len to max_len characters."""

    def __init__(self, max_len: int, min_len: int = 0, what: str = "a str"):
        self.min_len, self.max_len = min_len, max_len
        self.allowed = f"{what} of {min_len} to {max_len} characters"

    def check(self, value: Any, path: str) -> None:
        if type(value) is not str:
            raise _refuse(TypeError, path, self.allowed, value)
        if not self.min_len <= len(value) <= self.max_len:
            raise _refuse(ValueError, path, self.allowed, value)


class Path(Str):
    """A str naming a file or folder: bounded, without NUL characters."""

    def __init__(self, max_len: int = 4096, min_len: int = 0):
        super().__init__(max_len, min_len, what="a path")
        self.allowed += " without NUL"

    def check(self, value: Any, path: str) -> None:
        super().check(value, path)
        if "\0" in value:
            raise _refuse(ValueError, path, self.allowed, value)


class Optional(Check):
    """None, or what ``inner`` allows."""

    def __init__(self, inner: Check):
        self.inner = inner
        self.allowed = f"None or {inner.allowed}"

    def check(self, value: Any, path: str) -> None:
        if value is None:
            return
        try:
            self.inner.check(value, path)
        except (TypeError, ValueError) as exc:
            inner = f"{path} must be {self.inner.allowed},"
            message = str(exc)
            if message.startswith(inner):
                message = f"{path} must be {self.allowed}," + message[len(inner):]
            raise type(exc)(message) from None


class OneOf(Check):
    """One of a few str values."""

    def __init__(self, choices: Iterable[str]):
        self.choices = tuple(choices)
        self.allowed = "one of " + ", ".join(repr(c) for c in self.choices)

    def check(self, value: Any, path: str) -> None:
        if type(value) is not str:
            raise _refuse(TypeError, path, self.allowed, value)
        if value not in self.choices:
            raise _refuse(ValueError, path, self.allowed, value)


class Either(Check):
    """What one of several checks allows (tried in order)."""

    def __init__(self, *choices: Check):
        self.choices = choices
        self.allowed = " or ".join(c.allowed for c in choices)

    def check(self, value: Any, path: str) -> None:
        for choice in self.choices:
            try:
                choice.check(value, path)
                return
            except (TypeError, ValueError):
                continue
        raise _refuse(TypeError if type(value) not in (int, str) else ValueError,
                      path, self.allowed, value)


class Sequence(Check):
    """A list (or tuple, with ``tuples``) of at most max_len items, each ``item``."""

    def __init__(self, item: Check, max_len: int, tuples: bool = True):
        self.item, self.max_len = item, max_len
        self._types = (list, tuple) if tuples else (list,)
        kinds = "a list or tuple" if tuples else "a list"
        self.allowed = f"{kinds} of at most {max_len} items"

    def check(self, value: Any, path: str) -> None:
        if type(value) not in self._types:
            raise _refuse(TypeError, path, self.allowed, value)
        if len(value) > self.max_len:
            raise _refuse(ValueError, path, self.allowed, value)
        for i, item in enumerate(value):
            self.item.check(item, f"{path}[{i}]")


class Mapping(Check):
    """A dict of at most max_len items, keys ``key``, values ``value``."""

    def __init__(self, key: Check, value: Check, max_len: int):
        self.key, self.value, self.max_len = key, value, max_len
        self.allowed = f"a dict of at most {max_len} items"

    def check(self, value: Any, path: str) -> None:
        if type(value) not in (dict, OrderedDict):
            raise _refuse(TypeError, path, self.allowed, value)
        if len(value) > self.max_len:
            raise _refuse(ValueError, path, self.allowed, value)
        for k, v in value.items():
            self.key.check(k, f"a key of {path}")
            self.value.check(v, _key_path(path, k))


class Record(Check):
    """A dict with some of the str keys of ``fields`` (each value checked by its
    check); ``required`` keys must be there; any other key is refused, listing the
    valid ones."""

    def __init__(self, fields: dict[str, Check], required: Iterable[str] = ()):
        self.fields = dict(fields)
        self.required = tuple(required)
        self.allowed = "a dict"

    def check(self, value: Any, path: str) -> None:
        if type(value) not in (dict, OrderedDict):
            raise _refuse(TypeError, path, self.allowed, value)
        unknown = [k for k in value if k not in self.fields]
        if unknown:
            raise ValueError(f"{path} has unknown key {_short_repr(unknown[0])}; valid "
                             f"keys: {', '.join(sorted(self.fields))}")
        missing = [k for k in self.required if k not in value]
        if missing:
            raise ValueError(f"{path} needs the key {missing[0]!r}")
        for k, v in value.items():
            self.fields[k].check(v, _key_path(path, k))


_SCALARS = (type(None), bool, float, str, bytes, complex)
_CONTAINERS = (list, tuple, set, dict, OrderedDict)
#: What PyonValue found wrong: (exception class, reason, the refused part).
_Problem = tuple[type[Exception], str, Any]


class PyonValue(Check):
    """A value PYON encodes and decodes back unchanged (same types): the PYON types,
    nested at most max_depth deep, at most max_items items in all, ints of at most
    1000 digits."""

    def __init__(self, max_depth: int = 32, max_items: int = 1_000_000):
        self.max_depth, self.max_items = max_depth, max_items
        self.allowed = (f"a PYON value (nested at most {max_depth} deep, at most "
                        f"{max_items} items, ints of at most 1000 digits)")

    def check(self, value: Any, path: str) -> None:
        budget = [self.max_items]
        problem = self._problem(value, 0, budget)
        if problem is not None:
            cls, reason, culprit = problem
            where = "" if culprit is value else f" at {_short_repr(culprit)}"
            raise cls(f"{path} must be {self.allowed}, got {shorten(value)}: "
                      f"{reason}{where}")
        try:  # the walk above covers what the encoder refuses; this proves it
            pyon.encode(value)
        except (TypeError, ValueError, RecursionError, OverflowError):
            raise _refuse(ValueError, path, self.allowed, value) from None

    def _problem(self, value: Any, depth: int, budget: list[int]) -> _Problem | None:
        """(class, reason, culprit) of the first part of value that is refused."""
        budget[0] -= 1
        if budget[0] < 0:
            return ValueError, "more items than allowed", value
        cls = type(value)
        if cls is int:
            if abs(value) >= _MAX_VALUE_INT:
                return ValueError, "an int too long", value
            return None
        if cls in _SCALARS:
            return None
        if cls is Fraction:
            if abs(value.numerator) >= _MAX_VALUE_INT or value.denominator >= _MAX_VALUE_INT:
                return ValueError, "a Fraction too long", value
            return None
        if cls is slice:
            parts = (value.start, value.stop, value.step)
            return self._first(parts, depth + 1, budget)
        if isinstance(value, (numpy.ndarray, numpy.generic)):
            if value.dtype.hasobject:
                return TypeError, "numpy object dtype", value
            return None
        if cls in _CONTAINERS:
            if depth >= self.max_depth:
                return ValueError, "nested too deep", value
            if cls in (dict, OrderedDict):
                return self._first((x for kv in value.items() for x in kv), depth + 1, budget)
            return self._first(value, depth + 1, budget)
        return TypeError, f"{_type_name(value)} does not round-trip", value

    def _first(self, items: Iterable[Any], depth: int, budget: list[int]) -> _Problem | None:
        for item in items:
            problem = self._problem(item, depth, budget)
            if problem is not None:
                return problem
        return None


@dataclass(frozen=True)
class Param:
    """One parameter of an RPC method: its name, its check, its default."""

    name: str
    check: Check
    default: Any = REQUIRED


class Method:
    """The parameter spec of one RPC method, called ``label`` in messages
    (``schedule.submit``)."""

    def __init__(self, label: str, params: tuple[Param, ...]):
        self.label = label
        self.params = tuple(params)
        self._by_name = {p.name: p for p in self.params}
        for p in self.params:  # the defaults themselves must pass
            if p.default is not REQUIRED:
                p.check.check(p.default, p.name)

    def _names(self) -> str:
        return ", ".join(p.name for p in self.params) or "none"

    def bind(self, args: tuple, kwargs: dict) -> None:
        """Check a call's arguments; raise TypeError/ValueError with one line starting
        with the method's label when refused."""
        if len(args) > len(self.params):
            if not self.params:
                raise TypeError(f"{self.label}: takes no arguments, got {len(args)}")
            raise TypeError(f"{self.label}: takes at most {len(self.params)} argument(s) "
                            f"({self._names()}), got {len(args)}")
        given: dict[str, Any] = {}
        for param, value in zip(self.params, args):
            given[param.name] = value
        for name, value in kwargs.items():
            if name not in self._by_name:
                raise TypeError(f"{self.label}: unknown argument {_short_repr(name)}; "
                                f"parameters: {self._names()}")
            if name in given:
                raise TypeError(f"{self.label}: got two values for {name!r}")
            given[name] = value
        for param in self.params:
            if param.name not in given:
                if param.default is REQUIRED:
                    raise TypeError(f"{self.label}: missing argument {param.name!r}; "
                                    f"parameters: {self._names()}")
                continue
            try:
                param.check.check(given[param.name], param.name)
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"{self.label}: {exc}") from None
