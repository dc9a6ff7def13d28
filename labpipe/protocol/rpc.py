"""RPC on the control port: the ``pc_rpc`` protocol of ARTIQ, PYON v2 only.

Wire (see ``shared/docs/wire-compat.md``), one UTF-8 line per message:

1. client: ``ARTIQ pc_rpc``
2. server: ``{"targets": [sorted names], "description": str or null, "features": ["pyon_v2"]}``
3. client: ``TARGET pyon_v2`` (target name, a space, the feature); the server closes the
   connection on an unknown target or feature.
4. server: the PYON set of the target's method names.
5. then requests and replies, one reply per request, in order:
   ``{"action": "call", "name": NAME, "args": ARGS, "kwargs": {...}}`` and
   ``{"action": "get_rpc_method_list"}``; replies ``{"status": "ok", "ret": VALUE}`` or
   ``{"status": "failed", "exception": {"class": C, "message": str, "traceback": [str]}}``
   where C is the nearest builtin exception class among the exception's bases (a
   ``KeyError`` subclass is sent as ``KeyError``) or ``GenericRemoteException``.
   ARGS is a PYON tuple, ``{"__jsonclass__": ["tuple", [[5]]]}`` for one argument 5,
   as sipyco's clients (``artiq_client``, the dashboard) and labpipe's own send it;
   the server also takes a plain list.

Server contract (``Server``):

- A target's methods are its callable public attributes (names not starting with
  ``_``). Private names, unknown names, non-callable attributes and malformed requests
  (not UTF-8, not PYON, beyond ``pyon.Limits``, not a dict, unknown action or keys,
  ``args`` neither a tuple nor a list, ``kwargs`` not a dict with string keys) get a
  ``failed`` reply (``ValueError``, one line naming what was wrong) and the connection
  stays usable. Every refusal and failed call is logged; none stops the server.
- Awaitable results (coroutine methods) are awaited, in a task of their own, while
  the connection reads no further: a slow coroutine on one connection does not hold up
  the others; calls on one connection are answered in order. A plain (non-coroutine)
  method runs in the event loop, called from the connection's data callback
  (``line_requests.serve_lines``, after the handshake), and should be quick. Both run
  in the context of the connection's task (``current_peer``...).
- A return value PYON cannot encode gives a ``failed`` reply with class ``TypeError``.
- A line longer than ``max_line_length`` gets a ``failed`` reply (``ValueError``) and
  that connection is closed (the rest of the line cannot be resynchronised).
- ``get_rpc_method_list`` returns ``{"docstring": str, "methods": {name: [argspec,
  docstring]}}``; argspec is a dict with the keys of ``inspect.getfullargspec``
  (``args``, ``varargs``, ``varkw``, ``defaults``, ``kwonlyargs``, ``kwonlydefaults``,
  ``annotations``), without the bound ``self``, always PYON-encodable: annotations are
  strings, defaults PYON cannot encode are replaced by their ``repr``, and
  ``kwonlydefaults`` is a dict (possibly empty).

Client contract (``Client`` blocking, ``AsyncClient`` for asyncio):

- ``client.method(*args, **kwargs)`` calls the remote method and returns its value
  (awaitable with ``AsyncClient``). One request is outstanding per connection; the
  clients serialise concurrent callers with a lock.
- A ``failed`` reply raises the builtin exception class it names (looked up among the
  builtin subclasses of ``Exception`` only) or ``RemoteError``; either way the
  exception has the remote traceback text in ``remote_traceback`` and as a note.
- ``target_name=None`` selects the server's only target; with several targets it is
  an error listing them. A server that does not offer ``pyon_v2`` raises
  ``IncompatibleServer``.
- A connection whose reply is lost (timeout, cancellation, I/O error) is closed, since
  later replies could no longer be matched to their requests.
"""

from __future__ import annotations

import asyncio
import builtins
import contextvars
import functools
import inspect
import logging
import socket
import ssl as _ssl
import threading
import traceback
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

from labpipe.protocol import pyon
from labpipe.protocol.line_requests import serve_lines
from labpipe.protocol.server import MAX_LINE_LENGTH, AsyncioServer, ConnectionLimits, read_line

__all__ = ["Server", "Client", "AsyncClient", "RemoteError", "IncompatibleServer",
           "current_peer", "current_peer_certificate"]

#: The peer address (``writer.get_extra_info("peername")``) of the RPC connection whose
#: call is running, for a target method that logs its caller; None outside a call.
current_peer: contextvars.ContextVar = contextvars.ContextVar("rpc_peer", default=None)
#: The client certificate of that connection as ``ssl`` decodes it
#: (``getpeercert()``: a dict with ``subject``...), None without TLS; the master's access
#: gate takes the caller's group from its subject.
current_peer_certificate: contextvars.ContextVar[dict | None] = contextvars.ContextVar(
    "rpc_peer_certificate", default=None)

logger = logging.getLogger(__name__)

BANNER = "ARTIQ pc_rpc"
FEATURE = "pyon_v2"
#: Exception class name on the wire for exceptions that are not builtins.
GENERIC_CLASS = "GenericRemoteException"

_REQUEST_KEYS = {
    "call": {"action", "name", "args", "kwargs"},
    "get_rpc_method_list": {"action"},
}


class RemoteError(Exception):
    """A remote method raised an exception that is not a builtin one.

    ``remote_traceback`` holds the remote traceback text (also attached as a note).
    """

    remote_traceback: str = ""


class IncompatibleServer(Exception):
    """The peer does not speak pc_rpc with PYON v2."""


# ---------------------------------------------------------------------------
# shared helpers


def _safe_str(obj: object) -> str:
    try:
        return str(obj)
    except Exception:
        return f"<unprintable {type(obj).__name__}>"


def _is_builtin_exception(cls: type) -> bool:
    return getattr(builtins, cls.__name__, None) is cls


def _wire_class(cls: type) -> str:
    """The class name a ``failed`` reply gives: the nearest builtin exception class
    among cls's bases (a ``KeyError`` subclass is a ``KeyError`` to sipyco's clients,
    which only rebuild builtins), ``GenericRemoteException`` when there is none."""
    for base in cls.__mro__:
        if base in (BaseException, Exception):
            break
        if _is_builtin_exception(base):
            return base.__name__
    return GENERIC_CLASS


def _failure(exc: BaseException) -> dict:
    """The ``failed`` reply describing exc."""
    cls = type(exc)
    try:
        tb = traceback.format_exception(exc)
    except Exception:
        tb = [f"{cls.__name__}: {_safe_str(exc)}\n"]
    return {"status": "failed", "exception": {
        "class": _wire_class(cls),
        "message": _safe_str(exc),
        "traceback": [_safe_str(line) for line in tb],
    }}


def _remote_exception(info: Any) -> Exception:
    """The local exception to raise for the ``exception`` field of a failed reply."""
    if not isinstance(info, dict):
        return IncompatibleServer(f"malformed failure reply: {info!r:.200}")
    name = info.get("class")
    message = _safe_str(info.get("message", ""))
    tb = info.get("traceback")
    tb_text = "".join(map(_safe_str, tb)) if isinstance(tb, list) else ""
    cls = getattr(builtins, name, None) if isinstance(name, str) else None
    exc: Exception | None = None
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            exc = cls(message)
        except Exception:  # builtins whose constructor wants more (UnicodeDecodeError)
            exc = None
    if exc is None:
        exc = RemoteError(message)
    exc.remote_traceback = tb_text  # type: ignore[attr-defined]
    if tb_text:
        exc.add_note("Remote traceback:\n" + tb_text.rstrip("\n"))
    return exc


def _parse_server_id(line: str | None) -> tuple[list[str], str | None]:
    """Check the server's handshake reply; return (targets, description)."""
    if line is None:
        raise IncompatibleServer("server closed the connection during the handshake")
    try:
        ident = pyon.decode(line)
    except ValueError:
        raise IncompatibleServer(f"server handshake is not PYON v2: {line!r:.200}") from None
    if (not isinstance(ident, dict) or not isinstance(ident.get("targets"), list)
            or FEATURE not in (ident.get("features") or [])):
        raise IncompatibleServer(f"server does not offer pc_rpc with {FEATURE}: {line!r:.200}")
    return ident["targets"], ident.get("description")


def _select_target(targets: list[str], target_name: str | None) -> str:
    if target_name is None:
        if len(targets) == 1:
            return targets[0]
        raise ValueError(f"target_name=None needs a server with exactly one target; "
                         f"this one has {sorted(targets)}")
    if target_name not in targets:
        raise ValueError(f"no target {target_name!r} on this server; targets: {sorted(targets)}")
    return target_name


def _parse_method_names(line: str | None, target: str) -> set[str]:
    if line is None:
        raise ConnectionError(f"server closed the connection after selecting target {target!r}")
    names = pyon.decode(line)
    if not isinstance(names, set):
        raise IncompatibleServer(f"expected the set of method names, got {line!r:.200}")
    return names


def _reply_value(line: str | None) -> Any:
    """The value of a reply line, or raise the exception it reports."""
    if line is None:
        raise ConnectionError("connection closed by the RPC server")
    reply = pyon.decode(line, pyon.RECEIVE_LIMITS)
    if isinstance(reply, dict):
        if reply.get("status") == "ok":
            return reply.get("ret")
        if reply.get("status") == "failed":
            raise _remote_exception(reply.get("exception"))
    raise IncompatibleServer(f"malformed reply: {line!r:.200}")


def _call_request(name: str, args: tuple, kwargs: dict) -> str:
    # a tuple, exactly as sipyco's clients send *args
    return pyon.encode({"action": "call", "name": name, "args": tuple(args),
                        "kwargs": kwargs})


_METHOD_LIST_REQUEST = pyon.encode({"action": "get_rpc_method_list"})


# ---------------------------------------------------------------------------
# server


def _method_names(target: object) -> set[str]:
    """Names of target's callable public attributes."""
    names = set()
    for name in dir(target):
        if name.startswith("_"):
            continue
        try:
            if callable(getattr(target, name)):
                names.add(name)
        except Exception:  # a property that raises is not a method
            continue
    return names


def _get_method(target: object, name: Any) -> Callable[..., Any]:
    if not isinstance(name, str):
        raise ValueError(f"method name must be a string, not {type(name).__name__}")
    if name.startswith("_"):
        raise AttributeError(f"refused: {name!r} is private (names starting with '_' "
                             "cannot be called remotely)")
    method = getattr(target, name, None)
    if method is None or not callable(method):
        raise AttributeError(f"target has no method {name!r}")
    return method


def _encodable(value: Any) -> Any:
    try:
        pyon.encode(value)
        return value
    except Exception:
        return repr(value)


def _argspec(function: Callable[..., Any]) -> dict[str, Any]:
    """A PYON-encodable argspec dict (getfullargspec's keys) without the bound self."""
    spec: dict[str, Any] = {"args": [], "varargs": None, "varkw": None, "defaults": None,
                            "kwonlyargs": [], "kwonlydefaults": {}, "annotations": {}}
    try:
        signature = inspect.signature(function)
    except Exception:  # some builtins and odd callables have no signature
        return spec
    defaults = []
    P = inspect.Parameter
    for p in signature.parameters.values():
        if p.kind in (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD):
            spec["args"].append(p.name)
            if p.default is not P.empty:
                defaults.append(_encodable(p.default))
        elif p.kind is P.VAR_POSITIONAL:
            spec["varargs"] = p.name
        elif p.kind is P.VAR_KEYWORD:
            spec["varkw"] = p.name
        else:
            spec["kwonlyargs"].append(p.name)
            if p.default is not P.empty:
                spec["kwonlydefaults"][p.name] = _encodable(p.default)
        if p.annotation is not P.empty:
            spec["annotations"][p.name] = inspect.formatannotation(p.annotation)
    if signature.return_annotation is not inspect.Signature.empty:
        spec["annotations"]["return"] = inspect.formatannotation(signature.return_annotation)
    if defaults:
        spec["defaults"] = tuple(defaults)
    return spec


def _describe(target: object) -> dict:
    methods = {}
    for name in sorted(_method_names(target)):
        try:
            method = getattr(target, name)
        except Exception:
            continue
        methods[name] = [_argspec(method), inspect.getdoc(method) or ""]
    return {"docstring": inspect.getdoc(target) or "", "methods": methods}


def _parse_request(line: str) -> dict:
    """Decode and validate a request line; ValueError when malformed."""
    try:
        request = pyon.decode(line)
    except pyon.LimitExceeded as e:
        raise ValueError(f"request refused: {e}") from None
    except ValueError as e:
        raise ValueError(f"malformed request, not PYON v2: {e}") from None
    if not isinstance(request, dict):
        raise ValueError(f"malformed request: expected a dict, got {type(request).__name__}")
    action = request.get("action")
    if not isinstance(action, str) or action not in _REQUEST_KEYS:
        raise ValueError(f"unknown action {action!r:.100}; valid actions: {sorted(_REQUEST_KEYS)}")
    keys = set(request)
    if keys != _REQUEST_KEYS[action]:
        raise ValueError(f"malformed {action!r} request: keys {sorted(keys, key=str)}, "
                         f"expected {sorted(_REQUEST_KEYS[action])}")
    if action == "call":
        if type(request["args"]) not in (tuple, list):
            raise ValueError(f"malformed call request: 'args' must be a tuple or a list, "
                             f"not {type(request['args']).__name__}")
        kwargs = request["kwargs"]
        if not isinstance(kwargs, dict) or not all(type(k) is str for k in kwargs):
            raise ValueError("malformed call request: 'kwargs' must be a dict with string keys")
    return request


class Server(AsyncioServer):
    """Serves the methods of ``targets`` (name -> object) on the pc_rpc protocol.

    ``description`` is sent to clients in the handshake. Start with ``await
    start(host, port)`` and stop with ``await stop()``; see the module docstring.
    """

    handshake_lines = 2  # the banner, then the name line

    def __init__(self, targets: dict[str, object], description: str | None = None,
                 max_line_length: int = MAX_LINE_LENGTH,
                 limits: ConnectionLimits | None = None):
        super().__init__(max_line_length=max_line_length, limits=limits)
        for name in targets:
            if not isinstance(name, str) or not name or any(c in name for c in "\r\n"):
                raise ValueError(f"invalid RPC target name {name!r}")
        self.targets = dict(targets)
        self.description = description

    async def _handle_connection_cr(self, reader: asyncio.StreamReader,
                                    writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        current_peer.set(peer)  # this connection's task only
        current_peer_certificate.set(writer.get_extra_info("peercert") or None)
        if await read_line(reader) != BANNER:
            return
        await _write_line(writer, pyon.encode({
            "targets": sorted(self.targets), "description": self.description,
            "features": [FEATURE]}))
        line = await read_line(reader)
        if line is None:
            return
        target_name, _, feature = line.rpartition(" ")
        if target_name not in self.targets or feature != FEATURE:
            logger.warning("RPC client %s asked for unknown target or feature %r, "
                           "closing the connection", peer, line[:200])
            return
        target = self.targets[target_name]
        await _write_line(writer, pyon.encode(_method_names(target)))
        await self._serve_requests(target, target_name, reader, writer, peer)

    async def _serve_requests(self, target: object, target_name: str,
                              reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                              peer: Any) -> None:
        await serve_lines(
            reader, writer, functools.partial(self._serve_line, target, target_name, peer),
            lambda message: self._refuse(ValueError(f"request refused: {message}"), peer),
            lambda: self._refuse(ValueError("malformed request: not UTF-8"), peer),
            self.max_line_length)

    def _refuse(self, exc: Exception, peer: Any) -> str:
        logger.warning("RPC request from %s refused: %s", peer, exc)
        return pyon.encode(_failure(exc))

    def _serve_line(self, target: object, target_name: str, peer: Any,
                    line: str) -> str | Awaitable[str]:
        """Serve one request line: the reply line, or for a coroutine method an
        awaitable of it."""
        call: Callable[[], Any]
        try:
            request = _parse_request(line)
            if request["action"] == "get_rpc_method_list":
                name, call = "get_rpc_method_list", functools.partial(_describe, target)
            else:
                name = request["name"]
                call = functools.partial(_get_method(target, name),
                                         *request["args"], **request["kwargs"])
        except (ValueError, AttributeError) as e:
            return self._refuse(e, peer)
        try:
            ret = call()
        except (Exception, asyncio.CancelledError) as e:
            return self._call_failed(e, target_name, name, peer)
        if inspect.isawaitable(ret):
            return self._awaited(ret, target_name, name, peer)
        return _encode_ok(ret, name)

    async def _awaited(self, awaitable: Awaitable[Any], target_name: str, name: str,
                       peer: Any) -> str:
        try:
            ret = await awaitable
        except asyncio.CancelledError as e:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # the server is stopping
            return self._call_failed(e, target_name, name, peer)  # cancelled inside the method
        except Exception as e:
            return self._call_failed(e, target_name, name, peer)
        return _encode_ok(ret, name)

    @staticmethod
    def _call_failed(exc: BaseException, target_name: str, name: str, peer: Any) -> str:
        logger.debug("RPC call %s.%s from %s failed", target_name, name, peer, exc_info=exc)
        return pyon.encode(_failure(exc))


def _encode_ok(ret: Any, name: str) -> str:
    try:
        return pyon.encode({"status": "ok", "ret": ret})
    except Exception as e:
        err = TypeError(f"the return value of {name} cannot be encoded in PYON: {_safe_str(e)}")
        err.__cause__ = e
        logger.warning("%s", err)
        return pyon.encode(_failure(err))


async def _write_line(writer: asyncio.StreamWriter, line: str) -> None:
    writer.write(line.encode("utf-8") + b"\n")
    await writer.drain()


# ---------------------------------------------------------------------------
# blocking client


class Client:
    """Blocking pc_rpc client: ``Client(host, port, "target").method(*args, **kwargs)``.

    ``target_name=None`` selects the server's only target. ``timeout`` (seconds, None
    for none) bounds the connection and each reply. ``ssl``: a client SSLContext
    (``tls.client_context``) for a TLS server. Use as a context manager or call
    ``close_rpc()``. Safe to share between threads (calls are serialised).
    """

    def __init__(self, host: str, port: int, target_name: str | None = None,
                 timeout: float | None = None, *, ssl: _ssl.SSLContext | None = None):
        self._socket = socket.create_connection((host, port), timeout)
        if ssl is not None:
            try:
                self._socket = ssl.wrap_socket(self._socket)
            except BaseException:
                self._socket.close()
                raise
        self._buffer = bytearray()
        self._lock = threading.Lock()
        try:
            self._send(BANNER)
            self._targets, self._description = _parse_server_id(self._recv_line())
            self._target = _select_target(self._targets, target_name)
            self._send(f"{self._target} {FEATURE}")
            _parse_method_names(self._recv_line(), self._target)
        except BaseException:
            self.close_rpc()
            raise

    def _send(self, line: str) -> None:
        self._socket.sendall(line.encode("utf-8") + b"\n")

    def _recv_line(self) -> str | None:
        start = 0
        while True:
            end = self._buffer.find(b"\n", start)
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[:end + 1]
                return line.decode("utf-8")
            start = len(self._buffer)
            chunk = self._socket.recv(1 << 16)
            if not chunk:
                return None
            self._buffer += chunk

    def _request(self, request: str) -> Any:
        with self._lock:
            try:
                self._send(request)
                line = self._recv_line()
            except BaseException:
                self.close_rpc()  # the reply may still come: the stream is out of step
                raise
        return _reply_value(line)

    def _call(self, name: str, args: tuple, kwargs: dict) -> Any:
        return self._request(_call_request(name, args, kwargs))

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith("_"):
            raise AttributeError(name)

        def proxy(*args: Any, **kwargs: Any) -> Any:
            return self._call(name, args, kwargs)
        proxy.__name__ = name
        return proxy

    def get_rpc_method_list(self) -> dict:
        """``{"docstring": str, "methods": {name: [argspec, docstring]}}`` of the target."""
        return self._request(_METHOD_LIST_REQUEST)

    def get_rpc_id(self) -> tuple[list[str], str | None]:
        """The server's target names and description, from the handshake."""
        return self._targets, self._description

    def get_selected_target(self) -> str:
        """The name of the target this client talks to."""
        return self._target

    def get_local_host(self) -> str:
        """The local address of the connection (the address the server sees)."""
        return self._socket.getsockname()[0]

    def close_rpc(self) -> None:
        """Close the connection (idempotent)."""
        self._socket.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close_rpc()


# ---------------------------------------------------------------------------
# asyncio client


class AsyncClient:
    """asyncio pc_rpc client: ``await client.connect_rpc(host, port, target)`` then
    ``await client.method(*args, **kwargs)``. Calls are serialised with a lock."""

    def __init__(self, max_line_length: int = MAX_LINE_LENGTH):
        self._max_line_length = max_line_length
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._lock = asyncio.Lock()
        self._targets: list[str] = []
        self._description: str | None = None
        self._target: str | None = None

    async def connect_rpc(self, host: str, port: int, target_name: str | None = None,
                          *, ssl: _ssl.SSLContext | None = None) -> None:
        """Connect and select target_name (None: the server's only target); ``ssl``: a
        client SSLContext (``tls.client_context``) for a TLS server."""
        self.close_rpc()
        self._reader, self._writer = await asyncio.open_connection(
            host, port, ssl=ssl, limit=self._max_line_length)
        try:
            await self._send(BANNER)
            self._targets, self._description = _parse_server_id(await read_line(self._reader))
            self._target = _select_target(self._targets, target_name)
            await self._send(f"{self._target} {FEATURE}")
            _parse_method_names(await read_line(self._reader), self._target)
        except BaseException:
            self.close_rpc()
            raise

    async def _send(self, line: str) -> None:
        assert self._writer is not None
        await _write_line(self._writer, line)

    async def _request(self, request: str) -> Any:
        async with self._lock:
            reader, writer = self._reader, self._writer
            if reader is None or writer is None:
                raise ConnectionError("AsyncClient is not connected (call connect_rpc first)")
            try:
                await _write_line(writer, request)
                line = await read_line(reader)
            except BaseException:
                self.close_rpc()  # the reply may still come: the stream is out of step
                raise
        return _reply_value(line)

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]:
        if name.startswith("_"):
            raise AttributeError(name)

        async def proxy(*args: Any, **kwargs: Any) -> Any:
            return await self._request(_call_request(name, args, kwargs))
        proxy.__name__ = name
        return proxy

    async def get_rpc_method_list(self) -> dict:
        """``{"docstring": str, "methods": {name: [argspec, docstring]}}`` of the target."""
        return await self._request(_METHOD_LIST_REQUEST)

    def get_rpc_id(self) -> tuple[list[str], str | None]:
        """The server's target names and description, from the handshake."""
        return self._targets, self._description

    def get_selected_target(self) -> str | None:
        """The name of the target this client talks to."""
        return self._target

    def get_local_host(self) -> str:
        """The local address of the connection (the address the server sees)."""
        assert self._writer is not None
        return self._writer.get_extra_info("sockname")[0]

    def close_rpc(self) -> None:
        """Close the connection (idempotent, not a coroutine, like sipyco's)."""
        if self._writer is not None:
            self._writer.close()
        self._writer = self._reader = None
