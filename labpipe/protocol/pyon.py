"""PYON v2: the value encoding of the ARTIQ wire protocols.

PYON v2 is JSON written on one line (separators ``,`` and ``:``, ASCII only), plus one
escape for the Python types JSON lacks: an object ``{"__jsonclass__": [TYPENAME, ARGS]}``
where ARGS is a list.

Guarantees:

- Type fidelity: ``decode(encode(x)) == x`` with the same types for None, bool, int,
  float (including nan/inf), str, list, dict (string keys plain, other keys through the
  ``dict`` escape), tuple, set, complex, bytes, slice, Fraction, OrderedDict, numpy arrays
  (any non-object dtype, any shape) and numpy scalars.
- Decoding never evaluates code: it is ``json.loads`` plus a table of constructors.
  An unknown TYPENAME, or arguments of the wrong shape or type, raise ``ValueError``
  with a one-line message.
- Decoding is bounded (``Limits``; ``decode(text, limits=...)``): the text's length,
  the nesting depth of the value, the digits of an integer (Fraction parts included),
  the bytes of a numpy array (its shape times its item size must equal the bytes
  given; plain, non-object dtypes only). Going over a bound raises ``LimitExceeded``
  (a ``ValueError``) naming what was too big, before anything large is built: a
  Fraction, complex or integer is never computed from an unbounded string.
- Whatever ``decode`` accepts, ``encode`` encodes again (decode's depth bound is
  clamped at encode's, ``MAX_ENCODE_DEPTH``); with the default limits, even wrapped
  in up to ``WRAP_HEADROOM`` more containers, so a value accepted from the wire can
  always be re-sent in a reply or a notifier mod. Clients decode what servers send
  with ``RECEIVE_LIMITS`` (the depth encode allows). ``encode`` itself refuses with ``TypeError`` (a type PYON
  lacks) or ``ValueError`` (too deep, or an integer too long), one line, never
  ``RecursionError``.
- ``store_file`` is atomic: a reader sees the old content or the new one, never a mix,
  and the new content is on disk (fsynced) when it returns (unless ``fsync=False``:
  still atomic, not durable).
"""

import base64
import binascii
import functools
import json
import math
import operator
import os
import re
import sys
from collections import OrderedDict
from dataclasses import dataclass
from fractions import Fraction
from itertools import chain, compress, repeat
from typing import Any, Callable

import numpy

from labpipe.protocol.atomic import atomic_path

__all__ = ["encode", "decode", "store_file", "load_file", "Limits", "DEFAULT_LIMITS",
           "RECEIVE_LIMITS", "LimitExceeded"]

_JSONCLASS = "__jsonclass__"


class LimitExceeded(ValueError):
    """A PYON text would decode to something larger than ``Limits`` allow."""


@dataclass(frozen=True)
class Limits:
    """Bounds on what ``decode`` may build (see the module docstring)."""
    #: Longest text, in characters (bytes for bytes input).
    max_size: int = 1 << 30
    #: Deepest nesting of containers (list, tuple, dict, set, slice) in the value.
    max_depth: int = 64
    #: Most decimal digits of one integer (JSON integers and Fraction parts).
    max_int_digits: int = 4300
    #: Largest numpy array (or scalar), in bytes.
    max_array_bytes: int = 1 << 30


DEFAULT_LIMITS = Limits()

#: The deepest value encode handles.
MAX_ENCODE_DEPTH = 128
#: Levels a decoded value may gain when it is wrapped for sending on (a dataset's
#: ``(persist, value, metadata)`` tuple inside a notifier's dict inside an init mod).
WRAP_HEADROOM = 64
#: What a client accepts from a server: values the server wrapped (a notifier's
#: content in its init mod, a reply) nest up to WRAP_HEADROOM deeper than the door allows.
RECEIVE_LIMITS = Limits(max_depth=MAX_ENCODE_DEPTH)
#: The longest integer encode writes; decode's digits bound may not exceed it.
MAX_ENCODE_INT_DIGITS = 4300


# --------------------------------------------------------------------------- encoding


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _escape(typename: str, args: list[Any]) -> dict[str, list[Any]]:
    return {_JSONCLASS: [typename, args]}


#: Integers this small need no digits check (the exact int type's fast path).
_SMALL_INT = 1 << 64


def _to_json(obj: Any, depth: int = 0) -> Any:
    """Turn obj into something json can write, escaping non-JSON types."""
    # the exact built-in types first, by identity (most of what is sent): the same
    # results as the isinstance() chain below, in fewer steps
    t = type(obj)
    if t is str or t is float or t is bool or obj is None:
        return obj
    if t is int and -_SMALL_INT < obj < _SMALL_INT:
        return obj
    if t is dict or t is list or t is tuple:
        depth += 1
        if depth > MAX_ENCODE_DEPTH:
            raise ValueError(f"cannot encode in PYON: value nested deeper than "
                             f"{MAX_ENCODE_DEPTH} levels")
        if t is list:
            return [_to_json(x, depth) for x in obj]
        if t is tuple:
            return {_JSONCLASS: ["tuple", [[_to_json(x, depth) for x in obj]]]}
        for k in obj:
            if type(k) is not str:
                return _escape("dict", [_pairs_to_json(obj, depth)])
        if _JSONCLASS in obj:
            return _escape("dict", [_pairs_to_json(obj, depth)])
        return {k: _to_json(v, depth) for k, v in obj.items()}
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):  # numpy integers and numpy.bool_ are not int subclasses
        return _checked_int(int(obj))
    if isinstance(obj, float) and not isinstance(obj, numpy.floating):  # numpy.float64 is
        return float(obj)
    if isinstance(obj, numpy.ndarray):
        if obj.dtype.hasobject:
            raise TypeError("numpy arrays of object dtype cannot be encoded in PYON")
        return _escape("nparray", [list(obj.shape), obj.dtype.str,
                                   _b64(numpy.ascontiguousarray(obj).tobytes())])
    if isinstance(obj, numpy.generic):
        if obj.dtype.hasobject:
            raise TypeError("numpy scalars of object dtype cannot be encoded in PYON")
        return _escape("npscalar", [obj.dtype.str, _b64(obj.tobytes())])
    if isinstance(obj, complex):
        return _escape("complex", [obj.real, obj.imag])
    if isinstance(obj, (bytes, bytearray)):
        return _escape("bytes", [_b64(bytes(obj))])
    if isinstance(obj, Fraction):
        return _escape("Fraction", [_checked_int(obj.numerator),
                                    _checked_int(obj.denominator)])
    depth += 1
    if depth > MAX_ENCODE_DEPTH:
        raise ValueError(f"cannot encode in PYON: value nested deeper than "
                         f"{MAX_ENCODE_DEPTH} levels")
    if isinstance(obj, tuple):
        return _escape("tuple", [[_to_json(x, depth) for x in obj]])
    if isinstance(obj, list):
        return [_to_json(x, depth) for x in obj]
    if isinstance(obj, OrderedDict):
        return _escape("OrderedDict", [_pairs_to_json(obj, depth)])
    if isinstance(obj, dict):
        if all(type(k) is str for k in obj):
            if _JSONCLASS not in obj:
                return {k: _to_json(v, depth) for k, v in obj.items()}
        return _escape("dict", [_pairs_to_json(obj, depth)])
    if isinstance(obj, (set, frozenset)):
        return _escape("set", [[_to_json(x, depth) for x in obj]])
    if isinstance(obj, slice):
        return _escape("slice", [_to_json(obj.start, depth), _to_json(obj.stop, depth),
                                 _to_json(obj.step, depth)])
    raise TypeError(f"cannot encode {type(obj).__name__} in PYON")


def _pairs_to_json(obj: dict, depth: int) -> list:
    return [[_to_json(k, depth), _to_json(v, depth)] for k, v in obj.items()]


def _checked_int(n: int) -> int:
    # cheap bound first: digits >= bits * log10(2)
    if n.bit_length() > MAX_ENCODE_INT_DIGITS * 3.33 and _digits(n) > MAX_ENCODE_INT_DIGITS:
        raise ValueError(f"cannot encode in PYON: integer of more than "
                         f"{MAX_ENCODE_INT_DIGITS} digits")
    return n


def _digits(n: int) -> int:
    return max(1, math.ceil(abs(n).bit_length() * math.log10(2)))


#: json.dumps(separators=(",", ":"), ensure_ascii=True, allow_nan=True), built once
_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True, allow_nan=True)


def encode(obj: Any, pretty: bool = False) -> str:
    """Encode obj as PYON v2: one line of ASCII text (indented lines with pretty).

    Raises TypeError for a type PYON cannot encode, ValueError for a value too deep
    or an integer too long (see the module docstring).
    """
    try:
        data = _to_json(obj)
        if pretty:
            return json.dumps(data, indent=4, ensure_ascii=True, allow_nan=True)
        return _COMPACT.encode(data)
    except RecursionError:  # a caller already deep in its stack
        raise ValueError("cannot encode in PYON: value nested too deeply") from None


# --------------------------------------------------------------------------- decoding


class _Decoder:
    """One decode call: the JSON hooks, checked against the limits."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self.max_int_digits = min(limits.max_int_digits, MAX_ENCODE_INT_DIGITS)

    def parse_int(self, text: str) -> int:
        digits = len(text) - (text[0] == "-")
        if digits > self.max_int_digits:
            raise LimitExceeded(f"PYON value refused: an integer of {digits} digits "
                                f"(limit {self.max_int_digits})")
        return int(text)

    def object_hook(self, dct: dict[str, Any]) -> Any:
        if _JSONCLASS not in dct:
            return dct
        escape = dct[_JSONCLASS]
        if (len(dct) != 1 or not isinstance(escape, list) or len(escape) != 2
                or not isinstance(escape[0], str)):
            raise ValueError(f"malformed PYON type escape: {_short(escape)}")
        typename, args = escape
        decoder = _TYPE_DECODERS.get(typename)
        if decoder is None:
            raise ValueError(f"unknown PYON type {typename[:50]!r}")
        if not isinstance(args, list):
            raise ValueError(f"PYON type {typename}: arguments must be a list")
        try:
            return decoder(self, args)
        except ValueError:
            raise
        except Exception as e:  # TypeError of a constructor, unhashable key...
            raise ValueError(f"PYON type {typename}: bad arguments "
                             f"({type(e).__name__}: {_first_line(e)})") from None

    @staticmethod
    def _one_list(typename: str, args: list[Any]) -> list[Any]:
        if len(args) != 1 or not isinstance(args[0], list):
            raise ValueError(f"PYON type {typename}: expected one list of items")
        return args[0]

    def _tuple(self, args: list[Any]) -> tuple[Any, ...]:
        return tuple(self._one_list("tuple", args))

    def _set(self, args: list[Any]) -> set[Any]:
        return set(self._one_list("set", args))

    def _dict(self, args: list[Any]) -> dict[Any, Any]:
        return dict(self._pairs("dict", args))

    def _ordered_dict(self, args: list[Any]) -> OrderedDict[Any, Any]:
        return OrderedDict(self._pairs("OrderedDict", args))

    def _pairs(self, typename: str, args: list[Any]) -> list[tuple[Any, Any]]:
        items = self._one_list(typename, args)
        if not all(isinstance(p, list) and len(p) == 2 for p in items):
            raise ValueError(f"PYON type {typename}: expected a list of [key, value] pairs")
        return [(k, v) for k, v in items]

    def _slice(self, args: list[Any]) -> slice:
        if len(args) != 3:
            raise ValueError("PYON type slice: expected [start, stop, step]")
        return slice(*args)

    def _complex(self, args: list[Any]) -> complex:
        if len(args) != 2 or not all(type(x) in (int, float) for x in args):
            raise ValueError("PYON type complex: expected [real, imag], two numbers")
        try:
            return complex(*args)
        except OverflowError:
            raise LimitExceeded("PYON value refused: a complex number whose parts "
                                "do not fit a float") from None

    def _fraction(self, args: list[Any]) -> Fraction:
        if len(args) != 2 or not all(type(x) is int for x in args):
            raise ValueError("PYON type Fraction: expected [numerator, denominator], "
                             "two integers")
        if args[1] == 0:
            raise ValueError("PYON type Fraction: the denominator is 0")
        return Fraction(*args)  # the parts are bounded by parse_int

    def _b64decode(self, typename: str, data: Any) -> bytes:
        if not isinstance(data, str):
            raise ValueError(f"PYON type {typename}: the data must be a base64 string")
        try:
            return base64.b64decode(data, validate=True)
        except binascii.Error:
            raise ValueError(f"PYON type {typename}: the data is not valid base64") from None

    def _bytes(self, args: list[Any]) -> bytes:
        if len(args) != 1:
            raise ValueError("PYON type bytes: expected [base64 string]")
        return self._b64decode("bytes", args[0])

    def _dtype(self, typename: str, text: Any) -> numpy.dtype[Any]:
        if not isinstance(text, str) or not _DTYPE.fullmatch(text):
            raise ValueError(f"PYON type {typename}: unsupported dtype {_short(text)} "
                             "(expected a plain dtype string such as '<f8')")
        try:
            dtype = numpy.dtype(text)
        except TypeError:
            raise ValueError(f"PYON type {typename}: unsupported dtype {text!r}") from None
        if dtype.hasobject or dtype.kind == "O":
            raise ValueError(f"PYON type {typename}: object dtype is refused")
        if dtype.names is not None or dtype.shape != () or dtype.itemsize < 1:
            raise ValueError(f"PYON type {typename}: unsupported dtype {text!r}")
        if dtype.itemsize > self.limits.max_array_bytes:
            raise LimitExceeded(f"PYON value refused: dtype {text!r} of {dtype.itemsize} "
                                f"bytes (limit {self.limits.max_array_bytes})")
        return dtype

    def _nparray(self, args: list[Any]) -> numpy.ndarray[Any, Any]:
        if len(args) != 3:
            raise ValueError("PYON type nparray: expected [shape, dtype, base64 data]")
        shape, dtype_text, data = args
        if (not isinstance(shape, list) or len(shape) > 32
                or not all(type(n) is int and n >= 0 for n in shape)):
            raise ValueError("PYON type nparray: the shape must be a list of at most 32 "
                             "non-negative integers")
        dtype = self._dtype("nparray", dtype_text)
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes > self.limits.max_array_bytes or any(n > sys.maxsize for n in shape):
            raise LimitExceeded(f"PYON value refused: a numpy array of shape {_short(shape)} "
                                f"and dtype {dtype_text!r} ({nbytes} bytes, limit "
                                f"{self.limits.max_array_bytes})")
        raw = self._b64decode("nparray", data)
        if len(raw) != nbytes:
            raise ValueError(f"PYON type nparray: shape {_short(shape)} and dtype "
                             f"{dtype_text!r} need {nbytes} bytes, the data has {len(raw)}")
        flat = numpy.frombuffer(raw, dtype=dtype)
        try:
            return flat.reshape(shape).copy()
        except ValueError:  # a zero-size array with dimensions numpy cannot index
            raise LimitExceeded(f"PYON value refused: numpy array shape {_short(shape)}") \
                from None

    def _npscalar(self, args: list[Any]) -> numpy.generic:
        if len(args) != 2:
            raise ValueError("PYON type npscalar: expected [dtype, base64 data]")
        dtype_text, data = args
        dtype = self._dtype("npscalar", dtype_text)
        raw = self._b64decode("npscalar", data)
        if len(raw) != dtype.itemsize:
            raise ValueError(f"PYON type npscalar: dtype {dtype_text!r} needs "
                             f"{dtype.itemsize} bytes, the data has {len(raw)}")
        return numpy.frombuffer(raw, dtype=dtype)[0]


#: A plain dtype string: byte order, kind, item size, datetime unit.
_DTYPE = re.compile(r"[<>|=]?[biufcSUVmM]\d{0,12}(\[\d{0,6}[a-zA-Z]{1,2}\])?")


def _short(obj: Any) -> str:
    text = repr(obj)
    return text if len(text) <= 80 else text[:77] + "..."


def _first_line(exc: BaseException) -> str:
    text = str(exc).splitlines()
    return text[0][:200] if text else ""


_CONTAINERS = (list, tuple, dict, set, slice)
#: The container types decoding builds (exact types: the checks below are set look-ups).
_CONTAINER_TYPES = frozenset({list, tuple, dict, set, slice, OrderedDict})
_SEQUENCE_TYPES = frozenset({list, tuple, set})
_MAPPING_TYPES = frozenset({dict, OrderedDict})


def _next_level(level: list[Any]) -> list[Any]:
    """The containers directly inside the containers of level.

    Built from C-level iterators only (no Python code per element), so that the depth
    check costs a fraction of json.loads even for millions of small containers.
    """
    types = list(map(type, level))
    sequences = compress(level, map(_SEQUENCE_TYPES.__contains__, types))
    mappings = list(compress(level, map(_MAPPING_TYPES.__contains__, types)))
    slices = compress(level, map(operator.is_, types, repeat(slice)))
    children = list(chain(
        chain.from_iterable(sequences),
        chain.from_iterable(map(dict.keys, mappings)),
        chain.from_iterable(map(dict.values, mappings)),
        chain.from_iterable((s.start, s.stop, s.step) for s in slices)))
    return list(compress(children, map(_CONTAINER_TYPES.__contains__, map(type, children))))


#: PYON type name -> the _Decoder method building it from the escape's arguments.
_TYPE_DECODERS: dict[str, Callable[[_Decoder, list[Any]], Any]] = {
    "tuple": _Decoder._tuple,
    "dict": _Decoder._dict,
    "set": _Decoder._set,
    "complex": _Decoder._complex,
    "bytes": _Decoder._bytes,
    "slice": _Decoder._slice,
    "Fraction": _Decoder._fraction,
    "OrderedDict": _Decoder._ordered_dict,
    "nparray": _Decoder._nparray,
    "npscalar": _Decoder._npscalar,
}


def _check_depth(value: Any, max_depth: int) -> None:
    """Raise LimitExceeded if containers nest deeper than max_depth in value."""
    level, depth = [value], 1
    while level:
        if depth > max_depth:
            raise LimitExceeded(f"PYON value refused: nested deeper than {max_depth} levels")
        level, depth = _next_level(level), depth + 1


def decode(text: str | bytes, limits: Limits = DEFAULT_LIMITS) -> Any:
    """Decode PYON v2 text (str or bytes) within limits.

    Raises LimitExceeded when the text or the value would be too big, ValueError on
    anything else malformed; both with a one-line message.
    """
    if len(text) > limits.max_size:
        raise LimitExceeded(f"PYON text refused: {len(text)} characters "
                            f"(limit {limits.max_size})")
    # Python's own bound on int() of a string is quicker than a hook; the hook stands
    # in when that bound is looser than ours (or off).
    python_digits = sys.get_int_max_str_digits()
    own_bound = (python_digits == 0 or python_digits
                 > min(limits.max_int_digits, MAX_ENCODE_INT_DIGITS))
    try:
        if isinstance(text, str) and not text.startswith("\ufeff"):
            value = _json_decoder(limits, own_bound).decode(text)
        else:  # json.loads: the encoding of bytes, its refusal of a BOM
            decoder = _Decoder(limits)
            value = json.loads(text, object_hook=decoder.object_hook,
                               parse_int=decoder.parse_int if own_bound else None)
    except RecursionError:
        raise LimitExceeded("PYON value refused: nested too deeply") from None
    except UnicodeDecodeError:
        raise ValueError("PYON text is not UTF-8") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") \
            from None
    except ValueError as e:
        if "integer string conversion" in str(e):  # Python's own int() bound
            raise LimitExceeded(f"PYON value refused: an integer of more than "
                                f"{python_digits} digits") from None
        raise
    max_depth = min(limits.max_depth, MAX_ENCODE_DEPTH)
    # A value nests no deeper than its JSON text, and the text no deeper than its count
    # of opening brackets: most messages are proved shallow without walking the value.
    if isinstance(value, _CONTAINERS) and _openings(text) > max_depth:
        _check_depth(value, max_depth)
    return value


@functools.lru_cache(maxsize=16)
def _json_decoder(limits: Limits, own_bound: bool) -> json.JSONDecoder:
    """The JSON decoder with the hooks of limits, built once (it holds no state of a
    decode call: building it per call was a good part of a small message's cost)."""
    decoder = _Decoder(limits)
    return json.JSONDecoder(object_hook=decoder.object_hook,
                            parse_int=decoder.parse_int if own_bound else None)


def _openings(text: str | bytes) -> int:
    """How many JSON arrays and objects text opens (brackets inside strings too)."""
    if isinstance(text, str):
        return text.count("[") + text.count("{")
    return text.count(b"[") + text.count(b"{")


# --------------------------------------------------------------------------- files


def store_file(path: str | os.PathLike[str], obj: Any, fsync: bool = True) -> None:
    """Write obj as pretty PYON to path atomically (temp file, fsync, rename; no fsync
    with ``fsync=False``)."""
    with atomic_path(path, fsync=fsync) as tmp:
        with open(tmp, "w", encoding="ascii") as f:
            f.write(encode(obj, pretty=True))
            f.write("\n")


def load_file(path: str | os.PathLike[str]) -> Any:
    """Read a PYON file written by store_file (or by hand)."""
    with open(path, encoding="utf-8") as f:
        return decode(f.read())
