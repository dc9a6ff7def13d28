"""``NAME=VALUE`` as people type it, read by the argument's type.

With the argument's description (its procdesc, from the experiment list or an
examination of the file), a value is read by the argument's processor type:

- ``BooleanValue``: ``true``/``false``, ``yes``/``no``, ``on``/``off``, ``1``/``0``
  (any case);
- ``NumberValue``: a number with the argument's unit or a prefixed one (``2.5MHz``,
  ``20ms``; see ``quantities.py``), an integer for an integer argument;
- ``EnumerationValue``: one of the choices (any case when that is unambiguous);
- ``StringValue``: the text as typed, no quotes needed (a JSON string ``"..."`` is
  read as its content, as before);
- ``PYONValue``: PYON text (``[1, 2]``, ``{"a": 1}``);
- ``Scannable``: ``start:stop:npoints`` (RangeScan), ``center±half/step`` or
  ``center+-half/step`` (CenterScan from center - half to center + half, as ``±``
  reads: ARTIQ's span is twice ``half``), ``a,b,c`` (ExplicitScan), a single value
  (NoScan), or a scan description in PYON; every value with the argument's unit (a
  value without one takes the unit of the others).

A value that does not parse is a ``ValueError`` of one line naming the argument and
what was expected. Without a description (a file the master cannot examine, content,
an argument the examination did not see) a value is read as PYON, and as a string when
it is not PYON (what the client always did).
"""

import json
import re
from typing import Any

from labpipe.client.quantities import QuantityError, parse_quantity, split_number
from labpipe.protocol import pyon

__all__ = ["split_pairs", "parse_untyped", "parse_value", "parse_values", "is_int",
           "BOOLEAN_WORDS"]

#: The words a boolean may be typed as (any case).
BOOLEAN_WORDS = {"true": True, "yes": True, "on": True, "1": True,
                 "false": False, "no": False, "off": False, "0": False}


def split_pairs(pairs: list[str]) -> list[tuple[str, str]]:
    """``NAME=VALUE`` texts as (name, text); ValueError for one that is not."""
    split = []
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or not name:
            raise ValueError(f"argument {pair!r} is not of the form NAME=VALUE")
        split.append((name, text))
    return split


def parse_untyped(text: str) -> Any:
    """A value without a description: PYON, else the text itself."""
    try:
        return pyon.decode(text)
    except ValueError:
        return text


def is_int(procdesc: dict[str, Any]) -> bool:
    """Whether a NumberValue's values are integers (ARTIQ's rule, as the processor
    decides it: type "int", or "auto" with precision 0, scale 1 and an integer step)."""
    kind = procdesc.get("type", "auto")
    if kind == "int":
        return True
    step = procdesc.get("step", 0.1)
    try:
        integral_step = int(step) == step
    except (TypeError, ValueError, OverflowError):
        integral_step = False
    return (kind == "auto" and procdesc.get("precision", 2) == 0
            and procdesc.get("scale", 1) == 1 and integral_step)


def _boolean(text: str, _desc: dict[str, Any]) -> bool:
    try:
        return BOOLEAN_WORDS[text.strip().lower()]
    except KeyError:
        raise ValueError(f"expected true or false (or yes/no, on/off, 1/0), got {text!r}"
                         ) from None


def _number(text: str, desc: dict[str, Any]) -> int | float:
    value = parse_quantity(text, desc.get("unit") or "", desc.get("scale") or 1.0)
    if not is_int(desc):
        return value
    if not value.is_integer():
        raise ValueError(f"expected an integer, got {text!r}")
    return int(value)


def _choice(text: str, desc: dict[str, Any]) -> Any:
    choices = list(desc.get("choices") or [])
    for choice in choices:
        if str(choice) == text:
            return choice
    folded = [c for c in choices if str(c).lower() == text.strip().lower()]
    if len(folded) == 1:
        return folded[0]
    listed = ", ".join(str(c) for c in choices)
    raise ValueError(f"expected one of {listed}, got {text!r}")


def _string(text: str, _desc: dict[str, Any]) -> str:
    if len(text) >= 2 and text[0] == text[-1] == '"':
        try:
            decoded = json.loads(text)
        except ValueError:
            return text
        if isinstance(decoded, str):
            return decoded
    return text


def _pyon(text: str, _desc: dict[str, Any]) -> Any:
    try:
        return pyon.decode(text)
    except ValueError as exc:
        raise ValueError(f"expected PYON (e.g. [1, 2] or \"text\"), got {text!r}: {exc}"
                         ) from None


_CENTER = re.compile(r"(.+?)(?:±|\+-|\+/-)(.+)/(.+)")


def _scan_values(parts: list[str], desc: dict[str, Any]) -> list[float]:
    """The SI values of a scan's parts; a part without a unit takes the unit the
    others gave (when they gave one)."""
    unit, scale = desc.get("unit") or "", desc.get("scale") or 1.0
    given = {split_number(part)[1] for part in parts} - {""}
    default = given.pop() if len(given) == 1 else None
    return [parse_quantity(part, unit, scale, default) for part in parts]


def _scan(text: str, desc: dict[str, Any]) -> Any:
    stripped = text.strip()
    if stripped[:1] in ("{", "["):
        return _pyon(stripped, desc)
    center = _CENTER.fullmatch(stripped)
    if center:
        middle, half, step = _scan_values(list(center.groups()), desc)
        if half < 0 or step <= 0:
            raise ValueError(f"expected center±half/step with half >= 0 and a step "
                             f"> 0, got {text!r}")
        return {"ty": "CenterScan", "center": middle, "span": 2 * half, "step": step,
                "randomize": False, "seed": None}
    if ":" in stripped:
        parts = stripped.split(":")
        if len(parts) != 3:
            raise ValueError(f"expected start:stop:npoints, got {text!r}")
        try:
            npoints = int(parts[2])
        except ValueError:
            npoints = -1
        if npoints < 1:
            raise ValueError(f"the number of points in start:stop:npoints must be an "
                             f"integer >= 1, got {parts[2]!r}")
        start, stop = _scan_values(parts[:2], desc)
        return {"ty": "RangeScan", "start": start, "stop": stop, "npoints": npoints,
                "randomize": False, "seed": None}
    if "," in stripped:
        sequence = _scan_values([p for p in stripped.split(",") if p.strip()], desc)
        return {"ty": "ExplicitScan", "sequence": sequence}
    (value,) = _scan_values([stripped], desc)
    return {"ty": "NoScan", "value": value, "repetitions": 1}


_READERS = {"BooleanValue": _boolean, "NumberValue": _number,
            "EnumerationValue": _choice, "StringValue": _string, "PYONValue": _pyon,
            "Scannable": _scan}

_EXPECTED = {"NumberValue": "a number", "Scannable": "a scan (start:stop:npoints, "
             "center±half/step, a,b,c or one value)"}


def parse_value(name: str, text: str, procdesc: dict[str, Any] | None) -> Any:
    """The value of one argument typed as text; ValueError (one line naming the
    argument) when it does not parse by its type."""
    reader = _READERS.get(str((procdesc or {}).get("ty")))
    if reader is None or procdesc is None:
        return parse_untyped(text)
    try:
        return reader(text, procdesc)
    except QuantityError as exc:
        expected = _EXPECTED.get(procdesc["ty"], "a value")
        raise ValueError(f"{name}: expected {expected}: {exc}") from None
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None


def parse_values(pairs: list[str], procdescs: dict[str, dict[str, Any]] | None
                 ) -> dict[str, Any]:
    """``NAME=VALUE`` texts as the arguments dict, each read by its description in
    procdescs ({name: procdesc}; None or a missing name: untyped)."""
    procdescs = procdescs or {}
    return {name: parse_value(name, text, procdescs.get(name))
            for name, text in split_pairs(pairs)}
