"""The results file of one run: an HDF5 file written atomically.

Layout (``shared/docs/wire-compat.md``, plus labpipe's additions), readable with plain
h5py::

    results/YYYY-MM-DD/HH/RRRRRRRRR-ClassName.h5   (local time, RID zero-padded to 9)
      datasets/KEY       datasets the run set with archive on; metadata as attributes
      archive/KEY        datasets the run read from the master with archive=True
      rid                int64
      start_time         float64, Unix time at which the run was built
      run_time           float64, Unix time at which its run stage began (ARTIQ's
                         meaning: a time stamp, not a duration); absent when None
      expid              the expid as a PYON string
      repo_rev           str, when the experiment came from the repository
      labpipe_version    str
      log                1-D array of variable-length UTF-8 strings (may be empty)
      console/text       (a run's file) the run's console lines in order (print lines as written, log
                         records as LEVEL:logger:message), UTF-8 strings
      console/time       float64, the Unix time each console line was written
      console/stream     str, where each line came from: stdout, stderr or log
      error              str, when the run failed
      GROUP/KEY          for each extra group given (e.g. bluesky documents)
      streams/NAME/data/CHANNEL/{data,pulse_id,timestamp,is_data_present}
                         the window a stream device captured (labpipe.stream)

How a value is stored (the same rules for ``datasets/``, ``archive/`` and extra groups):

- bool, int, float, complex, numpy scalars and numpy arrays of bool, integer, float or
  complex dtype: as native HDF5 data.
- lists (not tuples) that numpy turns into such an array: as that array (this is how
  analysis code expects them; the list type itself is not kept).
- str: a variable-length UTF-8 string.
- anything else PYON can encode (dict, tuple, set, None, bytes, nested or mixed lists,
  arrays of other dtypes, ...): its PYON text as a string, with the attribute
  ``labpipe_encoding = "pyon"``; ``pyon.decode`` gives the value back with its type.
- a value PYON cannot encode: its ``repr`` with ``labpipe_encoding = "repr"`` and a
  logged warning, so that a results file is still written on every exit path.

Metadata entries of a dataset become attributes of its HDF5 dataset: str, bool, int,
float and numpy scalars natively, anything else as PYON text, its name listed in the
attribute ``labpipe_pyon_attrs``. A key containing ``/`` creates nested HDF5 groups.

The file is written to a temporary file in the destination folder (created as needed),
flushed and fsynced, then renamed over the destination: a reader sees no file or the
whole file, and no temporary file is left behind, even when writing fails.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import h5py
import numpy
from h5py import h5d, h5p, h5s, h5t

import labpipe
from labpipe.protocol import pyon
from labpipe.protocol.atomic import atomic_path

__all__ = ["write_results", "results_path", "ENCODING_ATTR"]

logger = logging.getLogger(__name__)

#: Attribute naming how a non-native value was turned into a string.
ENCODING_ATTR = "labpipe_encoding"
#: Attribute listing the metadata attributes stored as PYON text.
PYON_ATTRS_ATTR = "labpipe_pyon_attrs"

_NATIVE_KINDS = "biufc"
_STANDARD_NAMES = {"datasets", "archive", "rid", "start_time", "run_time", "expid",
                   "repo_rev", "labpipe_version", "log", "error", "streams", "console"}
_STR = h5py.string_dtype(encoding="utf-8")


def results_path(results_dir: str | os.PathLike, rid: int, class_name: str,
                 start_time: float) -> str:
    """Path of a run's results file: ``results_dir/YYYY-MM-DD/HH/RRRRRRRRR-Class.h5``.

    The date and hour are ``start_time`` (Unix time) in local time. Characters of
    ``class_name`` that do not belong in a file name are replaced by ``_``.
    """
    t = time.localtime(start_time)
    safe_name = re.sub(r"[^A-Za-z0-9_.-]", "_", str(class_name)) or "_"
    return os.path.join(os.fspath(results_dir), time.strftime("%Y-%m-%d", t),
                        time.strftime("%H", t), f"{int(rid):09d}-{safe_name}.h5")


def _native(value: Any) -> Any:
    """value as something h5py stores natively, or None when it must be encoded."""
    if isinstance(value, (bool, int, float, complex)):
        if isinstance(value, int) and not isinstance(value, bool) and not -2**63 <= value < 2**64:
            return None  # too big for HDF5 integers: PYON keeps it exact
        return value
    if isinstance(value, numpy.generic):
        return value if value.dtype.kind in _NATIVE_KINDS else None
    if isinstance(value, numpy.ndarray):
        return value if value.dtype.kind in _NATIVE_KINDS else None
    if isinstance(value, list):
        try:
            array = numpy.asarray(value)
        except (ValueError, TypeError, OverflowError):
            return None  # ragged or otherwise not an array
        return array if array.dtype.kind in _NATIVE_KINDS else None
    return None


def _write_value(group: h5py.Group, name: str, value: Any) -> h5py.Dataset:
    native = _native(value)
    if native is not None:
        return group.create_dataset(name, data=native)
    if isinstance(value, str):
        return group.create_dataset(name, data=value, dtype=_STR)
    try:
        text, encoding = pyon.encode(value), "pyon"
    except (TypeError, ValueError) as e:
        logger.warning("results: %s/%s cannot be encoded in PYON (%s); storing its repr",
                       group.name.rstrip("/"), name, e)
        text, encoding = repr(value), "repr"
    dataset = group.create_dataset(name, data=text, dtype=_STR)
    dataset.attrs[ENCODING_ATTR] = encoding
    return dataset


def _write_metadata(dataset: h5py.Dataset, metadata: Mapping[str, Any]) -> None:
    pyon_names = []
    for name, value in metadata.items():
        name = str(name)
        if isinstance(value, (str, bool, int, float)) or (
                isinstance(value, numpy.generic) and value.dtype.kind in _NATIVE_KINDS):
            dataset.attrs[name] = value
        else:
            dataset.attrs[name] = pyon.encode(value)
            pyon_names.append(name)
    if pyon_names:
        dataset.attrs[PYON_ATTRS_ATTR] = numpy.array(pyon_names, dtype=_STR)


def _write_group(f: h5py.File, group_name: str, items: Mapping[str, Any],
                 with_metadata: bool) -> None:
    """Write one group; a key that cannot be written is logged and skipped."""
    group = f.create_group(group_name)
    for key, item in items.items():
        try:
            value, metadata = item if with_metadata else (item, None)
            dataset = _write_value(group, str(key), value)
            if metadata:
                _write_metadata(dataset, metadata)
        except Exception as e:
            logger.warning("results: %s/%s not written: %s: %s",
                           group_name, key, type(e).__name__, e)


def _write_fixed(f: h5py.Group, name: str, data: numpy.ndarray[Any, Any]) -> None:
    """What ``f.create_dataset(name, data=data)`` writes (h5py's defaults: contiguous,
    no time stamps), in four low-level calls: the high-level path runs some twenty
    Python functions per dataset, and in a fresh worker forked from the template every
    function run and object touched copies a page (~0.5 ms per run for the fixed
    fields). The file is byte for byte the same (``tests/test_results.py``)."""
    dcpl = h5p.create(h5p.DATASET_CREATE)
    dcpl.set_obj_track_times(False)
    dataset = h5d.create(f.id, name.encode("ascii"), h5t.py_create(data.dtype, logical=True),
                         h5s.create_simple(data.shape), dcpl=dcpl)
    dataset.write(h5s.ALL, h5s.ALL, data)


def _write_file(f: h5py.File, *, rid: int, start_time: float, run_time: float | None,
                expid: dict[str, Any], repo_rev: str | None,
                datasets: Mapping[str, tuple[Any, dict[str, Any] | None]] | None,
                archive: Mapping[str, Any] | None, log_lines: Iterable[str] | None,
                error: str | None,
                extra_groups: Mapping[str, Mapping[str, Any]] | None,
                console: Sequence[tuple[float, str, str]] | None) -> None:
    _write_group(f, "datasets", datasets or {}, with_metadata=True)
    _write_group(f, "archive", archive or {}, with_metadata=False)
    for group_name, items in (extra_groups or {}).items():
        _write_group(f, group_name, items, with_metadata=False)
    _write_fixed(f, "rid", numpy.array(rid, dtype=numpy.int64))
    _write_fixed(f, "start_time", numpy.array(start_time, dtype=numpy.float64))
    if run_time is not None:
        _write_fixed(f, "run_time", numpy.array(run_time, dtype=numpy.float64))
    _write_fixed(f, "expid", numpy.array(pyon.encode(expid), dtype=_STR))
    if repo_rev is not None:
        _write_fixed(f, "repo_rev", numpy.array(str(repo_rev), dtype=_STR))
    _write_fixed(f, "labpipe_version", numpy.array(labpipe.__version__, dtype=_STR))
    _write_fixed(f, "log", numpy.array([str(line) for line in (log_lines or [])], dtype=_STR))
    if console is not None:  # a run's file always has it (maybe empty)
        group = f.create_group("console")
        _write_fixed(group, "text", numpy.array([str(line[1]) for line in console],
                                                dtype=_STR))
        _write_fixed(group, "time", numpy.array([float(line[0]) for line in console],
                                                dtype=numpy.float64))
        _write_fixed(group, "stream", numpy.array([str(line[2]) for line in console],
                                                  dtype=_STR))
    if error is not None:
        _write_fixed(f, "error", numpy.array(str(error), dtype=_STR))


def write_results(path: str | os.PathLike, *, rid: int, start_time: float,
                  run_time: float | None, expid: dict, repo_rev: str | None = None,
                  datasets: Mapping[str, tuple[Any, dict | None]] | None = None,
                  archive: Mapping[str, Any] | None = None,
                  log_lines: Iterable[str] | None = None, error: str | None = None,
                  extra_groups: Mapping[str, Mapping[str, Any]] | None = None,
                  stream_files: Mapping[str, str] | None = None,
                  console: Sequence[tuple[float, str, str]] | None = None) -> None:
    """Write a run's results file at ``path`` atomically (layout in the module docstring).

    ``datasets`` maps key -> (value, metadata) (the worker's ``DatasetManager.local``),
    ``archive`` maps key -> value (``DatasetManager.archive``), ``extra_groups`` maps a
    group name -> {key: value}, ``stream_files`` a stream name -> the HDF5 file its
    window was spooled to (its groups are copied under ``streams/NAME``). A single value that cannot be written is logged and
    skipped, so that the rest of the results is kept; any other failure raises, and
    leaves neither the destination nor a temporary file behind.
    """
    for group_name in extra_groups or {}:
        if not isinstance(group_name, str) or not group_name:
            raise ValueError(f"extra group name {group_name!r} is not a non-empty str")
        if group_name in _STANDARD_NAMES:
            raise ValueError(f"extra group name {group_name!r} clashes with a standard field")
    try:
        with atomic_path(path, suffix=".h5.tmp") as tmp:
            with h5py.File(tmp, "w") as f:
                _write_file(f, rid=rid, start_time=start_time, run_time=run_time,
                            expid=expid, repo_rev=repo_rev, datasets=datasets,
                            archive=archive, log_lines=log_lines, error=error,
                            extra_groups=extra_groups, console=console)
                for name, spool in (stream_files or {}).items():
                    with h5py.File(spool, "r") as source:
                        for item in source:
                            source.copy(item, f, f"streams/{name}/{item}")
                        for attr, value in source.attrs.items():
                            f.require_group(f"streams/{name}").attrs[attr] = value
    except OSError as e:
        if e.errno is None:
            raise
        # HDF5's own message spans lines and hides the reason (a full disk, say)
        raise OSError(e.errno, f"cannot write the results file {path}: "
                               f"{os.strerror(e.errno)}") from None
