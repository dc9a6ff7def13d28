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
  An unknown TYPENAME, or arguments of the wrong shape, raise ``ValueError``.
- ``store_file`` is atomic: a reader sees the old content or the new one, never a mix,
  and the new content is on disk (fsynced) when it returns (unless ``fsync=False``:
  still atomic, not durable).
"""

import base64
import json
from collections import OrderedDict
from fractions import Fraction

import numpy

from labpipe.protocol.atomic import atomic_path

__all__ = ["encode", "decode", "store_file", "load_file"]

_JSONCLASS = "__jsonclass__"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _escape(typename, args):
    return {_JSONCLASS: [typename, args]}


def _to_json(obj):
    """Turn obj into something json can write, escaping non-JSON types."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):  # numpy integers and numpy.bool_ are not int subclasses
        return int(obj)
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
    if isinstance(obj, tuple):
        return _escape("tuple", [[_to_json(x) for x in obj]])
    if isinstance(obj, list):
        return [_to_json(x) for x in obj]
    if isinstance(obj, OrderedDict):
        return _escape("OrderedDict", [[[_to_json(k), _to_json(v)] for k, v in obj.items()]])
    if isinstance(obj, dict):
        if all(type(k) is str for k in obj):
            if _JSONCLASS not in obj:
                return {k: _to_json(v) for k, v in obj.items()}
        return _escape("dict", [[[_to_json(k), _to_json(v)] for k, v in obj.items()]])
    if isinstance(obj, (set, frozenset)):
        return _escape("set", [[_to_json(x) for x in obj]])
    if isinstance(obj, complex):
        return _escape("complex", [obj.real, obj.imag])
    if isinstance(obj, (bytes, bytearray)):
        return _escape("bytes", [_b64(bytes(obj))])
    if isinstance(obj, slice):
        return _escape("slice", [_to_json(obj.start), _to_json(obj.stop), _to_json(obj.step)])
    if isinstance(obj, Fraction):
        return _escape("Fraction", [obj.numerator, obj.denominator])
    raise TypeError(f"cannot encode {type(obj).__name__} in PYON")


def encode(obj, pretty: bool = False) -> str:
    """Encode obj as PYON v2: one line of ASCII text (indented lines with pretty)."""
    data = _to_json(obj)
    if pretty:
        return json.dumps(data, indent=4, ensure_ascii=True, allow_nan=True)
    return json.dumps(data, separators=(",", ":"), ensure_ascii=True, allow_nan=True)


def _pairs(args):
    (items,) = args
    return [(k, v) for k, v in items]


def _nparray(args):
    shape, dtype, data = args
    dtype = numpy.dtype(dtype)
    if dtype.hasobject:
        raise ValueError("numpy arrays of object dtype are refused")
    flat = numpy.frombuffer(base64.b64decode(data, validate=True), dtype=dtype)
    return flat.reshape([int(n) for n in shape]).copy()


def _npscalar(args):
    dtype, data = args
    dtype = numpy.dtype(dtype)
    if dtype.hasobject:
        raise ValueError("numpy scalars of object dtype are refused")
    return numpy.frombuffer(base64.b64decode(data, validate=True), dtype=dtype)[0]


_DECODERS = {
    "tuple": lambda args: tuple(args[0]),
    "dict": lambda args: dict(_pairs(args)),
    "set": lambda args: set(args[0]),
    "complex": lambda args: complex(*args),
    "bytes": lambda args: base64.b64decode(args[0], validate=True),
    "slice": lambda args: slice(*args),
    "Fraction": lambda args: Fraction(*args),
    "OrderedDict": lambda args: OrderedDict(_pairs(args)),
    "nparray": _nparray,
    "npscalar": _npscalar,
}


def _object_hook(dct):
    if _JSONCLASS not in dct:
        return dct
    try:
        typename, args = dct[_JSONCLASS]
        decoder = _DECODERS[typename]
    except (TypeError, ValueError, KeyError):
        raise ValueError(f"unknown or malformed PYON type escape: {dct[_JSONCLASS]!r:.100}")
    if not isinstance(args, list):
        raise ValueError(f"PYON type {typename}: arguments must be a list")
    try:
        return decoder(args)
    except ValueError:
        raise
    except Exception as e:
        raise ValueError(f"PYON type {typename}: bad arguments ({e})") from None


def decode(text):
    """Decode PYON v2 text (str or bytes). Raises ValueError on anything malformed."""
    try:
        return json.loads(text, object_hook=_object_hook)
    except RecursionError:
        raise ValueError("PYON text nested too deeply") from None


def store_file(path, obj, fsync: bool = True):
    """Write obj as pretty PYON to path atomically (temp file, fsync, rename; no fsync
    with ``fsync=False``)."""
    with atomic_path(path, fsync=fsync) as tmp:
        with open(tmp, "w", encoding="ascii") as f:
            f.write(encode(obj, pretty=True))
            f.write("\n")


def load_file(path):
    """Read a PYON file written by store_file (or by hand)."""
    with open(path, encoding="utf-8") as f:
        return decode(f.read())
