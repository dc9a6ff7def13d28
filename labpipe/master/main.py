"""``labpipe-master``: the master process, started in a lab directory.

Its top level imports only what the command line needs (``--help`` and a bad option
answer at once); the master itself is imported in ``main()``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import subprocess
import sys
from typing import TYPE_CHECKING

from labpipe.protocol.ports import tcp_port
from labpipe import __version__

if TYPE_CHECKING:  # imported in main(), not at the top level (see the docstring)
    from labpipe.master.assembly import Master, MasterOptions
    from labpipe.qserver.endpoint import QServerSettings

__all__ = ["get_argparser", "main"]

logger = logging.getLogger("labpipe.master")

#: seconds a thread holds the GIL before another may take it (Python's default: 0.005)
SWITCH_INTERVAL = 0.0005


def get_argparser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="labpipe-master",
        description="labpipe master: schedules and runs experiments of this lab directory")
    parser.add_argument("--version", action="version", version=f"labpipe {__version__}")
    net = parser.add_argument_group("network")
    net.add_argument("--bind", action="append", default=None, metavar="ADDR",
                     help="address to listen on (repeatable; default: 127.0.0.1 and ::1); "
                          "'*' for all interfaces")
    net.add_argument("--port-notify", type=tcp_port, default=3250, metavar="PORT",
                     help="sync (notifier) port (default: %(default)s; 0 picks a free port)")
    net.add_argument("--port-control", type=tcp_port, default=3251, metavar="PORT",
                     help="RPC port (default: %(default)s)")
    net.add_argument("--port-logging", type=tcp_port, default=1066, metavar="PORT",
                     help="logging port (default: %(default)s)")
    net.add_argument("--port-broadcast", type=tcp_port, default=1067, metavar="PORT",
                     help="broadcast port (default: %(default)s)")
    net.add_argument("--ssl", nargs=3, metavar=("CERT", "KEY", "PEER"), default=None,
                     help="mutual TLS on every port: CERT and KEY are the master's "
                          "certificate and unencrypted key (PEM), PEER the client "
                          "certificate(s) to trust")
    lab = parser.add_argument_group("lab")
    lab.add_argument("-r", "--repository", default="repository",
                     help="experiment repository (default: %(default)s)")
    lab.add_argument("-g", "--git", action="store_true",
                     help="the repository is a Git repository (bare or not)")
    lab.add_argument("--experiment-subdir", default="",
                     help="only list experiments below this folder of the repository")
    lab.add_argument("--device-db", default="device_db.py",
                     help="device database file (default: %(default)s)")
    lab.add_argument("--dataset-db", default="dataset_db.mdb",
                     help="dataset database file (default: %(default)s)")
    lab.add_argument("--emergency-lock-key-file", default=None, metavar="FILE",
                     help="a file whose first line is the emergency key, which opens any "
                          "lock (default: [lock] of labpipe.toml)")
    lab.add_argument("--name", default=None, help="the master's name, shown to clients")
    workers = parser.add_argument_group("workers")
    workers.add_argument("--build-timeout", type=float, default=60.0, metavar="SECONDS",
                         help="longest import + build of an experiment (default: %(default)s)")
    workers.add_argument("--term-timeout", type=float, default=2.0, metavar="SECONDS",
                         help="wait this long for a worker asked to exit before SIGTERM, "
                              "and as long again before SIGKILL (default: %(default)s)")
    qs = parser.add_argument_group("bluesky-queueserver API (labpipe.qserver)")
    qs.add_argument("--qserver", action="store_true", default=None,
                    help="serve the RE Manager 0MQ API (qserver, REManagerAPI)")
    qs.add_argument("--qserver-control-addr", default=None, metavar="ADDR",
                    help="its control address (default: tcp://127.0.0.1:60615; "
                         "port * picks a free one)")
    qs.add_argument("--qserver-info-addr", default=None, metavar="ADDR",
                    help="its info/console address (default: tcp://127.0.0.1:60625)")
    qs.add_argument("--qserver-pipeline", default=None, metavar="NAME",
                    help="the pipeline that is the queue (default: main)")
    net.add_argument("--web", type=int, default=None, metavar="PORT",
                     help="also start labpipe-web on localhost:PORT, stopped with the master")
    workers.add_argument("--dask-scheduler", default=None, metavar="ADDR",
                         help="the lab's Dask cluster for offloaded analysis: a "
                              "scheduler's address (tcp://HOST:8786), or 'local' to "
                              "start a LocalCluster with the master (docs/dask.md)")
    log = parser.add_argument_group("logging")
    log.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    log.add_argument("-q", "--quiet", action="count", default=0, help="less log output")
    log.add_argument("--log-file", default=None, help="also write the log to this file")
    return parser


def _setup_logging(args: argparse.Namespace) -> None:
    level = max(logging.DEBUG, logging.WARNING - 10 * args.verbose + 10 * args.quiet)
    root = logging.getLogger()
    root.setLevel(logging.DEBUG if args.verbose else logging.INFO)
    fmt = logging.Formatter("%(asctime)s %(levelname)s:%(source)s:%(name)s:%(message)s")
    handlers: list[tuple[logging.Handler, int]] = [(logging.StreamHandler(sys.stderr), level)]
    if args.log_file:
        try:
            handlers.append((logging.FileHandler(args.log_file), min(level, logging.INFO)))
        except OSError as exc:
            raise OSError(f"cannot open the log file {args.log_file}: "
                          f"{exc.strerror or exc}") from None
    for handler, handler_level in handlers:
        handler.setFormatter(fmt)
        handler.addFilter(_default_source)
        handler.addFilter(_SourceLevel(handler_level))
        root.addHandler(handler)


def _default_source(record: logging.LogRecord) -> bool:
    if not hasattr(record, "source"):
        record.source = "master"
    return True


class _SourceLevel:
    """The master's own records from ``level`` up; records of runs and peers (print
    lines included) all, as ARTIQ's master shows them: their sources filtered them."""

    def __init__(self, level: int):
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= self.level or getattr(record, "source", None) != "master"


def _options(args: argparse.Namespace) -> MasterOptions:
    from labpipe.master.assembly import MasterOptions
    from labpipe.protocol.tls import TLSFiles
    qserver = _qserver(args)
    bind = args.bind or ["127.0.0.1", "::1"]
    if "*" in bind:
        bind = ["0.0.0.0", "::"]
    return MasterOptions(
        bind=bind, port_notify=args.port_notify, port_control=args.port_control,
        port_logging=args.port_logging, port_broadcast=args.port_broadcast,
        repository=args.repository, git=args.git, experiment_subdir=args.experiment_subdir,
        device_db=args.device_db, dataset_db=args.dataset_db, name=args.name,
        build_timeout=args.build_timeout or None, term_timeout=args.term_timeout,
        kill_timeout=args.term_timeout, tls=TLSFiles.from_args(args.ssl),
        config=getattr(args, "lab_config", None),
        emergency_lock_key_file=args.emergency_lock_key_file,
        on_progress=_say if sys.stderr.isatty() and not args.quiet else None,
        endpoints=[] if qserver is None else [qserver.endpoint],
        dask_scheduler=args.dask_scheduler)


def _qserver(args: argparse.Namespace) -> QServerSettings | None:
    """The queueserver endpoint's settings, when asked by a flag or ``[qserver]``."""
    config = getattr(args, "lab_config", None)
    section = None if config is None else config.qserver
    if not (args.qserver or (section is not None and section.enabled)):
        return None
    from labpipe.qserver.endpoint import QServerSettings
    settings = QServerSettings()
    for key in ("control_addr", "info_addr", "pipeline"):
        value = getattr(args, f"qserver_{key}") or (
            None if section is None else getattr(section, key))
        if value is not None:
            setattr(settings, key, value)
    return settings


def _say(doing: str) -> None:
    """What the start is doing, on a terminal's stderr (stdout's first line is the
    ready line; piped, stderr holds only what went wrong)."""
    print(f"labpipe-master: {doing}...", file=sys.stderr, flush=True)


def _start_web(port: int, master: "Master", tls: list[str] | None) -> subprocess.Popen[bytes]:
    """labpipe-web beside the master, as its own process (the console script next to
    this Python: the master never imports the web package). It leads its own process
    group, recorded with the master's processes (a master started after a kill -9 of
    this one ends it), and exits by itself when the master dies (``--parent-pid``)."""
    script = os.path.join(os.path.dirname(sys.executable), "labpipe-web")
    command = [script, "--parent-pid", str(os.getpid()), "--web-port", str(port),
               "--server", master.options.bind[0],
               "--port", str(master.port("control")),
               "--port-notify", str(master.port("notify")),
               "--port-broadcast", str(master.port("broadcast"))]
    if tls:
        command += ["--ssl", *tls]
    process = subprocess.Popen(command, process_group=0)
    master.process_records.add(process.pid)
    return process


async def _serve(options: MasterOptions, web: int | None = None,
                 tls_files: list[str] | None = None) -> None:
    from labpipe.master.assembly import Master
    master = Master(options)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, master.terminate_requested.set)
    # the master's exit stops it in order, however the block ends (a fatal task's
    # failure included: then it raises MasterFailed)
    async with master:
        ports = ", ".join(f"{name} {master.port(name)}"
                          for name in ("control", "notify", "broadcast", "logging"))
        for endpoint in options.endpoints:  # the qserver's: its ports, parsed alike
            bound = getattr(getattr(endpoint, "__self__", None), "bound", {})
            ports += "".join(f", qserver-{name} {addr.rpartition(':')[2]}"
                             for name, addr in bound.items())
        tls = " with TLS" if options.tls is not None else ""
        print(f"labpipe-master ready on {', '.join(options.bind)}{tls}: {ports}", flush=True)
        web_process = None if web is None else _start_web(web, master, tls_files)
        try:
            await master.terminate_requested.wait()
            logger.info("shutting down")
        finally:
            if web_process is not None:
                web_process.terminate()
                try:
                    await asyncio.to_thread(web_process.wait, 10)
                except subprocess.TimeoutExpired:
                    web_process.kill()
                    web_process.wait()


def main(argv: list[str] | None = None) -> None:
    """Run the master until SIGINT, SIGTERM or ``master_management.terminate()``."""
    from labpipe.config import ConfigError, load_config
    from labpipe.master.settings import parse_args
    try:
        config = load_config(".")  # the lab's file gives the defaults; flags win
    except ConfigError as exc:
        print(f"labpipe-master: {exc}", file=sys.stderr)
        sys.exit(1)
    args = parse_args(get_argparser(), argv, config)
    try:
        _setup_logging(args)
        # The event loop shares the GIL with threads (commits, worker pipes' readers,
        # the spare-worker refill): at the default 5 ms switch interval, each of its
        # system calls could wait that long to get the GIL back from a busy thread.
        sys.setswitchinterval(SWITCH_INTERVAL)
        asyncio.run(_serve(_options(args), args.web, args.ssl))
    except KeyboardInterrupt:
        pass
    except Exception as exc:
        # a user gets one line (a bad lab, a port in use...); -v logs the traceback
        logger.debug("the master stopped on an error", exc_info=True)
        lines = str(exc).strip().splitlines()
        print(f"labpipe-master: {lines[0] if lines else type(exc).__name__}",
              file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
