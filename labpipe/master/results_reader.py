"""Reading a run's results file back for clients (the ``history`` target's
``read_results``): its ``datasets`` and ``archive`` groups as plain values.

h5py is imported by the first call, not with the master: it is 13 MiB of the master's
resident memory otherwise (``benchmarks/bench_rss.py``), for a call a lab makes rarely.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import h5py

#: A results file's values larger than this (bytes, summed) are refused.
MAX_BYTES = 64 << 20


def _value(dataset: h5py.Dataset) -> Any:
    value = dataset[()]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray) and value.dtype.kind in "SO":
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
                for v in value.ravel().tolist()]
    return value


def read_results(path: str) -> dict[str, dict[str, Any]]:
    """``{"datasets": {key: value}, "archive": {key: value}}`` of the results file at
    path; ValueError naming the file when it cannot be read or is too large."""
    import h5py

    out: dict[str, dict[str, Any]] = {"datasets": {}, "archive": {}}
    total = 0
    try:
        with h5py.File(path, "r") as f:
            for group in out:
                if group not in f:
                    continue
                def visit(name: str, obj: Any, group: str = group) -> None:
                    nonlocal total
                    if isinstance(obj, h5py.Dataset):
                        total += obj.size * obj.dtype.itemsize
                        if total > MAX_BYTES:
                            raise ValueError(f"{path}: more than {MAX_BYTES} bytes of values")
                        out[group][name] = _value(obj)
                f[group].visititems(visit)
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the results file ({exc})") from None
    return out
