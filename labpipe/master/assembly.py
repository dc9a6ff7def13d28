"""The master, assembled: databases, repository, scheduler and the four servers.

``Master(options)`` builds every part; ``await start()`` loads the databases, scans the
repository and opens the ports; ``await stop()`` closes the ports first (no new
requests), then stops the runs and closes the databases. Used by ``labpipe-master`` and
by tests that want a master in their own event loop.
"""

import asyncio
import logging
import os
from dataclasses import dataclass, field

from labpipe.config import LabConfig, load_config
from labpipe.master.datasets import DatasetDB
from labpipe.master.devices import DeviceDB, DeviceDBTarget
from labpipe.master.history import History, HistoryTarget
from labpipe.master.interactive import InteractiveArgDB
from labpipe.master.lab_lock import LabLock
from labpipe.master.process_records import FILE_NAME as PROCESSES_FILE
from labpipe.master.process_records import ProcessRecords, end_leftovers
from labpipe.master.repository import ExperimentDB, FilesystemBackend, GitBackend
from labpipe.master.rid import RIDCounter
from labpipe.master.run import Run
from labpipe.master.schedule_store import ScheduleStore
from labpipe.master.scheduler import Scheduler, SchedulerConfig
from labpipe.master.targets import SPECS, Target
from labpipe.protocol.broadcast import Broadcaster
from labpipe.protocol.logs import LogBroadcastHandler, LogServer, emit_remote
from labpipe.protocol.rpc import Server
from labpipe.protocol.server import ConnectionLimits
from labpipe.protocol.sync import Publisher
from labpipe.protocol.tls import TLSFiles, server_context
from labpipe.worker import launcher, messages
from labpipe.worker.devices import follow_aliases
from labpipe.worker.handle import Handlers

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
    config: LabConfig | None = None
    """The lab's configuration; None: read ``labpipe.toml`` from lab_dir at start."""
    #: ``--ssl CERT KEY PEER``: mutual TLS on all four ports (None: plain TCP).
    tls: TLSFiles | None = None
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
        self._lab_lock: LabLock | None = None
        self._process_records: ProcessRecords | None = None

    def _path(self, path):
        return os.path.join(self.options.lab_dir, path)

    async def start(self):
        """Load everything, start the servers; returns when the master serves."""
        o = self.options
        # bad TLS files stop the master before anything else starts
        self.tls = None if o.tls is None else o.tls.relative_to(o.lab_dir)
        ssl_context = None if self.tls is None else server_context(self.tls)
        await self._claim_lab()
        self.config = o.config if o.config is not None else load_config(o.lab_dir)
        self.device_db = await asyncio.to_thread(DeviceDB, self._path(o.device_db))
        if launcher.uses_bluesky(_device_modules(self.device_db.get_device_db())):
            await asyncio.to_thread(launcher.use_bluesky, True)  # before the first run
        await asyncio.to_thread(launcher.warm_up)
        self.dataset_db = await asyncio.to_thread(DatasetDB, self._path(o.dataset_db))
        backend_cls = GitBackend if o.git else FilesystemBackend
        self.repository = backend_cls(self._path(o.repository))
        self.experiment_db = ExperimentDB(
            o.lab_dir, self.repository, o.experiment_subdir,
            device_keys=lambda: self.device_db.get_device_db().keys(), config=self.config)
        self.interactive_db = InteractiveArgDB()
        self.schedule_store = await asyncio.to_thread(ScheduleStore,
                                                      self._path(o.schedule_db))
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
        self.history = await asyncio.to_thread(History, self._path(o.history_db),
                                               o.lab_dir, self.scheduler)
        self.scheduler.on_run_end.append(self.history.on_run_end)
        # never a RID again that history holds (last_rid.pyon may be torn, or older)
        self.scheduler.rid_counter.reserve_up_to(max(self.history.notifier.raw_view,
                                                     default=-1))
        # queue control: ETAs from history, device conflicts through aliases
        self.scheduler.progress.history = self.history
        self.scheduler.queue.resolve_device = lambda key: follow_aliases(
            self.device_db.data.raw_view.__getitem__, key)[0]
        # labpipe.toml [master] hold: held before a restored run could start
        for pipeline in self.config.master.hold:
            await self.scheduler.queue.hold(pipeline)
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
        exposed = {
            "schedule": self.scheduler,
            "experiment_db": self.experiment_db.rpc_target,
            "dataset_db": self.dataset_db,
            "device_db": DeviceDBTarget(self.device_db),
            "interactive_arg_db": self.interactive_db,
            "master_management": MasterManagement(o.name, self.terminate_requested.set),
            "history": HistoryTarget(self.history),
        }
        # every argument of every method is checked (targets.SPECS) before it runs
        self.targets = {name: Target(obj, name, SPECS[name]) for name, obj in exposed.items()}
        self.servers = {
            "notify": (Publisher(self.notifiers, limits=o.connection_limits), o.port_notify),
            "control": (Server(self.targets, description="labpipe master",
                               limits=o.connection_limits), o.port_control),
            "logging": (LogServer(limits=o.connection_limits), o.port_logging),
            "broadcast": (self.broadcaster, o.port_broadcast),
        }
        for server, port in self.servers.values():
            await server.start(o.bind, port, ssl=ssl_context)
        # the push hook needs the control port, so the repository comes after the ports
        await self.experiment_db.start(
            control_port=self.port("control"), control_host=o.bind[0],
            control_tls=None if self.tls is None else self.tls.for_own_server())
        self._lab_lock.describe(o.bind, {name: self.port(name) for name in self.servers})

    async def _claim_lab(self):
        """Lock the lab (before any state is touched), end what a previous master left
        running, and record from now on the processes this one starts."""
        o = self.options
        lock = LabLock(o.lab_dir)
        lock.acquire()  # LabBusy: nothing was touched
        self._lab_lock = lock
        lock.describe(o.bind, {"control": o.port_control, "notify": o.port_notify,
                               "logging": o.port_logging, "broadcast": o.port_broadcast})
        path = self._path(PROCESSES_FILE)
        await asyncio.to_thread(end_leftovers, path)
        self._process_records = ProcessRecords(path)
        launcher.on_process_started = self._process_records.add

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
            await asyncio.to_thread(self.dataset_db.close)  # joins its writer thread
        # closing waits for a commit under way: in threads
        if hasattr(self, "history"):
            await asyncio.to_thread(self.history.close)
        if hasattr(self, "schedule_store"):
            await asyncio.to_thread(self.schedule_store.close)
        if hasattr(self, "repository"):
            self.repository.close()
        if self._process_records is not None:
            if launcher.on_process_started == self._process_records.add:
                launcher.on_process_started = None
            # every run was stopped: what still runs (a template shared by masters of
            # this process) ends with this process, never to be killed by the next
            await asyncio.to_thread(self._process_records.clear)
        if self._lab_lock is not None:
            self._lab_lock.release()

    # --- what a run's worker may ask of the master ---------------------------------

    def _worker_handlers(self, run: Run | None) -> Handlers:
        """The master's services for a run's worker (the scheduler adds its own); for
        None (a dry run) only the device database and the datasets, read only."""
        handlers = (Handlers()
                    .on(messages.GetDataset, self._get_dataset)
                    .on(messages.GetDeviceDB, lambda m: self.device_db.get_device_db()))
        if run is None:
            return handlers
        source = self.scheduler.source_of

        def log(msg: messages.Log) -> None:
            # one logger for every name the experiment chose (none created per name);
            # the run's log_level filtered these already
            emit_remote(source(run), msg.levelno, msg.name or "worker", msg.message,
                        created=msg.created, check_level=False)

        return (handlers
                .on(messages.Log, log)
                .on(messages.UpdateDataset, lambda m: self.dataset_db.update(m.mod))
                .on(messages.CCBIssue, lambda m: self.broadcaster.broadcast(
                    "ccb", {"service": m.service, "args": m.args, "kwargs": m.kwargs}))
                .on(messages.Interactive, lambda m: self.interactive_db.request(
                    run.rid, m.title, m.arglist_desc)))

    def _get_dataset(self, msg: messages.GetDataset) -> tuple:
        try:
            return self.dataset_db.data.raw_view[msg.key]
        except KeyError:
            raise KeyError(f"dataset '{msg.key}' does not exist") from None
