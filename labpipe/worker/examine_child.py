"""Child side of the examiner pool: examines experiment files in a worker process.

Runs in a process forked from the worker template (parent side: ``master/repository/examiner.py``). It
speaks the messages of ``labpipe.worker.messages`` (the examiner's part, same encoding
as the workers') over the duplex connection the fork server hands over
(``worker/forkserver.py``): the child first sends ``ExaminerReady(pid)``, then answers
each request with an ``Examined``, one request at a time (``_REQUESTS`` is its dispatch
table):

- ``Examine(path, root, device_keys, memory)``: the file to examine, the folder it
  belongs to (the repository folder or its checkout), and the device database's keys
  (its experiments see them through ``get_device_db()``, every device a dummy);
  ``Examined(description, None, deps, script)`` or ``Examined(None, reason, deps)``
  where ``description`` is ``labpipe.worker.examine.examine_file(path)``
  (``{class_name: {"name", "arginfo", "argument_ui", "scheduler_defaults"}}``,
  PYON-encodable), ``reason`` one line, ``deps`` the sorted paths (relative to
  ``root``, ``/``-separated) of the other Python files under ``root`` that the import
  read, and ``script`` whether the file is a black-box script (``worker/script.py``:
  never imported). A file that is neither an experiment nor a Python script (no
  ``.py`` suffix and no ``python`` shebang) is an error naming the file, and is
  neither imported nor parsed as a script;
- ``CompileContent(source, memory)``: submitted content, only compiled (the
  submission check of ``expid["content"]``); ``Examined(None)`` or ``Examined(None,
  "submitted content does not compile: ...")``;
- ``ExamineContent(source, device_keys, memory)``: submitted content examined as a
  file of its own folder (a fresh temporary one) is: compiled, then, unless it is a
  black-box script (``script=True``, never run), imported and examined; the reply of
  ``Examine`` without ``deps`` (the submission check of the content's classes and
  arguments);
- anything else (a malformed message): ``Examined(None, reason)`` naming it.

``memory`` (bytes, or None) bounds the address space the request may add
(``RLIMIT_AS`` over what the process had mapped when it started): a request that needs
more ends as an error ("needs more memory than ..."), never as a master that grows.
The parent bounds the time (it kills the process).

``deps`` are recorded with an audit hook on ``open`` (the import system reads every
source or cached bytecode file through ``io.open_code``), so they are known even when
the import fails, e.g. on a syntax error in a helper module: fixing the helper then
re-examines the file.

Between two files the process forgets every module loaded from under ``root`` and
restores ``sys.path``, so that a changed module is imported afresh and one file cannot
see another's modules. No bytecode is written: a scan never writes into the
repository. The loop ends when the parent closes the pipe; SIGINT is ignored (the
master stops its workers itself).
"""

from __future__ import annotations

import importlib.util
import os
import signal
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from labpipe.worker import limits
from labpipe.worker.examine import DummyDeviceManager, examine_file
from labpipe.worker.messages import (TO_EXAMINER, CompileContent, Examine, ExamineContent,
                                     Examined, ExaminerReady, MalformedMessage, decode,
                                     encode)
from labpipe.worker.script import NotAScriptError, check_script_name

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

__all__ = ["main", "examine_one", "compile_content", "examine_content", "one_line"]

#: The name submitted content is examined under (in a temporary folder of its own).
CONTENT_FILE = "submitted_content.py"

_MAX_REASON = 400
_opened: list[str] | None = None  # files opened during the current examination


def _audit(event: str, args: tuple) -> None:
    if event == "open" and _opened is not None and args and isinstance(args[0], str):
        _opened.append(args[0])


#: The examining process's dispatch table: request type -> its handler.
_REQUESTS: dict[type, Callable[[Any], Examined]] = {
    Examine: lambda r: examine_one(r.path, r.root, r.device_keys),
    CompileContent: lambda r: compile_content(r.source),
    ExamineContent: lambda r: examine_content(r.source, r.device_keys),
}


def main(conn: Connection) -> None:
    """Serve examine requests on ``conn`` until the parent closes it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.dont_write_bytecode = True
    sys.addaudithook(_audit)
    baseline = limits.mapped_bytes()
    conn.send(encode(ExaminerReady(os.getpid())))
    while True:
        try:
            wire = conn.recv()
        except (EOFError, OSError):
            return
        try:
            request = decode(wire, TO_EXAMINER)
        except MalformedMessage as exc:
            conn.send(encode(Examined(None, str(exc))))
            continue
        assert isinstance(request, (Examine, CompileContent, ExamineContent))
        with limits.memory_limit(baseline, request.memory):
            reply = _REQUESTS[type(request)](request)
        conn.send(encode(reply))


def _too_big(what: str) -> str:
    return f"{what} needs more memory than the examiner's limit"


def compile_content(source: str) -> Examined:
    """Compile submitted content (never run it); the reply of the module docstring."""
    try:
        compile(source, "<submitted content>", "exec", dont_inherit=True)
    except SyntaxError as exc:
        return Examined(None, f"submitted content does not compile: {exc.msg} "
                              f"(line {exc.lineno})")
    except MemoryError:
        return Examined(None, _too_big("compiling the submitted content"))
    except (ValueError, RecursionError) as exc:
        return Examined(None, f"submitted content does not compile: {one_line(exc, '')}")
    return Examined(None)


def examine_content(source: str, device_keys: Iterable[str] = ()) -> Examined:
    """Examine submitted content (see the module docstring)."""
    compiled = compile_content(source)
    if not compiled.ok:
        return compiled
    with tempfile.TemporaryDirectory(prefix="labpipe_content_") as folder:
        path = os.path.join(folder, CONTENT_FILE)
        with open(path, "w", encoding="utf-8", errors="surrogatepass") as f:
            f.write(source)
        examined = examine_one(path, folder, device_keys)
    return Examined(examined.description, examined.error, (), examined.script)


def examine_one(path: str, root: str, device_keys: Iterable[str] = ()) -> Examined:
    """Examine one file (its experiments see a device database of device_keys, every
    device a dummy); the reply of the module docstring."""
    global _opened
    root = os.path.realpath(root)
    saved_path = list(sys.path)
    before = set(sys.modules)
    _opened = []
    script = False
    description: dict[str, Any] | None = None
    error: str | None = None
    try:
        script = check_script_name(path)
        description = {} if script else examine_file(
            path, device_mgr=DummyDeviceManager(dict.fromkeys(device_keys)))
    except NotAScriptError as exc:
        error = str(exc)
    except MemoryError:
        error = _too_big(f"importing {os.path.basename(path)}")
    except BaseException as exc:  # noqa: B902 - an experiment may raise anything at import
        error = one_line(exc, path)
    finally:
        opened, _opened = _opened, None
        _forget_modules(before, root)
        sys.path[:] = saved_path
    deps = tuple(_dependencies(opened or [], root, os.path.realpath(path)))
    if error is not None:
        return Examined(None, error, deps)
    return Examined(description, None, deps, script)


def one_line(exc: BaseException, path: str) -> str:
    """``Type: message (file, line N)``, on one line and bounded in length."""
    if isinstance(exc, SyntaxError):
        where = f"{os.path.basename(exc.filename or path)}, line {exc.lineno}"
        text = f"{type(exc).__name__}: {exc.msg} ({where})"
    else:
        message = str(exc).strip().splitlines()
        text = type(exc).__name__ + (f": {message[0]}" if message else "")
        frame = _last_frame_in(exc, os.path.dirname(os.path.realpath(path)))
        if frame is not None:
            text += f" ({os.path.basename(frame.filename)}, line {frame.lineno})"
    return text if len(text) <= _MAX_REASON else text[:_MAX_REASON - 3] + "..."


def _last_frame_in(exc: BaseException, folder: str) -> traceback.FrameSummary | None:
    found = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if os.path.realpath(frame.filename).startswith(folder + os.sep):
            found = frame
    return found


def _dependencies(opened: list[str], root: str, examined: str) -> list[str]:
    prefix = root.rstrip(os.sep) + os.sep
    deps = set()
    for name in opened:
        if name.endswith(".pyc"):
            try:
                name = importlib.util.source_from_cache(name)
            except ValueError:
                continue
        if not name.endswith(".py"):
            continue
        real = os.path.realpath(name)
        if real != examined and real.startswith(prefix):
            deps.add(os.path.relpath(real, root).replace(os.sep, "/"))
    return sorted(deps)


def _module_files(module: object) -> list[str]:
    files: list[str] = []
    value = getattr(module, "__file__", None)
    if isinstance(value, str):
        files.append(value)
    try:
        files.extend(p for p in getattr(module, "__path__", ()) or () if isinstance(p, str))
    except TypeError:
        pass
    return files


def _forget_modules(before: set[str], root: str) -> None:
    prefix = root.rstrip(os.sep) + os.sep
    for name in set(sys.modules) - before:
        module = sys.modules.get(name)
        if any(os.path.realpath(f).startswith(prefix) for f in _module_files(module)):
            del sys.modules[name]
