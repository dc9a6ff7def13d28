"""The client's connections to a master: RPC targets on the control port, snapshots
of notifiers on the notify port, broadcasts followed on the broadcast port. Opened on
first use, closed at the end; an unreachable master raises ``Unreachable``. With
``--ssl CERT KEY PEER`` every channel is mutual TLS (``labpipe.protocol.tls``); a failed
handshake is ``Unreachable`` with the likely cause."""

import argparse
import socket
import ssl
from collections.abc import Generator, Iterator
from typing import Any

from labpipe.protocol import pyon
from labpipe.protocol.rpc import Client, IncompatibleServer
from labpipe.protocol.sync import apply_mod
from labpipe.protocol.tls import TLSFiles, client_context, describe_tls_error

__all__ = ["Connection", "Unreachable"]


class Unreachable(Exception):
    """The master cannot be reached (exit code 4)."""


class Connection:
    """The master's channels, opened on first use and closed at the end."""

    def __init__(self, args: argparse.Namespace):
        """Raises ``tls.TLSConfigError`` (a ValueError) when the ``--ssl`` files are bad."""
        self.args = args
        self._clients: dict[str, Client] = {}
        files = TLSFiles.from_args(getattr(args, "ssl", None))
        self._ssl = None if files is None else client_context(files)

    def _closed_at_once(self, port: int) -> Unreachable:
        """The master closed a new connection before answering anything."""
        where = f"{self.args.server}:{port}"
        if self._ssl is not None:
            return Unreachable(f"the master at {where} refused the TLS connection: it does "
                               "not trust this client's certificate (--ssl CERT), or the "
                               "certificate has expired")
        return Unreachable(f"the master at {where} closed the connection at once (started "
                           "with --ssl? then connect with --ssl CERT KEY PEER)")

    def _unreachable(self, port: int, exc: BaseException) -> Unreachable:
        where = f"{self.args.server}:{port}"
        if isinstance(exc, ssl.SSLError):
            hint = (" (is the master's certificate in PEER?)"
                    if isinstance(exc, ssl.SSLCertVerificationError) else "")
            return Unreachable(f"TLS with the master at {where} failed: "
                               f"{describe_tls_error(exc)}{hint}")
        return Unreachable(f"cannot reach the master at {where}: "
                           f"{getattr(exc, 'strerror', None) or exc}")

    def rpc(self, target: str, timeout: float | None = 30) -> Client:
        client = self._clients.get(target)
        if client is None:
            try:
                client = Client(self.args.server, self.args.port, target, timeout=timeout,
                                ssl=self._ssl)
            except IncompatibleServer as exc:
                if "closed the connection during the handshake" in str(exc):
                    raise self._closed_at_once(self.args.port) from None
                raise
            except (OSError, EOFError) as exc:
                raise self._unreachable(self.args.port, exc) from None
            self._clients[target] = client
        return client

    def _lines(self, port: int, banner: str, name: str) -> Iterator[Any]:
        """Connect to a line channel; yields its PYON-decoded lines."""
        try:
            sock = socket.create_connection((self.args.server, port), timeout=10)
            if self._ssl is not None:
                try:
                    sock = self._ssl.wrap_socket(sock)
                except BaseException:
                    sock.close()
                    raise
        except OSError as exc:
            raise self._unreachable(port, exc) from None
        with sock, sock.makefile("rb") as f:
            sock.sendall(f"{banner}\n{name}\n".encode())
            first = True
            while True:
                try:
                    line = f.readline()
                except ssl.SSLError as exc:
                    if first:
                        raise self._unreachable(port, exc) from None
                    raise
                if not line:
                    if first:
                        if self._ssl is not None:
                            raise self._closed_at_once(port)
                        raise Unreachable(f"the master at {self.args.server}:{port} "
                                          f"closed the connection (no {name!r} there, "
                                          "or a master started with --ssl?)")
                    raise EOFError("the master closed the connection")
                if first:
                    sock.settimeout(None)
                    first = False
                yield pyon.decode(line.decode("utf-8"), pyon.RECEIVE_LIMITS)

    def notifier(self, name: str) -> Generator[Any, None, None]:
        """Yields the notifier's content now, then after each change."""
        from labpipe.protocol.sync import BANNER
        struct: Any = None
        for mod in self._lines(self.args.port_notify, BANNER, name):
            if mod["action"] == "init":
                struct = mod["struct"]
            else:
                apply_mod(struct, mod)
            yield struct

    def snapshot(self, name: str) -> Any:
        """The notifier's content now."""
        lines = self.notifier(name)
        try:
            return next(lines)
        finally:
            lines.close()

    def broadcasts(self, channel: str) -> Iterator[Any]:
        from labpipe.protocol.broadcast import BANNER
        return self._lines(self.args.port_broadcast, BANNER, channel)

    def close(self) -> None:
        for client in self._clients.values():
            client.close_rpc()
