"""PYON values (numpy arrays, tuples, non-string keys, NaN) made JSON for the page."""

import math
from typing import Any

import numpy as np


def jsonable(obj: Any) -> Any:
    """``obj`` with every value JSON can carry: arrays and tuples as lists, keys as
    strings, non-finite floats as None, anything else as its ``str``."""
    if obj is None or isinstance(obj, (bool, str, int)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        # numeric arrays whole (a 10,000-point array at 10 Hz is the common case)
        if obj.dtype.kind in "biu" or (obj.dtype.kind == "f" and np.isfinite(obj).all()):
            return obj.tolist()
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return jsonable(obj.item())
    if isinstance(obj, bytes):
        return obj.decode("utf-8", "replace")
    return str(obj)
