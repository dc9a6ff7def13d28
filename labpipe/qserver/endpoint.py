"""The queueserver endpoint's sockets and lifetime.

``QServerSettings`` (from ``--qserver*`` flags or ``[qserver]``) makes the endpoint:
``settings.endpoint`` is given to ``MasterOptions.endpoints``; entered with the started
master, it binds the control socket (REP) and the info socket (PUB), serves requests one
at a time in the master's event loop, and publishes the master's log lines on the
``QS_Console`` topic. Curve encryption: the server's private key is read from the
environment variable ``QSERVER_ZMQ_PRIVATE_KEY_FOR_SERVER``, as the RE Manager does
(clients set ``QSERVER_ZMQ_PUBLIC_KEY``). A request over ``MAX_MESSAGE`` bytes drops
the client's connection; a request that is not JSON is answered with a refusal.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import zmq
import zmq.asyncio

from labpipe.qserver.adapter import Adapter
from labpipe.qserver.handlers import QServer

if TYPE_CHECKING:
    from labpipe.master.assembly import Master

__all__ = ["QServerSettings", "MAX_MESSAGE", "KEY_VARIABLE"]

logger = logging.getLogger(__name__)

MAX_MESSAGE = 16 * 1024 * 1024
KEY_VARIABLE = "QSERVER_ZMQ_PRIVATE_KEY_FOR_SERVER"
CONSOLE_TOPIC = b"QS_Console"


@dataclass
class QServerSettings:
    """Where the endpoint listens and which pipeline is the queue. A ``*`` port picks
    a free one (``bound`` then holds the real addresses)."""

    control_addr: str = "tcp://127.0.0.1:60615"
    info_addr: str = "tcp://127.0.0.1:60625"
    pipeline: str = "main"

    def __post_init__(self) -> None:
        self.bound: dict[str, str] = {}

    @contextlib.asynccontextmanager
    async def endpoint(self, master: Master) -> AsyncIterator[QServer]:
        """Serve the master until the block ends (sockets closed, task ended)."""
        qs = QServer(Adapter(master, self.pipeline))
        context = zmq.asyncio.Context()
        control = context.socket(zmq.REP)
        info = context.socket(zmq.PUB)
        handler = _ConsoleHandler(info)
        try:
            for sock in (control, info):
                sock.setsockopt(zmq.LINGER, 0)
                sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE)
            key = os.environ.get(KEY_VARIABLE)
            if key:
                for sock in (control, info):
                    sock.curve_server = True
                    sock.curve_secretkey = key.encode("ascii")
            try:
                control.bind(self.control_addr)
                info.bind(self.info_addr)
            except zmq.ZMQError as exc:
                raise OSError(f"qserver: cannot listen on {self.control_addr} / "
                              f"{self.info_addr}: {exc}") from None
            self.bound = {"control": control.getsockopt_string(zmq.LAST_ENDPOINT),
                          "info": info.getsockopt_string(zmq.LAST_ENDPOINT)}
            logging.getLogger().addHandler(handler)
            task = asyncio.create_task(_serve(control, qs), name="qserver control")
            logger.info("qserver API on %s (queue: pipeline %s), console on %s",
                        self.bound["control"], self.pipeline, self.bound["info"])
            try:
                yield qs
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        finally:
            logging.getLogger().removeHandler(handler)
            control.close(0)
            info.close(0)
            context.term()


async def _serve(control: zmq.asyncio.Socket, qs: QServer) -> None:
    """Requests one at a time (REQ/REP); a failure of one is a refusal, never the end."""
    while True:
        data = await control.recv()
        try:
            request: object = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            request = None
            reply = {"success": False,
                     "msg": f"Failed to decode the request: not JSON ({len(data)} bytes)"}
        if request is not None:
            try:
                reply = await qs.execute(request)
            except Exception as exc:  # a bug of ours: logged, answered, survived
                logger.exception("qserver request failed")
                reply = {"success": False, "msg": f"internal error: {exc}"}
        try:
            text = json.dumps(reply, default=repr)
        except (TypeError, ValueError) as exc:
            text = json.dumps({"success": False, "msg": f"reply not JSON: {exc}"})
        await _send(control, text.encode("utf-8"))


async def _send(control: zmq.asyncio.Socket, payload: bytes) -> None:
    """A reply at once when the socket takes it (a REP socket's reply to a peer waiting
    for it always does): the awaitable send costs the round trip an extra turn of the
    event loop (bench_qserver.py). Else the awaitable send."""
    try:
        zmq.Socket.send(control, payload, zmq.NOBLOCK)
    except zmq.Again:
        await control.send(payload)


class _ConsoleHandler(logging.Handler):
    """The master's log records as console lines on the info socket (never blocks:
    a PUB socket drops what a slow subscriber cannot take)."""

    def __init__(self, sock: zmq.asyncio.Socket):
        super().__init__(logging.INFO)
        self.sock = sock
        self.loop = asyncio.get_running_loop()  # the socket is used in its thread only

    def emit(self, record: logging.LogRecord) -> None:
        try:
            source = getattr(record, "source", "master")
            line = f"{source}:{record.levelname}:{record.name}:{record.getMessage()}\n"
            payload = json.dumps({"time": time.time(), "msg": line}).encode("utf-8")
            self.loop.call_soon_threadsafe(self._send, payload)
        except Exception:  # never fail a log call of the master
            pass

    def _send(self, payload: bytes) -> None:
        with contextlib.suppress(zmq.ZMQError):
            self.sock.send_multipart([CONSOLE_TOPIC, payload], flags=zmq.NOBLOCK)
