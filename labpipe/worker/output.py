"""What a run writes to stdout and stderr: print lines for the log.

As under ARTIQ, each line an experiment writes to stdout or stderr is a ``print``
record at INFO with the run's source, whatever the expid's ``log_level`` (which filters
only the experiment's own ``logging`` calls). Two paths carry them:

- Python-level writes (``print()``, ``sys.stdout.write``, ``sys.stderr``, warnings,
  tqdm...): the worker's ``sys.stdout`` and ``sys.stderr`` are ``PrintStream`` objects
  that turn each complete line into a call of their ``emit_line``; the worker sends it
  to the master over its pipe (batched with everything else, ``ipc.py``) and keeps it
  for the results file's ``log``. No ``logging`` machinery is involved, so a line costs
  a few microseconds in the worker.
- Writes to the file descriptors 1 and 2 themselves (C extensions, ``os.write(1,
  ...)``, ``faulthandler``, a subprocess the experiment starts, a traceback printed
  after the worker's pipe is closed): the worker's fds 1 and 2 are the write end of one
  pipe (``capture_fds``, in the worker at start) whose read end is passed to the master
  over the worker's connection; the master reads it in its event loop
  (``OutputReader``), like ARTIQ reads its workers' stdout and stderr pipes. Those
  lines reach the log broadcast and the master's log, but not the results file (the
  worker does not see them), and their order relative to Python-level lines is not
  kept. They survive a crash of the worker: what it wrote before dying is read.

Lines are cut at ``MAX_LINE`` characters (the rest of such a line goes on as the next
line), so that no single line can take unbounded memory.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import threading
from collections.abc import Callable
from multiprocessing import reduction
from multiprocessing.connection import Connection
from typing import TextIO

__all__ = ["PrintStream", "capture_fds", "receive_output_fd", "OutputReader", "MAX_LINE",
           "console_text_of"]

#: A line longer than this (characters; bytes for the fd path) is cut into pieces.
MAX_LINE = 64 * 1024


def console_text_of(levelno: int, name: str, message: str) -> str:
    """A run's console line for one of its log messages: a ``print`` line as it is, a
    log record as ``LEVEL:logger:message`` (``labpipe.master.console``)."""
    if name == "print":
        return message
    return f"{logging.getLevelName(levelno)}:{name}:{message}"


class PrintStream(io.TextIOBase):
    """A text stream whose complete lines go to ``emit_line(line)`` (no newline).

    ``fileno()`` is the descriptor given (so that code passing ``sys.stderr`` to C,
    e.g. ``faulthandler``, still works); ``echo``, when given, gets every write too
    (``labpipe-run`` shows the lines on its terminal). Thread-safe.
    """

    def __init__(self, emit_line: Callable[[str], None], fileno: int | None = None,
                 echo: TextIO | None = None):
        super().__init__()
        self._emit_line = emit_line
        self._fileno = fileno
        self._echo = echo
        self._partial: list[str] = []
        self._partial_length = 0
        self._lock = threading.Lock()

    # read-only, as io's own are; typeshed declares them as plain attributes
    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    @property
    def errors(self) -> str:  # type: ignore[override]
        return "strict"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        if self._fileno is None:
            raise io.UnsupportedOperation("fileno")
        return self._fileno

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        if self._echo is not None:
            self._echo.write(text)
        with self._lock:
            if "\n" not in text:
                self._add_partial(text)
                return len(text)
            first, *lines, last = text.split("\n")
            self._partial.append(first)
            line = "".join(self._partial)
            self._partial, self._partial_length = [], 0
            for line in [line, *lines]:
                for start in range(0, max(len(line), 1), MAX_LINE):
                    self._emit_line(line[start:start + MAX_LINE])
            self._add_partial(last)
        return len(text)

    def _add_partial(self, text: str) -> None:
        if not text:
            return
        self._partial.append(text)
        self._partial_length += len(text)
        if self._partial_length >= MAX_LINE:  # an endless line: send it in pieces
            line = "".join(self._partial)
            while len(line) >= MAX_LINE:
                self._emit_line(line[:MAX_LINE])
                line = line[MAX_LINE:]
            self._partial = [line] if line else []
            self._partial_length = len(line)

    def flush(self) -> None:
        """Emit a pending partial line (as ``print(..., end="", flush=True)`` asks)."""
        if self._echo is not None:
            self._echo.flush()
        with self._lock:
            if self._partial:
                line = "".join(self._partial)
                self._partial, self._partial_length = [], 0
                self._emit_line(line)


def capture_fds(conn: Connection) -> None:
    """In the worker, first thing: make fds 1 and 2 one pipe and pass its read end to
    the master over conn (``receive_output_fd`` takes it there)."""
    read_end, write_end = os.pipe()
    try:
        reduction.send_handle(conn, read_end, os.getppid())
        os.dup2(write_end, 1)
        os.dup2(write_end, 2)
    finally:
        os.close(read_end)
        os.close(write_end)


def receive_output_fd(conn: Connection) -> int | None:
    """In the master, before anything else is read from a worker's conn: the read end
    of its output pipe (None when the worker ended before sending it)."""
    try:
        return reduction.recv_handle(conn)
    except (EOFError, OSError, RuntimeError):
        return None


class OutputReader:
    """Reads a worker's output pipe in the event loop; each line goes to
    ``on_line(line)``. ``close()`` reads what is left (bounded) and closes it."""

    DRAIN_LIMIT = 1024 * 1024

    def __init__(self, fd: int, on_line: Callable[[str], None]):
        self._fd = fd
        self._on_line = on_line
        self._partial = b""
        os.set_blocking(fd, False)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(fd, self._on_readable)

    def _on_readable(self) -> None:
        if self._read() is None:
            self.close()

    def _read(self) -> int | None:
        """Read once: the number of bytes (0: nothing now); None at end of stream."""
        try:
            data = os.read(self._fd, 65536)
        except BlockingIOError:
            return 0
        except OSError:
            return None
        if not data:
            return None
        *lines, self._partial = (self._partial + data).split(b"\n")
        while len(self._partial) >= MAX_LINE:
            lines.append(self._partial[:MAX_LINE])
            self._partial = self._partial[MAX_LINE:]
        for line in lines:
            self._emit(line)
        return len(data)

    def _emit(self, line: bytes) -> None:
        try:
            self._on_line(line.decode("utf-8", "replace").rstrip("\r"))
        except Exception:  # a failing handler must not stop the reading
            pass

    def close(self) -> None:
        """Read what the pipe holds now (at most ``DRAIN_LIMIT`` bytes), emit a last
        partial line, stop reading. Idempotent."""
        if self._fd < 0:
            return
        self._loop.remove_reader(self._fd)
        drained = 0
        while drained < self.DRAIN_LIMIT:
            count = self._read()
            if not count:
                break
            drained += count
        if self._partial:
            self._emit(self._partial)
            self._partial = b""
        os.close(self._fd)
        self._fd = -1
