"""Examine experiment files: which experiments they define, and their arguments.

``examine_file(path)`` (or ``examine_module(module)``) returns, for every public,
non-abstract experiment class of the module (see ``importer.list_experiments``)::

    {class_name: {"name": str,                 # first line of the docstring, else the
                                               # class name (a final "." dropped)
                  "arginfo": {key: [procdesc, group, tooltip]},   # in request order
                  "argument_ui": str or None,  # the class attribute, if any
                  "scheduler_defaults": dict}} # what set_default_scheduling set

the shape of ``experiment_db.examine`` and of the ``explist`` notifier (wire-compat.md).
The result is PYON-encodable; an argument whose description is not is reported by name.

Each class is built once, with a ``TraceArgumentManager`` (arguments take their defaults,
or ``None``), a fresh ``scheduler_defaults`` dict, dummy devices (``DummyDevice`` accepts
any attribute and any call) and, unless a dataset manager is given, datasets that do not
exist (``get_dataset`` returns its default). An exception raised by a class's ``build``
propagates, with a note naming the class.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import Any

from labpipe.language.argument_managers import TraceArgumentManager
from labpipe.language.environment import DatasetManager, DeviceManager
from labpipe.protocol import pyon
from labpipe.worker.importer import forget_module, import_file, list_experiments
from labpipe.worker.script import is_black_box_file

__all__ = ["examine_file", "examine_module", "examine_class", "DummyDevice",
           "DummyDeviceManager", "DummyDatasetManager"]


class DummyDevice:
    """Stands for any device while examining: any attribute is another dummy, and
    calling it returns a dummy."""

    def __init__(self, name: str = "device"):
        self._dummy_name = name

    def __getattr__(self, attr: str) -> DummyDevice:
        if attr.startswith("__") and attr.endswith("__"):
            raise AttributeError(attr)  # protocols (copy, pickle, numpy) see a plain object
        return DummyDevice(f"{self.__dict__.get('_dummy_name', 'device')}.{attr}")

    def __call__(self, *args: Any, **kwargs: Any) -> DummyDevice:
        return DummyDevice(f"{self._dummy_name}()")

    def __repr__(self) -> str:
        return f"<DummyDevice {self._dummy_name}>"


class DummyDeviceManager:
    """Gives a ``DummyDevice`` for any key; records the keys asked for. ``device_db``
    is what ``get_device_db()`` shows (e.g. the master's keys, for argument choices)."""

    def __init__(self, device_db: dict[str, Any] | None = None):
        self.requested: list[str] = []
        self._device_db = device_db or {}

    def get(self, key: str) -> DummyDevice:
        self.requested.append(key)
        return DummyDevice(key)

    def get_device_db(self) -> dict[str, Any]:
        return self._device_db


class DummyDatasetManager:
    """No datasets exist; writes are ignored."""

    def set(self, key: str, value: Any, metadata: dict[str, Any] | None = None,
            broadcast: bool = False, persist: bool = False, archive: bool = True) -> None:
        pass

    def get(self, key: str, archive: bool = False) -> Any:
        raise KeyError(f"dataset {key!r} is not available while examining")

    def get_metadata(self, key: str) -> dict[str, Any]:
        raise KeyError(f"dataset {key!r} is not available while examining")

    def mutate(self, key: str, index: Any, value: Any) -> None:
        pass

    def append_to(self, key: str, value: Any) -> None:
        pass


def _display_name(cls: type, class_name: str) -> str:
    doc = cls.__dict__.get("__doc__")
    first = doc.strip().splitlines()[0].strip() if doc and doc.strip() else ""
    return first.removesuffix(".") or class_name


def _check_encodable(class_name: str, info: dict[str, Any]) -> None:
    try:
        pyon.encode(info)
        return
    except TypeError as e:
        error = e
    for key, desc in info["arginfo"].items():
        try:
            pyon.encode(desc)
        except TypeError as e:
            raise TypeError(f"{class_name}: the description of argument {key!r} "
                            f"cannot be sent (not PYON-encodable: {e})") from None
    raise TypeError(f"{class_name}: the examine result is not PYON-encodable: {error}")


def examine_class(cls: type, class_name: str | None = None, *,
                  device_mgr: DeviceManager | None = None,
                  dataset_mgr: DatasetManager | None = None) -> dict[str, Any]:
    """Build ``cls`` once with tracing managers; its entry of the examine result."""
    class_name = class_name or cls.__name__
    argument_mgr = TraceArgumentManager()
    scheduler_defaults: dict[str, Any] = {}
    managers = (device_mgr if device_mgr is not None else DummyDeviceManager(),
                dataset_mgr if dataset_mgr is not None else DummyDatasetManager(),
                argument_mgr, scheduler_defaults)
    try:
        cls(managers)
    except Exception as e:
        e.add_note(f"(while examining the experiment class {class_name})")
        raise
    info = {
        "name": _display_name(cls, class_name),
        "arginfo": {key: [processor.describe(), group, tooltip]
                    for key, (processor, group, tooltip)
                    in argument_mgr.requested_args.items()},
        "argument_ui": getattr(cls, "argument_ui", None),
        "scheduler_defaults": scheduler_defaults,
    }
    _check_encodable(class_name, info)
    return info


def examine_module(module: ModuleType, *, device_mgr: DeviceManager | None = None,
                   dataset_mgr: DatasetManager | None = None) -> dict[str, dict[str, Any]]:
    """``{class_name: info}`` for every public experiment class of the module."""
    return {name: examine_class(cls, name, device_mgr=device_mgr, dataset_mgr=dataset_mgr)
            for name, cls in list_experiments(module).items()}


def examine_file(path: str | os.PathLike[str], *, device_mgr: DeviceManager | None = None,
                 dataset_mgr: DatasetManager | None = None) -> dict[str, dict[str, Any]]:
    """Import the file (as ``importer.import_file`` does), examine it, and forget the
    module again. A black-box script (``script.py``) is not imported (that would run
    it): it holds no experiment class, ``{}``."""
    if is_black_box_file(os.fspath(path)):
        return {}
    module = import_file(path, prefix="file_examine_")
    try:
        return examine_module(module, device_mgr=device_mgr, dataset_mgr=dataset_mgr)
    finally:
        forget_module(module)
