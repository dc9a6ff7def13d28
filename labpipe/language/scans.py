"""Scan objects: one-dimensional sweeps that experiments iterate over.

A scan object is iterable (each iteration yields the same points, and independent
iterators may run at once), has ``len()`` and ``describe()``, which returns its
description as it travels on the wire (wire-compat.md):

- ``NoScan(value, repetitions=1)``: ``value``, ``repetitions`` times.
  ``{"ty": "NoScan", "value": v, "repetitions": n}``
- ``RangeScan(start, stop, npoints, randomize=False, seed=None)``: ``npoints`` evenly
  spaced points from ``start`` to ``stop`` (both included).
  ``{"ty": "RangeScan", "start", "stop", "npoints", "randomize", "seed"}``
- ``CenterScan(center, span, step, randomize=False, seed=None)``: ``center`` and the
  points ``center +- k*step`` that lie within ``span/2`` of it, in ascending order.
  ``{"ty": "CenterScan", "center", "span", "step", "randomize", "seed"}``
- ``ExplicitScan(sequence)``: the given values in order.
  ``{"ty": "ExplicitScan", "sequence": [...]}``

With ``randomize=True`` the points are shuffled once, at construction, by
``random.Random(seed)``: the same seed gives the same order, ``seed=None`` a fresh one.

``scan_from_description(desc)`` builds a scan object back from its description (the
``Scannable`` argument processor uses it); ``extreme_points(desc)`` checks a description
the same way and gives the points that decide whether the scan lies within a range,
without making its points (how a master checks a submitted scan). ``MultiScanManager`` iterates over the
product of several named scans.
"""

import inspect
import math
import numbers
import random
from itertools import product
from collections.abc import Iterable, Iterator
from types import SimpleNamespace
from typing import Any

__all__ = ["ScanObject", "NoScan", "RangeScan", "CenterScan", "ExplicitScan",
           "MultiScanManager", "scan_from_description"]

# Tolerance on span/(2*step) in CenterScan, so that rounding (0.6/0.2 == 2.9999...)
# does not drop the outermost points.
_CENTER_TOLERANCE = 1e-9


class ScanObject:
    """Base of scan objects: iteration over ``self.sequence``, ``len()``."""

    sequence: list[Any]

    def __iter__(self) -> Iterator[Any]:
        return iter(self.sequence)

    def __len__(self) -> int:
        return len(self.sequence)

    def describe(self) -> dict[str, Any]:
        """The scan's description, as in wire-compat.md."""
        raise NotImplementedError

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.describe().items() if k != "ty")
        return f"{type(self).__name__}({fields})"


def _check_count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, not {value!r}")
    return int(value)


def _shuffled(sequence: list[Any], randomize: bool, seed: Any) -> list[Any]:
    if randomize:
        random.Random(seed).shuffle(sequence)
    return sequence


class NoScan(ScanObject):
    """A single value, yielded ``repetitions`` times."""

    def __init__(self, value: Any, repetitions: int = 1):
        self.value = value
        self.repetitions = _check_count("repetitions", repetitions)
        self.sequence = [value] * self.repetitions

    def describe(self) -> dict[str, Any]:
        return {"ty": "NoScan", "value": self.value, "repetitions": self.repetitions}


class RangeScan(ScanObject):
    """``npoints`` evenly spaced values from ``start`` to ``stop``, both included
    (just ``start`` when ``npoints`` is 1); shuffled when ``randomize``."""

    def __init__(self, start: Any, stop: Any, npoints: int, randomize: bool = False,
                 seed: Any = None):
        self.start = start
        self.stop = stop
        self.npoints = _check_count("npoints", npoints)
        self.randomize = bool(randomize)
        self.seed = seed
        if self.npoints <= 1:
            points = [start] * self.npoints
        else:
            last = self.npoints - 1
            points = [start + (stop - start) * i / last for i in range(last)] + [float(stop)]
        self.sequence = _shuffled(points, self.randomize, seed)

    def describe(self) -> dict[str, Any]:
        return {"ty": "RangeScan", "start": self.start, "stop": self.stop,
                "npoints": self.npoints, "randomize": self.randomize, "seed": self.seed}


class CenterScan(ScanObject):
    """``center`` and the points ``center +- k*step`` within ``span/2`` of it, in
    ascending order (shuffled when ``randomize``); no points when ``step`` is 0."""

    def __init__(self, center: Any, span: Any, step: Any, randomize: bool = False,
                 seed: Any = None):
        self.center = center
        self.span = span
        self.step = step
        self.randomize = bool(randomize)
        self.seed = seed
        if span < 0:
            raise ValueError(f"span must be >= 0, not {span!r}")
        points: list[Any]
        if step == 0:
            points = []
        else:
            n = math.floor(span / (2 * abs(step)) + _CENTER_TOLERANCE)
            points = [center + k * abs(step) for k in range(-n, n + 1)]
        self.sequence = _shuffled(points, self.randomize, seed)

    def describe(self) -> dict[str, Any]:
        return {"ty": "CenterScan", "center": self.center, "span": self.span,
                "step": self.step, "randomize": self.randomize, "seed": self.seed}


class ExplicitScan(ScanObject):
    """The values of ``sequence``, in order."""

    def __init__(self, sequence: Iterable[Any]):
        self.sequence = list(sequence)

    def describe(self) -> dict[str, Any]:
        return {"ty": "ExplicitScan", "sequence": list(self.sequence)}


_SCAN_TYPES: dict[str, type[ScanObject]] = {
    cls.__name__: cls for cls in (NoScan, RangeScan, CenterScan, ExplicitScan)}


def _scan_call(desc: Any) -> tuple[type[ScanObject], dict[str, Any]]:
    """The scan class and keyword arguments a description names; ValueError as
    ``scan_from_description`` says."""
    if not isinstance(desc, dict):
        raise ValueError(f"a scan description is a dict with a 'ty' key, not {desc!r:.80}")
    ty = desc.get("ty")
    cls = _SCAN_TYPES.get(ty) if isinstance(ty, str) else None
    if cls is None:
        raise ValueError(f"unknown scan type {ty!r} (expected one of "
                         f"{', '.join(_SCAN_TYPES)})")
    params = inspect.signature(cls).parameters
    missing = [name for name, p in params.items()
               if p.default is inspect.Parameter.empty and name not in desc]
    if missing:
        raise ValueError(f"{ty} needs {', '.join(repr(m) for m in missing)}")
    return cls, {name: desc[name] for name in params if name in desc}


def scan_from_description(desc: Any) -> ScanObject:
    """Build a scan object from its description (``{"ty": "RangeScan", ...}``).

    Keys the scan type does not take are ignored (as ARTIQ does); an unknown ``ty`` or a
    missing parameter raises ``ValueError`` saying what is expected.
    """
    cls, kwargs = _scan_call(desc)
    return cls(**kwargs)


def _number(name: str, value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, not {value!r:.80}")
    return value


def extreme_points(desc: Any) -> list[Any]:
    """The points of the scan a description gives that decide whether all of them lie
    within a range, without making the scan's points (a ``RangeScan`` of 10**9 points
    costs nothing): its lowest and highest point for ``NoScan``, ``RangeScan`` and
    ``CenterScan`` (none for a scan of no points), every point of an ``ExplicitScan``.
    The description is checked as ``scan_from_description`` checks it (ValueError)."""
    cls, kwargs = _scan_call(desc)
    if cls is NoScan:
        repetitions = _check_count("repetitions", kwargs.get("repetitions", 1))
        return [kwargs["value"]] if repetitions else []
    if cls is RangeScan:
        npoints = _check_count("npoints", kwargs["npoints"])
        start = kwargs["start"]
        if npoints <= 1:
            return [start] * npoints
        stop = _number("stop", kwargs["stop"])
        return [_number("start", start), float(stop)]
    if cls is CenterScan:
        center = _number("center", kwargs["center"])
        span = _number("span", kwargs["span"])
        step = abs(_number("step", kwargs["step"]))
        if span < 0:
            raise ValueError(f"span must be >= 0, not {span!r}")
        if step == 0:
            return []
        half = span / (2 * step) + _CENTER_TOLERANCE
        if not math.isfinite(half):
            raise ValueError(f"a CenterScan of span {span!r} and step {step!r} has too "
                             "many points")
        n = math.floor(half)
        return [center + k * step for k in (-n, n)]
    sequence = kwargs["sequence"]
    if isinstance(sequence, (str, bytes, dict)) or not isinstance(sequence, Iterable):
        raise ValueError(f"sequence must be a list of points, not {sequence!r:.80}")
    return list(sequence)


class MultiScanManager:
    """Iterate over the product of several named scans.

    ``MultiScanManager(("a", scan_a), ("b", scan_b))`` yields, for every combination
    (the last scan varying fastest), a point with attributes ``a`` and ``b``.
    """

    def __init__(self, *named_scans: tuple[str, ScanObject]):
        self.names = [name for name, _ in named_scans]
        self.scan_objects = [scan for _, scan in named_scans]

    def __iter__(self) -> Iterator[SimpleNamespace]:
        for values in product(*self.scan_objects):
            yield SimpleNamespace(**dict(zip(self.names, values)))

    def __len__(self) -> int:
        return math.prod(len(scan) for scan in self.scan_objects)
