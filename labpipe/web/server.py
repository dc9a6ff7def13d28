"""The web server: the page (static files, no build step, no CDN) and one WebSocket
per browser at ``/ws`` carrying JSON messages.

From the browser: ``{"type": "rpc", "id": N, "target": T, "method": M, "args": [...],
"kwargs": {...}}``, answered ``{"type": "reply", "id": N, "ok": true, "result": R}`` or
``{"type": "reply", "id": N, "ok": false, "error": "one line"}``; anything else is
answered ``{"type": "error", "error": "one line"}`` and the connection stays open.
To the browser: on connecting an ``init`` per notifier and ``connection``, then every
``mod``, ``log`` record, ``console`` message and ``connection`` change (see
``bridge.Bridge``)."""

import asyncio
import json
import logging
import ssl as _ssl
from importlib import resources
from typing import Any

from aiohttp import WSMsgType, web

from labpipe.web.bridge import Bridge, Event, MasterAddress, is_remote
from labpipe.web.jsonable import jsonable
from labpipe.web.outbox import Outbox

logger = logging.getLogger(__name__)

#: A browser message larger than this is refused.
MAX_MESSAGE = 1 << 20
#: Bytes of messages queued for a slow browser before it is disconnected (outbox.py),
#: besides the copies it is sent on connecting.
MAX_BACKLOG = 64 << 20


class WebServer:
    """The dashboard of one master."""

    def __init__(self, address: MasterAddress, max_backlog: int = MAX_BACKLOG):
        self.bridge = Bridge(address, self._broadcast)
        self.max_backlog = max_backlog
        #: browsers disconnected for falling more than ``max_backlog`` bytes behind
        self.dropped = 0
        self._sockets: dict[web.WebSocketResponse, tuple[Outbox, web.Request]] = {}
        self.app = web.Application()
        self.app.router.add_get("/", self._index)
        self.app.router.add_get("/ws", self._websocket)
        self.app.router.add_static("/static", str(resources.files("labpipe.web") / "static"))
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self, host: str = "localhost", port: int = 8000,
                    ssl: _ssl.SSLContext | None = None) -> None:
        """Serve on host:port (0: a free port, then ``.port``); HTTPS with ``ssl``."""
        self.bridge.start()
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, ssl_context=ssl)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else port

    async def stop(self) -> None:
        """Close every browser connection and the master's."""
        for outbox, _ in self._sockets.values():
            outbox.close()
        if self._runner is not None:
            await self._runner.cleanup()
        await self.bridge.stop()

    async def _index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(str(resources.files("labpipe.web") / "static" / "index.html"))

    def _broadcast(self, event: Event) -> None:
        text = json.dumps(jsonable(event))
        for outbox, request in list(self._sockets.values()):
            self._put(outbox, request, text)

    def _put(self, outbox: Outbox, request: web.Request, text: str) -> None:
        if outbox.overflowed:
            return
        outbox.put(text)
        if outbox.overflowed:
            self.dropped += 1
            logger.warning("a browser fell more than %d bytes behind; disconnecting it "
                           "(it reconnects with fresh copies)", self.max_backlog)
            # its writer may be stuck sending to it: the connection goes at once
            if request.transport is not None:
                request.transport.abort()

    async def _writer(self, ws: web.WebSocketResponse, outbox: Outbox) -> None:
        while (text := await outbox.get()) is not None:
            await ws.send_str(text)
        await ws.close()

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=MAX_MESSAGE, heartbeat=20)
        await ws.prepare(request)
        outbox = Outbox(self.max_backlog)
        b = self.bridge
        # the copies first, then the state: "connected" comes after every init; the
        # copies, however large, are not held against the bound
        for name, struct in b.models.items():
            outbox.put(json.dumps(jsonable({"type": "init", "notifier": name,
                                            "struct": struct})), bounded=False)
        outbox.put(json.dumps({"type": "connection", "connected": b.connected,
                               "name": b.name}), bounded=False)
        outbox.limit += outbox.bytes
        self._sockets[ws] = (outbox, request)
        writer = asyncio.create_task(self._writer(ws, outbox))
        tasks: set[asyncio.Task[None]] = set()
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    self._put(outbox, request, json.dumps(
                        {"type": "error", "error": "expected a text message"}))
                    continue
                task = asyncio.create_task(self._handle(msg.data, outbox, request))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        finally:
            del self._sockets[ws]
            for task in list(tasks):
                task.cancel()
            outbox.close()
            await asyncio.gather(writer, *tasks, return_exceptions=True)
        return ws

    async def _handle(self, text: str, outbox: Outbox, request: web.Request) -> None:
        reply = await self.answer(text)
        self._put(outbox, request, json.dumps(jsonable(reply)))

    async def answer(self, text: str) -> dict[str, Any]:
        """The answer to one message from a browser."""
        try:
            msg = json.loads(text)
        except ValueError as exc:
            return {"type": "error", "error": f"not JSON: {exc}"}
        if not isinstance(msg, dict) or msg.get("type") != "rpc":
            return {"type": "error", "error": 'expected {"type": "rpc", ...}'}
        rid = msg.get("id")
        target, method = msg.get("target"), msg.get("method")
        args, kwargs = msg.get("args", []), msg.get("kwargs", {})
        if not isinstance(target, str) or not isinstance(method, str) or method.startswith("_"):
            return {"type": "reply", "id": rid, "ok": False,
                    "error": "target and method must be names (strings)"}
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            return {"type": "reply", "id": rid, "ok": False,
                    "error": "args must be a list and kwargs an object"}
        try:
            result = await self.bridge.call(target, method, args, kwargs)
        except (OSError, EOFError) as exc:
            text = (_one_line(exc) if is_remote(exc)
                    else f"the master is not reachable: {exc}")
            return {"type": "reply", "id": rid, "ok": False, "error": text}
        except Exception as exc:
            # the master's refusal (re-raised as its type: TypeError, KeyError,
            # RemoteError...) or the bridge's own: one line for the page
            return {"type": "reply", "id": rid, "ok": False, "error": _one_line(exc)}
        return {"type": "reply", "id": rid, "ok": True, "result": result}


def _one_line(exc: BaseException) -> str:
    """The last non-empty line of an error's text (a remote traceback's message)."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else type(exc).__name__
