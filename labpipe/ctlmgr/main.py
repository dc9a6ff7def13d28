"""``labpipe-ctlmgr``: the controller manager of one host (ARTIQ's ``artiq_ctlmgr``).

Prints ``labpipe-ctlmgr ready: rpc PORT`` on stdout once its RPC port listens (port 0
picks a free one). SIGTERM or SIGINT stops it: every controller is stopped first
(ask, SIGTERM, SIGKILL), then it exits 0. Bad options: one line, exit 2.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import platform
import signal
import sys

from labpipe.protocol.ports import tcp_port
from labpipe import __version__
from labpipe.ctlmgr.manager import ControllerManager, CtlMgrTarget
from labpipe.protocol.logs import LogForwarder
from labpipe.protocol.rpc import Server
from labpipe.protocol.tls import TLSConfigError, TLSFiles, client_context, server_context

logger = logging.getLogger("labpipe.ctlmgr")


def get_argparser() -> argparse.ArgumentParser:
    """The command line of labpipe-ctlmgr."""
    parser = argparse.ArgumentParser(
        prog="labpipe-ctlmgr",
        description="Runs this host's controllers of the master's device database.")
    parser.add_argument("--version", action="version", version=f"labpipe {__version__}")
    parser.add_argument("-s", "--server", default="localhost",
                        help="host name or address of the master (default: %(default)s)")
    parser.add_argument("--port-notify", type=tcp_port, default=3250, metavar="PORT",
                        help="the master's notify port (default: %(default)s)")
    parser.add_argument("--port-logging", type=tcp_port, default=1066, metavar="PORT",
                        help="the master's logging port (default: %(default)s)")
    parser.add_argument("--retry-master", type=float, default=5.0, metavar="SECONDS",
                        help="seconds between attempts to reach the master "
                             "(default: %(default)s)")
    parser.add_argument("--host-filter", default=None, metavar="NAME",
                        help="run the controllers of this host (default: the local "
                             "address of the connection to the master)")
    parser.add_argument("--bind", action="append", default=None, metavar="ADDR",
                        help="address of the manager's own RPC port (repeatable; "
                             "default: 127.0.0.1)")
    parser.add_argument("-p", "--port", type=tcp_port, default=3249,
                        help="the manager's own RPC port, target ctlmgr "
                             "(default: %(default)s)")
    parser.add_argument("--ssl", nargs=3, metavar=("CERT", "KEY", "PEER"), default=None,
                        help="mutual TLS, like the master's: this manager's certificate "
                             "and key, and the certificate(s) it trusts")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    parser.add_argument("-q", "--quiet", action="count", default=0)
    return parser


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.retry_master <= 0:
        parser.error(f"--retry-master {args.retry_master}: must be > 0")


async def _serve(args: argparse.Namespace, files: TLSFiles | None) -> int:
    client_ssl = None if files is None else client_context(files)
    own_ssl = None if files is None else server_context(files)
    forwarder = LogForwarder(args.server, args.port_logging,
                             f"ctlmgr({platform.node()})".replace(":", "_"),
                             ssl=client_ssl)
    forwarder.setLevel(logging.INFO)
    logging.getLogger("labpipe").addHandler(forwarder)
    manager = ControllerManager(args.server, args.port_notify, args.port_logging,
                                host_filter=args.host_filter,
                                retry_master=args.retry_master, ssl=client_ssl)
    server = Server({"ctlmgr": CtlMgrTarget(manager)},
                    description=f"labpipe-ctlmgr {__version__}")
    try:
        await server.start(args.bind or ["127.0.0.1"], args.port, ssl=own_ssl)
    except OSError as exc:
        print(f"labpipe-ctlmgr: cannot listen on port {args.port}: "
              f"{exc.strerror or exc}", file=sys.stderr)
        forwarder.close()
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"labpipe-ctlmgr ready: rpc {server.port}", flush=True)
    try:
        async with asyncio.TaskGroup() as tasks:
            running = tasks.create_task(manager.run())
            await stop.wait()
            logger.info("stopping: stopping the controllers")
            running.cancel()
    finally:
        await manager.stop()
        await server.stop()
        logging.getLogger("labpipe").removeHandler(forwarder)
        await asyncio.to_thread(forwarder.close)
    return 0


def main(argv: list[str] | None = None) -> None:
    """Run labpipe-ctlmgr until SIGTERM or SIGINT."""
    parser = get_argparser()
    args = parser.parse_args(argv)
    _check(parser, args)
    level = logging.WARNING + 10 * (args.quiet - args.verbose)
    logging.basicConfig(level=max(level, logging.DEBUG),
                        format="%(levelname)s:%(name)s:%(message)s")
    files = TLSFiles.from_args(args.ssl)
    try:
        if files is not None:
            client_context(files)
    except TLSConfigError as exc:
        print(f"labpipe-ctlmgr: {exc}", file=sys.stderr)
        sys.exit(2)
    sys.exit(asyncio.run(_serve(args, files)))


if __name__ == "__main__":
    main()
