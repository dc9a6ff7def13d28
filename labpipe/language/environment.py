"""The experiment's environment: arguments, devices, datasets, scheduling defaults.

``HasEnvironment(managers_or_parent, *args, **kwargs)`` is built either from the tuple
``(device_mgr, dataset_mgr, argument_mgr, scheduler_defaults)`` (the worker, or
examine, makes it) or from a parent ``HasEnvironment``, whose managers the child then
shares (the parent lists it in ``children``). The constructor calls
``self.build(*args, **kwargs)``, where experiments request their arguments and devices.

The managers follow docs/internals.md (the Protocols below restate it):
``device_mgr.get(key)``; ``dataset_mgr.set(key, value, metadata, broadcast, persist,
archive)``, ``.get(key, archive)``, ``.get_metadata(key)``, ``.mutate(key, index,
value)``, ``.append_to(key, value)``; ``argument_mgr.get(key, processor, group,
tooltip)`` and ``.get_interactive(arglist, title)``; ``scheduler_defaults`` a dict.

``Experiment`` gives the three stages (``prepare``, ``run``, ``analyze``; only ``run``
must be written); ``EnvExperiment`` is the usual base of experiments.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from inspect import isclass
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, TypeGuard

from labpipe.language.arguments import ArgumentProcessor, NoDefault

if TYPE_CHECKING:  # bluesky is imported only when a plan runs
    from bluesky import RunEngine
    from bluesky.utils import Msg

__all__ = ["HasEnvironment", "Experiment", "EnvExperiment", "is_experiment",
           "is_public_experiment"]


class DeviceManager(Protocol):
    def get(self, key: str) -> Any: ...


class DatasetManager(Protocol):
    def set(self, key: str, value: Any, metadata: dict[str, Any], broadcast: bool,
            persist: bool, archive: bool) -> None: ...
    def get(self, key: str, archive: bool = False) -> Any: ...
    def get_metadata(self, key: str) -> dict[str, Any]: ...
    def mutate(self, key: str, index: Any, value: Any) -> None: ...
    def append_to(self, key: str, value: Any) -> None: ...


class ArgumentManager(Protocol):
    def get(self, key: str, processor: ArgumentProcessor, group: str | None,
            tooltip: str | None) -> Any: ...


class PlanSession(Protocol):
    """What ``run_plan`` and ``get_run_engine`` use of a run's bluesky session: the
    dataset manager's ``plan_session(environment)`` gives it (the worker's makes a
    ``labpipe.bluesky.session.PlanSession``; the language never imports bluesky)."""

    engine: RunEngine

    def run(self, plan: Iterable[Msg], **metadata: Any) -> tuple[str, ...]: ...


class _Managers(NamedTuple):
    device: DeviceManager
    dataset: DatasetManager
    argument: ArgumentManager
    scheduler_defaults: dict[str, Any]


class _VirtualDevice:
    """``self.<key>`` reads the device ``key``, unless the instance set an attribute of
    that name (``setattr_device("ccb")`` still works: this is a non-data descriptor)."""

    def __init__(self, key: str):
        self.key = key

    def __get__(self, obj: HasEnvironment | None, objtype: type | None = None) -> Any:
        if obj is None:
            return self
        return obj.get_device(self.key)


def _require_processor(key: str, processor: ArgumentProcessor | None) -> None:
    if processor is None:
        raise TypeError(f"argument {key!r} needs a processor, "
                        f"e.g. setattr_argument({key!r}, NumberValue(0))")


class HasEnvironment:
    """Gives access to arguments, devices and datasets (see the module docstring)."""

    __managers: _Managers
    __in_build: bool

    ccb = _VirtualDevice("ccb")
    """The ``ccb`` virtual device: ``self.ccb.issue(service, *args, **kwargs)`` asks
    clients (applets) to do something, e.g. ``"create_applet"``."""

    def __init__(self, managers_or_parent: Any, *args: Any, **kwargs: Any):
        self.children: list[HasEnvironment] = []
        if isinstance(managers_or_parent, HasEnvironment):
            self.__managers = managers_or_parent.__managers
            managers_or_parent.register_child(self)
        elif isinstance(managers_or_parent, (tuple, list)) and len(managers_or_parent) == 4:
            self.__managers = _Managers(*managers_or_parent)
        else:
            raise TypeError(
                f"{type(self).__name__}() takes a parent HasEnvironment or the tuple "
                f"(device_mgr, dataset_mgr, argument_mgr, scheduler_defaults), "
                f"not {type(managers_or_parent).__name__}")
        self.__in_build = True
        try:
            self.build(*args, **kwargs)
        finally:
            self.__in_build = False

    def build(self, *args: Any, **kwargs: Any) -> None:
        """Request arguments and devices here (experiments override it).

        When the experiment is examined (to list its arguments), devices are dummies and
        arguments their defaults (``None`` when there is none): do not rely on them
        doing anything in ``build``. Extra constructor arguments are passed on here.
        """

    def register_child(self, child: HasEnvironment) -> None:
        """Add a child environment (done by the child's constructor)."""
        self.children.append(child)

    def call_child_method(self, method: str, *args: Any, **kwargs: Any) -> None:
        """Call ``method`` on every child that has it, in registration order."""
        for child in self.children:
            child_method = getattr(child, method, None)
            if child_method is not None:
                child_method(*args, **kwargs)

    # Arguments

    def _require_build(self, what: str) -> None:
        if not self.__in_build:
            raise TypeError(f"{what} can only be called in build() (of "
                            f"{type(self).__name__})")

    def get_argument(self, key: str, processor: ArgumentProcessor | None = None,
                     group: str | None = None, tooltip: str | None = None) -> Any:
        """The value of argument ``key`` as ``processor`` (``NumberValue(...)``, ...)
        checks it. Only in ``build()``.

        :param group: a group name, for user interfaces.
        :param tooltip: a longer description, for user interfaces.
        """
        self._require_build(f"get_argument({key!r})")
        _require_processor(key, processor)
        assert processor is not None
        return self.__managers.argument.get(key, processor, group, tooltip)

    def setattr_argument(self, key: str, processor: ArgumentProcessor | None = None,
                         group: str | None = None, tooltip: str | None = None) -> None:
        """``get_argument`` and set the value as the attribute ``key``."""
        setattr(self, key, self.get_argument(key, processor, group, tooltip))
        self._add_kernel_invariant(key)

    @contextmanager
    def interactive(self, title: str = "") -> Iterator[SimpleNamespace]:
        """Ask users for arguments while the experiment runs.

        ``with self.interactive("Calibration") as ia: ia.setattr_argument("v",
        NumberValue(1.0))`` collects the requests; on leaving the block the experiment
        waits for users to supply the values, then ``ia.v`` holds them. Raises
        ``CancelledArgsError`` when users cancel. Nothing is asked when no argument
        was requested.
        """
        argument_mgr = self.__managers.argument
        get_interactive = getattr(argument_mgr, "get_interactive", None)
        if get_interactive is None:
            raise NotImplementedError(
                f"interactive arguments are not supported by "
                f"{type(argument_mgr).__name__} (it has no get_interactive)")
        arglist: list[tuple[str, ArgumentProcessor | None, str | None, str | None]] = []
        namespace = SimpleNamespace()

        def setattr_argument(key: str, processor: ArgumentProcessor | None = None,
                             group: str | None = None, tooltip: str | None = None) -> None:
            _require_processor(key, processor)
            arglist.append((key, processor, group, tooltip))

        namespace.setattr_argument = setattr_argument
        yield namespace
        del namespace.setattr_argument
        if arglist:
            for key, value in get_interactive(arglist, title).items():
                setattr(namespace, key, value)

    # Devices

    def get_device_db(self) -> dict[str, Any]:
        """The whole device database (when the device manager provides it)."""
        device_mgr = self.__managers.device
        if not hasattr(device_mgr, "get_device_db"):
            raise NotImplementedError(
                f"{type(device_mgr).__name__} does not provide the device database")
        return device_mgr.get_device_db()

    def get_device(self, key: str) -> Any:
        """The device ``key`` (made on first use by the device manager)."""
        return self.__managers.device.get(key)

    def setattr_device(self, key: str) -> None:
        """``get_device`` and set the device as the attribute ``key``."""
        setattr(self, key, self.get_device(key))
        self._add_kernel_invariant(key)

    def setattr_stream(self, key: str) -> None:
        """Set the stream device ``key`` (a ``stream`` entry of the device database,
        naming a ``labpipe-buffer``) as the attribute ``key``: its ``capture(start,
        stop)``, ``capture_now()``...``stop()`` write a window into the run's results
        file under ``streams/KEY/``; ``last(n)`` gives the newest messages."""
        device = self.get_device(key)
        if not callable(getattr(device, "capture", None)):
            raise TypeError(f"device {key!r} is not a stream (a device_db entry of"
                            f" type 'stream'), but a {type(device).__name__}")
        setattr(self, key, device)

    def _add_kernel_invariant(self, key: str) -> None:
        # Kept for experiments written for ARTIQ that read kernel_invariants.
        self.kernel_invariants = getattr(self, "kernel_invariants", set()) | {key}

    # Datasets

    def set_dataset(self, key: str, value: Any, *, unit: str | None = None,
                    scale: float | None = None, precision: int | None = None,
                    broadcast: bool = False, persist: bool = False,
                    archive: bool = True) -> None:
        """Set the dataset ``key``.

        :param unit, scale, precision: how to display it (stored as its metadata).
        :param broadcast: send it to the master, which publishes it to clients.
        :param persist: the master keeps it across restarts (implies broadcast).
        :param archive: save it in this run's results file.
        """
        metadata = {name: given for name, given in
                    (("unit", unit), ("scale", scale), ("precision", precision))
                    if given is not None}
        self.__managers.dataset.set(key, value, metadata, broadcast, persist, archive)

    def mutate_dataset(self, key: str, index: Any, value: Any) -> None:
        """Set ``dataset[index] = value`` (a tuple index is a slice, as in ARTIQ)."""
        self.__managers.dataset.mutate(key, index, value)

    def append_to_dataset(self, key: str, value: Any) -> None:
        """Append ``value`` to the list dataset ``key`` set earlier by this run."""
        self.__managers.dataset.append_to(key, value)

    def get_dataset(self, key: str, default: Any = NoDefault, archive: bool = True) -> Any:
        """The value of dataset ``key`` (this run's first, then the master's).

        Returns ``default`` when it does not exist, or raises ``KeyError`` without one.
        With ``archive`` the value read is saved in the results file.
        """
        try:
            return self.__managers.dataset.get(key, archive)
        except KeyError:
            if default is NoDefault:
                raise
            return default

    def get_dataset_metadata(self, key: str, default: Any = NoDefault) -> dict[str, Any]:
        """The metadata (``unit``, ``scale``, ``precision``) of dataset ``key``;
        ``default`` when it does not exist, else ``KeyError``."""
        try:
            return self.__managers.dataset.get_metadata(key)
        except KeyError:
            if default is NoDefault:
                raise
            return default

    def setattr_dataset(self, key: str, default: Any = NoDefault,
                        archive: bool = True) -> None:
        """``get_dataset`` and set the value as the attribute ``key``."""
        setattr(self, key, self.get_dataset(key, default, archive))

    # Bluesky plans

    def _plan_session(self) -> PlanSession:
        # the run's dataset manager makes the session (labpipe.worker.datasets): the
        # language stays below labpipe.bluesky (docs/internals.md, "Layers")
        make = getattr(self.__managers.dataset, "plan_session", None)
        if make is None:
            raise RuntimeError("bluesky plans run only in a labpipe run (a worker or "
                               "labpipe-run): this dataset manager has no plan session")
        session: PlanSession = make(self)
        return session

    def get_run_engine(self) -> RunEngine:
        """The bluesky RunEngine of this run (made on first use, shared with children):
        install suspenders or subscribe callbacks on it before ``run_plan``."""
        return self._plan_session().engine

    def run_plan(self, plan: Iterable[Msg], **metadata: Any) -> tuple[str, ...]:
        """Run a bluesky plan to its end; returns the uids of the runs it made.

        ``metadata`` goes into the start documents, with ``rid``, ``pipeline``,
        ``expid`` and ``repo_rev``. Event data is streamed into broadcast datasets
        ``bluesky.<stream>.<field>``, a line per event is logged (level INFO), and all
        documents go into the results file under ``bluesky/``. At the plan's checkpoints
        the run yields to runs of higher precedence and resumes from the checkpoint;
        termination aborts the plan at the next checkpoint (raising
        ``TerminationRequested``). Only in ``run()``. See ``labpipe.bluesky``.
        """
        return self._plan_session().run(plan, **metadata)

    # Scheduling

    def set_default_scheduling(self, priority: int | None = None,
                               pipeline_name: str | None = None,
                               flush: bool | None = None) -> None:
        """Set the scheduling options user interfaces propose when submitting this
        experiment. Only in ``build()``."""
        self._require_build("set_default_scheduling()")
        defaults = self.__managers.scheduler_defaults
        if priority is not None:
            defaults["priority"] = int(priority)
        if pipeline_name is not None:
            defaults["pipeline_name"] = str(pipeline_name)
        if flush is not None:
            defaults["flush"] = bool(flush)


class Experiment:
    """Base of experiments: the stages ``prepare``, ``run`` and ``analyze``.

    Consecutive runs overlap: one run's ``prepare`` and another's ``analyze`` may happen
    while a third runs, so only ``run`` may use the hardware.
    """

    def prepare(self) -> None:
        """Compute what ``run`` needs, before it starts. No hardware access."""

    def run(self) -> None:
        """The experiment itself; the only stage that may use the hardware, and the one
        every experiment must define."""
        raise NotImplementedError(f"{type(self).__name__} does not define run()")

    def analyze(self) -> None:
        """Process the results after ``run`` (fits, ...). No hardware access."""


class EnvExperiment(Experiment, HasEnvironment):
    """The usual base of experiments: an ``Experiment`` with an environment.

    Its ``prepare`` calls ``prepare`` of its children, in order.
    """

    def prepare(self) -> None:
        """Call ``prepare`` of every child that has one."""
        self.call_child_method("prepare")


def is_experiment(obj: object) -> TypeGuard[type[Experiment]]:
    """Whether ``obj`` is an experiment class (not ``Experiment`` or ``EnvExperiment``
    themselves)."""
    return (isclass(obj) and issubclass(obj, Experiment)
            and obj not in (Experiment, EnvExperiment))


def is_public_experiment(obj: object) -> TypeGuard[type[Experiment]]:
    """``is_experiment`` for classes whose name does not start with ``_``."""
    return is_experiment(obj) and not obj.__name__.startswith("_")
