"""The lock: one key that keeps the queue (and the environment) for whoever holds it.

``QueueLock(path, emergency_key)`` keeps the lock in one PYON file (``lock.pyon`` in the
lab directory), written atomically and fsynced before ``lock``/``unlock`` return, so a
lock survives a crash and a restart. The file holds no key, only a salted SHA-256 of
it: ``{"key_sha256", "salt", "scope", "note", "user", "time"}``. A file that cannot be
read leaves the master locked (both scopes): only the emergency key opens it.

Scopes (bluesky-queueserver's "environment" and "queue" locks):

- ``"queue"``: every request that changes the queue (``gate.ACTIONS``, scope queue);
- ``"environment"``: terminating the master, rescanning devices, writing datasets,
  executing functions (scope environment).

A refused request gets one ``PermissionError`` line naming who locked it, when, and the
note; passing it takes ``lock_key=`` (the lock's key, or the emergency key). Reads never
need it.

The ``lock`` RPC target (``LockTarget``): ``lock(key, scope=("queue", "environment"),
note=None, user=None)``, ``unlock(key)``, ``info()``. The ``lock`` notifier holds what
``info()`` returns: ``{"locked", "scope", "note", "user", "time"}`` (no key).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import secrets
import time
from typing import Any

from labpipe.master.access.caller import current_caller
from labpipe.protocol import pyon
from labpipe.protocol.sync import Notifier

__all__ = ["QueueLock", "LockTarget", "LockRefused", "SCOPES", "FILE_NAME",
           "read_emergency_key"]

logger = logging.getLogger(__name__)

FILE_NAME = "lock.pyon"
SCOPES = ("queue", "environment")
_UNLOCKED: dict[str, Any] = {"locked": False, "scope": [], "note": None, "user": None,
                             "time": None}


class LockRefused(PermissionError):
    """A request the lock refuses (one line: who, when, the note, the remedy)."""


def read_emergency_key(path: str) -> str:
    """The first line of an emergency key file; ValueError (one line) when it cannot
    be read or is empty."""
    try:
        with open(path, encoding="utf-8") as f:
            key = f.readline(4097).strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"emergency lock key file {path}: cannot be read: "
                         f"{getattr(exc, 'strerror', None) or exc}") from None
    if not key:
        raise ValueError(f"emergency lock key file {path}: its first line is empty")
    return key


def _digest(salt: str, key: str) -> str:
    return hashlib.sha256((salt + "\0" + key).encode("utf-8", "surrogatepass")).hexdigest()


def _when(t: float | None) -> str:
    if t is None:
        return "an unknown time"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


class QueueLock:
    """The lock's state, its file and its notifier; see the module docstring."""

    def __init__(self, path: str, emergency_key: str | None = None):
        self.path = path
        self._emergency = emergency_key
        self._stored: dict[str, Any] | None = None
        self._serial = asyncio.Lock()
        self.notifier = Notifier(dict(_UNLOCKED))
        self._load()

    def _load(self) -> None:
        if not os.path.exists(self.path):
            return
        try:
            stored = pyon.load_file(self.path)
            if not isinstance(stored, dict) or not {"key_sha256", "salt", "scope"} <= set(
                    stored) or not set(stored["scope"]) <= set(SCOPES):
                raise ValueError("not a lock record")
        except Exception as exc:
            logger.error("%s cannot be read (%s): the master stays locked until the "
                         "emergency key unlocks it", self.path, exc)
            stored = {"key_sha256": None, "salt": "", "scope": list(SCOPES),
                      "note": f"{FILE_NAME} could not be read: unlock with the emergency "
                              "key", "user": None, "time": None}
        self._stored = stored
        self._publish()

    def _publish(self) -> None:
        state = self.info()
        for key, value in state.items():
            if self.notifier.raw_view.get(key) != value:
                self.notifier[key] = value

    # --- what the gate asks -----------------------------------------------------------

    def opens(self, key: str | None) -> bool:
        """Whether key is the lock's key or the emergency key."""
        if key is None:
            return False
        if self._emergency is not None and hmac.compare_digest(
                key.encode("utf-8", "surrogatepass"),
                self._emergency.encode("utf-8", "surrogatepass")):
            return True
        stored = self._stored
        return (stored is not None and stored["key_sha256"] is not None
                and hmac.compare_digest(_digest(stored["salt"], key), stored["key_sha256"]))

    @property
    def emergency_key_set(self) -> bool:
        """Whether the lab has an emergency key."""
        return self._emergency is not None

    def check(self, scope: str, what: str, key: str | None) -> None:
        """Refuse (``LockRefused``) what (``schedule.submit``...) of scope while that
        scope is locked and key does not open the lock."""
        stored = self._stored
        if stored is None or scope not in stored["scope"] or self.opens(key):
            return
        raise LockRefused(f"{what}: refused, the {'queue' if scope == 'queue' else 'environment'}"
                          f" is locked{self._by()}; give the lock's key (lock_key=, "
                          "labpipe-client --lock-key KEY)")

    def _by(self) -> str:
        stored = self._stored
        assert stored is not None
        user = stored.get("user")
        note = stored.get("note")
        return (f" by {user or 'an unnamed user'} since {_when(stored.get('time'))}"
                + (f" (note: {note})" if note else " (no note)"))

    # --- the RPC methods --------------------------------------------------------------

    async def lock(self, key: str, scope: list[str] | tuple[str, ...] = SCOPES,
                   note: str | None = None, user: str | None = None) -> dict[str, Any]:
        """Lock scope (``"queue"``, ``"environment"`` or both) with key; on disk before
        it returns. Locking again with the same key (or the emergency key) changes the
        scope, note and user; with another key it is refused, naming who holds it."""
        scopes = sorted(set(scope), key=SCOPES.index)
        if not scopes:
            raise ValueError("lock.lock: scope must name 'queue', 'environment' or both")
        async with self._serial:
            if self._stored is not None and not self.opens(key):
                raise LockRefused(f"lock.lock: refused, already locked{self._by()}")
            salt = secrets.token_hex(16)
            record = {"key_sha256": _digest(salt, key), "salt": salt, "scope": scopes,
                      "note": note, "user": user or current_caller.get().user,
                      "time": time.time()}
            await asyncio.to_thread(pyon.store_file, self.path, record)
            self._stored = record
            self._publish()
            logger.info("locked (%s) by %s: %s", ", ".join(scopes),
                        record["user"] or "an unnamed user", note or "no note")
        return self.info()

    async def unlock(self, key: str) -> dict[str, Any]:
        """Unlock with the lock's key or the emergency key; on disk before it returns.
        Unlocking what is not locked does nothing."""
        async with self._serial:
            if self._stored is None:
                return self.info()
            if not self.opens(key):
                raise LockRefused(f"lock.unlock: refused, that is not the key of the "
                                  f"lock{self._by()} (nor the emergency key)")
            await asyncio.to_thread(_remove, self.path)
            self._stored = None
            self._publish()
            logger.info("unlocked")
        return self.info()

    def info(self) -> dict[str, Any]:
        """``{"locked", "scope", "note", "user", "time"}`` (never the key)."""
        stored = self._stored
        if stored is None:
            return dict(_UNLOCKED)
        return {"locked": True, "scope": list(stored["scope"]), "note": stored.get("note"),
                "user": stored.get("user"), "time": stored.get("time")}


def _remove(path: str) -> None:
    """Remove path and make the removal durable (the folder fsynced)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LockTarget:
    """The ``lock`` RPC target: lock, unlock, info (docs/access.md)."""

    def __init__(self, lock: QueueLock):
        self._lock = lock

    async def lock(self, key: str, scope: list[str] | tuple[str, ...] = SCOPES,
                   note: str | None = None, user: str | None = None) -> dict[str, Any]:
        """Lock the queue and/or the environment with key (see ``QueueLock.lock``)."""
        return await self._lock.lock(key, scope, note, user)

    async def unlock(self, key: str) -> dict[str, Any]:
        """Unlock with the lock's key or the lab's emergency key."""
        return await self._lock.unlock(key)

    def info(self) -> dict[str, Any]:
        """Whether it is locked, which scopes, by whom, since when, the note."""
        return self._lock.info()
