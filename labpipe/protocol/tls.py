"""Mutual TLS on every port, as ARTIQ 9 / sipyco 1.10 (``--ssl CERT KEY PEER``).

Wire facts (``shared/docs/wire-compat.md``): with ``--ssl`` every channel is TLS from the
first byte; banners and lines are unchanged inside the TLS stream. Each side has three
PEM files:

- ``CERT``: its own certificate, ``KEY``: the matching unencrypted private key;
- ``PEER``: the certificate(s) it trusts on the other side (one or more concatenated;
  a self-signed certificate is trusted as it is, no CA chain is needed). There is no
  host name check: a peer is who its certificate says, wherever it connects from.

The server (``server_context``) requires a client certificate that verifies against
PEER. labpipe's server also trusts its own CERT as a client certificate, so that the
master's Git hook can connect with the master's own files (``TLSFiles.for_own_server``);
whoever holds the master's key could impersonate the master anyway.

``TLSAcceptor`` does the server side of the handshake on an accepted connection
(``AsyncioServer.start(..., ssl=context)`` uses it): a peer without a trusted
certificate (none, untrusted, expired), a peer speaking plain TCP, or one that does not
finish the handshake within ``handshake_timeout`` gets nothing past the handshake, and
is logged in one warning line naming its address and the reason; under a flood at most
``MAX_REFUSAL_LINES`` such lines per ``REFUSAL_WINDOW`` seconds and server, then one
line counting the rest.

Bad files give ``TLSConfigError``: one line naming the file and what is wrong with it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import time
from dataclasses import dataclass
from typing import Sequence

__all__ = ["TLSFiles", "TLSConfigError", "server_context", "client_context",
           "TLSAcceptor", "describe_tls_error"]

logger = logging.getLogger(__name__)

#: Refusal lines logged per server and window before they are only counted.
MAX_REFUSAL_LINES = 10
#: Length of that window, in seconds.
REFUSAL_WINDOW = 10.0
#: Longest handshake a server waits for (asyncio's own default is 60 s).
HANDSHAKE_TIMEOUT = 10.0

_MAX_FILE_SIZE = 1 << 20


class TLSConfigError(ValueError):
    """A TLS file is missing, unreadable or not what its role needs (one-line message)."""


@dataclass(frozen=True)
class TLSFiles:
    """The three files of ``--ssl CERT KEY PEER``: own certificate, own key, trusted peers."""
    cert: str
    key: str
    peer: str

    @classmethod
    def from_args(cls, ssl_args: Sequence[str] | None) -> TLSFiles | None:
        """From argparse's ``--ssl`` (three paths, or None when TLS is off)."""
        if ssl_args is None:
            return None
        cert, key, peer = ssl_args
        return cls(cert, key, peer)

    def relative_to(self, folder: str) -> TLSFiles:
        """The same files with relative paths taken from folder, made absolute."""
        def absolute(path: str) -> str:
            return os.path.abspath(os.path.join(folder, path))
        return TLSFiles(absolute(self.cert), absolute(self.key), absolute(self.peer))

    def for_own_server(self) -> TLSFiles:
        """Client files for a client running with the server's own files (the Git hook):
        it presents the server's certificate and trusts it."""
        return TLSFiles(self.cert, self.key, self.cert)


def _read_pem(role: str, path: str, marker: str, what: str) -> None:
    """Check path is a readable file whose text contains marker."""
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_FILE_SIZE + 1)
    except OSError as exc:
        raise TLSConfigError(f"TLS {role} file {path!r}: {exc.strerror or exc}") from None
    if len(data) > _MAX_FILE_SIZE:
        raise TLSConfigError(f"TLS {role} file {path!r} is larger than 1 MiB: not {what}")
    if marker.encode("ascii") not in data:
        raise TLSConfigError(f"TLS {role} file {path!r} is not {what} in PEM format "
                             f"(no '{marker}' line)")


def _check_files(files: TLSFiles) -> None:
    _read_pem("CERT", files.cert, "-----BEGIN CERTIFICATE-----", "a certificate")
    _read_pem("KEY", files.key, "PRIVATE KEY-----", "a private key")
    _read_pem("PEER", files.peer, "-----BEGIN CERTIFICATE-----", "a certificate")


def _encrypted_key(*_args: object) -> str:
    raise TLSConfigError("encrypted")


def _load_own(context: ssl.SSLContext, files: TLSFiles) -> None:
    try:
        context.load_cert_chain(files.cert, files.key, password=_encrypted_key)
    except TLSConfigError:
        raise TLSConfigError(f"TLS KEY file {files.key!r} is encrypted: labpipe needs an "
                             "unencrypted key (openssl ... -nodes)") from None
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise TLSConfigError(f"TLS KEY file {files.key!r} does not belong to the "
                                 f"certificate in CERT file {files.cert!r}") from None
        raise TLSConfigError(f"TLS CERT {files.cert!r} and KEY {files.key!r} cannot be "
                             f"loaded: {describe_tls_error(exc)}") from None


def _load_trusted(context: ssl.SSLContext, role: str, path: str) -> None:
    try:
        context.load_verify_locations(cafile=path)
    except ssl.SSLError as exc:
        raise TLSConfigError(f"TLS {role} file {path!r} cannot be loaded as trusted "
                             f"certificates: {describe_tls_error(exc)}") from None


def server_context(files: TLSFiles) -> ssl.SSLContext:
    """The context of a server: presents CERT/KEY, requires a client certificate that
    verifies against PEER (or is the server's own CERT). Raises TLSConfigError."""
    _check_files(files)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.verify_mode = ssl.CERT_REQUIRED
    # No session resumption is used; without tickets a client that never reads (the
    # LogForwarder) sees nothing arrive after the handshake.
    context.num_tickets = 0
    _load_own(context, files)
    _load_trusted(context, "PEER", files.peer)
    _load_trusted(context, "CERT", files.cert)
    return context


def client_context(files: TLSFiles) -> ssl.SSLContext:
    """The context of a client: presents CERT/KEY, trusts the server certificate(s) in
    PEER, no host name check. Raises TLSConfigError."""
    _check_files(files)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    _load_own(context, files)
    _load_trusted(context, "PEER", files.peer)
    return context


_REASONS = {
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "no client certificate",
    "WRONG_VERSION_NUMBER": "not TLS (plain TCP?)",
    "HTTP_REQUEST": "not TLS (plain TCP?)",
    "UNSUPPORTED_PROTOCOL": "unsupported TLS version",
    "TLSV1_ALERT_UNKNOWN_CA": "the peer does not trust our certificate",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the peer does not trust our certificate",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the peer wants a client certificate",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "the peer says our certificate has expired",
}


def describe_tls_error(exc: BaseException) -> str:
    """A short reason for a failed handshake or load (no OpenSSL source locations)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate refused: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        reason = getattr(exc, "reason", None)
        if reason in _REASONS:
            return _REASONS[reason]
        if reason:
            return reason.lower().replace("_", " ")
        text = str(exc.args[1] if len(exc.args) > 1 else exc)
        return text.split(" (_ssl.c")[0]
    if isinstance(exc, TimeoutError):
        return "no TLS handshake in time"
    return f"{type(exc).__name__}: {exc}".split("\n")[0]


class _RefusalLog:
    """One warning line per refused peer, at most MAX_REFUSAL_LINES per window."""

    def __init__(self) -> None:
        self._where = "TLS"
        self._window_start = -float("inf")
        self._lines = 0
        self._suppressed = 0
        self._summary: asyncio.TimerHandle | None = None

    def note(self, where: str, peer: object, reason: str) -> None:
        self._where = where
        now = time.monotonic()
        if now - self._window_start >= REFUSAL_WINDOW:
            self._flush(where)
            self._window_start, self._lines = now, 0
        if self._lines < MAX_REFUSAL_LINES:  # read at each call: tests may change it
            self._lines += 1
            logger.warning("%s: refused TLS connection from %s: %s", where,
                           _address(peer), reason)
            return
        self._suppressed += 1
        if self._summary is None:
            delay = self._window_start + REFUSAL_WINDOW - now
            self._summary = asyncio.get_running_loop().call_later(
                max(delay, 0), self._flush, where)

    def _flush(self, where: str | None = None) -> None:
        if self._summary is not None:
            self._summary.cancel()
            self._summary = None
        if self._suppressed:
            logger.warning("%s: %d more TLS connections refused in %.0f s (not logged "
                           "one by one)", where or self._where, self._suppressed,
                           REFUSAL_WINDOW)
            self._suppressed = 0

    def close(self) -> None:
        self._flush()


def _address(peer: object) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        host, port = peer[0], peer[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(peer)


class TLSAcceptor:
    """Upgrades accepted connections of one server to TLS, logging refused peers."""

    def __init__(self, context: ssl.SSLContext, where: str,
                 handshake_timeout: float = HANDSHAKE_TIMEOUT):
        if not isinstance(context, ssl.SSLContext):
            raise TypeError(f"ssl must be an ssl.SSLContext, not {type(context).__name__}")
        self.context = context
        self.where = where
        self.handshake_timeout = handshake_timeout
        self._refusals = _RefusalLog()

    async def accept(self, writer: asyncio.StreamWriter) -> bool:
        """Do the server side of the handshake; False (logged) when it failed.

        Must run before anything reads from the connection: bytes read before the
        upgrade would be lost to TLS.
        """
        peer = writer.get_extra_info("peername")
        try:
            await writer.start_tls(self.context,
                                   ssl_handshake_timeout=self.handshake_timeout)
        except (OSError, EOFError, TimeoutError) as exc:  # ssl.SSLError is an OSError
            reason = describe_tls_error(exc)
            if isinstance(exc, ConnectionAbortedError) and "longer than" in str(exc):
                reason = f"no TLS handshake within {self.handshake_timeout:g} s"
            elif isinstance(exc, ConnectionError) and not isinstance(exc, ssl.SSLError):
                reason = "closed during the TLS handshake"
            self._refusals.note(self.where, peer, reason)
            return False
        return True

    def close(self) -> None:
        """Log the count of refusals not yet logged."""
        self._refusals.close()
