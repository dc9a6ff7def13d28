"""The gate every RPC call passes: which methods change what, and who may call them.

``ACTIONS`` is the one table of the methods that change something: for each
``target.method``, the lock scope it belongs to (``"queue"`` or ``"environment"``,
``lock.py``) and the group right it needs (``permissions.RIGHTS``), either None. A new
changing method is covered by naming it here; ``READS`` names the methods that change
nothing (never refused, never need a key), and ``tests/test_access_units.py`` fails
for a method of ``targets.SPECS`` that is in neither.

Each call may carry three keyword arguments of labpipe's own, taken out before the
method's own arguments are checked (ARTIQ's clients never send them, and a method that
has a parameter of that name keeps it): ``lock_key=`` (the key of the lock),
``user=`` and ``group=`` (who the client says it is; with TLS the certificate says).
``Gate.admit`` identifies the caller (``current_caller`` is set for the call), then
refuses a changing call while its scope is locked without the key, then one the
caller's group has not the right to.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from labpipe.master.access.caller import Caller, current_caller
from labpipe.master.access.lock import QueueLock
from labpipe.master.access.permissions import Permissions
from labpipe.master.params import Str
from labpipe.protocol.rpc import current_peer_certificate

__all__ = ["Action", "ACTIONS", "READS", "Gate", "Access", "ACCESS_KEYWORDS",
           "current_lock_key"]

#: The lock key the call being served gave (``Gate.admit`` sets it), for a method whose
#: lock scope depends on its arguments: a foreground ``call_function`` also changes the
#: queue (``functions.py``).
current_lock_key: ContextVar[str | None] = ContextVar("labpipe_lock_key", default=None)


@dataclass(frozen=True)
class Action:
    """What a changing method touches: its lock scope and the right it needs."""

    scope: str | None
    right: str | None


_QUEUE = Action("queue", "edit_queue")

#: Every method that changes something (see the module docstring).
ACTIONS: dict[str, Action] = {
    "schedule.submit": _QUEUE,
    "schedule.submit_plan": _QUEUE,
    "schedule.submit_instruction": _QUEUE,
    "schedule.delete": _QUEUE,
    "schedule.request_termination": _QUEUE,
    "schedule.change": _QUEUE,
    "schedule.hold": _QUEUE,
    "schedule.release": _QUEUE,
    "schedule.set_device_check": _QUEUE,
    "schedule.move": _QUEUE,
    "schedule.move_batch": _QUEUE,
    "schedule.clear": _QUEUE,
    "schedule.execute_now": _QUEUE,
    "schedule.set_stop_on_failure": _QUEUE,
    "schedule.call_function": Action("environment", "call_functions"),
    "history.resubmit": _QUEUE,
    "interactive_arg_db.supply": _QUEUE,
    "interactive_arg_db.cancel": _QUEUE,
    "dataset_db.set": Action("environment", "write_datasets"),
    "dataset_db.update": Action("environment", "write_datasets"),
    "dataset_db.delete": Action("environment", "write_datasets"),
    "device_db.scan": Action("environment", None),
    "master_management.terminate": Action("environment", "terminate"),
    # the lock itself: taking it needs the right to edit the queue; unlocking only a key
    "lock.lock": Action(None, "edit_queue"),
}

#: Every method that changes nothing.
READS: frozenset[str] = frozenset({
    "schedule.get_status", "schedule.check_pause", "schedule.check_termination",
    "schedule.validate", "schedule.task_status", "schedule.task_result",
    "experiment_db.scan_repository", "experiment_db.scan_repository_async",
    "experiment_db.examine", "experiment_db.list_directory", "experiment_db.root",
    "dataset_db.get", "dataset_db.get_metadata",
    "device_db.get_device_db", "device_db.get",
    "master_management.get_name",
    "history.get", "history.list", "history.wait", "history.read_results",
    "lock.unlock", "lock.info",
    "permissions.allowed", "permissions.groups",
    "console.text", "console.runs",
})

#: The keyword arguments of labpipe's own that any call may carry.
ACCESS_KEYWORDS = ("lock_key", "user", "group")
_WORD = Str(1024, 1)


@dataclass(frozen=True)
class Access:
    """What a call said about itself: its lock key, user and group (None: not said)."""

    lock_key: str | None = None
    user: str | None = None
    group: str | None = None


class Gate:
    """Checks each call against the lock and the permissions (module docstring)."""

    def __init__(self, lock: QueueLock, permissions: Permissions):
        self.lock = lock
        self.permissions = permissions

    @staticmethod
    def take(label: str, kwargs: dict[str, Any], own: set[str]) -> Access:
        """Take the access keywords out of kwargs (those not among the method's own
        parameter names); TypeError/ValueError naming a bad one."""
        said: dict[str, str] = {}
        for name in ACCESS_KEYWORDS:
            if name in own or name not in kwargs:
                continue
            value = kwargs.pop(name)
            if value is None:
                continue
            try:
                _WORD.check(value, name)
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"{label}: {exc}") from None
            said[name] = value
        return Access(**said)

    def admit(self, label: str, access: Access) -> Caller:
        """Identify the caller (set as ``current_caller``) and refuse (a
        PermissionError, one line) what the lock or the caller's group does not allow."""
        caller = self.permissions.identify(access.user, access.group,
                                           current_peer_certificate.get())
        current_caller.set(caller)
        current_lock_key.set(access.lock_key)
        action = ACTIONS.get(label)
        if action is None:
            return caller
        if action.scope is not None:
            self.lock.check(action.scope, label, access.lock_key)
        if action.right is not None:
            self.permissions.check_right(caller, action.right, label)
        return caller
