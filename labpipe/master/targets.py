"""What the control port exposes: exactly the listed methods of each master object,
each argument checked against its spec before the method runs.

The RPC server calls any public callable of a target, so the master never registers its
internal objects themselves (a client could otherwise call ``Scheduler.stop`` or
``DatasetDB.close``); the control port's server holds only ``Target`` objects
(``Master.targets``), each forwarding only the methods of wire-compat.md ("Targets and
methods") and labpipe's documented additions (``docs/queue-control.md``, the
``history`` target, ``submit_plan``). What a ``Target`` forwards to is the object
holding those methods: the ``Scheduler``, ``DatasetDB`` and ``InteractiveArgDB``
themselves, or an adapter where the wire's method differs from the internal one
(``DeviceDBTarget``: ``scan`` in a thread, never the ``DeviceDB``;
``ExperimentDBTarget``, ``HistoryTarget``, ``MasterManagement``).

``SPECS`` is the table of every target's methods and their parameters
(``params.Param``): the name, the check (type and range) and the default, which must
match the method's own signature (``Target`` refuses to start otherwise). A call whose
arguments do not fit gets a one-line ``TypeError``/``ValueError`` naming the
parameter, the value and what is allowed, and the method never runs. Adding a method
to a target means adding its spec here. Types follow what ARTIQ's clients send:
``due_date`` None or a finite number, ``priority`` an int, ``flush`` a bool,
``pipeline_name`` a non-empty str, RIDs ints (not bools, floats or numpy integers).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from labpipe.master.params import (INT64_MAX, INT64_MIN, REQUIRED, Bool, Check, Either, Int,
                                   Mapping, Method, Number, OneOf, Optional, Param, Path,
                                   PyonValue, Record, Sequence, Str)

if TYPE_CHECKING:
    from labpipe.master.access.gate import Gate

__all__ = ["Target", "SPECS", "TargetSpecError"]

# --- the vocabulary -------------------------------------------------------------------

NAME_MAX = 1024           # pipeline names, dataset and device keys, class names
REV_MAX = 1024            # repository revisions (commit ids, ref names)
CONTENT_MAX = 4 << 20     # submitted source text, characters
ITEMS_MAX = 10_000        # arguments, metadata, overrides... per dict
MAX_TIMEOUT = 30 * 86400  # seconds a call may ask to wait

RID = Int(0, INT64_MAX, what="a RID (an int)")
#: delete and request_termination ignore RIDs that are not scheduled (ARTIQ)
ANY_RID = Int(INT64_MIN, INT64_MAX, what="a RID (an int)")
PRIORITY = Int(INT64_MIN, INT64_MAX)
TIME = Number(what="a finite number (UNIX time)")
TIMEOUT = Number(0, MAX_TIMEOUT, what="a finite number of seconds")
BOOL = Bool()
PIPELINE = Str(NAME_MAX, 1)
NAME = Str(NAME_MAX, 1)
KEY = Str(NAME_MAX, 1)
REV = Str(REV_MAX, 1)
VALUE = PyonValue()
ARGUMENTS = Mapping(Str(NAME_MAX, 1), VALUE, ITEMS_MAX)
LOG_LEVEL = Int(-2 ** 31, 2 ** 31 - 1)
#: a place in a pipeline's queue (docs/queue-control.md "Queue positions")
QUEUE_PLACE = (("before", Optional(RID), None), ("after", Optional(RID), None),
               ("pos", Optional(Either(OneOf(("front", "back")),
                                       Int(-ITEMS_MAX * 100, ITEMS_MAX * 100,
                                           what="an index"))), None))
TASK = Str(64, 1)  # a function call's task id (a uuid4 string)

#: wire-compat.md "Experiment ids"
EXPID_FIELDS = {
    "file": Path(),
    "class_name": Optional(NAME),
    "arguments": ARGUMENTS,
    "log_level": LOG_LEVEL,
    "repo_rev": Optional(REV),
    "content": Str(CONTENT_MAX),
    "devarg_override": Mapping(Str(NAME_MAX, 1), VALUE, ITEMS_MAX),
}
EXPID = Record(EXPID_FIELDS)
#: history.resubmit: scheduling fields and expid keys
OVERRIDES = Record({"pipeline": PIPELINE, "priority": PRIORITY, "due_date": Optional(TIME),
                    "flush": BOOL, **EXPID_FIELDS})
#: dataset_db.update: a mod of the datasets notifier
MOD = Record({"action": OneOf(("setitem", "delitem", "append", "insert", "pop")),
              "path": Sequence(VALUE, 64, tuples=False), "key": VALUE, "value": VALUE,
              "x": VALUE, "i": Int()}, required=("action", "path"))


def _p(name: str, check: Check, default: Any = REQUIRED) -> Param:
    return Param(name, check, default)


# --- the table -------------------------------------------------------------------------

SPECS: dict[str, dict[str, tuple[Param, ...]]] = {
    "schedule": {
        # ARTIQ's
        "submit": (_p("pipeline_name", PIPELINE), _p("expid", EXPID),
                   _p("priority", PRIORITY, 0), _p("due_date", Optional(TIME), None),
                   _p("flush", BOOL, False), *(_p(*place) for place in QUEUE_PLACE)),
        "delete": (_p("rid", ANY_RID),),
        "request_termination": (_p("rid", ANY_RID),),
        "get_status": (),
        "check_pause": (_p("rid", RID),),
        "check_termination": (_p("rid", RID),),
        # labpipe's (docs/queue-control.md, README "submit_plan")
        "submit_plan": (_p("pipeline_name", PIPELINE), _p("name", NAME),
                        _p("args", Sequence(VALUE, ITEMS_MAX), ()),
                        _p("kwargs", Optional(ARGUMENTS), None),
                        _p("priority", PRIORITY, 0), _p("due_date", Optional(TIME), None),
                        _p("file", Optional(Path(min_len=1)), None),
                        *(_p(*place) for place in QUEUE_PLACE)),
        "change": (_p("rid", RID), _p("priority", Optional(PRIORITY), None),
                   _p("due_date", Optional(TIME), None),
                   _p("pipeline_name", Optional(PIPELINE), None),
                   _p("arguments", Optional(ARGUMENTS), None),
                   _p("flush", Optional(BOOL), None)),
        "hold": (_p("pipeline_name", PIPELINE), _p("after_current", BOOL, False)),
        "release": (_p("pipeline_name", PIPELINE),),
        "set_stop_on_failure": (_p("pipeline_name", PIPELINE), _p("enabled", BOOL)),
        "move": (_p("rid", RID), *(_p(*place) for place in QUEUE_PLACE)),
        "move_batch": (_p("rids", Sequence(RID, ITEMS_MAX)),
                       *(_p(*place) for place in QUEUE_PLACE)),
        "clear": (_p("pipeline_name", PIPELINE),),
        "execute_now": (_p("pipeline_name", PIPELINE), _p("expid", EXPID),
                        _p("wait", BOOL, False)),
        "set_device_check": (_p("pipeline_name", PIPELINE), _p("enabled", BOOL)),
        "validate": (_p("pipeline_name", PIPELINE), _p("expid", EXPID)),
        # docs/functions.md
        "call_function": (_p("pipeline_name", PIPELINE), _p("name", NAME),
                          _p("args", Sequence(VALUE, ITEMS_MAX), ()),
                          _p("kwargs", Optional(ARGUMENTS), None),
                          _p("run_in_background", BOOL, False)),
        "task_status": (_p("task", TASK),),
        "task_result": (_p("task", TASK),),
    },
    "experiment_db": {
        "scan_repository": (_p("new_cur_rev", Optional(REV), None),),
        "scan_repository_async": (_p("new_cur_rev", Optional(REV), None),),
        "examine": (_p("filename", Path(min_len=1)), _p("use_repository", BOOL, True),
                    _p("revision", Optional(REV), None)),
        "list_directory": (_p("directory", Path()),),
        "root": (),
    },
    "dataset_db": {
        "get": (_p("key", KEY),),
        "get_metadata": (_p("key", KEY),),
        "set": (_p("key", KEY), _p("value", VALUE), _p("persist", Optional(BOOL), None),
                _p("metadata", Optional(Mapping(Str(NAME_MAX), VALUE, ITEMS_MAX)), None)),
        "update": (_p("mod", MOD),),
        "delete": (_p("key", KEY),),
    },
    "device_db": {
        "scan": (),
        "get_device_db": (),
        "get": (_p("key", KEY), _p("resolve_alias", BOOL, False)),
    },
    "interactive_arg_db": {
        "supply": (_p("rid", RID), _p("values", ARGUMENTS)),
        "cancel": (_p("rid", RID),),
    },
    "master_management": {
        "get_name": (),
        "terminate": (),
    },
    # docs/access.md
    "lock": {
        "lock": (_p("key", Str(NAME_MAX, 1)),
                 _p("scope", Sequence(OneOf(("queue", "environment")), 2),
                    ("queue", "environment")),
                 _p("note", Optional(Str(4096)), None), _p("user", Optional(NAME), None)),
        "unlock": (_p("key", Str(NAME_MAX, 1)),),
        "info": (),
    },
    "permissions": {
        "allowed": (_p("group", Optional(NAME), None),),
        "groups": (),
    },
    "history": {
        "get": (_p("rid", RID),),
        "list": (_p("limit", Int(0, 10_000), 100), _p("before_rid", Optional(RID), None)),
        "resubmit": (_p("rid", RID), _p("overrides", Optional(OVERRIDES), None)),
        "wait": (_p("rid", RID), _p("timeout", Optional(TIMEOUT), None)),
        "read_results": (_p("rid", RID),),
    },
    # labpipe's (docs/console.md)
    "console": {
        "text": (_p("rid", RID), _p("since_line", Int(0, INT64_MAX), 0)),
        "runs": (),
    },
}


class TargetSpecError(Exception):
    """A spec does not match the method it describes (a programming error)."""


def _check_signature(label: str, method: Callable[..., Any], params: tuple[Param, ...]) -> None:
    """The spec's names and defaults must be the method's own."""
    try:
        signature = inspect.signature(method)
    except (TypeError, ValueError) as exc:
        raise TargetSpecError(f"{label}: no signature to check the spec against") from exc
    own = [(p.name, REQUIRED if p.default is p.empty else p.default)
           for p in signature.parameters.values()]
    spec = [(p.name, p.default) for p in params]
    if own != spec:
        raise TargetSpecError(f"{label}: the spec {spec} does not match the method's "
                              f"parameters {own}")


def _checked(label: str, method: Callable[..., Any], params: tuple[Param, ...],
             gate: Gate | None) -> Callable[..., Any]:
    spec = Method(label, params)
    own = {p.name for p in params}

    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        if gate is None:
            spec.bind(args, kwargs)
        else:
            access = gate.take(label, kwargs, own)  # lock_key, user, group: the gate's
            spec.bind(args, kwargs)
            gate.admit(label, access)
        return method(*args, **kwargs)
    return call


class Target:
    """An RPC target forwarding exactly the methods of ``specs`` (name -> params) of
    ``obj`` (with their signatures and docstrings, for ``get_rpc_method_list``), each
    call's arguments checked first. ``name`` prefixes refusals (``schedule.submit:
    ...``). Refuses to be built if a spec does not match its method's signature.
    ``gate`` (``access.gate.Gate``): every call passes it after its arguments are
    checked (the lock, the caller's permissions); its keyword arguments ``lock_key``,
    ``user`` and ``group`` are the gate's, not the method's."""

    def __init__(self, obj: object, name: str, specs: dict[str, tuple[Param, ...]],
                 doc: str | None = None, gate: Gate | None = None):
        for method_name, params in specs.items():
            label = f"{name}.{method_name}"
            method = getattr(obj, method_name)
            _check_signature(label, method, params)
            setattr(self, method_name, _checked(label, method, params, gate))
        self.__doc__ = doc if doc is not None else type(obj).__doc__
