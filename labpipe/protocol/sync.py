"""Synchronised structures: the notify port (ARTIQ's ``sync_struct`` protocol).

One process owns a structure (dicts, lists, tuples, numpy arrays, nested) and changes it
only through a ``Notifier``; every change is described by a *mod*, a plain dict that
``apply_mod`` replays on a copy. ``Publisher`` serves notifiers on TCP; ``Subscriber``
keeps a local copy of one of them.

Mods (exactly the wire shapes; ``path`` lists the keys/indices from the root to the
container that changed)::

    {"action": "init", "struct": FULL_COPY}            # first line to each subscriber
    {"action": "setitem", "path": [...], "key": k, "value": v}
    {"action": "delitem", "path": [...], "key": k}
    {"action": "append", "path": [...], "x": v}
    {"action": "insert", "path": [...], "i": n, "x": v}
    {"action": "pop", "path": [...], "i": n}

Notifier contract:

- ``n[k] = v``, ``del n[k]``, ``n.append(x)``, ``n.insert(i, x)``, ``n.pop(i=-1)``
  mutate the backing structure, then call every listener synchronously with the mod.
  A mutation that raises publishes nothing. A listener that raises is logged (with its
  traceback) and the others are still called; the error never reaches the caller, whose
  mutation is applied and who must be able to carry on (e.g. ``end_run`` half way).
- ``n[k]`` returns a Notifier view for the sub-path (it raises KeyError/IndexError if
  ``k`` is missing). A view stores its path, not the object: it always acts on whatever
  is at that path now, so mods stay consistent with what subscribers hold.
- A path may go *through* a tuple (datasets are ``(persist, value, metadata)``):
  ``n[key][1][i] = v`` changes the array or list inside the tuple and publishes
  ``setitem`` at path ``[key, 1]``. A tuple itself cannot change: mutating it raises
  TypeError and publishes nothing; replace the whole tuple instead.
- ``n.raw_view`` is the object at the view's path (read it, never mutate it directly).
- ``add_listener(cb)`` / ``remove_listener(cb)``: listeners live on the root notifier,
  whichever view they are added through.
- A mod's ``value``/``x`` is the very object stored in the structure, not a copy:
  listeners must not mutate it, and an in-process mirror must copy it
  (``copy.deepcopy(mod)``) before ``apply_mod``, or both structures share the object.
- Not thread-safe: mutate from the thread running the Publisher's event loop.

Publisher contract (a TCP server on the notify port, default 3250):

- The client sends ``ARTIQ sync_struct`` then the notifier name, one line each; the
  server answers the init mod then one PYON line per mod. A wrong banner or an unknown
  name closes the connection.
- The init and all later mods are taken in the same event-loop step, so a subscriber
  sees each mutation exactly once, in order.
- A content or mod that PYON cannot encode (a bug upstream: values should be checked
  where they enter) closes the subscribers concerned with one log line each time
  (no traceback); the other notifiers and later subscribers are unaffected.
- Each mod is encoded once per notifier (and not at all while nobody subscribes); the
  same bytes are queued for every subscriber.
- A subscriber that keeps up gets every mod. One that lags (a backlog of half its
  ``queue_limit``, at most 64 mods, or 1 MiB) gets the latest value instead of a
  growing backlog: a root-level ``setitem`` or ``delitem`` of key k then replaces every
  mod under k still queued for it (a dataset set 10,000 times while the subscriber
  reads one line arrives once, with its last value). Mods of different keys keep their
  order; the copy ends equal to the master's.
- Each subscriber has a bounded queue (``queue_limit`` mods and ``queue_bytes`` bytes;
  the init is not counted, and one mod larger than ``queue_bytes`` passes when nothing
  else is queued). A subscriber that falls behind either bound is disconnected
  (it reconnects and gets a fresh init); the master's memory never grows without bound.
  One writer task per connection writes and drains, so a slow socket never blocks the
  event loop or the other subscribers.

Subscriber contract: ``Subscriber(name, target_builder, notify_cb=None,
disconnect_cb=None)``; ``await connect(host, port, before_receive_cb=None)``,
``await close()``. ``target_builder(struct)`` builds the local copy from the init (its
return value is ``.target``, also named ``.model``); later mods are applied to it with
``apply_mod``; ``notify_cb(mod)`` (a callable or a list of them) runs after each mod,
init included; the mod shares its objects with the copy (copy it to keep it as it
was). ``disconnect_cb()`` runs when the connection ends other than by ``close()``:
server gone, a line that does not decode, or an exception from target_builder,
apply_mod or notify_cb (logged). Call ``connect`` again to get a fresh init.

``Outbox`` (bounded queue and writer of one server connection) and ``LineClient``
(banner, name, then one callback per line) are shared with ``broadcast``.
"""

from __future__ import annotations

import asyncio
import logging
import ssl as _ssl
from collections import deque
from collections.abc import Hashable
from typing import Any, Callable, Literal, TypedDict, Union, cast

from . import pyon
from .server import AsyncioServer, read_line

__all__ = ["Notifier", "apply_mod", "Publisher", "Subscriber", "Mod", "PathMod",
           "InitMod", "SetItemMod", "DelItemMod", "AppendMod", "InsertMod", "PopMod",
           "Outbox", "DEFAULT_QUEUE_LIMIT", "DEFAULT_QUEUE_BYTES"]

logger = logging.getLogger(__name__)

BANNER = "ARTIQ sync_struct"

#: Default bound on the mods waiting for one subscriber.
DEFAULT_QUEUE_LIMIT = 10_000
#: Default bound on the bytes waiting for one subscriber (the init not counted).
DEFAULT_QUEUE_BYTES = 64 * 1024 * 1024
#: Longest line a client accepts from a server (an init can be large).
CLIENT_MAX_LINE_LENGTH = 1024 * 1024 * 1024


# The mods, one TypedDict per action (the wire shapes of the module docstring). ``path``
# is the list of keys/indices from the root to the container that changed.

class InitMod(TypedDict):
    """The whole structure, the first line to each subscriber."""
    action: Literal["init"]
    struct: Any


class SetItemMod(TypedDict):
    """``container[key] = value``."""
    action: Literal["setitem"]
    path: list[Any]
    key: Any
    value: Any


class DelItemMod(TypedDict):
    """``del container[key]``."""
    action: Literal["delitem"]
    path: list[Any]
    key: Any


class AppendMod(TypedDict):
    """``container.append(x)``."""
    action: Literal["append"]
    path: list[Any]
    x: Any


class InsertMod(TypedDict):
    """``container.insert(i, x)``."""
    action: Literal["insert"]
    path: list[Any]
    i: int
    x: Any


class PopMod(TypedDict):
    """``container.pop(i)``: an index of a list, or a key of a dict."""
    action: Literal["pop"]
    path: list[Any]
    i: Any


#: A change at a path: what ``apply_mod`` replays.
PathMod = Union[SetItemMod, DelItemMod, AppendMod, InsertMod, PopMod]
#: Anything a notifier publishes or a subscriber receives.
Mod = Union[InitMod, PathMod]
Listener = Callable[[Mod], None]


def _traverse(obj: Any, path: list[Any] | tuple[Any, ...]) -> Any:
    for key in path:
        obj = obj[key]
    return obj


def apply_mod(target: Any, mod: Mod) -> None:
    """Apply one mod (not init) to target, a plain structure or any object with item access.

    The path may go through tuples; the container it ends at must be mutable.
    Raises ValueError on an init or an unknown action, and whatever the container raises.
    """
    if mod["action"] == "init":
        raise ValueError("an init mod replaces the whole structure: build a new target")
    container = _traverse(target, mod["path"])
    if mod["action"] == "setitem":
        container[mod["key"]] = mod["value"]
    elif mod["action"] == "delitem":
        del container[mod["key"]]
    elif mod["action"] == "append":
        container.append(mod["x"])
    elif mod["action"] == "insert":
        container.insert(mod["i"], mod["x"])
    elif mod["action"] == "pop":
        container.pop(mod["i"])
    else:
        # only a mod decoded from the wire gets here: its action is not one of the above
        raise ValueError(f"cannot apply a mod with action {mod['action']!r}")


class Notifier:
    """Wraps a structure; every mutation through it is published to its listeners as a mod.

    ``Notifier(backing)`` makes a root; ``notifier[key]`` makes a view on a sub-path.
    """

    def __init__(self, backing: Any):
        self._root = self
        self._path: tuple[Any, ...] = ()
        self._backing = backing
        self._listeners: list[Listener] = []

    def _view(self, key: Any) -> Notifier:
        view = object.__new__(Notifier)
        view._root = self._root
        view._path = self._path + (key,)
        return view

    @property
    def raw_view(self) -> Any:
        """The object at this notifier's path in the backing structure (read only)."""
        return _traverse(self._root._backing, self._path)

    def add_listener(self, cb: Listener) -> None:
        """Call cb(mod) after every mutation anywhere in the structure."""
        self._root._listeners.append(cb)

    def remove_listener(self, cb: Listener) -> None:
        """Stop calling cb; does nothing if cb is not a listener."""
        try:
            self._root._listeners.remove(cb)
        except ValueError:
            pass

    def _container(self) -> Any:
        container = self.raw_view
        if isinstance(container, tuple):
            raise TypeError(
                f"the object at path {list(self._path)} is a tuple and cannot be modified; "
                "replace the whole tuple from its parent instead")
        return container

    def _publish(self, mod: Mod) -> None:
        for cb in tuple(self._root._listeners):
            try:
                cb(mod)
            except Exception:
                # never into the caller: it changed the state and must finish its work
                logger.exception("notifier listener %r failed on a %s mod at path %s",
                                 cb, mod.get("action"), mod.get("path"))

    def __getitem__(self, key: Any) -> Notifier:
        view = self._view(key)
        view.raw_view  # raises KeyError/IndexError now rather than at the first mutation
        return view

    def __setitem__(self, key: Any, value: Any) -> None:
        self._container()[key] = value
        self._publish({"action": "setitem", "path": list(self._path),
                       "key": key, "value": value})

    def __delitem__(self, key: Any) -> None:
        del self._container()[key]
        self._publish({"action": "delitem", "path": list(self._path), "key": key})

    def append(self, x: Any) -> None:
        """Append x to the list at this path."""
        self._container().append(x)
        self._publish({"action": "append", "path": list(self._path), "x": x})

    def insert(self, i: int, x: Any) -> None:
        """Insert x before index i in the list at this path."""
        self._container().insert(i, x)
        self._publish({"action": "insert", "path": list(self._path), "i": i, "x": x})

    def pop(self, i: Any = -1) -> Any:
        """Remove and return the item at index i (key i for a dict) at this path."""
        value = self._container().pop(i)
        self._publish({"action": "pop", "path": list(self._path), "i": i})
        return value

    # Without this, Python would iterate by calling __getitem__(0), (1), ...
    __iter__ = None

    def __repr__(self) -> str:
        return f"<Notifier path={list(self._path)}>"


async def _discard_until_eof(reader: asyncio.StreamReader) -> None:
    while await reader.read(65536):
        pass


#: A subscriber with this many bytes queued is lagging: its mods get coalesced.
LAGGING_BYTES = 1 << 20


def _root_key(mod: Mod) -> tuple[Hashable | None, bool]:
    """(the root key a mod touches, whether it overwrites everything under it)."""
    path = mod.get("path")
    if not isinstance(path, list):
        return None, False
    key = path[0] if path else mod.get("key")
    try:
        hash(key)
    except TypeError:
        return None, False
    return key, not path and mod["action"] in ("setitem", "delitem")


class Outbox:
    """The bounded queue of encoded lines for one connection, and its writer loop.

    Shared by the Publisher and the Broadcaster. ``put`` never blocks; when a bound
    would be exceeded the queue is emptied, the connection aborted and every later
    ``put`` ignored.
    """

    def __init__(self, writer: asyncio.StreamWriter, queue_limit: int, queue_bytes: int,
                 what: str):
        peer = writer.get_extra_info("peername")
        self._writer = writer
        self._queue_limit = queue_limit
        self._queue_bytes = queue_bytes
        self._label = f"{what} at {peer[0]}:{peer[1]}" if peer else what
        self._lines: deque[bytes] = deque()
        self._keys: deque[Hashable | None] = deque()  # the root key of each line, or None
        self._queued_per_key: dict[Hashable, int] = {}
        self._lagging_lines = min(64, max(1, queue_limit // 2))
        self._bytes = 0
        self._ready = asyncio.Event()
        self.dropped = False

    @property
    def backlog(self) -> tuple[int, int]:
        """(lines, bytes) queued and not yet handed to the socket."""
        return len(self._lines), self._bytes

    def put(self, line: bytes, key: Hashable | None = None,
            supersedes: bool = False) -> bool:
        """Queue one line; False if the connection is (now) dropped.

        ``key`` is the root key the line's mod touches (None: not keyed); with
        ``supersedes`` (a root-level setitem/delitem) the queued lines of that key are
        dropped first, since this one overwrites what they did.
        """
        if self.dropped:
            return False
        if (key is not None and supersedes and self._queued_per_key.get(key)
                and (len(self._lines) >= self._lagging_lines or self._bytes >= LAGGING_BYTES)):
            self._drop_key(key)
        # A single line larger than queue_bytes still passes when nothing is queued.
        if (len(self._lines) >= self._queue_limit
                or (self._lines and self._bytes + len(line) > self._queue_bytes)):
            logger.warning("%s cannot keep up (%d lines, %d bytes queued): disconnected",
                           self._label, len(self._lines), self._bytes)
            self.abort()
            return False
        self._lines.append(line)
        self._keys.append(key)
        if key is not None:
            self._queued_per_key[key] = self._queued_per_key.get(key, 0) + 1
        self._bytes += len(line)
        self._ready.set()
        return True

    def _drop_key(self, key: Hashable) -> None:
        kept_lines: deque[bytes] = deque()
        kept_keys: deque[Hashable | None] = deque()
        for line, k in zip(self._lines, self._keys):
            if k == key:
                self._bytes -= len(line)
            else:
                kept_lines.append(line)
                kept_keys.append(k)
        self._lines, self._keys = kept_lines, kept_keys
        del self._queued_per_key[key]

    def _pop(self) -> bytes:
        line = self._lines.popleft()
        key = self._keys.popleft()
        if key is not None:
            left = self._queued_per_key[key] - 1
            if left:
                self._queued_per_key[key] = left
            else:
                del self._queued_per_key[key]
        self._bytes -= len(line)
        return line

    def abort(self) -> None:
        """Drop the queue and the connection at once."""
        self.dropped = True
        self._lines.clear()
        self._keys.clear()
        self._queued_per_key.clear()
        self._bytes = 0
        self._ready.set()
        self._writer.transport.abort()

    async def _write_loop(self) -> None:
        while True:
            while self._lines:
                line = self._pop()
                self._writer.write(line)
                await self._writer.drain()
            if self.dropped:
                return
            self._ready.clear()
            await self._ready.wait()

    async def serve(self, reader: asyncio.StreamReader) -> None:
        """Write queued lines until the peer hangs up or the outbox is dropped.

        Anything the peer sends meanwhile is read and discarded.
        """
        writing = asyncio.create_task(self._write_loop())
        watching = asyncio.create_task(_discard_until_eof(reader))
        try:
            await asyncio.wait((writing, watching), return_when=asyncio.FIRST_COMPLETED)
        finally:
            writing.cancel()
            watching.cancel()
            await asyncio.gather(writing, watching, return_exceptions=True)


class Publisher(AsyncioServer):
    """Serves notifiers on the notify port; see the module docstring.

    queue_limit and queue_bytes bound what may wait for one subscriber.
    """

    handshake_lines = 2  # the banner, then the name line

    def __init__(self, notifiers: dict[str, Notifier], *,
                 queue_limit: int = DEFAULT_QUEUE_LIMIT,
                 queue_bytes: int = DEFAULT_QUEUE_BYTES, **kwargs: Any):
        super().__init__(**kwargs)
        self.notifiers = dict(notifiers)
        self.queue_limit = queue_limit
        self.queue_bytes = queue_bytes
        self._outboxes: dict[str, set[Outbox]] = {name: set() for name in self.notifiers}
        self._listeners = {name: self._make_listener(name) for name in self.notifiers}

    def _make_listener(self, name: str) -> Listener:
        def listener(mod: Mod) -> None:
            self._publish(name, mod)
        return listener

    async def start(self, host: str | list[str] = "127.0.0.1", port: int = 0,
                    ssl: _ssl.SSLContext | None = None) -> None:
        """Start listening and publishing the notifiers' mods (TLS with ``ssl``)."""
        for name, notifier in self.notifiers.items():
            notifier.add_listener(self._listeners[name])
        try:
            await super().start(host, port, ssl=ssl)
        except BaseException:
            self._remove_listeners()
            raise

    async def stop(self) -> None:
        """Disconnect every subscriber and stop listening."""
        self._remove_listeners()
        await super().stop()

    def _remove_listeners(self) -> None:
        for name, notifier in self.notifiers.items():
            notifier.remove_listener(self._listeners[name])

    def backlogs(self, name: str) -> list[tuple[int, int]]:
        """(lines, bytes) waiting for each current subscriber of notifier name."""
        return [outbox.backlog for outbox in self._outboxes[name]]

    def _publish(self, name: str, mod: Mod) -> None:
        outboxes = self._outboxes[name]
        if not outboxes:
            return
        try:
            line = (pyon.encode(mod) + "\n").encode("ascii")
        except (TypeError, ValueError) as e:
            logger.error("notifier %r: cannot encode a mod (%s); disconnecting its %d "
                         "subscriber(s)", name, e, len(outboxes))
            for outbox in list(outboxes):
                outbox.abort()
            return
        key, supersedes = _root_key(mod)
        for outbox in list(outboxes):
            outbox.put(line, key, supersedes)

    async def _handle_connection_cr(self, reader: asyncio.StreamReader,
                                    writer: asyncio.StreamWriter) -> None:
        if await read_line(reader) != BANNER:
            return
        name = await read_line(reader)
        if name not in self.notifiers:
            logger.debug("sync: unknown notifier %.100r requested", name)
            return
        # From encoding the init to registering the outbox there is no await: every
        # later mod reaches this subscriber, and no earlier one.
        try:
            init = pyon.encode({"action": "init", "struct": self.notifiers[name].raw_view})
        except (TypeError, ValueError) as e:
            logger.error("notifier %r: cannot encode its content for a new subscriber "
                         "(%s); closing that connection", name, e)
            return
        writer.write((init + "\n").encode("ascii"))
        outbox = Outbox(writer, self.queue_limit, self.queue_bytes,
                        f"sync subscriber of {name!r}")
        self._outboxes[name].add(outbox)
        try:
            await outbox.serve(reader)
        finally:
            self._outboxes[name].discard(outbox)


class LineClient:
    """A client that sends a banner and a name, then handles each received line.

    The base of Subscriber and broadcast.Receiver.
    """

    _banner = ""

    def __init__(self, name: str, disconnect_cb: Callable[[], None] | None):
        self._name = name
        self.disconnect_cb = disconnect_cb
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    async def _connect(self, host: str, port: int,
                       before_receive_cb: Callable[[], None] | None = None,
                       ssl: _ssl.SSLContext | None = None) -> None:
        if self._task is not None:
            if not self._task.done():
                raise RuntimeError("already connected; close() first")
            await self.close()  # the previous connection ended by itself
        reader, writer = await asyncio.open_connection(host, port, ssl=ssl,
                                                       limit=CLIENT_MAX_LINE_LENGTH)
        try:
            if before_receive_cb is not None:
                before_receive_cb()
            writer.write(f"{self._banner}\n{self._name}\n".encode("utf-8"))
        except BaseException:
            writer.close()
            raise
        self._writer = writer
        self._closing = False
        self._task = asyncio.create_task(self._receive(reader, writer))

    async def close(self) -> None:
        """Disconnect (disconnect_cb is not called) and wait for the receiver to end."""
        self._closing = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
            try:
                await writer.wait_closed()
            except (OSError, asyncio.CancelledError):
                pass

    def _handle(self, text: str) -> None:
        raise NotImplementedError

    async def _receive(self, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter) -> None:
        try:
            while (line := await read_line(reader)) is not None:
                self._handle(line)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("%s %r: receiving failed, disconnecting",
                             type(self).__name__, self._name)
        finally:
            writer.close()
        if not self._closing and self.disconnect_cb is not None:
            try:
                self.disconnect_cb()
            except Exception:
                logger.exception("disconnect_cb of %s %r failed",
                                 type(self).__name__, self._name)


class Subscriber(LineClient):
    """Keeps a local copy of one notifier of a Publisher; see the module docstring."""

    _banner = BANNER

    def __init__(self, notifier_name: str, target_builder: Callable[[Any], Any],
                 notify_cb: Callable[[Mod], None] | list[Callable[[Mod], None]] | None = None,
                 disconnect_cb: Callable[[], None] | None = None):
        super().__init__(notifier_name, disconnect_cb)
        self.notifier_name = notifier_name
        self.target_builder = target_builder
        if notify_cb is None:
            notify_cb = []
        self.notify_cbs = list(notify_cb) if isinstance(notify_cb, list) else [notify_cb]
        self.target: Any = None
        self._got_init = False

    @property
    def model(self) -> Any:
        """The local copy (same as ``target``)."""
        return self.target

    async def connect(self, host: str, port: int,
                      before_receive_cb: Callable[[], None] | None = None,
                      ssl: _ssl.SSLContext | None = None) -> None:
        """Connect and subscribe; before_receive_cb() runs once connected, before any mod.

        ``ssl``: a client SSLContext (``tls.client_context``) for a TLS master.
        """
        self._got_init = False
        await self._connect(host, port, before_receive_cb, ssl=ssl)

    def _handle(self, text: str) -> None:
        decoded = pyon.decode(text, pyon.RECEIVE_LIMITS)
        if not isinstance(decoded, dict):
            raise ValueError(f"a mod must be a dict, got {type(decoded).__name__}")
        # from the wire: apply_mod raises on a dict that is not one of the mods
        mod = cast(Mod, decoded)
        if decoded.get("action") == "init":
            self.target = self.target_builder(decoded["struct"])
            self._got_init = True
        elif not self._got_init:
            raise ValueError("received a mod before the init")
        else:
            apply_mod(self.target, mod)
        for cb in self.notify_cbs:
            cb(mod)
