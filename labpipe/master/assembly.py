"""The master, assembled: databases, repository, scheduler and the four servers.

``Master(options)`` builds every part; ``await start()`` loads the databases, scans the
repository and opens the ports; ``await stop()`` closes the ports first (no new
requests), then stops the runs and closes the databases. Used by ``labpipe-master`` and
by tests that want a master in their own event loop.
"""

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field

from labpipe.master.datasets import DatasetDB
from labpipe.master.devices import DeviceDB
from labpipe.master.history import History, HistoryTarget
from labpipe.master.interactive import InteractiveArgDB
from labpipe.master.repository import ExperimentDB, FilesystemBackend, GitBackend
from labpipe.master.rid import RIDCounter
from labpipe.master.schedule_store import ScheduleStore
from labpipe.master.scheduler import Scheduler, SchedulerConfig
from labpipe.master.targets import (DATASET_DB_METHODS, INTERACTIVE_ARG_DB_METHODS,
                                    SCHEDULE_METHODS, Target)
from labpipe.protocol.broadcast import Broadcaster
from labpipe.protocol.logs import LogBroadcastHandler, LogServer
from labpipe.protocol.rpc import Server
from labpipe.protocol.server import ConnectionLimits
from labpipe.protocol.sync import Publisher
from labpipe.worker import launcher
from labpipe.worker.devices import follow_aliases

__all__ = ["Master", "MasterOptions"]

logger = logging.getLogger(__name__)


@dataclass
class MasterOptions:
    """Everything ``labpipe-master``'s command line can set (paths relative to lab_dir)."""
    lab_dir: str = "."
    bind: list = field(default_factory=lambda: ["127.0.0.1", "::1"])
    port_notify: int = 3250
    port_control: int = 3251
    port_logging: int = 1066
    port_broadcast: int = 1067
    repository: str = "repository"
    git: bool = False
    experiment_subdir: str = ""
    device_db: str = "device_db.py"
    dataset_db: str = "dataset_db.mdb"
    schedule_db: str = "schedule.mdb"
    history_db: str = "history.mdb"
    name: str | None = None
    build_timeout: float | None = 60.0
    term_timeout: float = 2.0
    kill_timeout: float = 2.0
    #: Handshake timeout and connection limits of every port (None: the defaults).
    connection_limits: ConnectionLimits | None = None


class MasterManagement:
    """The ``master_management`` target."""

    def __init__(self, name, terminate_cb):
        self._name = name
        self._terminate_cb = terminate_cb

    def get_name(self):
        """The master's name (``--name``), or None."""
        return self._name

    def terminate(self):
        """Shut the master down in order (runs stopped, nothing acknowledged lost)."""
        self._terminate_cb()


def _device_modules(ddb: dict) -> list[str]:
    """The modules the device database's local devices come from."""
    return [entry.get("module", "") for entry in ddb.values()
            if isinstance(entry, dict) and entry.get("type") == "local"]


class Master:
    """A labpipe master in the current event loop."""

    def __init__(self, options: MasterOptions):
        self.options = options
        self.terminate_requested = asyncio.Event()
        self.servers = {}
        self._log_handler = None

    def _path(self, path):
        return os.path.join(self.options.lab_dir, path)

    async def start(self):
        """Load everything, start the servers; returns when the master serves."""
        o = self.options
        self.device_db = DeviceDB(self._path(o.device_db))
        if launcher.uses_bluesky(_device_modules(self.device_db.get_device_db())):
            await asyncio.to_thread(launcher.use_bluesky, True)  # before the first run
        await asyncio.to_thread(launcher.warm_up)
        self.dataset_db = DatasetDB(self._path(o.dataset_db))
        backend_cls = GitBackend if o.git else FilesystemBackend
        self.repository = backend_cls(self._path(o.repository))
        self.experiment_db = ExperimentDB(
            o.lab_dir, self.repository, o.experiment_subdir,
            device_keys=lambda: self.device_db.get_device_db().keys())
        self.interactive_db = InteractiveArgDB()
        self.schedule_store = ScheduleStore(self._path(o.schedule_db))
        self.scheduler = Scheduler(
            RIDCounter(self._path("last_rid.pyon")),
            SchedulerConfig(lab_dir=o.lab_dir, results_dir=self._path("results"), build_timeout=o.build_timeout,
                            term_timeout=o.term_timeout, kill_timeout=o.kill_timeout),
            worker_handlers=self._worker_handlers, repository=self.repository,
            check_submission=self.experiment_db.check_submission,
            store=self.schedule_store)
        self.scheduler.explist = self.experiment_db.explist
        self.scheduler.on_run_end.append(
            lambda run, end: self.interactive_db.cancel_if_pending(run.rid))
        self.history = History(self._path(o.history_db), o.lab_dir, self.scheduler)
        self.scheduler.on_run_end.append(self.history.on_run_end)
        # queue control: ETAs from history, device conflicts through aliases
        self.scheduler.progress.history = self.history
        self.scheduler.queue.resolve_device = lambda key: follow_aliases(
            self.device_db.data.raw_view.__getitem__, key)[0]
        # the saved schedule comes back before anyone can submit
        await self.scheduler.restore()

        self.broadcaster = Broadcaster(limits=o.connection_limits)
        self._log_handler = LogBroadcastHandler(self.broadcaster)
        logging.getLogger().addHandler(self._log_handler)
        self.notifiers = {
            "schedule": self.scheduler.notifier,
            "devices": self.device_db.data,
            "datasets": self.dataset_db.data,
            "explist": self.experiment_db.explist,
            "explist_status": self.experiment_db.explist_status,
            "explist_errors": self.experiment_db.explist_errors,
            "interactive_args": self.interactive_db.notifier,
            "pipelines": self.scheduler.queue.states.notifier,
            "history": self.history.notifier,
        }
        self.targets = {
            "schedule": Target(self.scheduler, SCHEDULE_METHODS),
            "experiment_db": self.experiment_db.rpc_target,
            "dataset_db": Target(self.dataset_db, DATASET_DB_METHODS),
            "device_db": self.device_db,
            "interactive_arg_db": Target(self.interactive_db, INTERACTIVE_ARG_DB_METHODS),
            "master_management": MasterManagement(o.name, self.terminate_requested.set),
            "history": HistoryTarget(self.history),
        }
        self.servers = {
            "notify": (Publisher(self.notifiers, limits=o.connection_limits), o.port_notify),
            "control": (Server(self.targets, description="labpipe master",
                               limits=o.connection_limits), o.port_control),
            "logging": (LogServer(limits=o.connection_limits), o.port_logging),
            "broadcast": (self.broadcaster, o.port_broadcast),
        }
        for server, port in self.servers.values():
            await server.start(o.bind, port)
        # the push hook needs the control port, so the repository comes after the ports
        await self.experiment_db.start(control_port=self.port("control"),
                                       control_host=o.bind[0])

    def port(self, channel: str) -> int:
        """The port a channel (notify, control, logging, broadcast) listens on."""
        return self.servers[channel][0].port

    async def stop(self):
        """Stop in order: the control port first, then runs, then the rest."""
        control = self.servers.get("control")
        if control:
            await control[0].stop()
        if hasattr(self, "scheduler"):
            await self.scheduler.stop()
        if hasattr(self, "experiment_db"):
            await self.experiment_db.close()
        for name, (server, _) in self.servers.items():
            if name != "control":
                await server.stop()
        if self._log_handler is not None:
            logging.getLogger().removeHandler(self._log_handler)
        await asyncio.to_thread(launcher.discard_spares)
        if hasattr(self, "dataset_db"):
            self.dataset_db.close()
        if hasattr(self, "history"):
            self.history.close()
        if hasattr(self, "schedule_store"):
            self.schedule_store.close()
        if hasattr(self, "repository"):
            self.repository.close()

    # --- what a run's worker may ask of the master ---------------------------------

    def _worker_handlers(self, run) -> dict:
        scheduler = self.scheduler

        def log(msg):
            name = msg.get("name") or "worker"
            record = logging.getLogger(name).makeRecord(
                name, msg.get("levelno", logging.INFO), "(worker)", 0, msg.get("message", ""),
                None, None)
            record.created = msg.get("created", time.time())
            record.source = scheduler.source_of(run)
            logging.getLogger(name).handle(record)

        def get_dataset(msg):
            key = msg["key"]
            try:
                return self.dataset_db.data.raw_view[key]
            except KeyError:
                raise KeyError(f"dataset '{key}' does not exist") from None

        return {
            "log": log,
            "update_dataset": lambda msg: self.dataset_db.update(msg["mod"]),
            "get_dataset": get_dataset,
            "get_device_db": lambda msg: self.device_db.get_device_db(),
            "ccb_issue": lambda msg: self.broadcaster.broadcast(
                "ccb", {"service": msg["service"], "args": msg["args"],
                        "kwargs": msg["kwargs"]}),
            "interactive": lambda msg: self.interactive_db.request(
                run.rid, msg["title"], msg["arglist_desc"]),
        }
