"""Every message between the master and its worker processes, and their one encoding.

Two private pipes carry these messages: a run's worker and its master (``child.py`` /
``handle.py``), and an examining process and the examiner pool
(``examine_child.py`` / ``master/repository/examiner.py``). Each message is a frozen
dataclass below; its class says what it is, its fields are typed.

Directions (a ``Catalogue`` each; a receiver decodes only its own):

- ``TO_WORKER``: a ``Command`` per stage (``Build``, ``Prepare``, ``Run``, ``Resume``,
  ``Analyze``, ``Validate``) or ``Terminate`` (any time: the worker exits at once),
  and the ``Answer`` to a request (``Reply`` with the data, or ``Refused`` with one
  line saying why).
- ``FROM_WORKER``: ``OneWay`` messages (``Log``, ``UpdateDataset``, ``CCBIssue``,
  ``SetProgress``, ``FunctionOutcome``: no answer), a ``Request`` (answered by ``Reply`` or ``Refused``;
  ``Request[R]`` replies with an ``R``), and the ``Outcome`` that ends a command
  (``Built``, ``Completed``, ``Paused``, ``Terminated``, ``Validated``, ``Failed``).
- ``TO_EXAMINER``: ``Examine``, ``CompileContent`` or ``ExamineContent``;
  ``FROM_EXAMINER``: ``ExaminerReady`` once, then an ``Examined`` per request.

The encoding: a message is the tuple ``(tag, field, ...)``: its tag (a short name,
e.g. ``"get_dataset"``) and its field values in declaration order, plain data that
PYON encodes (the pipes pickle it: a tuple costs less than a dict, and no class is
named on the wire). ``encode(msg)`` and ``decode(wire, catalogue)`` are the only code
that turns one into the other. ``decode`` refuses an unknown tag, a message of
another direction, a wrong number of fields or a field of the wrong type with
``MalformedMessage``, one line naming what was wrong (containers are checked only as
containers: what is inside is the handler's to check).

Adding a message: a dataclass here (tag, fields, base class giving its direction),
its handler on the receiving side (``handle.Handlers`` in the master, the
``commands`` table of ``child.py`` in the worker), its sender on the other.
"""

from __future__ import annotations

import numbers
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, fields
from operator import attrgetter
from typing import Any, Generic, TypeVar

from labpipe.worker.limits import DEFAULT_VALIDATE_MEMORY

__all__ = [
    "Message", "Command", "Answer", "OneWay", "Request", "Outcome", "ExaminerRequest",
    "ExaminerMessage",
    "Build", "Prepare", "Run", "Resume", "Analyze", "Validate", "Terminate",
    "Reply", "Refused",
    "Log", "UpdateDataset", "CCBIssue", "SetProgress", "FunctionOutcome",
    "GetDeviceDB", "GetDataset", "CheckPause", "CheckTermination", "Submit", "Delete",
    "RequestTermination", "GetStatus", "Interactive", "GetDaskScheduler",
    "Built", "Completed", "Paused", "Terminated", "Validated", "Failed",
    "AnalysisOffloaded", "AnalysisDone",
    "Examine", "CompileContent", "ExamineContent", "ExaminerReady", "Examined",
    "Catalogue", "TO_WORKER", "FROM_WORKER", "TO_EXAMINER", "FROM_EXAMINER",
    "MalformedMessage", "encode", "decode", "tag_of", "registered",
]

R_co = TypeVar("R_co", covariant=True)
M = TypeVar("M", bound="Message")


# --- the kinds of message ----------------------------------------------------------

class Message:
    """Any message of the worker and examiner pipes."""
    __slots__ = ()


class Command(Message):
    """Master -> worker: do a stage (or exit). The worker answers with an ``Outcome``."""
    __slots__ = ()


class Answer(Message):
    """Master -> worker: the answer to the worker's pending ``Request``."""
    __slots__ = ()


class OneWay(Message):
    """Worker -> master, never answered; kept in the order sent."""
    __slots__ = ()


class Request(Message, Generic[R_co]):
    """Worker -> master: a question whose ``Reply`` carries an ``R`` (or ``Refused``)."""
    __slots__ = ()


class Outcome(Message):
    """Worker -> master: how the command under way ended."""
    __slots__ = ()


class ExaminerRequest(Message):
    """Examiner pool -> examining process: one file or text to look at."""
    __slots__ = ()


class ExaminerMessage(Message):
    """Examining process -> examiner pool."""
    __slots__ = ()


# --- registration ----------------------------------------------------------------

class _Spec:
    """How one message class goes on the wire: its tag, fields and field checks."""

    __slots__ = ("cls", "tag", "names", "size", "checks", "encode")

    def __init__(self, cls: type[Message], tag: str) -> None:
        self.cls = cls
        self.tag = tag
        hints = typing.get_type_hints(cls)
        self.names = tuple(f.name for f in fields(cls))  # type: ignore[arg-type]
        self.size = 1 + len(self.names)
        #: (position in the wire tuple, field name, accepted types, their description)
        self.checks = tuple(
            (i, name, accepted, _describe_type(hints[name]))
            for i, name in enumerate(self.names, start=1)
            if (accepted := _accepted_types(hints[name])) is not None)
        self.encode: Callable[[Any], tuple[Any, ...]]
        if not self.names:
            self.encode = lambda msg: (tag,)
        elif len(self.names) == 1:
            get_one = attrgetter(self.names[0])
            self.encode = lambda msg: (tag, get_one(msg))
        else:
            get_all = attrgetter(*self.names)
            self.encode = lambda msg: (tag, *get_all(msg))


_SPECS: dict[type[Message], _Spec] = {}
_TAGS: dict[str, _Spec] = {}

#: The runtime check of a field annotated with these (numbers as PEP 484 has them:
#: an int is a float; numpy's scalars count as numbers).
_SIMPLE: dict[Any, tuple[type, ...]] = {
    int: (int, numbers.Integral),
    float: (float, int, numbers.Real),
    bool: (bool,),
    str: (str,),
    type(None): (type(None),),
}


def _accepted_types(annotation: Any) -> tuple[type, ...] | None:
    """The types a field's value may have (None: anything)."""
    if annotation is Any or annotation is object:
        return None
    if annotation in _SIMPLE:
        return _SIMPLE[annotation]
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        accepted: tuple[type, ...] = ()
        for member in typing.get_args(annotation):
            member_types = _accepted_types(member)
            if member_types is None:
                return None
            accepted += member_types
        return accepted
    if origin in (dict, list, tuple):
        return (origin,)
    if annotation in (dict, list, tuple):
        return (annotation,)
    raise TypeError(f"message field annotation {annotation!r} has no runtime check")


def _describe_type(annotation: Any) -> str:
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return "None" if annotation is type(None) else annotation.__name__
    return str(annotation).replace("typing.", "").replace("NoneType", "None")


def _wire(tag: str) -> Callable[[type[M]], type[M]]:
    """Class decorator (above ``@dataclass``): register a message under ``tag``."""
    def register(cls: type[M]) -> type[M]:
        if tag in _TAGS:
            raise ValueError(f"message tag {tag!r} is taken by {_TAGS[tag].cls.__name__}")
        spec = _Spec(cls, tag)
        _SPECS[cls] = _TAGS[tag] = spec
        return cls
    return register


# --- master -> worker: commands ------------------------------------------------------

@_wire("build")
@dataclass(frozen=True, slots=True)
class Build(Command):
    """Import the experiment and build it; answered by ``Built``."""
    rid: int
    pipeline_name: str
    priority: int
    expid: dict[str, Any]
    workdir: str | None
    """The folder ``expid["file"]`` is relative to (a checkout), or None."""
    lab_dir: str | None
    """The worker's working directory (experiments see the lab), or None: unchanged."""
    results_dir: str
    repo_rev: str | None = None


@_wire("prepare")
@dataclass(frozen=True, slots=True)
class Prepare(Command):
    """Call the experiment's ``prepare``; answered by ``Completed``."""


@_wire("run")
@dataclass(frozen=True, slots=True)
class Run(Command):
    """Call ``run``; answered by ``Completed``, ``Paused`` or ``Terminated``."""


@_wire("resume")
@dataclass(frozen=True, slots=True)
class Resume(Command):
    """The answer to ``Paused``: go on (raising TerminationRequested in the run when
    ``terminate``); answered as ``Run``."""
    terminate: bool


@_wire("analyze")
@dataclass(frozen=True, slots=True)
class Analyze(Command):
    """Call ``analyze``, then write the results file; answered by ``Completed`` with
    its path."""


@_wire("validate")
@dataclass(frozen=True, slots=True)
class Validate(Command):
    """A dry run instead of ``Build`` (``validate.py``); answered by ``Validated``."""
    expid: dict[str, Any]
    workdir: str | None
    lab_dir: str | None
    memory: int = DEFAULT_VALIDATE_MEMORY
    """Address space (bytes) importing the experiment may add."""


@_wire("terminate")
@dataclass(frozen=True, slots=True)
class Terminate(Command):
    """Exit now (it may come at any time, even while the worker waits for a reply)."""


# --- master -> worker: answers to requests -----------------------------------------

@_wire("reply")
@dataclass(frozen=True, slots=True)
class Reply(Answer):
    """The request was answered: ``data`` is what it asked for."""
    data: Any


@_wire("refused")
@dataclass(frozen=True, slots=True)
class Refused(Answer):
    """The master refused the request; ``message`` (one line) says why."""
    message: str


# --- worker -> master: one-way -------------------------------------------------------

@_wire("log")
@dataclass(frozen=True, slots=True)
class Log(OneWay):
    """A log record of the experiment (``name`` ``"print"``: a line it printed)."""
    levelno: int
    name: str
    message: str
    created: float


@_wire("update_dataset")
@dataclass(frozen=True, slots=True)
class UpdateDataset(OneWay):
    """A change of the ``datasets`` notifier (the mod's shape: ``worker/datasets.py``)."""
    mod: dict[str, Any]


@_wire("ccb_issue")
@dataclass(frozen=True, slots=True)
class CCBIssue(OneWay):
    """A client control broadcast (``ccb`` channel)."""
    service: str
    args: list[Any]
    kwargs: dict[str, Any]


@_wire("set_progress")
@dataclass(frozen=True, slots=True)
class SetProgress(OneWay):
    """The run's progress: ``done`` out of ``total`` steps at ``time`` (``progress.py``)."""
    done: float
    total: float | None
    message: str
    time: float


@_wire("function_outcome")
@dataclass(frozen=True, slots=True)
class FunctionOutcome(OneWay):
    """How a function call (``labpipe.worker.functions``) of task ``task`` ended:
    ``ok`` with ``value`` (the return value as PYON text), or not, with ``message``
    (one line naming the function and the exception) and the ``traceback``."""
    task: str
    ok: bool
    value: str
    message: str
    traceback: str


# --- worker -> master: requests ------------------------------------------------------

@_wire("get_device_db")
@dataclass(frozen=True, slots=True)
class GetDeviceDB(Request[dict[str, Any]]):
    """The master's device database."""


@_wire("get_dataset")
@dataclass(frozen=True, slots=True)
class GetDataset(Request[tuple[bool, Any, dict[str, Any]]]):
    """A dataset of the master: ``(persist, value, metadata)``; refused if unknown."""
    key: str


@_wire("check_pause")
@dataclass(frozen=True, slots=True)
class CheckPause(Request[bool]):
    """Whether ``pause()`` in run ``rid`` would not return at once."""
    rid: int


@_wire("check_termination")
@dataclass(frozen=True, slots=True)
class CheckTermination(Request[bool]):
    """Whether termination of run ``rid`` was requested."""
    rid: int


@_wire("submit")
@dataclass(frozen=True, slots=True)
class Submit(Request[int]):
    """Submit a run (``schedule.submit``); the reply is its RID."""
    pipeline_name: str
    expid: dict[str, Any]
    priority: int
    due_date: float | None
    flush: bool


@_wire("delete")
@dataclass(frozen=True, slots=True)
class Delete(Request[None]):
    """Delete run ``rid`` (``schedule.delete``)."""
    rid: int


@_wire("request_termination")
@dataclass(frozen=True, slots=True)
class RequestTermination(Request[None]):
    """Ask run ``rid`` to terminate (``schedule.request_termination``)."""
    rid: int


@_wire("get_status")
@dataclass(frozen=True, slots=True)
class GetStatus(Request[dict[int, dict[str, Any]]]):
    """The schedule, as the ``schedule`` notifier holds it."""


@_wire("interactive")
@dataclass(frozen=True, slots=True)
class Interactive(Request[dict[str, Any] | None]):
    """Ask the users for arguments (``arglist_desc``: ``describe_arglist``'s); the
    reply is ``{key: value}``, or None when they cancelled."""
    arglist_desc: list[Any]
    title: str


@_wire("get_dask_scheduler")
@dataclass(frozen=True, slots=True)
class GetDaskScheduler(Request[str]):
    """The address of the lab's Dask scheduler (``docs/dask.md``); refused when the
    master has none."""


# --- worker -> master: outcomes ------------------------------------------------------

@_wire("built")
@dataclass(frozen=True, slots=True)
class Built(Outcome):
    """``Build`` completed."""
    class_name: str
    devices: list[str]
    """The device database keys build requested (``DeviceManager.requested``)."""
    bluesky: bool
    """Whether the worker imported bluesky or ophyd (later templates preload them)."""


@_wire("completed")
@dataclass(frozen=True, slots=True)
class Completed(Outcome):
    """``Prepare``, ``Run`` or ``Analyze`` completed (``results``: the results file
    ``Analyze`` wrote)."""
    results: str | None = None


@_wire("analysis_offloaded")
@dataclass(frozen=True, slots=True)
class AnalysisOffloaded(Outcome):
    """``Analyze`` of an ``@offload_analyze`` experiment: the analysis was sent to the
    Dask cluster at ``scheduler``, and the pipeline's analyze stage is free. A second
    outcome follows, without a command: ``AnalysisDone`` or ``Failed``."""
    scheduler: str


@_wire("analysis_done")
@dataclass(frozen=True, slots=True)
class AnalysisDone(Outcome):
    """The offloaded analysis returned and ``results`` was written; ``worker``: the
    Dask worker that ran it."""
    results: str | None
    worker: str


@_wire("paused")
@dataclass(frozen=True, slots=True)
class Paused(Outcome):
    """The run called ``scheduler.pause()``; it waits for ``Resume``."""


@_wire("terminated")
@dataclass(frozen=True, slots=True)
class Terminated(Outcome):
    """The run ended on a termination request; ``results``: the file written, if any."""
    results: str | None = None


@_wire("validated")
@dataclass(frozen=True, slots=True)
class Validated(Outcome):
    """``Validate`` completed: the problems found (one line each; none: it would run)."""
    problems: list[str]


@_wire("failed")
@dataclass(frozen=True, slots=True)
class Failed(Outcome):
    """The command failed: ``message`` in one line, the worker's ``traceback``, and the
    results file written with the error (run, analyze), if any."""
    message: str
    traceback: str
    results: str | None = None


# --- the examiner's pipe ---------------------------------------------------------------

@_wire("examine")
@dataclass(frozen=True, slots=True)
class Examine(ExaminerRequest):
    """Examine the file ``path`` of folder ``root``; its experiments see a device
    database of ``device_keys`` (dummies); ``memory``: bytes of address space the
    examination may add (None: no limit)."""
    path: str
    root: str
    device_keys: tuple[str, ...]
    memory: int | None


@_wire("compile")
@dataclass(frozen=True, slots=True)
class CompileContent(ExaminerRequest):
    """Compile submitted content (never run it), within ``memory`` added bytes."""
    source: str
    memory: int | None


@_wire("examine_content")
@dataclass(frozen=True, slots=True)
class ExamineContent(ExaminerRequest):
    """Examine submitted content as a file is examined (``Examine``; a black-box
    script is not imported), within ``memory`` added bytes."""
    source: str
    device_keys: tuple[str, ...]
    memory: int | None


@_wire("ready")
@dataclass(frozen=True, slots=True)
class ExaminerReady(ExaminerMessage):
    """The examining process ``pid`` serves (its first message)."""
    pid: int


@_wire("examined")
@dataclass(frozen=True, slots=True)
class Examined(ExaminerMessage):
    """What examining one file (or compiling content) gave."""

    description: dict[str, Any] | None
    """``{class_name: {"name", "arginfo", "argument_ui", "scheduler_defaults"}}``, or None."""
    error: str | None = None
    """Why the file was skipped (one line), or None."""
    deps: tuple[str, ...] = ()
    """Other modules under the root that importing the file loaded (relative paths)."""
    script: bool = False
    """The file is a black-box script (``worker/script.py``; it was not imported)."""

    @property
    def ok(self) -> bool:
        return self.error is None


# --- directions and the encoding ---------------------------------------------------

class Catalogue:
    """The messages one end of a pipe accepts: those registered under its bases."""

    def __init__(self, name: str, *bases: type[Message]) -> None:
        self.name = name
        self.by_tag: dict[str, _Spec] = {
            spec.tag: spec for spec in _SPECS.values() if issubclass(spec.cls, bases)}

    @property
    def classes(self) -> tuple[type[Message], ...]:
        return tuple(spec.cls for spec in self.by_tag.values())

    def __contains__(self, cls: object) -> bool:
        spec = _SPECS.get(cls)  # type: ignore[call-overload]
        return spec is not None and self.by_tag.get(spec.tag) is spec

    def __repr__(self) -> str:
        return f"Catalogue({self.name!r}: {', '.join(self.by_tag)})"


TO_WORKER = Catalogue("master message", Command, Answer)
FROM_WORKER = Catalogue("worker message", OneWay, Request, Outcome)
TO_EXAMINER = Catalogue("examiner request", ExaminerRequest)
FROM_EXAMINER = Catalogue("examiner message", ExaminerMessage)


class MalformedMessage(ValueError):
    """A wire object that is no message of the expected direction; the text says what
    was wrong, in one line. ``kind`` is the message class when the tag was known."""

    def __init__(self, text: str, kind: type[Message] | None = None) -> None:
        super().__init__(text)
        self.kind = kind


def registered() -> tuple[type[Message], ...]:
    """Every message class, in the order defined."""
    return tuple(_SPECS)


def tag_of(message: Message | type[Message]) -> str:
    """The wire tag of a message or message class."""
    cls = message if isinstance(message, type) else type(message)
    return _SPECS[cls].tag


def encode(msg: Message) -> tuple[Any, ...]:
    """The wire object of msg: ``(tag, field, ...)``."""
    try:
        spec = _SPECS[type(msg)]
    except KeyError:
        raise TypeError(f"not a worker or examiner message: {type(msg).__name__}") from None
    return spec.encode(msg)


def decode(wire: object, catalogue: Catalogue) -> Message:
    """The message wire encodes, if it belongs to catalogue; else MalformedMessage."""
    if type(wire) is not tuple or not wire:
        raise MalformedMessage(f"malformed {catalogue.name}: expected a tuple (tag, "
                               f"fields...), got {_show(wire)}")
    tag = wire[0]
    spec = catalogue.by_tag.get(tag) if type(tag) is str else None
    if spec is None:
        known = _TAGS.get(tag) if type(tag) is str else None
        if known is not None:
            raise MalformedMessage(f"{tag!r} is not a {catalogue.name}", known.cls)
        raise MalformedMessage(f"unknown {catalogue.name} {_show(tag)}")
    if len(wire) != spec.size:
        raise MalformedMessage(
            f"malformed {catalogue.name} {tag!r}: {len(wire) - 1} field(s), expected "
            f"{spec.size - 1} ({', '.join(spec.names) or 'none'})", spec.cls)
    for i, name, accepted, described in spec.checks:
        if not isinstance(wire[i], accepted):
            raise MalformedMessage(
                f"malformed {catalogue.name} {tag!r}: {name} must be {described}, got "
                f"{_show(wire[i])} ({type(wire[i]).__name__})", spec.cls)
    return spec.cls(*wire[1:])


def _show(value: object, limit: int = 60) -> str:
    """A bounded one-line repr of value, for error messages."""
    try:
        text = repr(value)
    except Exception:
        text = f"<{type(value).__name__}>"
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."
