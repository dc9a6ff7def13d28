"""The RE Manager's methods, one function each, over the ``Adapter``.

``METHODS`` maps a method name to its accepted parameters and its handler; ``QServer
.execute(request)`` checks the request (a dict with ``method`` and optional ``params``,
no other keys, no unknown parameter: the refusal lists the accepted ones) before the
handler runs, and turns any refusal into ``{"success": False, "msg": ...}``. A handler
returns the reply's other keys; ``Refused`` is a refusal the user reads as it is.
"""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from labpipe import __version__
from labpipe.master.run import Run
from labpipe.master.access.caller import ANONYMOUS, current_caller
from labpipe.master.access.gate import current_lock_key
from labpipe.qserver import access
from labpipe.qserver.adapter import Adapter, request_access
from labpipe.master.instructions import INSTRUCTIONS
from labpipe.qserver.items import history_item, is_instruction_record, run_item, uid_of
from labpipe.qserver.state import FILE_NAME as STATE_FILE
from labpipe.qserver.state import EndpointState

__all__ = ["QServer", "METHODS", "Refused"]

Reply = dict[str, Any]
Handler = Callable[["QServer", dict[str, Any]], Awaitable[Reply]]

#: name -> (accepted parameters, handler)
METHODS: dict[str, tuple[tuple[str, ...], Handler]] = {}


class Refused(ValueError):
    """A request refused; its message is the reply's ``msg``."""


def method(name: str, *params: str) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        METHODS[name] = (params, handler)
        return handler
    return register


def _not_here(what: str) -> Handler:
    async def refuse(qs: QServer, p: dict[str, Any]) -> Reply:
        raise Refused(f"{what} is not available in this labpipe master")
    return refuse


#: which uid a change of the adapter's ("queue", "history", "plans", "devices",
#: "lock") renews
_UID_OF = {"queue": "queue_uid", "history": "history_uid", "plans": "plans_uid",
           "devices": "devices_uid", "tasks": "task_results_uid",
           "lock": "lock_uid"}

#: how many runs' client spellings (``meta``) and asked ends are remembered
REMEMBERED = 10000


def _remember(table: dict[int, Any], rid: int, value: Any) -> None:
    table[rid] = value
    while len(table) > REMEMBERED:
        del table[next(iter(table))]


class QServer:
    """The endpoint's state (what labpipe has no place for: the items as the clients
    spelled them, the uids that change with the queue and the history) and the
    dispatch. The lock, users, groups and permissions are the master's own."""

    def __init__(self, adapter: Adapter):
        self.adapter = adapter
        #: rid -> the item as a client gave it (the run keeps its user and group, and
        #: its arguments in the expid: after a restart, or past REMEMBERED, the item is
        #: described from them)
        self.meta: dict[int, dict[str, Any]] = {}
        #: the history_clear mark and the ends asked (qserver.pyon, state.py)
        self.state = EndpointState(adapter.lab_path(STATE_FILE))
        self.queue_uid = str(uuid.uuid4())
        self.history_uid = str(uuid.uuid4())
        self.environment_open = True
        self.lock_uid = str(uuid.uuid4())
        self._history_size: int | None = None
        self.task_results_uid = str(uuid.uuid4())
        #: the plans' and devices' lists change with rescans: clients reload them when
        #: these uids change (a constant uid would keep their first copy for good)
        self.plans_uid = str(uuid.uuid4())
        self.devices_uid = str(uuid.uuid4())
        adapter.add_listener(self._changed)

    def _changed(self, what: str) -> None:
        setattr(self, _UID_OF[what], str(uuid.uuid4()))
        if what == "history":
            self._history_size = None

    def history_size(self) -> int:
        """The pipeline's history records (counted again only after history changed:
        a status request costs the same with a long history)."""
        if self._history_size is None:
            self._history_size = self.adapter.history_size(self.state.history_from_rid)
        return self._history_size

    async def execute(self, request: object) -> Reply:
        """The reply to one decoded request; never raises. The request's lock key,
        user and group hold for every call it makes onto the master (and no longer)."""
        said = request_access.set(request_access.get())
        caller = current_caller.set(ANONYMOUS)
        key = current_lock_key.set(None)
        try:
            return await self._execute(request)
        finally:
            current_lock_key.reset(key)
            current_caller.reset(caller)
            request_access.reset(said)

    async def _execute(self, request: object) -> Reply:
        try:
            if not isinstance(request, dict):
                raise Refused(f"Incorrect request type: {type(request).__name__}. "
                              f"Dictionary is expected")
            extra = sorted(set(request) - {"method", "params"})
            if extra:
                raise Refused(f"Request contains unexpected keys {extra}. Allowed keys: "
                              f"('method', 'params')")
            name = request.get("method")
            if not isinstance(name, str):
                raise Refused(f"Invalid request format: method is not specified: "
                              f"{request!r}"[:300])
            if name not in METHODS:
                raise Refused(f"Unknown method {name!r}")
            params = request.get("params") or {}
            if not isinstance(params, dict):
                raise Refused("'params' must be a dictionary")
            accepted, handler = METHODS[name]
            unknown = [k for k in params if k not in accepted]
            if unknown:
                raise Refused(f"API request contains unsupported parameters: "
                              f"{unknown[0]!r}. Supported parameters: {list(accepted)}")
            request_access.set(access.request_access(params))
            scope = access.SCOPE_OF.get(name)
            if scope is not None:
                self.adapter.check_lock(scope, name)
            reply = await handler(self, params)
            return {"success": True, "msg": "", **reply}
        except (Refused, PermissionError, ValueError, TypeError,
                KeyError) as exc:
            text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
            return {"success": False, "msg": text.strip().splitlines()[0] if text.strip()
                    else type(exc).__name__}

    # --- helpers --------------------------------------------------------------------

    def item_of_rid(self, rid: int) -> dict[str, Any]:
        run = self.adapter.find(rid)
        if run is None:
            return run_item(rid, {}, self.meta.get(rid))
        return run_item(rid, run.expid, self.meta.get(rid), run.user, run.group)

    def rid_of(self, uid: object) -> int:
        if not isinstance(uid, str):
            raise Refused(f"item_uid must be a string, not {uid!r}")
        for run in [*self.adapter.queued(), *filter(None, [self.adapter.running()])]:
            if uid_of(run.rid) == uid:
                return run.rid
        raise Refused(f"Item with UID {uid!r} is not in the queue")

    def rid_at(self, pos: object) -> int:
        queued = self.adapter.queued()
        if pos in ("front", "back"):
            index = 0 if pos == "front" else -1
        elif isinstance(pos, int) and not isinstance(pos, bool):
            index = pos
        else:
            raise Refused(f"Parameter 'pos' has incorrect type: {pos!r} "
                          f"(an integer, 'front' or 'back')")
        try:
            return queued[index].rid
        except IndexError:
            raise Refused(f"Index {pos!r} is out of range (the queue has "
                          f"{len(queued)} items)") from None

    def target_rid(self, p: dict[str, Any]) -> int:
        if "uid" in p and "pos" in p:
            raise Refused("Ambiguous parameters: both 'pos' and 'uid' are specified")
        return self.rid_of(p["uid"]) if "uid" in p else self.rid_at(p.get("pos", "back"))

    def manager_state(self) -> str:
        return _manager_state(self.adapter.running())

    def re_state(self) -> str:
        return _re_state(self.adapter.running())

    def status(self) -> Reply:
        running = self.adapter.running()
        held = self.adapter.held()
        lock_scope = self.adapter.lock_state()["scope"]
        return {
            "msg": f"RE Manager (labpipe {__version__})",
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "items_in_queue": self.adapter.queue_size(),
            "items_in_history": self.history_size(),
            "running_item_uid": None if running is None else uid_of(running.rid),
            "manager_state": _manager_state(running),
            "queue_stop_pending": self.adapter.stop_pending(),
            "queue_autostart_enabled": not held,
            "worker_environment_exists": self.environment_open,
            "worker_environment_state": "idle" if self.environment_open else "closed",
            "worker_background_tasks": self.adapter.background_tasks(),
            "re_state": _re_state(running) if self.environment_open else None,
            "ip_kernel_state": None, "ip_kernel_captured": None,
            "pause_pending": running is not None and running.pause_requested
            and running.status.value != "paused",
            "status_uid": str(uuid.uuid4()),
            "run_list_uid": _run_list_uid(
                [] if running is None else self.adapter.bluesky_runs(running.rid)),
            "plan_queue_uid": self.queue_uid,
            "plan_history_uid": self.history_uid,
            "devices_existing_uid": self.devices_uid, "plans_existing_uid": self.plans_uid,
            "devices_allowed_uid": self.devices_uid, "plans_allowed_uid": self.plans_uid,
            "plan_queue_mode": {"loop": False,
                                "ignore_failures": not self.adapter.stop_on_failure()},
            "task_results_uid": self.task_results_uid,
            "lock_info_uid": self.lock_uid,
            "lock": {"environment": "environment" in lock_scope,
                     "queue": "queue" in lock_scope},
        }

    async def add_item(self, item: object, user: object, group: object,
                       immediate: bool = False, place: dict[str, Any] | None = None) -> Reply:
        """Submit a plan item at place (``schedule.submit``'s before/after/pos; the
        back by default), or run it at once (``immediate``: queue_item_execute)."""
        if not isinstance(item, dict):
            raise Refused("Incorrect request format: 'item' must be a dictionary")
        item_type = item.get("item_type", "plan")
        if item_type == "instruction":
            return await self.add_instruction(item, immediate, place)
        if item_type != "plan":
            raise Refused(f"Incorrect request format: unsupported item type "
                          f"{item_type!r} (a 'plan' or an 'instruction')")
        name, args, kwargs = item.get("name"), item.get("args", []), item.get("kwargs", {})
        if not isinstance(name, str) or not name:
            raise Refused("Plan name is not specified: the item needs 'name'")
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            raise Refused("'args' must be a list and 'kwargs' a dictionary")
        meta = {"item_type": "plan", "name": name, "args": args, "kwargs": kwargs,
                "user": user, "user_group": group}
        if immediate:
            rid = await self.adapter.execute_plan(name, args, kwargs)
        else:
            rid = await self.adapter.submit_plan(name, args, kwargs, place or {})
        _remember(self.meta, rid, meta)
        return {"item": self.item_of_rid(rid), "rid": rid}

    async def add_instruction(self, item: dict[str, Any], immediate: bool,
                              place: dict[str, Any] | None) -> Reply:
        """Queue an instruction item (``schedule.submit_instruction``)."""
        if immediate:
            raise Refused("an instruction cannot be executed at once: 'queue_stop' "
                          "only means something in the queue (add it with "
                          "queue_item_add)")
        name = item.get("name")
        if name not in INSTRUCTIONS:
            raise Refused(f"Unrecognized instruction: {name!r} (labpipe knows "
                          f"{', '.join(INSTRUCTIONS)})")
        rid = await self.adapter.submit_instruction(name, place or {})
        return {"item": self.item_of_rid(rid), "rid": rid}

    async def history_items(self) -> list[dict[str, Any]]:
        """The history as the RE Manager shows it: executed instructions are not in
        it."""
        records = await self.adapter.history(1000)
        ends, mark = self.state.exit_status, self.state.history_from_rid
        return [history_item(r, self.meta.get(r["rid"]), ends.get(r["rid"]))
                for r in records if r["rid"] > mark and not is_instruction_record(r)]


def _manager_state(running: Run | None) -> str:
    if running is not None and running.pause_requested and running.status.value == "paused":
        return "paused"
    return "idle" if running is None else "executing_queue"


def _re_state(running: Run | None) -> str:
    if running is None:
        return "idle"
    return "paused" if running.status.value == "paused" else "running"


def _user(p: dict[str, Any]) -> tuple[Any, Any]:
    if "user" not in p or "user_group" not in p:
        raise Refused("the request needs 'user' and 'user_group'")
    return p["user"], p["user_group"]


def _placement(qs: QServer, p: dict[str, Any]) -> dict[str, Any]:
    """Where new items go: ``pos`` ("front", "back" or an index), ``before_uid`` or
    ``after_uid`` (at most one), as ``schedule.submit`` places a run."""
    given = [key for key in ("pos", "before_uid", "after_uid") if key in p]
    if len(given) > 1:
        raise Refused(f"Ambiguous parameters: {' and '.join(given)} are both specified")
    if "before_uid" in p:
        return {"before": qs.rid_of(p["before_uid"])}
    if "after_uid" in p:
        return {"after": qs.rid_of(p["after_uid"])}
    pos = p.get("pos", "back")
    if pos not in ("front", "back") and (isinstance(pos, bool) or not isinstance(pos, int)):
        raise Refused(f"Parameter 'pos' has incorrect type: {pos!r} (a position: "
                      f"'front', 'back' or an integer)")
    return {} if pos in ("back", -1) else {"pos": pos}


# --- status ---------------------------------------------------------------------------

@method("status")
async def status(qs: QServer, p: dict[str, Any]) -> Reply:
    return qs.status()


@method("ping")
async def ping(qs: QServer, p: dict[str, Any]) -> Reply:
    return qs.status()


@method("config_get")
async def config_get(qs: QServer, p: dict[str, Any]) -> Reply:
    return {"config": {"ip_connect_info": {}}}


# --- queue ----------------------------------------------------------------------------

@method("queue_get")
async def queue_get(qs: QServer, p: dict[str, Any]) -> Reply:
    running = qs.adapter.running()
    return {"items": [qs.item_of_rid(r.rid) for r in qs.adapter.queued()],
            "running_item": {} if running is None else qs.item_of_rid(running.rid),
            "plan_queue_uid": qs.queue_uid}


@method("queue_item_add", "user_group", "user", "item", "pos", "before_uid",
        "after_uid", "lock_key")
async def queue_item_add(qs: QServer, p: dict[str, Any]) -> Reply:
    user, group = _user(p)
    added = await qs.add_item(p.get("item"), user, group, place=_placement(qs, p))
    return {"qsize": qs.adapter.queue_size(), "item": added["item"]}


@method("queue_item_add_batch", "user_group", "user", "items", "pos", "before_uid",
        "after_uid", "lock_key")
async def queue_item_add_batch(qs: QServer, p: dict[str, Any]) -> Reply:
    user, group = _user(p)
    place = _placement(qs, p)
    items = p.get("items")
    if not isinstance(items, list):
        raise Refused("'items' must be a list")
    added, results = [], []
    for item in items:
        try:
            done = await qs.add_item(item, user, group, place=place)
            added.append(done["item"])
            if place:  # the next item goes right after this one: the batch in order
                place = {"after": done["rid"]}
            results.append({"success": True, "msg": ""})
        except (Refused, PermissionError, ValueError, TypeError) as exc:
            added.append(item)
            results.append({"success": False, "msg": str(exc)})
    ok = all(r["success"] for r in results)
    return {"success": ok, "msg": "" if ok else "some items were not added",
            "qsize": qs.adapter.queue_size(), "items": added, "results": results}


@method("queue_item_get", "pos", "uid")
async def queue_item_get(qs: QServer, p: dict[str, Any]) -> Reply:
    return {"item": qs.item_of_rid(qs.target_rid(p))}


@method("queue_item_remove", "pos", "uid", "lock_key")
async def queue_item_remove(qs: QServer, p: dict[str, Any]) -> Reply:
    rid = qs.target_rid(p)
    running = qs.adapter.running()
    if running is not None and running.rid == rid:
        raise Refused("the running item cannot be removed (stop it with re_stop)")
    item = qs.item_of_rid(rid)
    await qs.adapter.delete(rid)
    return {"item": item, "qsize": qs.adapter.queue_size() - 1}


@method("queue_item_remove_batch", "uids", "ignore_missing", "lock_key")
async def queue_item_remove_batch(qs: QServer, p: dict[str, Any]) -> Reply:
    uids = p.get("uids")
    if not isinstance(uids, list):
        raise Refused("'uids' must be a list")
    rids = []
    for uid in uids:
        try:
            rids.append(qs.rid_of(uid))
        except Refused:
            if not p.get("ignore_missing", True):
                raise
    items = [qs.item_of_rid(rid) for rid in rids]
    for rid in rids:
        await qs.adapter.delete(rid)
    return {"items": items, "qsize": qs.adapter.queue_size()}


@method("queue_item_update", "user_group", "user", "item", "replace", "lock_key")
async def queue_item_update(qs: QServer, p: dict[str, Any]) -> Reply:
    user, group = _user(p)
    item = p.get("item")
    if not isinstance(item, dict) or "item_uid" not in item:
        raise Refused("'item' must be a dictionary with 'item_uid'")
    rid = qs.rid_of(item["item_uid"])
    old = qs.item_of_rid(rid)
    kind = item.get("item_type", old["item_type"])
    if kind != old["item_type"]:
        raise Refused(f"a queued {old['item_type']} stays one in labpipe: remove the "
                      f"item and add the {kind} instead")
    if kind == "instruction":
        if item.get("name", old["name"]) != old["name"]:
            raise Refused("a queued instruction keeps its name in labpipe: remove the "
                          "item and add the new instruction instead")
        return {"qsize": qs.adapter.queue_size(), "item": old}  # nothing to change
    name = item.get("name", old["name"])
    if name != old["name"]:
        raise Refused("a queued plan keeps its name in labpipe: remove the item and "
                      "add the new plan instead")
    args, kwargs = item.get("args", []), item.get("kwargs", {})
    await qs.adapter.change_arguments(rid, name, args, kwargs)
    _remember(qs.meta, rid, {"item_type": "plan", "name": name, "args": args,
                             "kwargs": kwargs, "user": user, "user_group": group})
    return {"qsize": qs.adapter.queue_size(), "item": qs.item_of_rid(rid)}


@method("queue_item_move", "pos", "uid", "pos_dest", "before_uid", "after_uid",
        "lock_key")
async def queue_item_move(qs: QServer, p: dict[str, Any]) -> Reply:
    rid = qs.target_rid(p)
    await qs.adapter.move([rid], **_destination(qs, p))
    return {"item": qs.item_of_rid(rid), "qsize": len(qs.adapter.queued())}


def _destination(qs: QServer, p: dict[str, Any]) -> dict[str, Any]:
    """Where a move goes: pos_dest, before_uid or after_uid (exactly one)."""
    given = [key for key in ("pos_dest", "before_uid", "after_uid") if key in p]
    if len(given) != 1:
        raise Refused("give one of 'pos_dest', 'before_uid' and 'after_uid'"
                      if given else "the destination is not specified: give 'pos_dest', "
                      "'before_uid' or 'after_uid'")
    if "before_uid" in p:
        return {"before": qs.rid_of(p["before_uid"])}
    if "after_uid" in p:
        return {"after": qs.rid_of(p["after_uid"])}
    return {"pos": p["pos_dest"]}


@method("queue_item_move_batch", "uids", "pos_dest", "before_uid", "after_uid",
        "reorder", "lock_key")
async def queue_item_move_batch(qs: QServer, p: dict[str, Any]) -> Reply:
    uids = p.get("uids")
    if not isinstance(uids, list) or not uids:
        raise Refused("'uids' must be a non-empty list")
    rids = [qs.rid_of(u) for u in uids]
    await qs.adapter.move(rids, **_destination(qs, p))
    return {"items": [qs.item_of_rid(r) for r in rids], "qsize": len(qs.adapter.queued())}


@method("queue_item_execute", "item", "user_group", "user", "lock_key")
async def queue_item_execute(qs: QServer, p: dict[str, Any]) -> Reply:
    user, group = _user(p)
    added = await qs.add_item(p.get("item"), user, group, immediate=True)
    return {"qsize": len(qs.adapter.queued()), "item": added["item"]}


@method("queue_clear", "lock_key")
async def queue_clear(qs: QServer, p: dict[str, Any]) -> Reply:
    await qs.adapter.clear()
    return {}


@method("queue_start", "lock_key")
async def queue_start(qs: QServer, p: dict[str, Any]) -> Reply:
    if not qs.environment_open:
        raise Refused("RE Worker environment does not exist (environment_open first)")
    await qs.adapter.release()
    return {}


@method("queue_stop", "lock_key")
async def queue_stop(qs: QServer, p: dict[str, Any]) -> Reply:
    await qs.adapter.hold(after_current=True)
    return {}


@method("queue_stop_cancel", "lock_key")
async def queue_stop_cancel(qs: QServer, p: dict[str, Any]) -> Reply:
    if qs.adapter.stop_pending():
        await qs.adapter.release()
    return {}


@method("queue_autostart", "enable", "lock_key")
async def queue_autostart(qs: QServer, p: dict[str, Any]) -> Reply:
    if not isinstance(p.get("enable"), bool):
        raise Refused("'enable' must be true or false")
    await (qs.adapter.release() if p["enable"] else qs.adapter.hold())
    return {}


@method("queue_mode_set", "mode", "lock_key")
async def queue_mode_set(qs: QServer, p: dict[str, Any]) -> Reply:
    mode = p.get("mode")
    if mode == "default":  # the RE Manager's default: the queue stops on a failure
        mode = {"loop": False, "ignore_failures": False}
    if not isinstance(mode, dict):
        raise Refused(f"'mode' must be a dictionary or 'default', not {mode!r}")
    unknown = set(mode) - {"loop", "ignore_failures"}
    if unknown:
        raise Refused(f"Unsupported plan queue mode parameter {sorted(unknown)[0]!r}: "
                      f"supported parameters ['loop', 'ignore_failures']")
    if not all(isinstance(v, bool) for v in mode.values()):
        raise Refused("plan queue mode parameters must be true or false")
    if mode.get("loop", False):
        raise Refused("the loop mode is not available in labpipe: a pipeline runs each "
                      "plan once")
    if "ignore_failures" in mode:
        await qs.adapter.set_stop_on_failure(not mode["ignore_failures"])
    return {}


# --- history --------------------------------------------------------------------------

@method("history_get")
async def history_get(qs: QServer, p: dict[str, Any]) -> Reply:
    return {"items": await qs.history_items(), "plan_history_uid": qs.history_uid}


@method("history_clear", "lock_key", "size", "item_uid")
async def history_clear(qs: QServer, p: dict[str, Any]) -> Reply:
    records = await qs.adapter.history(1000)
    if records:
        qs.state.history_from_rid = max(r["rid"] for r in records)
        await qs.state.save()
    qs.history_uid, qs._history_size = str(uuid.uuid4()), None
    return {}


# --- plans, devices, permissions ------------------------------------------------------

def _plans(qs: QServer) -> dict[str, Any]:
    plans = {}
    for entry in qs.adapter.explist().values():
        name = entry.get("class_name")
        if not name:
            continue
        # arginfo: {arg: [procdesc, group, tooltip]} (wire-compat.md, explist)
        parameters = [{"name": key, "kind": {"name": "POSITIONAL_OR_KEYWORD", "value": 1},
                       "description": str(info[2] or "") if len(info) > 2 else ""}
                      for key, info in (entry.get("arginfo") or {}).items()]
        plans[name] = {"name": name, "module": entry.get("file"),
                       "description": entry.get("name", name), "parameters": parameters,
                       "properties": {"is_generator": True}}
    return plans


def _devices(qs: QServer) -> dict[str, Any]:
    return {key: {"classname": d.get("class", ""), "module": d.get("module", ""),
                  "is_readable": True, "is_movable": True, "is_flyable": False}
            for key, d in qs.adapter.device_db().items() if isinstance(d, dict)}


def _allowed(qs: QServer, p: dict[str, Any]) -> dict[str, Any] | None:
    """What user_group may put in the queue (``Permissions.allowed``: none at all
    without the right to edit the queue), None with permissions off (every group may
    use everything)."""
    group = p.get("user_group")
    if not isinstance(group, str):
        raise Refused("Incorrect request format: user group is not specified")
    permissions = qs.adapter.permissions
    if not permissions.enabled:
        return None
    if group not in permissions.groups:
        raise Refused(f"Unknown user group: {group!r} (labpipe.toml [permissions.groups]:"
                      f" {', '.join(sorted(permissions.groups)) or 'none'})")
    allowed = permissions.allowed(group, qs.adapter.explist(),
                                  qs.adapter.device_db().keys())
    if not allowed["rights"]["edit_queue"]:
        allowed["plans"], allowed["devices"] = [], []
    return allowed


@method("plans_allowed", "user_group")
async def plans_allowed(qs: QServer, p: dict[str, Any]) -> Reply:
    allowed, plans = _allowed(qs, p), _plans(qs)
    if allowed is not None:
        names = set(allowed["plans"])
        plans = {name: plan for name, plan in plans.items() if name in names}
    return {"plans_allowed": plans, "plans_allowed_uid": qs.plans_uid}


@method("plans_existing")
async def plans_existing(qs: QServer, p: dict[str, Any]) -> Reply:
    return {"plans_existing": _plans(qs), "plans_existing_uid": qs.plans_uid}


@method("devices_allowed", "user_group")
async def devices_allowed(qs: QServer, p: dict[str, Any]) -> Reply:
    allowed, devices = _allowed(qs, p), _devices(qs)
    if allowed is not None:
        keys = set(allowed["devices"])
        devices = {key: device for key, device in devices.items() if key in keys}
    return {"devices_allowed": devices, "devices_allowed_uid": qs.devices_uid}


@method("devices_existing")
async def devices_existing(qs: QServer, p: dict[str, Any]) -> Reply:
    return {"devices_existing": _devices(qs), "devices_existing_uid": qs.devices_uid}


@method("permissions_get")
async def permissions_get(qs: QServer, p: dict[str, Any]) -> Reply:
    return {"user_group_permissions": access.user_group_permissions(
        qs.adapter.permissions)}


@method("permissions_reload", "restore_plans_devices", "restore_permissions", "lock_key")
async def permissions_reload(qs: QServer, p: dict[str, Any]) -> Reply:
    """restore_permissions (default true): [permissions] of labpipe.toml read again;
    restore_plans_devices (default false): the repository and devices scanned again.
    The allowed lists' uids change either way, as the RE Manager's do."""
    if p.get("restore_permissions", True):
        qs.adapter.reload_permissions()
    if p.get("restore_plans_devices", False):
        await qs.adapter.rescan()
    qs.plans_uid, qs.devices_uid = str(uuid.uuid4()), str(uuid.uuid4())
    return {}


@method("permissions_set", "user_group_permissions", "lock_key")
async def permissions_set(qs: QServer, p: dict[str, Any]) -> Reply:
    raise Refused("permissions_set is not available in this labpipe master: its user "
                  "groups are [permissions] of labpipe.toml (edit it, then "
                  "permissions_reload)")


# --- environment ----------------------------------------------------------------------

@method("environment_open", "lock_key")
async def environment_open(qs: QServer, p: dict[str, Any]) -> Reply:
    qs.environment_open = True
    return {}


@method("environment_close", "lock_key")
async def environment_close(qs: QServer, p: dict[str, Any]) -> Reply:
    if qs.adapter.running() is not None:
        raise Refused("Queue execution is in progress: the environment cannot be closed")
    await qs.adapter.hold()
    qs.environment_open = False
    return {}


@method("environment_destroy", "lock_key")
async def environment_destroy(qs: QServer, p: dict[str, Any]) -> Reply:
    running = qs.adapter.running()
    await qs.adapter.hold()
    if running is not None:
        await qs.adapter.delete(running.rid)
    qs.environment_open = False
    return {}


@method("environment_update", "run_in_background", "lock_key")
async def environment_update(qs: QServer, p: dict[str, Any]) -> Reply:
    await qs.adapter.rescan()
    return {"task_uid": str(uuid.uuid4())}


# --- the RunEngine --------------------------------------------------------------------

def _running_rid(qs: QServer) -> int:
    running = qs.adapter.running()
    if running is None:
        raise Refused("Run Engine is idle: no plan is running")
    return running.rid


@method("re_pause", "option", "lock_key")
async def re_pause(qs: QServer, p: dict[str, Any]) -> Reply:
    if p.get("option", "deferred") not in ("deferred", "immediate"):
        raise Refused(f"Option {p.get('option')!r} is not supported: 'deferred' or "
                      f"'immediate'")
    qs.adapter.pause(_running_rid(qs))
    return {}


@method("re_resume", "lock_key")
async def re_resume(qs: QServer, p: dict[str, Any]) -> Reply:
    qs.adapter.resume(_running_rid(qs))
    return {}


def _ending(exit_status: str) -> Handler:
    async def end(qs: QServer, p: dict[str, Any]) -> Reply:
        rid = _running_rid(qs)
        await qs.adapter.terminate(rid)
        qs.state.note_end(rid, exit_status)
        await qs.state.save()
        return {}
    return end


METHODS["re_stop"] = (("lock_key",), _ending("stopped"))
METHODS["re_abort"] = (("lock_key",), _ending("aborted"))
METHODS["re_halt"] = (("lock_key",), _ending("halted"))


def _run_list(qs: QServer) -> list[dict[str, Any]]:
    running = qs.adapter.running()
    return [] if running is None else qs.adapter.bluesky_runs(running.rid)


def _run_list_uid(runs: list[dict[str, Any]]) -> str:
    """The same for the same list (clients ask ``re_runs`` again when it changes)."""
    return _uid_of_text(repr(runs))


@functools.lru_cache(maxsize=64)
def _uid_of_text(text: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_OID, text))  # every status asks: kept


@method("re_runs", "option")
async def re_runs(qs: QServer, p: dict[str, Any]) -> Reply:
    """The bluesky runs of the running plan: ``active`` all of them, ``open``,
    ``closed``."""
    option = p.get("option", "active")
    if option not in ("active", "open", "closed"):
        raise Refused(f"Option {option!r} is not supported: 'active', 'open' or "
                      f"'closed'")
    runs = _run_list(qs)
    listed = [r for r in runs if option == "active" or r["is_open"] == (option == "open")]
    return {"run_list": listed, "run_list_uid": _run_list_uid(runs)}


# --- functions and scripts (the queue-control issue) ----------------------------------

@method("function_execute", "item", "user_group", "user", "run_in_background",
        "lock_key")
async def function_execute(qs: QServer, p: dict[str, Any]) -> Reply:
    """``schedule.call_function`` on the queue's pipeline (``docs/functions.md``)."""
    item = p.get("item")
    if not isinstance(item, dict) or not isinstance(item.get("name"), str) \
            or not item["name"]:
        raise Refused("Incorrect request format: 'item' must be a function item with "
                      "'name'")
    if item.get("item_type", "function") != "function":
        raise Refused(f"Incorrect item type {item.get('item_type')!r}: a function item "
                      f"('item_type': 'function') is expected")
    args, kwargs = item.get("args", []), item.get("kwargs", {})
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise Refused("Incorrect request format: the function's 'args' must be a list "
                      "and its 'kwargs' a dictionary")
    background = p.get("run_in_background", False)
    if not isinstance(background, bool):
        raise Refused("'run_in_background' must be true or false")
    try:
        task_uid = await qs.adapter.call_function(item["name"], args, kwargs, background)
    except PermissionError as exc:  # the master's lock or permissions: one line
        raise Refused(str(exc)) from None
    return {"item": {**item, "item_type": "function"}, "task_uid": task_uid}


#: labpipe's task statuses as the RE Manager names them (a queued call is running)
_TASK_STATUS = {"queued": "running", "running": "running", "completed": "completed"}


async def _task_status_of(qs: QServer, uid: object) -> str:
    if not isinstance(uid, str):
        raise Refused(f"Invalid task UID {uid!r}: a string is expected")
    return _TASK_STATUS.get(await qs.adapter.task_status(uid), "not_found")


@method("task_status", "task_uid")
async def task_status(qs: QServer, p: dict[str, Any]) -> Reply:
    """One status for a UID, ``{uid: status}`` for a list of them."""
    uid = p.get("task_uid")
    if uid is None:
        raise Refused("Required 'task_uid' parameter is missing in the API call.")
    if isinstance(uid, list):
        if len(uid) > 10_000:
            raise Refused("Too many task UIDs in one request (at most 10000)")
        status: Any = {u: await _task_status_of(qs, u) for u in uid}
    else:
        status = await _task_status_of(qs, uid)
    return {"task_uid": uid, "status": status}


def _jsonable(value: Any, depth: int = 0) -> Any:
    """A return value as JSON carries it: arrays and numpy numbers as lists and numbers,
    tuples as lists, keys as strings (what JSON cannot carry is shown as its repr)."""
    if depth > 100:
        return repr(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, depth + 1) for v in value]
    if isinstance(value, dict):
        return {k if isinstance(k, str) else repr(k): _jsonable(v, depth + 1)
                for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    tolist = getattr(value, "tolist", None)  # numpy arrays and scalars
    return _jsonable(tolist(), depth + 1) if callable(tolist) else repr(value)


@method("task_result", "task_uid")
async def task_result(qs: QServer, p: dict[str, Any]) -> Reply:
    """The RE Manager's shapes: ``{}`` when not found; ``task_uid``, ``time_start``,
    ``run_in_background`` while running; ``task_uid``, ``success``, ``msg``,
    ``traceback``, ``return_value``, ``time_start``, ``time_stop`` once completed."""
    uid = p.get("task_uid")
    if not isinstance(uid, str):
        raise Refused("Required 'task_uid' parameter is missing in the API call "
                      "(a string)")
    record = await qs.adapter.task_result(uid)
    status = _TASK_STATUS.get(str(record.get("status")), "not_found")
    result: dict[str, Any] = {}
    if status == "running":
        result = {"task_uid": uid, "time_start": record.get("time_start")
                  or record.get("time_submitted"),
                  "run_in_background": bool(record.get("background"))}
    elif status == "completed":
        result = {"task_uid": uid, "success": bool(record.get("success")),
                  "msg": record.get("msg") or "",
                  "traceback": record.get("traceback") or "",
                  "return_value": _jsonable(record.get("return_value")),
                  "time_start": record.get("time_start"),
                  "time_stop": record.get("time_stop")}
    return {"task_uid": uid, "status": status, "result": result}


METHODS["script_upload"] = (("script", "update_lists", "update_re", "run_in_background",
                             "lock_key"),
                            _not_here("script_upload (a labpipe worker runs the "
                                      "experiments of the lab's repository, each run in "
                                      "a fresh process: commit the script's plans there; "
                                      "environment_update rescans it)"))
METHODS["kernel_interrupt"] = (("lock_key", "interrupt_task", "interrupt_plan"),
                               _not_here("kernel_interrupt (no IPython kernel)"))
METHODS["re_metadata"] = (("metadata", "lock_key"), _not_here("re_metadata"))
METHODS["manager_stop"] = (("option",), _not_here(
    "manager_stop (stop the labpipe master itself)"))
METHODS["manager_kill"] = ((), _not_here("manager_kill"))
METHODS["manager_test"] = (("test_name",), _not_here("manager_test"))


# --- lock: the master's own (labpipe-client lock, the lock target) -------------------

def _lock_info(qs: QServer) -> Reply:
    return {"lock_info": access.lock_info(qs.adapter.lock_state(),
                                          qs.adapter.emergency_key_set()),
            "lock_info_uid": qs.lock_uid}


def _key(p: dict[str, Any]) -> str:
    key = p.get("lock_key")
    if not isinstance(key, str) or not key:
        raise Refused(f"Lock key must be a non-empty string: lock_key = {key!r}"[:300])
    return key


@method("lock", "lock_key", "note", "environment", "queue", "user")
async def lock(qs: QServer, p: dict[str, Any]) -> Reply:
    """The master's lock, for both scopes asked: on disk before the reply; it holds for
    labpipe's own clients too, and across restarts."""
    key = _key(p)
    note, user = p.get("note"), p.get("user")
    if not isinstance(note, (str, type(None))) or not isinstance(user, (str, type(None))):
        raise Refused("'note' and 'user' must be strings")
    scope = [s for s in ("queue", "environment") if p.get(s)]
    if not scope:
        raise Refused("Invalid request: select 'environment' and/or 'queue' to lock")
    await qs.adapter.lock(key, scope, note, user)
    return _lock_info(qs)


@method("lock_info", "lock_key")
async def lock_info(qs: QServer, p: dict[str, Any]) -> Reply:
    """With lock_key: refused unless the master is unlocked or the key opens it."""
    if p.get("lock_key") is not None:
        key = _key(p)
        if qs.adapter.lock_state()["locked"] and not qs.adapter.lock_opens(key):
            raise Refused("Invalid lock key: it does not open the lock of "
                          f"{qs.adapter.lock_state()['user'] or 'an unnamed user'}")
    return _lock_info(qs)


@method("unlock", "lock_key")
async def unlock(qs: QServer, p: dict[str, Any]) -> Reply:
    """With the lock's key or the lab's emergency key."""
    await qs.adapter.unlock(_key(p))
    return _lock_info(qs)
