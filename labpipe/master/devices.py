"""The master's device database: ``device_db.py`` loaded, checked and published.

Contract (``docs/internals.md``, RPC target ``device_db`` of ``wire-compat.md``):

- ``DeviceDB(path)`` runs ``path`` (a trusted local Python file defining the dict
  ``device_db``) with ``runpy.run_path`` and checks it; ``data`` is a Notifier over the
  dict (the ``devices`` notifier).
- ``scan()`` runs the file again. A broken edit (syntax error, exception, ``device_db``
  missing or not a dict, an entry of bad shape, an alias loop, a value PYON cannot
  encode) raises ``DeviceDBError`` with one line saying what and where, and the last good
  version stays in force. Otherwise only the differences are published: a ``delitem``
  per removed key, a ``setitem`` per added or changed key, nothing for unchanged entries.
- ``get_device_db()`` returns the whole dict (read it, never mutate it);
  ``get(key, resolve_alias=False)`` one entry, following aliases when asked. Unknown
  keys raise ``DeviceNotFoundError`` (a KeyError), alias loops ``DeviceAliasLoopError``.

Accepted entries (``wire-compat.md``):

- ``{"type": "local", "module": str, "class": str, "arguments": dict (optional), ...}``
- ``{"type": "controller", "host": str, "port": int, "target": str (optional), ...}``
- a str: an alias for another key. An alias to a missing key is accepted with a logged
  warning (it fails when used); an alias loop is refused.

Other keys in an entry are kept and published as they are.

``DeviceDBTarget(ddb)`` is the ``device_db`` RPC target: the same methods, but its
``scan`` is a coroutine that runs the file in a thread (a slow ``device_db.py`` must
not stop the master from answering) and publishes on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import runpy
import traceback
from typing import Any

from labpipe.protocol import pyon
from labpipe.protocol.sync import Notifier
from labpipe.worker.devices import (DeviceAliasLoopError, DeviceNotFoundError,
                                    follow_aliases)

__all__ = ["DeviceDB", "DeviceDBTarget", "DeviceDBError", "DeviceNotFoundError", "DeviceAliasLoopError"]

logger = logging.getLogger(__name__)


class DeviceDBError(ValueError):
    """device_db.py cannot be loaded; the message is one line saying why."""


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _error_line(path: str, error: BaseException) -> int | None:
    """The line of path where error was raised, from its traceback."""
    target = os.path.abspath(path)
    line = None
    for frame in traceback.extract_tb(error.__traceback__):
        if os.path.abspath(frame.filename) == target:
            line = frame.lineno
    return line


def _check_entry(key: Any, entry: Any) -> str | None:
    """What is wrong with one entry, or None."""
    if not isinstance(key, str):
        return f"key {key!r} is not a str"
    if isinstance(entry, str):
        return None
    if not isinstance(entry, dict):
        return f"device {key!r}: an entry must be a dict or an alias string, " \
               f"not {type(entry).__name__}"
    kind = entry.get("type")
    if kind == "local":
        for field in ("module", "class"):
            if not isinstance(entry.get(field), str):
                return f"device {key!r}: a local entry needs a {field!r} string"
        if not isinstance(entry.get("arguments", {}), dict):
            return f"device {key!r}: 'arguments' must be a dict"
    elif kind == "controller":
        if not isinstance(entry.get("host"), str):
            return f"device {key!r}: a controller entry needs a 'host' string"
        port = entry.get("port")
        if not isinstance(port, int) or isinstance(port, bool):
            return f"device {key!r}: a controller entry needs an integer 'port'"
        if entry.get("target") is not None and not isinstance(entry["target"], str):
            return f"device {key!r}: 'target' must be a string"
    elif kind == "stream":  # a labpipe-buffer's output (labpipe.stream)
        if not isinstance(entry.get("buffer"), str):
            return f"device {key!r}: a stream entry needs a 'buffer' string" \
                   " (the buffer's output, tcp://HOST:PORT)"
    else:
        return f"device {key!r}: type {kind!r} is not 'local', 'controller' or 'stream'"
    return None


class DeviceDB:
    """The device database of the master; see the module docstring for the contract."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        device_db, self._encoded = self._load()
        self.data = Notifier(device_db)

    def _run_file(self) -> dict:
        name = os.path.basename(self.path)
        try:
            namespace = runpy.run_path(self.path, run_name="device_db")
        except SyntaxError as e:
            raise DeviceDBError(f"{name}: line {e.lineno}: syntax error: "
                                f"{_one_line(e.msg)}") from None
        except OSError as e:
            if e.filename is None or os.path.abspath(e.filename) != os.path.abspath(self.path):
                raise self._code_error(e) from None  # raised by the code in the file
            raise DeviceDBError(f"{name}: cannot read {self.path}: "
                                f"{e.strerror or e}") from None
        except (Exception, SystemExit) as e:
            raise self._code_error(e) from None
        if "device_db" not in namespace:
            raise DeviceDBError(f"{name} does not define the dict device_db")
        device_db = namespace["device_db"]
        if not isinstance(device_db, dict):
            raise DeviceDBError(f"{name}: device_db must be a dict, "
                                f"not {type(device_db).__name__}")
        return device_db

    def _code_error(self, error: BaseException) -> DeviceDBError:
        """The one-line error for an exception raised while running the file."""
        line = _error_line(self.path, error)
        name = os.path.basename(self.path)
        where = f"{name}: line {line}" if line is not None else name
        return DeviceDBError(f"{where}: {type(error).__name__}: {_one_line(error)}")

    def _load(self) -> tuple[dict, dict[str, str]]:
        """Run and check the file: (device_db, PYON text of each entry)."""
        name = os.path.basename(self.path)
        device_db = self._run_file()
        encoded = {}
        for key, entry in device_db.items():
            problem = _check_entry(key, entry)
            if problem is None:
                try:
                    encoded[key] = pyon.encode(entry)
                except (TypeError, ValueError) as e:
                    problem = f"device {key!r}: cannot be published: {e}"
            if problem is not None:
                raise DeviceDBError(f"{name}: {_one_line(problem)}")
        for key, entry in device_db.items():
            if isinstance(entry, str):
                try:
                    follow_aliases(device_db.__getitem__, key)
                except DeviceAliasLoopError as e:
                    raise DeviceDBError(f"{name}: {e}") from None
                except DeviceNotFoundError as e:
                    logger.warning("%s: %s", name, e)
        return device_db, encoded

    def scan(self) -> None:
        """Reload the file and publish the differences (rules in the module docstring)."""
        self._publish(*self._load_for_scan())

    def _load_for_scan(self) -> tuple[dict, dict[str, str]]:
        """Run and check the file for a scan (thread-safe: publishes nothing)."""
        try:
            return self._load()
        except DeviceDBError as e:
            raise DeviceDBError(f"{e}; the previous device database stays in force") from None

    def _publish(self, new: dict, encoded: dict[str, str]) -> None:
        """Publish the differences between the database in force and new."""
        old = self.data.raw_view
        for key in [key for key in old if key not in new]:
            self._encoded.pop(key, None)
            del self.data[key]
        for key, entry in new.items():
            if self._encoded.get(key) != encoded[key]:
                self._encoded[key] = encoded[key]
                self.data[key] = entry

    def get_device_db(self) -> dict:
        """The whole device database (do not mutate it)."""
        return self.data.raw_view

    def get(self, key: str, resolve_alias: bool = False) -> Any:
        """The entry of key; with resolve_alias, the entry an alias chain leads to."""
        device_db = self.data.raw_view
        if resolve_alias:
            return follow_aliases(device_db.__getitem__, key)[1]
        try:
            return device_db[key]
        except (KeyError, TypeError):
            raise DeviceNotFoundError(f"device {key!r} is not in the device database") from None


class DeviceDBTarget:
    """The ``device_db`` RPC target (see the module docstring)."""

    def __init__(self, ddb: DeviceDB):
        self._ddb = ddb
        self._scan_lock = asyncio.Lock()

    async def scan(self) -> None:
        """Reload ``device_db.py`` (in a thread) and publish the differences."""
        async with self._scan_lock:  # scans publish in the order they read the file
            loaded = await asyncio.to_thread(self._ddb._load_for_scan)
            self._ddb._publish(*loaded)

    def get_device_db(self) -> dict:
        """The whole device database."""
        return self._ddb.get_device_db()

    def get(self, key: str, resolve_alias: bool = False) -> Any:
        """The entry of key; with resolve_alias, the entry an alias chain leads to."""
        return self._ddb.get(key, resolve_alias)
