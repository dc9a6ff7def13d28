"""labpipe runs and history records as queueserver items.

An item's ``item_uid`` is derived from the RID (a UUID 5), so it is the same for every
client and across restarts of the master; a run submitted by an ARTIQ client is an
item too (its ``name`` is its class, its ``kwargs`` its arguments).
"""

from __future__ import annotations

import functools
import uuid
from typing import Any

from labpipe.master.instructions import instruction_of

__all__ = ["uid_of", "run_item", "history_item", "is_instruction_record", "EXIT_STATUS"]

_NAMESPACE = uuid.UUID("5d0b6f4e-8a55-4c1b-9a39-7f3f1b0c2a61")

#: labpipe's end of a run -> the queueserver's ``exit_status``.
EXIT_STATUS = {"completed": "completed", "failed": "failed", "terminated": "aborted",
               "deleted": "aborted", "interrupted": "failed"}


@functools.lru_cache(maxsize=4096)
def uid_of(rid: int) -> str:
    """The ``item_uid`` of the run of RID rid."""
    return str(uuid.uuid5(_NAMESPACE, f"labpipe run {rid}"))


def run_item(rid: int, expid: dict[str, Any], meta: dict[str, Any] | None,
             user: str | None = None, group: str | None = None) -> dict[str, Any]:
    """The queue item of a run: what the qserver client gave (``meta``), or else what
    its expid says (every named argument in ``kwargs``) with the run's user and group
    (labpipe keeps them with the run: they survive a restart). An instruction run is
    an instruction item (``{"item_type": "instruction", "name"}``)."""
    instruction = instruction_of(expid)
    if instruction is not None:
        item: dict[str, Any] = {"item_type": "instruction", "name": instruction,
                                "user": user or "labpipe", "user_group": group or "primary"}
    elif meta is not None:
        item = dict(meta)
    else:
        arguments = dict(expid.get("arguments") or {})
        item = {"item_type": "plan", "name": expid.get("class_name") or expid.get("file"),
                "args": list(arguments.pop("*args", [])),
                "kwargs": {**arguments.pop("**kwargs", {}), **arguments},
                "user": user or "labpipe", "user_group": group or "primary"}
    item["item_uid"] = uid_of(rid)
    item.setdefault("properties", {})["labpipe_rid"] = rid
    return item


def is_instruction_record(record: dict[str, Any]) -> bool:
    """Whether a history record is an instruction's: the RE Manager keeps executed
    instructions out of its history, so ``history_get`` shows none."""
    return instruction_of(record.get("expid")) is not None


def history_item(record: dict[str, Any], meta: dict[str, Any] | None,
                 exit_status: str | None = None) -> dict[str, Any]:
    """The history item of a labpipe history record."""
    item = run_item(record["rid"], record.get("expid") or {}, meta, record.get("user"),
                    record.get("group"))
    stages = record.get("stages") or {}
    started = (stages.get("running") or stages.get("preparing") or {}).get("start")
    item["result"] = {
        "exit_status": exit_status or EXIT_STATUS.get(record.get("status", ""), "unknown"),
        "run_uids": [], "scan_ids": [],
        "time_start": started or record.get("submitted"),
        "time_stop": record.get("ended"),
        "msg": record.get("error") or "", "traceback": ""}
    return item
