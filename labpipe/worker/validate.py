"""Dry runs: would this submission start? Checked in a worker, without running it.

``validate_experiment(expid, workdir=..., device_db=..., get_dataset=None)`` returns the
list of problems (one line each; empty when the run would start):

- the file is missing, does not import, or has no (or no such) experiment class;
- an argument is refused by its processor (wrong type, out of range, not a choice...),
  is required but missing, or was submitted but is not an argument of the experiment;
- a device requested in build is not in the device database (or its alias dangles or
  loops, or its entry is not a ``local``/``controller`` entry, or a local entry's
  module cannot be found);
- build raised another exception.

All argument and device problems of one build are collected, not just the first: a
refused argument makes ``get_argument`` return its default (or None) and an unknown
device a dummy, and build goes on. Devices are never created (no hardware is touched:
every device is a ``DummyDevice``); datasets are read from the master but nothing is
written back; the ``scheduler`` device is a stand-in that submits nothing. Nothing of a
dry run reaches the schedule, the datasets or the results.

A black-box script (``script.py``) is only compiled; it takes no arguments.

The worker command ``Validate`` (``messages.py``, handled in ``child.py``) wraps it:
``Validate(expid, workdir, lab_dir)`` -> ``Validated(problems)``.
"""

import contextlib
import importlib.util
import logging
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

from labpipe.language.argument_managers import ArgList, ProcessArgumentManager
from labpipe.language.arguments import ArgumentProcessor
from labpipe.language.exceptions import ArgumentError, UnknownArgumentsError
from labpipe.worker.devices import DeviceError, follow_aliases
from labpipe.worker.examine import DummyDevice
from labpipe.worker.importer import forget_module, get_experiment, import_file
from labpipe.worker.runner import one_line, source_file
from labpipe.worker.script import black_box_class
from labpipe.worker.virtual_devices import LocalCCB, LocalScheduler

__all__ = ["validate_experiment"]

logger = logging.getLogger(__name__)


class _CheckingArguments(ProcessArgumentManager):
    """Processes each argument as a run would; records refusals instead of raising."""

    def __init__(self, submitted: dict[str, Any], problems: list[str]):
        super().__init__(submitted)
        self.problems = problems

    def get(self, key: str, processor: ArgumentProcessor, group: str | None = None,
            tooltip: str | None = None) -> Any:
        try:
            return super().get(key, processor, group, tooltip)
        except ArgumentError as e:  # DefaultMissing too
            self.problems.append(str(e))
        return _default_or_none(processor)

    def get_interactive(self, arglist: ArgList, title: str) -> dict[str, Any]:
        return {key: _default_or_none(processor) for key, processor, _g, _t in arglist}


def _default_or_none(processor: ArgumentProcessor) -> Any:
    try:
        return processor.default()
    except Exception:
        return None


class _CheckingDevices:
    """Checks every requested key against the device database; gives dummies."""

    def __init__(self, device_db: Mapping[str, Any], problems: list[str]):
        self.device_db = device_db
        self.problems = problems
        self.virtual = {"scheduler": LocalScheduler(rid=None), "ccb": LocalCCB()}
        self.requested: list[str] = []

    def get_device_db(self) -> Mapping[str, Any]:
        return self.device_db

    def get(self, key: str) -> Any:
        if key in self.virtual:
            return self.virtual[key]
        if key not in self.requested:
            self.requested.append(key)
            problem = self._check(key)
            if problem:
                self.problems.append(problem)
        return DummyDevice(key)

    def _check(self, key: str) -> str | None:
        try:
            final, entry = follow_aliases(self.device_db.__getitem__, key)
        except DeviceError as e:
            return str(e)
        if not isinstance(entry, dict) or entry.get("type") not in ("local", "controller"):
            return (f"device {final!r}: unsupported entry (expected a 'local' or "
                    f"'controller' dict)")
        if entry["type"] == "local":
            module = entry.get("module")
            if not isinstance(module, str) or not isinstance(entry.get("class"), str):
                return f"device {final!r}: a local entry needs 'module' and 'class' strings"
            try:
                found = importlib.util.find_spec(module) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                return f"device {final!r}: module {module!r} cannot be found"
        return None

    def close_devices(self) -> None:
        pass


class _ReadOnlyDatasets:
    """Datasets read from the master (a missing one raises KeyError); writes stay local."""

    def __init__(self, get_dataset: Callable[[str], Any] | None):
        self._get = get_dataset
        self._local: dict[str, Any] = {}

    def set(self, key: str, value: Any, metadata: dict[str, Any] | None = None,
            broadcast: bool = False, persist: bool = False, archive: bool = True) -> None:
        self._local[key] = value

    def get(self, key: str, archive: bool = False) -> Any:
        if key in self._local:
            return self._local[key]
        if self._get is None:
            raise KeyError(f"dataset {key!r} does not exist")
        return self._get(key)[1]

    def get_metadata(self, key: str) -> dict[str, Any]:
        if self._get is None:
            raise KeyError(f"dataset {key!r} does not exist")
        return self._get(key)[2]

    def mutate(self, key: str, index: Any, value: Any) -> None:
        pass

    def append_to(self, key: str, value: Any) -> None:
        pass


def validate_experiment(expid: dict[str, Any], *, workdir: str | None,
                        device_db: Mapping[str, Any],
                        get_dataset: Callable[[str], Any] | None = None) -> list[str]:
    """The problems that would stop expid from starting (see the module docstring)."""
    problems: list[str] = []
    try:
        path, temporary = source_file(expid, workdir)
    except OSError as e:
        return [f"cannot read the experiment: {e}"]
    try:
        if not os.path.isfile(path):
            return [f"experiment file {expid.get('file')!r} does not exist"
                    + (f" (in {workdir})" if workdir else "")]
        try:
            script_cls = black_box_class(path, expid)  # decided as the run's build does
        except SyntaxError as e:
            return [one_line(e)]
        if script_cls is not None:
            if expid.get("arguments"):
                return [f"unknown argument(s) {', '.join(map(repr, sorted(expid['arguments'])))}"
                        f"; a black-box script takes none"]
            return []
        try:
            module = import_file(path, prefix="file_validate_")
        except BaseException as e:  # noqa: B902 - a file may raise anything at import
            return [f"cannot import {expid.get('file') or 'the content'}: {one_line(e)}"]
    finally:
        if temporary:
            os.unlink(path)
    folder = None if temporary else os.path.dirname(os.path.abspath(path))
    try:
        try:
            cls = get_experiment(module, expid.get("class_name"))
        except LookupError as e:
            return [str(e)]
        arguments = _CheckingArguments(expid.get("arguments") or {}, problems)
        devices = _CheckingDevices(device_db, problems)
        # as in a run, the experiment's folder is importable during build (device
        # modules beside it are found)
        sys.path.insert(0, folder or os.getcwd())
        try:
            cls((devices, _ReadOnlyDatasets(get_dataset), arguments, {}))
        except Exception as e:
            if not problems:  # a build that trips over a refused value says nothing new
                problems.append(f"build of {cls.__name__} failed: {one_line(e)}")
        finally:
            with contextlib.suppress(ValueError):
                sys.path.remove(folder or os.getcwd())
        try:
            arguments.check_unprocessed()
        except UnknownArgumentsError as e:
            problems.append(str(e))
        return problems
    finally:
        forget_module(module)

