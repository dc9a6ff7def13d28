"""A small controller for the controller manager's tests, speaking labpipe's RPC.

``python ctlmgr_controller.py --name NAME --bind ADDR --port PORT [--tag T]
[--traceback] [--no-ping] [--ignore-term] [--child]``: serves target ``ctl`` with
``ping()`` (True, or False with --no-ping), ``tag()``, ``pid()``, ``terminate()``; says
``INFO:ctl.NAME:serving TAG on PORT`` on stderr once listening; with --traceback it
logs an exception (a multi-line record) first; with --ignore-term it ignores SIGTERM
and terminate(); with --child it starts a sleeping child in its group (left behind
unless the whole group is stopped); its pid and its child's go to stdout.
"""

import argparse
import asyncio
import logging
import os
import signal
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from labpipe.protocol.rpc import Server  # noqa: E402


class Ctl:
    def __init__(self, args, stop):
        self._args = args
        self._stop = stop

    def ping(self):
        return not self._args.no_ping

    def tag(self):
        return self._args.tag

    def pid(self):
        return os.getpid()

    def terminate(self):
        if not self._args.ignore_term:
            self._stop.set()


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", required=True)
    parser.add_argument("--bind", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tag", default="")
    parser.add_argument("--traceback", action="store_true")
    parser.add_argument("--no-ping", action="store_true")
    parser.add_argument("--ignore-term", action="store_true")
    parser.add_argument("--child", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    log = logging.getLogger(f"ctl.{args.name}")
    if args.ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print(f"pid {os.getpid()}", flush=True)
    child = None
    if args.child:
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        print(f"child {child.pid}", flush=True)
    if args.traceback:
        try:
            raise ValueError(f"{args.name}: device not responding")
        except ValueError:
            log.exception("opening the device failed")
    stop = asyncio.Event()
    server = Server({"ctl": Ctl(args, stop)})
    await server.start(args.bind, args.port)
    log.info("serving %s on %d", args.tag, args.port)
    await stop.wait()
    await server.stop()


if __name__ == "__main__":
    asyncio.run(main())
