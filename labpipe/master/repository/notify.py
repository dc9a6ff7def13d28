"""``python -m labpipe.master.repository.notify``: ask a master to rescan its experiments.

This is what the Git hook installed by the master runs after a push (or a commit). It
calls ``experiment_db.scan_repository_async(rev)`` on the master's control port and
prints one line saying what happened. It always exits with status 0, and gives up
after ``--timeout`` seconds: a master that is down or busy never fails or blocks a push.

Usage: ``python -m labpipe.master.repository.notify --port 3251 [--host 127.0.0.1]
[--rev REV] [--timeout 5] [--ssl CERT KEY PEER]`` (without ``--rev`` the master scans its
current HEAD; ``--ssl`` for a master started with ``--ssl``).
"""

from __future__ import annotations

import argparse
import sys

from labpipe.protocol.tls import TLSFiles

__all__ = ["get_argparser", "notify", "main"]


def get_argparser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m labpipe.master.repository.notify",
        description="Ask a labpipe master to rescan its experiment repository.")
    parser.add_argument("--host", default="127.0.0.1", help="master address (default: %(default)s)")
    parser.add_argument("--port", type=int, default=3251, help="control port (default: %(default)s)")
    parser.add_argument("--rev", default=None, help="revision to scan (default: HEAD)")
    parser.add_argument("--timeout", type=float, default=5.0,
                        help="give up after this many seconds (default: %(default)s)")
    parser.add_argument("--ssl", nargs=3, metavar=("CERT", "KEY", "PEER"), default=None,
                        help="connect with mutual TLS: own certificate, own key, the "
                             "master's certificate")
    return parser


def notify(host: str, port: int, rev: str | None = None, timeout: float = 5.0,
           tls: TLSFiles | None = None) -> str:
    """Request the rescan; returns the one line to print. Never raises for network errors."""
    where = f"{host}:{port}"
    try:
        from labpipe.protocol.rpc import Client
        from labpipe.protocol.tls import client_context
        context = None if tls is None else client_context(tls)
        with Client(host, port, "experiment_db", timeout=timeout, ssl=context) as client:
            client.scan_repository_async(rev)
    except Exception as exc:  # any failure is reported in one line, never raised
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
        return (f"labpipe: could not ask the master at {where} to rescan ({reason}); "
                "rescan by hand with `labpipe-client scan-repository`")
    return f"labpipe: the master at {where} is rescanning its experiments"


def main(argv: list[str] | None = None) -> int:
    args = get_argparser().parse_args(argv)
    print(notify(args.host, args.port, args.rev, args.timeout,
                 TLSFiles.from_args(args.ssl)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
