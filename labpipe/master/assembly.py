"""The master, assembled: databases, repository, scheduler and the four servers.

``async with Master(options) as master:`` starts every part in order and returns when
the master serves; leaving the block stops it. Each part's teardown is registered on an
``AsyncExitStack`` as soon as that part has started, so a part that fails to start
stops exactly the parts started before it, in reverse order, and nothing is left
running: no task, no port, no process (``docs/internals.md``, "Lifetimes"). The order
of the start is chosen so that the stop is orderly:

- start: the lab lock, the process records, the worker launcher, the lab's Dask
  cluster when it is ``local`` (``dask_cluster.py``), the worker template warmed up,
  the device, dataset and schedule databases, the repository, history; the
  notify, logging and broadcast ports; the scheduler (the saved schedule restored);
  the control port; the repository scans (the push hook needs the control port);
- stop, the reverse, except that the control port closes first of all (no new
  requests): the scans, the scheduler (runs stopped, their ends written), the other
  ports, the databases, the launcher, the process records, the lock last.

The master's tasks are supervised (``supervision.TaskSet``): every exception is logged
with the component and context (RID, pipeline) it happened in. Most are survived; a
task the master cannot run without (the repository scan loop) is *fatal*: its failure
stops the master as an error, as an ``asyncio.TaskGroup`` would: the task inside the
``async with`` is cancelled, the master stops in order, and the block raises
``MasterFailed`` naming the task.

Used by ``labpipe-master`` and by tests that want a master in their own event loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import dataclass, field
from types import TracebackType

from labpipe.config import LabConfig, load_config
from labpipe.master.access.caller import current_caller
from labpipe.master.access.gate import Gate, current_lock_key
from labpipe.master.access.lock import FILE_NAME as LOCK_FILE
from labpipe.master.access.lock import LockTarget, QueueLock, read_emergency_key
from labpipe.master.access.permissions import Permissions, PermissionsTarget
from labpipe.master.console import ConsoleBuffers, ConsoleTarget, console_text_of
from labpipe.master.dask_cluster import DaskCluster
from labpipe.master.datasets import DatasetDB
from labpipe.master.devices import DeviceDB, DeviceDBTarget
from labpipe.master.functions import FunctionCalls
from labpipe.master.history import History, HistoryTarget
from labpipe.master.interactive import InteractiveArgDB
from labpipe.master.lab_lock import LabLock
from labpipe.master.process_records import FILE_NAME as PROCESSES_FILE
from labpipe.master.process_records import ProcessRecords, end_leftovers
from labpipe.master.repository import ExperimentDB, FilesystemBackend
from labpipe.master.repository.backend import RepositoryBackend
from labpipe.master.rid import RIDCounter
from labpipe.master.run import Run
from labpipe.master.schedule_store import ScheduleStore
from labpipe.master.scheduler import Scheduler, SchedulerConfig
from labpipe.master.supervision import TaskSet
from labpipe.master.task_store import TaskStore
from labpipe.master.targets import SPECS, Target
from labpipe.protocol.broadcast import Broadcaster
from labpipe.protocol.logs import LogBroadcastHandler, LogServer, emit_remote
from labpipe.protocol.rpc import Server
from labpipe.protocol.server import AsyncioServer, ConnectionLimits
from labpipe.protocol.sync import Publisher
from labpipe.protocol.tls import TLSFiles, server_context
from labpipe.worker import messages
from labpipe.worker.devices import follow_aliases
from labpipe.worker.handle import Handlers
from labpipe.worker.launcher import Launcher, uses_bluesky

__all__ = ["Master", "MasterOptions", "MasterFailed"]

logger = logging.getLogger(__name__)

#: The folder (in the lab directory) of the function calls' records.
TASKS_FOLDER = "function_tasks"


@dataclass
class MasterOptions:
    """Everything ``labpipe-master``'s command line can set (paths relative to lab_dir)."""
    lab_dir: str = "."
    bind: list[str] = field(default_factory=lambda: ["127.0.0.1", "::1"])
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
    #: Told what the start is doing, in a few words, before each of its slow steps
    #: (``labpipe-master`` prints them; the worker template takes seconds with bluesky).
    on_progress: Callable[[str], None] | None = None
    #: ``--emergency-lock-key-file``: its first line unlocks any lock (None: the
    #: lab's ``[lock]`` emergency key, if any).
    emergency_lock_key_file: str | None = None
    #: More endpoints of the master (``labpipe-master --qserver``): each is called with
    #: the started master and gives an async context manager, entered once the master
    #: serves and left first at its stop (the assembly imports none of them).
    endpoints: list[Callable[[Master], AbstractAsyncContextManager[object]]] = field(
        default_factory=list)
    #: ``--dask-scheduler``: ``"local"`` or a scheduler's address (None: the lab's
    #: ``[master] dask_scheduler``, if any; ``docs/dask.md``).
    dask_scheduler: str | None = None
    #: A ``"local"`` cluster's workers are processes (False: threads of one process).
    dask_local_processes: bool = True


class MasterFailed(RuntimeError):
    """A task the master cannot run without failed, and the master stopped. The
    message names the task; the failure's traceback was logged when it happened."""


class MasterManagement:
    """The ``master_management`` target."""

    def __init__(self, name: str | None, terminate_cb: Callable[[], None]):
        self._name = name
        self._terminate_cb = terminate_cb

    def get_name(self) -> str | None:
        """The master's name (``--name``), or None."""
        return self._name

    def terminate(self) -> None:
        """Shut the master down in order (runs stopped, nothing acknowledged lost)."""
        self._terminate_cb()


def _device_modules(ddb: dict) -> list[str]:
    """The modules the device database's local devices come from."""
    return [entry.get("module", "") for entry in ddb.values()
            if isinstance(entry, dict) and entry.get("type") == "local"]


class Master:
    """A labpipe master in the current event loop: ``async with Master(options)``.

    ``launcher``: the worker launcher to borrow (tests share one between masters, so
    that each does not start its own template); by default the master makes its own
    and closes it at its exit. A borrowed launcher is left open, its spares stopped.
    """

    def __init__(self, options: MasterOptions, *, launcher: Launcher | None = None):
        self.options = options
        self.terminate_requested = asyncio.Event()
        #: The master's own supervised tasks (the repository scan loop runs here):
        #: a fatal one's failure stops the master (``MasterFailed``).
        self.tasks = TaskSet("master", logger, on_fatal=self._fatal)
        #: What stopped the master, when a fatal task failed.
        self.failure: MasterFailed | None = None
        #: ``{channel: (server, port asked for)}`` of the ports opened.
        self.servers: dict[str, tuple[AsyncioServer, int]] = {}
        self._borrowed_launcher = launcher
        self._open: dict[str, AsyncioServer] = {}
        self._stack: AsyncExitStack | None = None
        self._owner: asyncio.Task | None = None
        self._cancelled_owner = False

    def _path(self, path: str) -> str:
        return os.path.join(self.options.lab_dir, path)

    def port(self, channel: str) -> int:
        """The port a channel (notify, control, logging, broadcast) listens on."""
        port = self.servers[channel][0].port
        assert port is not None
        return port

    # --- lifetime -------------------------------------------------------------------

    async def __aenter__(self) -> Master:
        """Start every part in order; returns when the master serves. A part that
        fails stops what had started, and its exception is raised."""
        if self._stack is not None:
            raise RuntimeError("the master is already started")
        self._owner = asyncio.current_task()
        stack = AsyncExitStack()
        try:
            await self._start(stack)
        except BaseException as exc:
            self._owner = None
            failure = self._failure_instead_of(exc)
            await stack.__aexit__(type(exc), exc, exc.__traceback__)
            if failure is not None:
                raise failure from exc
            raise
        self._stack = stack
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        """Stop in order (see the module docstring); raises ``MasterFailed`` if a
        fatal task failed and nothing else is raised."""
        stack, self._stack = self._stack, None
        self._owner = None
        if stack is None:
            return
        failure = self._failure_instead_of(exc)
        if failure is not None:
            exc_type, exc, tb = None, None, None  # our own cancellation: it ends here
        await stack.__aexit__(exc_type, exc, tb)
        if exc is None and self.failure is not None:
            raise self.failure

    def _fatal(self, what: str, exc: BaseException) -> None:
        """A fatal task failed: stop the master (its traceback was logged already)."""
        if self.failure is not None:
            return
        self.failure = MasterFailed(f"{what} failed: {exc}".strip())
        logger.critical("%s failed: the master stops", what)
        self.terminate_requested.set()
        owner = self._owner
        if owner is not None and not owner.done():
            self._cancelled_owner = True
            owner.cancel()

    def _failure_instead_of(self, exc: BaseException | None) -> MasterFailed | None:
        """The MasterFailed that replaces exc when exc is our own cancellation of the
        task inside the ``async with`` (after a fatal failure)."""
        if not self._cancelled_owner:
            return None
        self._cancelled_owner = False
        task = asyncio.current_task()
        still_cancelled = task is not None and task.uncancel() > 0
        if still_cancelled or (exc is not None
                               and not isinstance(exc, asyncio.CancelledError)):
            return None  # cancelled by someone else too, or another error: that goes on
        return self.failure

    def _progress(self, doing: str) -> None:
        if self.options.on_progress is not None:
            self.options.on_progress(doing)

    async def _start(self, stack: AsyncExitStack) -> None:
        o = self.options
        # bad TLS files stop the master before anything else starts
        self.tls = None if o.tls is None else o.tls.relative_to(o.lab_dir)
        ssl_context = None if self.tls is None else server_context(self.tls)
        records = self.process_records = await self._claim_lab(stack)
        self.config = o.config if o.config is not None else load_config(o.lab_dir)
        self.launcher = self._take_launcher(stack, records)
        # the lab's Dask cluster (docs/dask.md): stopped after the scheduler's runs
        self.dask = DaskCluster(
            o.dask_scheduler if o.dask_scheduler is not None
            else self.config.master.dask_scheduler, records,
            processes=o.dask_local_processes)
        await stack.enter_async_context(self.dask)
        self.device_db = await asyncio.to_thread(DeviceDB, self._path(o.device_db))
        if uses_bluesky(_device_modules(self.device_db.get_device_db())):
            # before the first run
            await asyncio.to_thread(self.launcher.use_bluesky, True)
        stack.push_async_callback(asyncio.to_thread, self.launcher.discard_spares)
        self._progress("starting the worker template (it imports "
                       + ", ".join(self.launcher.preloaded_packages()) + ")")
        await asyncio.to_thread(self.launcher.warm_up)
        self.dataset_db = await asyncio.to_thread(DatasetDB, self._path(o.dataset_db))
        # closing waits for a commit under way (or joins a writer thread): in threads
        stack.push_async_callback(asyncio.to_thread, self.dataset_db.close)
        if o.git:  # dulwich (5 MiB resident) only for a Git repository
            from labpipe.master.repository.git import GitBackend
            self.repository: RepositoryBackend = GitBackend(self._path(o.repository))
        else:
            self.repository = FilesystemBackend(self._path(o.repository))
        stack.callback(self.repository.close)
        self.schedule_store = await asyncio.to_thread(ScheduleStore,
                                                      self._path(o.schedule_db))
        stack.push_async_callback(asyncio.to_thread, self.schedule_store.close)
        stack.push_async_callback(self.tasks.cancel)  # whatever is left of the master's
        self.experiment_db = ExperimentDB(
            o.lab_dir, self.repository, o.experiment_subdir,
            device_keys=lambda: self.device_db.get_device_db().keys(), config=self.config,
            launcher=self.launcher, tasks=self.tasks)
        self.interactive_db = InteractiveArgDB()
        self.scheduler = Scheduler(
            RIDCounter(self._path("last_rid.pyon")),
            SchedulerConfig(lab_dir=o.lab_dir, results_dir=self._path("results"),
                            build_timeout=o.build_timeout, term_timeout=o.term_timeout,
                            kill_timeout=o.kill_timeout),
            launcher=self.launcher, worker_handlers=self._worker_handlers,
            repository=self.repository, check_submission=self.experiment_db.check_submission,
            store=self.schedule_store)
        self.scheduler.explist = self.experiment_db.explist
        self.scheduler.on_run_end.append(
            lambda run, end: self.interactive_db.cancel_if_pending(run.rid))
        self.history = await asyncio.to_thread(History, self._path(o.history_db),
                                               o.lab_dir, self.scheduler)
        stack.push_async_callback(asyncio.to_thread, self.history.close)
        self.scheduler.on_run_end.append(self.history.on_run_end)
        self.scheduler.ended_in_history = self.history.has
        # docs/functions.md: calls of the lab's functions, their records on disk
        task_store = TaskStore(self._path(TASKS_FOLDER))
        await asyncio.to_thread(task_store.load)
        self.functions = FunctionCalls(
            self.scheduler, self.config.functions.module, store=task_store,
            max_background=self.config.functions.max_background,
            background_handlers=self._background_handlers,
            check_queue_lock=lambda what: self.lock.check("queue", what,
                                                          current_lock_key.get()))
        self.scheduler.functions = self.functions
        self.scheduler.on_run_end.append(self.functions.on_run_end)
        # never a RID again that history holds (last_rid.pyon may be torn, or older)
        self.scheduler.rid_counter.reserve_up_to(max(self.history.notifier.raw_view,
                                                     default=-1))
        # queue control: ETAs from history, device conflicts through aliases
        self.scheduler.progress.history = self.history
        self.scheduler.queue.resolve_device = lambda key: follow_aliases(
            self.device_db.data.raw_view.__getitem__, key)[0]

        self.broadcaster = Broadcaster(limits=o.connection_limits)
        self.console = ConsoleBuffers(self.broadcaster.broadcast)
        log_handler = LogBroadcastHandler(self.broadcaster)
        logging.getLogger().addHandler(log_handler)
        stack.callback(logging.getLogger().removeHandler, log_handler)
        # docs/access.md: the lock and the permissions every call passes
        self.permissions = Permissions(self.config.permissions)
        self.lock = QueueLock(self._path(LOCK_FILE), self._emergency_key())
        self.gate = Gate(self.lock, self.permissions)
        self.scheduler.check_access = self._check_access
        self.notifiers = {
            "lock": self.lock.notifier,
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
            "lock": LockTarget(self.lock),
            "permissions": PermissionsTarget(
                self.permissions, lambda: self.experiment_db.explist.raw_view,
                lambda: self.device_db.get_device_db().keys()),
            "console": ConsoleTarget(
                self.console, self._scheduled, self.history.get, self.history.lab_dir),
        }
        # every argument of every method is checked (targets.SPECS) before it runs,
        # then the call passes the gate (the lock, the caller's permissions)
        self.targets: dict[str, object] = {
            name: Target(obj, name, SPECS[name], gate=self.gate)
            for name, obj in exposed.items()}
        await self._open_port(stack, "notify", Publisher(
            self.notifiers, limits=o.connection_limits), o.port_notify, ssl_context)
        await self._open_port(stack, "logging", LogServer(limits=o.connection_limits),
                              o.port_logging, ssl_context)
        await self._open_port(stack, "broadcast", self.broadcaster, o.port_broadcast,
                              ssl_context)
        # the saved schedule comes back before anyone can submit
        stack.push_async_callback(self.scheduler.stop)
        stack.push_async_callback(self.functions.stop)  # before the scheduler's
        # labpipe.toml [master] hold: held before a restored run could start
        for pipeline in self.config.master.hold:
            await self.scheduler.queue.hold(pipeline)
        await self.scheduler.restore()
        await self._open_port(stack, "control", Server(
            self.targets, description="labpipe master", limits=o.connection_limits),
            o.port_control, ssl_context)
        # the push hook needs the control port, so the repository comes after the ports
        stack.push_async_callback(self.experiment_db.close)
        self._progress("scanning the experiment repository")
        await self.experiment_db.start(
            control_port=self.port("control"), control_host=o.bind[0],
            control_tls=None if self.tls is None else self.tls.for_own_server())
        self._lab_lock.describe(o.bind, {name: self.port(name) for name in self.servers})
        for endpoint in o.endpoints:
            await stack.enter_async_context(endpoint(self))
        # the first thing at exit: no new requests while the rest stops
        stack.push_async_callback(self._close_port, "control")

    def _emergency_key(self) -> str | None:
        """The emergency lock key: ``--emergency-lock-key-file``, else ``[lock]``."""
        path = self.options.emergency_lock_key_file or self.config.lock.emergency_key_file
        if path is not None:
            return read_emergency_key(self._path(path))
        return self.config.lock.emergency_key

    def _check_access(self, expid: dict, what: str) -> None:
        """The caller's group may run this submission (experiment, plan, devices,
        content): ``Scheduler.submit``'s and ``change(arguments=)``'s check."""
        self.permissions.check_submission(
            current_caller.get(), expid, self.experiment_db.explist.raw_view,
            self.device_db.get_device_db().keys(), what)

    async def _claim_lab(self, stack: AsyncExitStack) -> ProcessRecords:
        """Lock the lab (before any state is touched), end what a previous master left
        running, and record from now on the processes this one starts."""
        o = self.options
        lock = LabLock(o.lab_dir)
        lock.acquire()  # LabBusy: nothing was touched
        stack.callback(lock.release)  # the last thing at exit
        self._lab_lock = lock
        lock.describe(o.bind, {"control": o.port_control, "notify": o.port_notify,
                               "logging": o.port_logging, "broadcast": o.port_broadcast})
        path = self._path(PROCESSES_FILE)
        await asyncio.to_thread(end_leftovers, path)
        records = ProcessRecords(path)
        # every process was stopped by then: what still runs (the template of a
        # borrowed launcher) ends with its owner, never to be killed by the next master
        stack.push_async_callback(asyncio.to_thread, records.clear)
        return records

    def _take_launcher(self, stack: AsyncExitStack, records: ProcessRecords) -> Launcher:
        """The launcher of this master's workers, recording every process it starts."""
        launcher = self._borrowed_launcher
        if launcher is None:
            launcher = Launcher(on_process_started=records.add)
            # its templates end once their processes have (waits up to 2 s each)
            stack.push_async_callback(asyncio.to_thread, launcher.close)
            return launcher
        launcher.on_process_started = records.add

        def give_back() -> None:
            if launcher.on_process_started == records.add:
                launcher.on_process_started = None
        stack.callback(give_back)
        return launcher

    async def _open_port(self, stack: AsyncExitStack, name: str, server: AsyncioServer,
                         port: int, ssl_context: ssl.SSLContext | None) -> None:
        await server.start(self.options.bind, port, ssl=ssl_context)  # or nothing bound
        self.servers[name] = (server, port)
        self._open[name] = server
        stack.push_async_callback(self._close_port, name)

    async def _close_port(self, name: str) -> None:
        """Stop a server (once: the control port is closed early)."""
        server = self._open.pop(name, None)
        if server is not None:
            await server.stop()

    def _scheduled(self, rid: int) -> bool:
        """Whether run rid is in the schedule, or ending (not yet in history)."""
        return (rid in self.scheduler.notifier.raw_view
                or rid in self.scheduler.ending)

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

        console = self.console

        def log(msg: messages.Log) -> None:
            console.add(run.rid, msg.created,
                        console_text_of(msg.levelno, msg.name, msg.message),
                        msg.stream if msg.name == "print" else "log")
            # one logger for every name the experiment chose (none created per name);
            # the run's log_level filtered these already
            emit_remote(source(run), msg.levelno, msg.name or "worker", msg.message,
                        created=msg.created, check_level=False)

        return (handlers
                .on(messages.Log, log)
                .on(messages.UpdateDataset, lambda m: self.dataset_db.update_soon(m.mod))
                .on(messages.CCBIssue, lambda m: self.broadcaster.broadcast(
                    "ccb", {"service": m.service, "args": m.args, "kwargs": m.kwargs}))
                .on(messages.Interactive, lambda m: self.interactive_db.request(
                    run.rid, m.title, m.arglist_desc))
                .on(messages.FunctionOutcome,
                    lambda m: self.functions.note_outcome(run, m))
                .on(messages.GetDaskScheduler, lambda m: self.dask.address()))

    def _background_handlers(self, source: str) -> Handlers:
        """The master's services for a background function call's worker: datasets
        (read and written), the device database, logs (under ``source``), CCBs, the
        Dask scheduler's address."""
        def log(msg: messages.Log) -> None:
            emit_remote(source, msg.levelno, msg.name or "worker", msg.message,
                        created=msg.created, check_level=False)

        return (self._worker_handlers(None)
                .on(messages.Log, log)
                .on(messages.UpdateDataset, lambda m: self.dataset_db.update(m.mod))
                .on(messages.CCBIssue, lambda m: self.broadcaster.broadcast(
                    "ccb", {"service": m.service, "args": m.args, "kwargs": m.kwargs}))
                .on(messages.GetDaskScheduler, lambda m: self.dask.address()))

    def _get_dataset(self, msg: messages.GetDataset) -> tuple:
        try:
            return self.dataset_db.data.raw_view[msg.key]
        except KeyError:
            raise KeyError(f"dataset '{msg.key}' does not exist") from None
