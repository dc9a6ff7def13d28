"""The manager: follows the master's ``devices`` notifier and runs this host's controllers.

- It subscribes to ``devices`` on the master's notify port and keeps the set of running
  controllers equal to ``entries.select`` of the latest device database: after an init
  or any mod, a controller whose entry disappeared is stopped, a new one started, one
  whose spec changed (command, port, timers...) restarted; the others are not touched.
- The host filter is ``--host-filter`` or, by default, the local address of the route
  to the master (the address the master sees this manager connect from).
- When the master goes away the controllers keep running; the manager connects again
  every ``retry_master`` seconds, and the init it then receives is reconciled like any
  change (an unchanged controller is not restarted).
- Each controller's output goes to the master's logging port with source
  ``controller(NAME)`` (ARTIQ's), the manager's own log with source
  ``ctlmgr(HOSTNAME)``.
- ``stop()`` stops every controller (``Controller.stop``, all at once) and disconnects.
- ``CtlMgrTarget`` is the ``ctlmgr`` RPC target: ``list()``, ``restart(name)``,
  ``retry_now(name=None)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import socket
import ssl as _ssl
from typing import Any

from labpipe.ctlmgr.controller import Controller
from labpipe.ctlmgr.entries import ControllerSpec, Resolver, resolve, select
from labpipe.ctlmgr.output import Sink
from labpipe.protocol.logs import LogForwarder
from labpipe.protocol.sync import Subscriber

logger = logging.getLogger("labpipe.ctlmgr")


def route_address(server: str, port: int) -> str:
    """The local address this host uses to reach server:port (nothing is sent)."""
    infos = socket.getaddrinfo(server, port, type=socket.SOCK_DGRAM)
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.connect(address)
        return str(sock.getsockname()[0])


class ControllerManager:
    """See the module docstring. ``run()`` until cancelled or ``stop()``."""

    def __init__(self, server: str, port_notify: int, port_logging: int, *,
                 host_filter: str | None = None, retry_master: float = 5.0,
                 ssl: _ssl.SSLContext | None = None, resolver: Resolver = resolve):
        self.server = server
        self.port_notify = port_notify
        self.port_logging = port_logging
        self.host_filter = host_filter
        self.retry_master = retry_master
        self._ssl = ssl
        self._resolver = resolver
        self.controllers: dict[str, Controller] = {}
        self._forwarders: dict[str, LogForwarder] = {}
        self._model: dict[str, Any] | None = None
        self._changed = asyncio.Event()
        self._lost = asyncio.Event()
        self._retry_master = asyncio.Event()
        self._errors: set[str] = set()
        #: Set each time the running set has been made equal to the database.
        self.reconciled = asyncio.Event()
        self.connected = False

    # the master ----------------------------------------------------------------
    async def run(self) -> None:
        """Follow the master and keep the controllers in step; until cancelled."""
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._reconcile_loop())
            tasks.create_task(self._follow_master())

    async def _follow_master(self) -> None:
        said = False
        while True:
            subscriber = Subscriber("devices", self._on_init,
                                    notify_cb=self._on_mod, disconnect_cb=self._lost.set)
            try:
                if self.host_filter is None:
                    self.host_filter = await asyncio.to_thread(
                        route_address, self.server, self.port_notify)
                    logger.info("running the controllers of host %s", self.host_filter)
                self._lost.clear()
                await subscriber.connect(self.server, self.port_notify, ssl=self._ssl)
            except (OSError, _ssl.SSLError) as exc:
                if not said:
                    logger.warning("cannot reach the master at %s:%d (%s); retrying every "
                                   "%.1f s", self.server, self.port_notify,
                                   exc.strerror if isinstance(exc, OSError) and exc.strerror
                                   else exc, self.retry_master)
                    said = True
            else:
                said = False
                self.connected = True
                logger.info("connected to the master at %s:%d", self.server,
                            self.port_notify)
                try:
                    await self._lost.wait()
                finally:
                    self.connected = False
                    await subscriber.close()
                logger.warning("lost the master at %s:%d; the controllers keep running, "
                               "retrying every %.1f s", self.server, self.port_notify,
                               self.retry_master)
            self._retry_master.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.retry_master):
                    await self._retry_master.wait()

    def _on_init(self, struct: Any) -> dict[str, Any]:
        model = struct if isinstance(struct, dict) else {}
        self._model = model
        return model

    def _on_mod(self, _mod: Any) -> None:
        self._changed.set()

    # the controllers -----------------------------------------------------------
    async def _reconcile_loop(self) -> None:
        while True:
            await self._changed.wait()
            self._changed.clear()
            if self._model is None or self.host_filter is None:
                continue
            snapshot = copy.deepcopy(self._model)
            wanted, errors = await asyncio.to_thread(select, snapshot, self.host_filter,
                                                     self._resolver)
            for line in errors:
                if line not in self._errors:
                    logger.error("%s; not started", line)
            self._errors = set(errors)
            await self._apply(wanted)
            self.reconciled.set()

    async def _apply(self, wanted: dict[str, ControllerSpec]) -> None:
        gone = [name for name, c in self.controllers.items()
                if wanted.get(name) != c.spec]
        if gone:
            await asyncio.gather(*(self._remove(name) for name in gone))
        for name, spec in wanted.items():
            if name not in self.controllers:
                controller = Controller(spec, self._sink(name))  # controllers: plain TCP
                self.controllers[name] = controller
                controller.start()

    async def _remove(self, name: str) -> None:
        controller = self.controllers.pop(name)
        logger.info("controller %s: stopping (device database changed)", name)
        await controller.stop()

    def _sink(self, name: str) -> Sink:
        forwarder = self._forwarders.get(name)
        if forwarder is None:
            forwarder = LogForwarder(self.server, self.port_logging,
                                     f"controller({name})".replace(":", "_"), ssl=self._ssl)
            self._forwarders[name] = forwarder

        def sink(level: int, logger_name: str, message: str) -> None:
            record = logging.LogRecord(logger_name, level, name, 0, message, None, None)
            forwarder.handle(record)
        return sink

    # control -------------------------------------------------------------------
    def retry_master_now(self) -> None:
        """Try the master again at once."""
        self._retry_master.set()

    async def stop(self) -> None:
        """Stop every controller (escalating steps), then close the log connections."""
        controllers, self.controllers = self.controllers, {}
        await asyncio.gather(*(c.stop() for c in controllers.values()))
        forwarders, self._forwarders = self._forwarders, {}
        for forwarder in forwarders.values():
            await asyncio.to_thread(forwarder.close)


class CtlMgrTarget:
    """The ``ctlmgr`` RPC target."""

    def __init__(self, manager: ControllerManager):
        self._manager = manager

    def list(self) -> list[dict[str, object]]:
        """Every controller of this host: name, state, pid, starts, last_exit, argv,
        host, port."""
        return [c.status().as_dict() for c in self._manager.controllers.values()]

    async def restart(self, name: str) -> None:
        """Stop controller name and start it again at once."""
        controller = self._manager.controllers.get(name)
        if controller is None:
            known = ", ".join(sorted(self._manager.controllers)) or "none"
            raise KeyError(f"no controller {name!r} on this host (known: {known})")
        await controller.restart()

    def retry_now(self, name: str | None = None) -> None:
        """Cut the retry wait short: of controller name, or of all (and of the master
        connection) when name is None."""
        if name is None:
            for each in self._manager.controllers.values():
                each.retry_now()
            self._manager.retry_master_now()
            return
        controller = self._manager.controllers.get(name)
        if controller is None:
            raise KeyError(f"no controller {name!r} on this host")
        controller.retry_now()
