"""The client's connections to a master: RPC targets on the control port, snapshots
of notifiers on the notify port, broadcasts followed on the broadcast port. Opened on
first use, closed at the end.

A master that cannot be reached raises ``Unreachable``; a stream (notifier or
broadcast) that the master ends after it had been established raises ``Lost``, so that
a monitor can reconnect (``monitors.py``) where a first connection that fails must not.
With TLS files (``--ssl CERT KEY PEER`` or a configuration file) every channel is
mutual TLS (``labpipe.protocol.tls``); a failed handshake is ``Unreachable`` with the
likely cause."""

import contextlib
import socket
import ssl
import time
from collections.abc import Generator, Iterator
from contextlib import AbstractContextManager
from typing import Any

from labpipe.client.settings import ConnectionSettings
from labpipe.protocol import pyon
from labpipe.protocol.rpc import Client, IncompatibleServer
from labpipe.protocol.sync import apply_mod
from labpipe.protocol.tls import client_context, describe_tls_error

__all__ = ["Connection", "Unreachable", "Lost"]

#: A stream the master closes without a word within this time of connecting was
#: refused (an unknown notifier, TLS on one side only); later, the master went away.
REFUSAL_SECONDS = 1.0


class Unreachable(Exception):
    """The master cannot be reached (exit code 4)."""


class Lost(EOFError):
    """The master ended a stream that had been established."""


class _AccessClient(Client):
    """An RPC client sending the lock key, user and group with every call
    (``docs/access.md``; a call's own keyword arguments win)."""

    access: dict[str, str] = {}

    def _call(self, name: str, args: tuple, kwargs: dict) -> Any:
        return super()._call(name, args, {**self.access, **kwargs})


class Connection:
    """The master's channels, opened on first use and closed at the end."""

    def __init__(self, settings: ConnectionSettings):
        """Raises ``tls.TLSConfigError`` (a ValueError) when the TLS files are bad."""
        self.settings = settings
        self._clients: dict[str, Client] = {}
        self._ssl = None if settings.tls is None else client_context(settings.tls)

    def where(self, port: int) -> str:
        """``host:port`` of one of the master's ports."""
        return f"{self.settings.server}:{port}"

    def _closed_at_once(self, port: int) -> Unreachable:
        """The master closed a new connection before answering anything."""
        if self._ssl is not None:
            return Unreachable(f"the master at {self.where(port)} refused the TLS "
                               "connection: it does not trust this client's certificate "
                               "(--ssl CERT), or the certificate has expired")
        return Unreachable(f"the master at {self.where(port)} closed the connection at "
                           "once (started with --ssl? then connect with --ssl CERT KEY "
                           "PEER)")

    def _unreachable(self, port: int, exc: BaseException) -> Unreachable:
        if isinstance(exc, ssl.SSLError):
            hint = (" (is the master's certificate in PEER?)"
                    if isinstance(exc, ssl.SSLCertVerificationError) else "")
            return Unreachable(f"TLS with the master at {self.where(port)} failed: "
                               f"{describe_tls_error(exc)}{hint}")
        return Unreachable(f"cannot reach the master at {self.where(port)}: "
                           f"{getattr(exc, 'strerror', None) or exc}")

    def rpc(self, target: str, timeout: float | None = 30) -> Client:
        """The client of one RPC target (one connection each, kept open)."""
        client = self._clients.get(target)
        if client is None:
            port = self.settings.port_control
            try:
                client = _AccessClient(self.settings.server, port, target,
                                       timeout=timeout, ssl=self._ssl)
                client.access = {name: value for name, value in (
                    ("lock_key", self.settings.lock_key), ("user", self.settings.user),
                    ("group", self.settings.group)) if value is not None}
            except IncompatibleServer as exc:
                if "closed the connection during the handshake" in str(exc):
                    raise self._closed_at_once(port) from None
                raise
            except (OSError, EOFError) as exc:
                raise self._unreachable(port, exc) from None
            self._clients[target] = client
        return client

    def _connect(self, port: int) -> socket.socket:
        try:
            sock = socket.create_connection((self.settings.server, port), timeout=10)
            if self._ssl is not None:
                try:
                    sock = self._ssl.wrap_socket(sock)
                except BaseException:
                    sock.close()
                    raise
        except OSError as exc:
            raise self._unreachable(port, exc) from None
        return sock

    def _open(self, port: int, banner: str, name: str) -> socket.socket:
        """A connection to a line channel, its banner and channel name sent."""
        sock = self._connect(port)
        try:
            sock.sendall(f"{banner}\n{name}\n".encode())
        except OSError as exc:
            sock.close()
            raise self._unreachable(port, exc) from None
        return sock

    def _lines(self, sock: socket.socket, port: int, name: str, answers: bool
               ) -> Generator[Any, None, None]:
        """The PYON-decoded lines of an open channel. ``answers``: the channel sends a
        line at once (a notifier's init), within the connect timeout."""
        connected = time.monotonic()
        with sock, sock.makefile("rb") as f:
            if not answers:
                sock.settimeout(None)
            first = True
            while True:
                try:
                    line = f.readline()
                except TimeoutError:
                    raise Unreachable(f"the master at {self.where(port)} did not answer "
                                      f"within {sock.gettimeout():g} s") from None
                except (ssl.SSLError, OSError) as exc:
                    if first and time.monotonic() - connected < REFUSAL_SECONDS:
                        raise self._unreachable(port, exc) from None
                    raise Lost(f"the master at {self.where(port)} closed the "
                               f"connection ({getattr(exc, 'strerror', None) or exc})"
                               ) from None
                if not line:
                    if first and time.monotonic() - connected < REFUSAL_SECONDS:
                        if self._ssl is not None:
                            raise self._closed_at_once(port)
                        raise Unreachable(f"the master at {self.where(port)} closed the "
                                          f"connection (no {name!r} there, or a master "
                                          "started with --ssl?)")
                    raise Lost(f"the master at {self.where(port)} closed the connection")
                if first:
                    sock.settimeout(None)
                    first = False
                yield pyon.decode(line.decode("utf-8"), pyon.RECEIVE_LIMITS)

    def notifier(self, name: str, lock: AbstractContextManager[Any] | None = None
                 ) -> Iterator[Any]:
        """Connects (``Unreachable`` at once when it cannot), then yields the
        notifier's content, then again after each change (the same object, changed in
        place; with ``lock``, each change is made holding it)."""
        from labpipe.protocol.sync import BANNER
        port = self.settings.port_notify
        return self._contents(self._lines(self._open(port, BANNER, name), port, name,
                                          True), lock)

    @staticmethod
    def _contents(mods: Generator[Any, None, None], lock: AbstractContextManager[Any] | None
                  ) -> Generator[Any, None, None]:
        guard = contextlib.nullcontext() if lock is None else lock
        struct: Any = None
        with contextlib.closing(mods):
            for mod in mods:
                with guard:
                    if mod["action"] == "init":
                        struct = mod["struct"]
                    else:
                        apply_mod(struct, mod)
                yield struct

    def snapshot(self, name: str) -> Any:
        """The notifier's content now."""
        contents = self.notifier(name)
        try:
            return next(contents)
        finally:
            close = getattr(contents, "close", None)
            if close is not None:
                close()

    def broadcasts(self, channel: str) -> Iterator[Any]:
        """Connects (``Unreachable`` at once when it cannot), then yields the
        messages broadcast on channel."""
        from labpipe.protocol.broadcast import BANNER
        port = self.settings.port_broadcast
        return self._lines(self._open(port, BANNER, channel), port, channel, False)

    def forget(self, target: str) -> None:
        """Close the RPC connection of target, if open: the next ``rpc(target)`` opens
        a new one (after the master restarted, say)."""
        client = self._clients.pop(target, None)
        if client is not None:
            try:
                client.close_rpc()
            except OSError:
                pass

    def close(self) -> None:
        """Close the RPC connections."""
        for client in self._clients.values():
            client.close_rpc()
        self._clients.clear()
