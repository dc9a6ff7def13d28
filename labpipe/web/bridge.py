"""The web server's side of the master: notifier copies, the log broadcast and RPC
calls, reconnected by themselves after the master goes away."""

import asyncio
import logging
import ssl as _ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from labpipe.protocol.broadcast import Receiver
from labpipe.protocol.rpc import AsyncClient
from labpipe.protocol.sync import Subscriber

logger = logging.getLogger(__name__)

#: The notifiers the page shows.
NOTIFIERS = ("schedule", "explist", "explist_status", "datasets", "interactive_args",
             "pipelines", "history", "devices", "lock")
#: The RPC targets the page may call.
TARGETS = ("schedule", "experiment_db", "dataset_db", "interactive_arg_db",
           "master_management", "history", "device_db", "lock")
#: Seconds between attempts to reach a master that went away.
RETRY_SECONDS = 0.5
#: Seconds a new connection may take to bring every notifier's copy.
INIT_TIMEOUT = 10.0


@dataclass
class MasterAddress:
    """Where the master is."""
    host: str = "127.0.0.1"
    port_control: int = 3251
    port_notify: int = 3250
    port_broadcast: int = 1067
    ssl: _ssl.SSLContext | None = None


Event = dict[str, Any]


class Bridge:
    """Keeps a copy of every notifier of ``NOTIFIERS`` and follows the ``log`` and
    ``console`` broadcasts; ``on_event(event)`` is called with each change:
    ``{"type": "init"|"mod", "notifier", ...}``, ``{"type": "log", "record"}``,
    ``{"type": "console", "message"}`` (a run's console lines),
    ``{"type": "connection", "connected"}``."""

    def __init__(self, address: MasterAddress, on_event: Callable[[Event], None]):
        self.address = address
        self.on_event = on_event
        self.models: dict[str, Any] = {}
        self.connected = False
        self.name: str | None = None
        self._lost = asyncio.Event()
        self._inits: set[str] = set()
        self._all_inits = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._streams: list[Subscriber | Receiver] = []
        self._rpc: dict[str, AsyncClient] = {}
        self._rpc_lock = asyncio.Lock()

    def start(self) -> None:
        """Start connecting (and reconnecting) in the background."""
        self._task = asyncio.create_task(self._keep_connected())

    async def stop(self) -> None:
        """Disconnect everything."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._close_all()

    async def _close_all(self) -> None:
        for stream in self._streams:
            await stream.close()
        self._streams = []
        for client in self._rpc.values():
            client.close_rpc()
        self._rpc = {}

    def _set_connected(self, connected: bool) -> None:
        if connected != self.connected:
            self.connected = connected
            self.on_event({"type": "connection", "connected": connected,
                           "name": self.name})

    def _disconnected(self) -> None:
        self._lost.set()

    async def _connect_once(self) -> None:
        """Connect every stream; return once every notifier has sent its copy and the
        master has answered an RPC call (ConnectionError if the master goes away first:
        a TLS master that refuses this client's certificate closes the connection only
        after the handshake, so a connect alone proves nothing)."""
        a = self.address
        self._inits.clear()
        self._all_inits.clear()
        for name in NOTIFIERS:
            def on_mod(mod: Any, name: str = name) -> None:
                if mod.get("action") == "init":
                    self.models[name] = mod["struct"]
                    self._inits.add(name)
                    if len(self._inits) == len(NOTIFIERS):
                        self._all_inits.set()
                    self.on_event({"type": "init", "notifier": name,
                                   "struct": mod["struct"]})
                else:
                    self.on_event({"type": "mod", "notifier": name, "mod": mod})
            sub = Subscriber(name, lambda s: s, on_mod, self._disconnected)
            await sub.connect(a.host, a.port_notify, ssl=a.ssl)
            self._streams.append(sub)
        log = Receiver("log", lambda r: self.on_event({"type": "log", "record": r}),
                       self._disconnected)
        await log.connect(a.host, a.port_broadcast, ssl=a.ssl)
        self._streams.append(log)
        # runs' console lines (docs/console.md): {"rid", "first", "lines": [[time, text]]}
        console = Receiver("console",
                           lambda m: self.on_event({"type": "console", "message": m}),
                           self._disconnected)
        await console.connect(a.host, a.port_broadcast, ssl=a.ssl)
        self._streams.append(console)
        lost = asyncio.create_task(self._lost.wait())
        inits = asyncio.create_task(self._all_inits.wait())
        done, _ = await asyncio.wait((lost, inits), timeout=INIT_TIMEOUT,
                                     return_when=asyncio.FIRST_COMPLETED)
        lost.cancel()
        inits.cancel()
        if inits not in done:
            raise ConnectionError("the master closed the connection before sending "
                                  "its notifiers' copies" if lost in done else
                                  f"no copy of every notifier within {INIT_TIMEOUT} s")
        try:
            self.name = await self.call("master_management", "get_name", [], {})
        except (OSError, EOFError):
            raise
        except Exception as exc:  # the master's refusal: it is there all the same
            logger.debug("master_management.get_name: %s", exc)
            self.name = None

    async def _keep_connected(self) -> None:
        while True:
            self._lost.clear()
            try:
                await self._connect_once()
            except (OSError, EOFError, _ssl.SSLError) as exc:
                logger.debug("master not reachable: %s", exc)
                await self._close_all()
                self._set_connected(False)
                await asyncio.sleep(RETRY_SECONDS)
                continue
            self._set_connected(True)
            await self._lost.wait()
            logger.warning("lost the master; reconnecting")
            await self._close_all()
            self._set_connected(False)
            await asyncio.sleep(RETRY_SECONDS)

    async def call(self, target: str, method: str, args: list[Any],
                   kwargs: dict[str, Any]) -> Any:
        """One RPC call; raises ``ValueError`` for a target the page may not call,
        ``rpc.RemoteError`` for the master's refusal, ``OSError`` when unreachable."""
        if target not in TARGETS:
            raise ValueError(f"unknown target {target!r} (targets: {', '.join(TARGETS)})")
        async with self._rpc_lock:
            client = self._rpc.get(target)
            if client is None:
                client = AsyncClient()
                await client.connect_rpc(self.address.host, self.address.port_control,
                                         target, ssl=self.address.ssl)
                self._rpc[target] = client
            try:
                return await getattr(client, method)(*args, **kwargs)
            except (OSError, EOFError) as exc:
                if not is_remote(exc):  # the connection failed, not the call
                    client.close_rpc()
                    del self._rpc[target]
                raise


def is_remote(exc: BaseException) -> bool:
    """Whether exc is the master's refusal (re-raised as its type: a PermissionError of
    the lock is an OSError too) rather than a failure to reach the master."""
    return hasattr(exc, "remote_traceback")
