"""The queueserver's lock, users and groups as labpipe's own (``docs/qserver.md``).

- ``SCOPE_OF``: the lock scope the RE Manager's lock gives a method (editing the
  queue and the history is ``queue``; the environment, starting and stopping the queue,
  the RunEngine are ``environment``), for the methods whose labpipe mapping does not
  already pass the master's gate in that scope: the endpoint's own state
  (``environment_open``, ``history_clear``, ``permissions_reload``) and methods that
  map onto queue methods (``queue_start`` is ``schedule.release``, ``re_pause`` is
  ``request_termination``). A request passes this check first, then each labpipe
  method it maps onto passes the gate: it is refused when either scope it touches is
  locked and its ``lock_key`` does not open the lock. The others (``queue_item_add``
  is ``schedule.submit_plan``, ``function_execute`` is ``schedule.call_function``, ...)
  are refused by the gate, naming the labpipe method.
- ``request_access(params)``: a request's ``lock_key``, ``user`` and ``user_group`` as
  labpipe's ``Access`` (lock key, user, group), checked first.
- ``lock_info(state, emergency)``: the master's lock as the RE Manager's ``lock_info``.
- ``user_group_permissions(permissions)``: labpipe's ``[permissions]`` in the shape of
  the RE Manager's ``permissions_get`` (``{"user_groups": {group: {...}}}``).
"""

from __future__ import annotations

import time
from typing import Any

from labpipe.master.access.gate import Access
from labpipe.master.access.permissions import RIGHTS, Permissions

__all__ = ["SCOPE_OF", "request_access", "lock_info", "user_group_permissions"]

# the RE Manager's queue-scope methods that map onto no queue method of labpipe
_QUEUE = ("history_clear", "permissions_reload", "permissions_set")
# its environment-scope methods that map onto no environment method of labpipe
_ENVIRONMENT = ("queue_item_execute", "queue_start", "queue_stop", "queue_stop_cancel",
                "queue_autostart", "environment_open", "environment_close",
                "environment_destroy", "re_pause", "re_resume", "re_stop", "re_abort",
                "re_halt")

#: RE Manager method -> the scope of the lock that covers it.
SCOPE_OF: dict[str, str] = {**{m: "queue" for m in _QUEUE},
                            **{m: "environment" for m in _ENVIRONMENT}}


def _word(params: dict[str, Any], name: str, what: str) -> str | None:
    value = params.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > 1024:
        raise ValueError(f"{what} must be a non-empty string or None: {name} = "
                         f"{value!r}"[:300])
    return value


def request_access(params: dict[str, Any]) -> Access:
    """What a request says about itself, as labpipe's lock key, user and group."""
    return Access(lock_key=_word(params, "lock_key", "Lock key"),
                  user=_word(params, "user", "User name"),
                  group=_word(params, "user_group", "User group"))


def lock_info(state: dict[str, Any], emergency_key_set: bool) -> dict[str, Any]:
    """The RE Manager's ``lock_info`` of the master's lock (``QueueLock.info()``)."""
    when = state.get("time")
    return {"environment": "environment" in state["scope"],
            "queue": "queue" in state["scope"], "user": state.get("user"),
            "note": state.get("note"), "time": when,
            "time_str": "" if when is None else time.strftime(
                "%m/%d/%Y %H:%M:%S", time.localtime(when)),
            "emergency_lock_key_is_set": emergency_key_set}


def _patterns(patterns: tuple[str, ...]) -> list[str | None]:
    # the queueserver's "every name" is None (null in its YAML file); labpipe's is "*"
    return [None if p == "*" else p for p in patterns]


def user_group_permissions(permissions: Permissions) -> dict[str, Any]:
    """``{"user_groups": {group: {"allowed_plans", "forbidden_plans",
    "allowed_devices", "forbidden_devices", "allowed_functions",
    "forbidden_functions", "labpipe": {...}}}}``: labpipe's groups with their patterns
    (globs, or regular expressions after ``:``), the functions allowed when the group
    has ``call_functions``, and labpipe's own experiment patterns and rights. With
    permissions off, one group ``primary`` that may do everything (any group may)."""
    every = {"allowed_plans": [None], "forbidden_plans": [], "allowed_devices": [None],
             "forbidden_devices": [], "allowed_functions": [None],
             "forbidden_functions": []}
    if not permissions.enabled:
        return {"user_groups": {"primary": {**every, "labpipe": {
            "enabled": False, "rights": {right: True for right in RIGHTS}}}}}
    groups = {}
    for name, group in sorted(permissions.groups.items()):
        c = group.config
        groups[name] = {
            "allowed_plans": _patterns(c.allowed_plans),
            "forbidden_plans": _patterns(c.forbidden_plans),
            "allowed_devices": _patterns(c.allowed_devices),
            "forbidden_devices": _patterns(c.forbidden_devices),
            "allowed_functions": [None] if c.call_functions else [],
            "forbidden_functions": [] if c.call_functions else [None],
            "labpipe": {"enabled": True,
                        "allowed_experiments": list(c.allowed_experiments),
                        "forbidden_experiments": list(c.forbidden_experiments),
                        "rights": {right: bool(getattr(c, right)) for right in RIGHTS}}}
    return {"user_groups": groups}
