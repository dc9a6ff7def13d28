"""The descriptions of an experiment's arguments, asked of the master, so that the
client can read typed values (``values.py``).

For a file of the repository at its current revision the experiment list has them
(``explist`` notifier); otherwise the master examines the file
(``experiment_db.examine``, in an examining process of the master). Content
submissions have none (their text was never examined). When the master cannot say (the
file does not exist, is outside the allowed folders, the class is ambiguous...) the
answer is None and values are read untyped: the submission itself then gets the
master's refusal, with its reason.
"""

from typing import Any

from labpipe.client.connection import Connection, Unreachable

__all__ = ["argument_descriptions", "procdescs_of"]


def procdescs_of(classes: dict[str, Any], class_name: str | None) -> dict[str, dict] | None:
    """{argument: procdesc} of one class of an examination ({class_name: description});
    None when class_name is not there, or is None and the file has several classes."""
    if class_name is None:
        if len(classes) != 1:
            return None
        class_name = next(iter(classes))
    described = classes.get(class_name)
    if not isinstance(described, dict):
        return None
    arginfo = described.get("arginfo") or {}
    return {name: info[0] for name, info in arginfo.items()
            if isinstance(info, (list, tuple)) and info and isinstance(info[0], dict)}


def _from_explist(master: Connection, file: str, class_name: str | None
                  ) -> dict[str, dict] | None:
    try:
        explist = master.snapshot("explist")
    except Unreachable:
        return None
    classes = {entry["class_name"]: entry for entry in explist.values()
               if isinstance(entry, dict) and entry.get("file") == file}
    return procdescs_of(classes, class_name) if classes else None


def argument_descriptions(master: Connection, expid: dict[str, Any]
                          ) -> dict[str, dict] | None:
    """{argument: procdesc} of the experiment expid names, or None when the master
    cannot say (see the module docstring)."""
    file, class_name = expid.get("file"), expid.get("class_name")
    if not isinstance(file, str) or "content" in expid:
        return None
    in_repository = "repo_rev" in expid
    revision = expid.get("repo_rev")
    if in_repository and revision is None:
        found = _from_explist(master, file, class_name)
        if found is not None:
            return found
    try:
        classes = master.rpc("experiment_db").examine(file, in_repository, revision)
    except Unreachable:
        raise
    except Exception as exc:
        if hasattr(exc, "remote_traceback"):  # the master's answer: it cannot say
            return None
        raise
    return procdescs_of(classes, class_name) if isinstance(classes, dict) else None
