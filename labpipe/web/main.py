"""``labpipe-web``: the dashboard of a master, served over HTTP(S)."""

import argparse
import asyncio
import os
import signal
import ssl
import sys

from labpipe.protocol.ports import tcp_port
from labpipe.protocol.tls import TLSConfigError, TLSFiles, client_context
from labpipe.web.bridge import MasterAddress
from labpipe.web.server import WebServer


def parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(prog="labpipe-web", description=__doc__)
    p.add_argument("-s", "--server", default="127.0.0.1", help="the master's host")
    p.add_argument("--port", type=tcp_port, default=3251, help="the master's control port")
    p.add_argument("--port-notify", type=tcp_port, default=3250)
    p.add_argument("--port-broadcast", type=tcp_port, default=1067)
    p.add_argument("--bind", default="localhost", help="address to serve on")
    p.add_argument("--web-port", type=tcp_port, default=8000, help="port to serve on (0: free)")
    p.add_argument("--ssl", nargs=3, metavar=("CERT", "KEY", "PEER"), default=None,
                   help="TLS to the master, and HTTPS with the same certificate")
    p.add_argument("--parent-pid", type=int, default=None, metavar="PID",
                   help="exit once process PID, which started this one, has died "
                        "(labpipe-master --web passes its own)")
    return p


async def _parent_gone(parent: int, stop: asyncio.Event, every: float = 0.5) -> None:
    """Set stop once this process's parent, PID parent, has died (this process is
    re-parented then; also when it died before this one got here)."""
    while os.getppid() == parent:
        await asyncio.sleep(every)
    stop.set()


async def serve(args: argparse.Namespace) -> None:
    """Serve until SIGINT/SIGTERM."""
    client_ssl = server_ssl = None
    if args.ssl is not None:
        files = TLSFiles.from_args(args.ssl)
        assert files is not None
        client_ssl = client_context(files)
        # HTTPS with the web server's certificate; browsers bring no client certificate
        server_ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_ssl.load_cert_chain(files.cert, files.key)
    web = WebServer(MasterAddress(args.server, args.port, args.port_notify,
                                  args.port_broadcast, client_ssl))
    await web.start(args.bind, args.web_port, server_ssl)
    print(f"labpipe-web ready: {'https' if server_ssl else 'http'}://{args.bind}:{web.port}/",
          flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    watch = (None if args.parent_pid is None
             else asyncio.create_task(_parent_gone(args.parent_pid, stop)))
    await stop.wait()
    if watch is not None:
        watch.cancel()
    await web.stop()


def main() -> None:
    """Entry point."""
    args = parser().parse_args()
    try:
        asyncio.run(serve(args))
    except (TLSConfigError, OSError, ssl.SSLError) as exc:
        print(f"labpipe-web: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
