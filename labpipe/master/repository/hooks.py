"""The Git hook that makes a push (or a commit) rescan the master's experiment list.

Started with ``-g``, the master installs a hook in its repository: ``post-receive`` in a
bare repository (runs after every push), ``post-commit`` in a non-bare one (runs after
every commit made in it). The hook runs, with the master's own Python::

    <python> -m labpipe.master.repository.notify --host 127.0.0.1 --port <control port>

which asks the master to rescan and never fails the push (see ``notify.py``). With
``labpipe-master --ssl CERT KEY PEER`` the command ends in ``--ssl CERT KEY CERT``
(absolute paths): the hook connects with the master's own certificate and key, which the
master trusts as a client, so whoever pushes must be able to read the master's key
file (otherwise the hook prints the one line saying to rescan by hand).

Rules:

- A hook is ours when it contains the ``MARKER`` line. Ours is rewritten when the
  command changed (another port, another Python) and left alone otherwise.
- A hook that is not ours is never modified: the master logs a warning with the one
  line to add to it (nothing is logged when that line is already there).
- When ``core.hooksPath`` points Git at another folder (possibly shared by several
  repositories), nothing is written there either: the warning gives the line.
- The file is written atomically (temporary file, fsync, rename) with mode 0755.
"""

from __future__ import annotations

import enum
import logging
import os
import shlex
import sys
from dataclasses import dataclass

from labpipe.protocol.atomic import atomic_path
from labpipe.protocol.tls import TLSFiles

__all__ = ["MARKER", "HookStatus", "HookResult", "hook_name", "notify_command",
           "hook_script", "install_hook"]

logger = logging.getLogger(__name__)

MARKER = "# labpipe-master: rescan hook"

_WILDCARDS = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1", "*": "127.0.0.1"}


class HookStatus(enum.Enum):
    INSTALLED = "installed"     # there was no hook: ours was written
    UPDATED = "updated"         # ours was there with another command: rewritten
    UNCHANGED = "unchanged"     # ours was there with this command
    FOREIGN = "foreign"         # the user's hook, left alone (a warning gave the line)


@dataclass(frozen=True)
class HookResult:
    status: HookStatus
    path: str
    command: str


def hook_name(bare: bool) -> str:
    """``post-receive`` for a bare repository, ``post-commit`` otherwise."""
    return "post-receive" if bare else "post-commit"


def notify_command(port: int, host: str = "127.0.0.1", python: str | None = None, *,
                   tls: TLSFiles | None = None) -> str:
    """The shell command that asks the master on ``host:port`` to rescan (over TLS with
    the client files ``tls``)."""
    host = _WILDCARDS.get(host, host)
    python = python or sys.executable
    command = (f"{shlex.quote(python)} -m labpipe.master.repository.notify "
               f"--host {shlex.quote(host)} --port {int(port)}")
    if tls is not None:
        command += " --ssl " + " ".join(shlex.quote(os.path.abspath(path))
                                        for path in (tls.cert, tls.key, tls.peer))
    return command


def hook_script(command: str) -> str:
    """The whole hook file for ``command``."""
    package_parent = os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.dirname(os.path.abspath(__file__)))))
    return (
        "#!/bin/sh\n"
        f"{MARKER} (written by labpipe-master at start, rewritten when its port or\n"
        "# Python changes; remove this comment block to keep the file as yours).\n"
        "# Asks the master to rescan its experiment list; never fails the push.\n"
        f"PYTHONPATH={shlex.quote(package_parent)}${{PYTHONPATH:+:$PYTHONPATH}}\n"
        "export PYTHONPATH\n"
        f"exec {command} </dev/null\n"
    )


def install_hook(hooks_dir: str, bare: bool, command: str, *,
                 configured_dir: bool = False) -> HookResult:
    """Install or refresh the rescan hook in ``hooks_dir``; see the module docstring."""
    name = hook_name(bare)
    path = os.path.join(hooks_dir, name)
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            existing: str | None = f.read()
    except FileNotFoundError:
        existing = None
    if existing is not None and not existing.strip():
        logger.warning("%s is empty (torn by a crash or a full disk?): writing labpipe's "
                       "hook there", path)
        existing = None
    if configured_dir or (existing is not None and MARKER not in existing):
        if existing is None or command not in existing:
            where = ("the existing hook " if existing is not None else "a new hook ") + path
            reason = " (core.hooksPath points there)" if configured_dir else ""
            logger.warning("%s is not labpipe's%s: add this line to it so that a %s "
                           "rescans the experiment list: %s",
                           where, reason, "push" if bare else "commit", command)
        return HookResult(HookStatus.FOREIGN, path, command)
    script = hook_script(command)
    if existing == script:
        return HookResult(HookStatus.UNCHANGED, path, command)
    _write_executable(path, script)
    status = HookStatus.INSTALLED if existing is None else HookStatus.UPDATED
    logger.info("%s the %s hook %s: a %s now rescans the experiment list",
                status.value, name, path, "push" if bare else "commit")
    return HookResult(status, path, command)


def _write_executable(path: str, text: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o755)
