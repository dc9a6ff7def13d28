"""The device manager an experiment sees inside the worker, and device alias resolution.

Contract (``docs/internals.md``): ``DeviceManager(ddb, virtual_devices)`` where ``ddb``
has ``get(key, resolve_alias=False)`` returning a device database entry and raising
KeyError for an unknown key.

Entries (``shared/docs/wire-compat.md``):

- ``{"type": "local", "module": "pkg.mod", "class": "Name", "arguments": {...}}`` is
  instantiated on first ``get`` and cached for the rest of the run. A class whose
  constructor's first parameter is named ``dmgr`` is called ARTIQ style,
  ``Name(device_manager, **arguments)``; any other class (ophyd devices...) is called
  ``Name(**arguments)``, with ``name=`` defaulting to the device's key when the
  constructor takes a ``name`` (explicitly, or through ``**kwargs`` for ophyd objects).
- ``{"type": "controller", "host": h, "port": p, "target": optional, ...}`` becomes a
  ``labpipe.protocol.rpc.Client(h, p, target)``, connected on first ``get``.
- a plain string is an alias for another key; aliases of one device share its instance.
- a virtual device (``scheduler``, ``ccb``...) given to the constructor is returned as
  is; it hides a database entry of the same name.

``close_devices()`` closes the devices created so far in reverse order of creation
(``close_rpc()`` for RPC clients, ``close()`` when a device has one); errors are logged,
never raised. ``requested`` lists the database keys the run asked for (as asked, aliases
not resolved; virtual devices not included), each once, in the order of first request:
the scheduler uses it for device-conflict checks.

Errors are ``DeviceError`` subclasses with one-line messages naming the key:
``DeviceNotFoundError`` (also a KeyError) for unknown keys and dangling aliases,
``DeviceAliasLoopError`` for alias loops, ``DeviceError`` for a device that cannot be
created (chained to the original exception).
"""

from __future__ import annotations

import importlib
import inspect
import logging
import sys
from collections.abc import Callable, Mapping
from typing import Any

from labpipe.protocol.rpc import Client

__all__ = ["DeviceManager", "DeviceError", "DeviceNotFoundError", "DeviceAliasLoopError",
           "follow_aliases", "StaticDeviceDB"]

logger = logging.getLogger(__name__)


class DeviceError(Exception):
    """A device cannot be found or created."""


class DeviceNotFoundError(DeviceError, KeyError):
    """A key (or an alias's target) that is not in the device database."""

    def __str__(self) -> str:  # KeyError would show the message in quotes
        return str(self.args[0]) if self.args else "device not found"


class DeviceAliasLoopError(DeviceError):
    """Aliases that lead back to themselves."""


def follow_aliases(lookup: Callable[[str], Any], key: str) -> tuple[str, Any]:
    """Follow aliases from key: return (final key, its entry).

    ``lookup(k)`` returns the raw entry of k and raises KeyError when k is unknown.
    """
    chain = [key]
    while True:
        try:
            entry = lookup(chain[-1])
        except KeyError:
            if len(chain) == 1:
                message = f"device {key!r} is not in the device database"
            else:
                message = (f"device {chain[-1]!r} is not in the device database "
                           f"(alias {' -> '.join(chain)})")
            raise DeviceNotFoundError(message) from None
        if not isinstance(entry, str):
            return chain[-1], entry
        if entry in chain:
            raise DeviceAliasLoopError(
                f"device {key!r}: alias loop {' -> '.join(chain + [entry])}")
        chain.append(entry)


class StaticDeviceDB:
    """A read-only device database over a plain dict (e.g. a copy sent to a worker)."""

    def __init__(self, device_db: Mapping[str, Any]):
        self.device_db = device_db

    def get_device_db(self) -> Mapping[str, Any]:
        """The whole database."""
        return self.device_db

    def get(self, key: str, resolve_alias: bool = False) -> Any:
        """The entry of key, following aliases with resolve_alias."""
        if resolve_alias:
            return follow_aliases(self.device_db.__getitem__, key)[1]
        try:
            return self.device_db[key]
        except KeyError:
            raise DeviceNotFoundError(f"device {key!r} is not in the device database") from None


def _call_style(cls: type) -> tuple[bool, bool]:
    """(ARTIQ style: first parameter named dmgr, pass name=) for a device class."""
    try:
        parameters = list(inspect.signature(cls).parameters.values())
    except (TypeError, ValueError):
        return False, False
    if parameters and parameters[0].name == "dmgr":
        return True, False
    names = {p.name for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    if "name" in names:
        return False, True
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        ophydobj = sys.modules.get("ophyd.ophydobj")  # loaded if cls is an ophyd class
        return False, ophydobj is not None and issubclass(cls, ophydobj.OphydObject)
    return False, False


class DeviceManager:
    """Creates, caches and closes the devices of one run."""

    def __init__(self, ddb: Any, virtual_devices: Mapping[str, Any] | None = None):
        self.ddb = ddb
        self.virtual_devices = dict(virtual_devices or {})
        #: database keys requested by the run, each once, in order of first request.
        self.requested: list[str] = []
        self._active: dict[str, Any] = {}  # final key -> device, in order of creation
        self._creating: list[str] = []
        self._streams: dict[str, Any] = {}  # stream devices: their windows' files

    def handed_out(self) -> dict[str, Any]:
        """key -> device of every device the run was given so far, the virtual ones
        (``scheduler``, ``ccb``) included."""
        return {**self.virtual_devices, **self._active}

    def _resolve(self, key: str) -> tuple[str, Any]:
        return follow_aliases(lambda k: self.ddb.get(k, resolve_alias=False), key)

    def get_desc(self, key: str) -> Any:
        """The database entry of key, aliases resolved."""
        return self._resolve(key)[1]

    def get(self, key: str) -> Any:
        """The device of key, created on first use."""
        if key in self.virtual_devices:
            return self.virtual_devices[key]
        try:
            final_key, desc = self._resolve(key)
        except DeviceNotFoundError:
            if key == "core":  # an ARTIQ experiment's self.setattr_device("core")
                raise DeviceNotFoundError(
                    "core: the ARTIQ core device is not supported by labpipe (device "
                    "'core' is not in the device database; labpipe runs host-only "
                    "experiments)") from None
            raise
        if key not in self.requested:
            self.requested.append(key)
        if final_key in self._active:
            return self._active[final_key]
        if final_key in self._creating:
            cycle = " -> ".join(self._creating[self._creating.index(final_key):] + [final_key])
            raise DeviceError(f"device {final_key!r}: circular dependency {cycle}")
        self._creating.append(final_key)
        try:
            device = self._create(final_key, desc)
        finally:
            self._creating.pop()
        self._active[final_key] = device
        return device

    def _create(self, key: str, desc: Any) -> Any:
        if not isinstance(desc, dict):
            raise DeviceError(f"device {key!r}: entry must be a dict or an alias string, "
                              f"not {type(desc).__name__}")
        kind = desc.get("type")
        if kind == "local":
            return self._create_local(key, desc)
        if kind == "stream":  # a labpipe-buffer's output (labpipe.stream.device)
            if not isinstance(desc.get("buffer"), str):
                raise DeviceError(f"device {key!r}: a stream entry needs 'buffer', the"
                                  " buffer's output address (tcp://HOST:PORT)")
            from labpipe.stream.device import Stream
            stream = Stream(key, desc["buffer"], float(desc.get("timeout", 60.0)))
            self._streams[key] = stream  # its window outlives close_devices
            return stream
        if kind == "controller":
            try:
                return Client(desc["host"], desc["port"], desc.get("target"))
            except KeyError as e:
                raise DeviceError(f"device {key!r}: controller entry lacks {e}") from None
            except Exception as e:
                raise DeviceError(f"device {key!r}: cannot reach controller at "
                                  f"{desc.get('host')}:{desc.get('port')}: "
                                  f"{type(e).__name__}: {e}") from e
        raise DeviceError(f"device {key!r}: unsupported type {kind!r} "
                          f"(expected 'local', 'controller' or 'stream')")

    def _create_local(self, key: str, desc: dict) -> Any:
        module_name, class_name = desc.get("module"), desc.get("class")
        arguments = dict(desc.get("arguments") or {})
        if not isinstance(module_name, str) or not isinstance(class_name, str):
            raise DeviceError(f"device {key!r}: a local entry needs 'module' and 'class' strings")
        where = f"{module_name}.{class_name}"
        try:
            module = importlib.import_module(module_name)
        except Exception as e:
            raise DeviceError(f"device {key!r}: cannot import module {module_name!r}: "
                              f"{type(e).__name__}: {e}") from e
        try:
            cls = getattr(module, class_name)
        except (AttributeError, TypeError):
            raise DeviceError(f"device {key!r}: module {module_name!r} has no "
                              f"class {class_name!r}") from None
        artiq_style, takes_name = _call_style(cls)
        try:
            if artiq_style:
                return cls(self, **arguments)
            if takes_name:
                arguments.setdefault("name", key)
            return cls(**arguments)
        except DeviceError:
            raise
        except Exception as e:
            raise DeviceError(f"device {key!r}: {where}(...) failed: "
                              f"{type(e).__name__}: {e}") from e

    def stream_spools(self) -> dict[str, str]:
        """{stream name: the file holding its window} of the run's stream devices."""
        spools = {}
        for key, stream in self._streams.items():
            path = stream.spool()
            if path is not None:
                spools[key] = path
        return spools

    def close_devices(self) -> None:
        """Close the devices created so far, newest first; errors are logged only."""
        devices, self._active = list(self._active.items()), {}
        for key, device in reversed(devices):
            try:
                if isinstance(device, Client):
                    device.close_rpc()
                elif callable(getattr(type(device), "close", None)):
                    device.close()
            except Exception:
                logger.warning("device %r: error while closing it", key, exc_info=True)
