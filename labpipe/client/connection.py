"""The client's connections to a master: RPC targets on the control port, snapshots
of notifiers on the notify port, broadcasts followed on the broadcast port. Opened on
first use, closed at the end; an unreachable master raises ``Unreachable``."""

import socket

from labpipe.protocol import pyon
from labpipe.protocol.rpc import Client
from labpipe.protocol.sync import apply_mod

__all__ = ["Connection", "Unreachable"]


class Unreachable(Exception):
    """The master cannot be reached (exit code 4)."""


class Connection:
    """The master's channels, opened on first use and closed at the end."""

    def __init__(self, args):
        self.args = args
        self._clients = {}

    def rpc(self, target, timeout=30):
        client = self._clients.get(target)
        if client is None:
            try:
                client = Client(self.args.server, self.args.port, target, timeout=timeout)
            except (OSError, EOFError) as exc:
                raise Unreachable(f"cannot reach the master at {self.args.server}:"
                                  f"{self.args.port}: "
                                  f"{getattr(exc, 'strerror', None) or exc}") from None
            self._clients[target] = client
        return client

    def _lines(self, port, banner, name):
        """Connect to a line channel; yields its PYON-decoded lines."""
        try:
            sock = socket.create_connection((self.args.server, port), timeout=10)
        except OSError as exc:
            raise Unreachable(f"cannot reach the master at {self.args.server}:{port}: "
                              f"{exc.strerror or exc}") from None
        with sock, sock.makefile("rb") as f:
            sock.sendall(f"{banner}\n{name}\n".encode())
            first = True
            while True:
                line = f.readline()
                if not line:
                    if first:
                        raise Unreachable(f"the master at {self.args.server}:{port} "
                                          f"closed the connection (no {name!r} there?)")
                    raise EOFError("the master closed the connection")
                if first:
                    sock.settimeout(None)
                    first = False
                yield pyon.decode(line.decode("utf-8"), pyon.RECEIVE_LIMITS)

    def notifier(self, name):
        """Yields the notifier's content now, then after each change."""
        from labpipe.protocol.sync import BANNER
        struct = None
        for mod in self._lines(self.args.port_notify, BANNER, name):
            if mod["action"] == "init":
                struct = mod["struct"]
            else:
                apply_mod(struct, mod)
            yield struct

    def snapshot(self, name):
        """The notifier's content now."""
        lines = self.notifier(name)
        try:
            return next(lines)
        finally:
            lines.close()

    def broadcasts(self, channel):
        from labpipe.protocol.broadcast import BANNER
        return self._lines(self.args.port_broadcast, BANNER, channel)

    def close(self):
        for client in self._clients.values():
            client.close_rpc()
