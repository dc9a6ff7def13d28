"""A fork server: a warm template process that forks a fresh process per request.

Why not multiprocessing's forkserver: starting a process through it costs about 10 ms
of CPU on the 2-core machine (the child unpickles preparation data, re-runs the main
module, bootstraps a ``Process``; the parent pickles, connects a new socket to the
server per process, and keeps a resource tracker), against 3 ms for the fork itself.
For one fresh process per run that overhead was a third of a trivial run. This server
does only what labpipe needs: fork, hand over a pipe, report the exit status.

The server runs as ``python -m labpipe.worker.forkserver FD WATCHDOG MODULE...``, in a
process group of its own: it imports the modules (an unimportable one is skipped with a warning on stderr), tells its client it
is ready, then serves requests on the Unix socket FD (``SOCK_SEQPACKET``, one message
per request):

- request: the target ``"package.module:function"`` as text, with two file
  descriptors attached: the child's end of its connection, and the write end of a
  status pipe;
- reply: ``+`` and the child's pid (8 bytes, native byte order) or, when the fork
  failed, ``!`` and an error line.

The child leads a process group of its own (what it starts ends with it: the master
kills the group when the run ends), gets ``PR_SET_PDEATHSIG`` = SIGKILL (it dies with
the server), closes everything of the server's, calls ``function(connection)`` (a
``multiprocessing.connection.Connection``) and ends with ``os._exit``: 0 on return, 1
on an exception (its traceback on stderr), the code of a ``SystemExit``. The server
reaps its children and writes each one's exit code to its status pipe (4 bytes,
signed; ``-N`` when killed by signal N), which it then closes: the client's read end
(``ForkedProcess.sentinel``) becomes readable when the process has ended. The server
stops serving when its client's end of the socket closes, and exits once every process
it forked has ended (they end when their own connections close), having reported their
exit codes.

WATCHDOG is the read end of a pipe whose write end only the master process holds: when
it reads end-of-file, the master has died (even by SIGKILL), and the server kills the
process group of every child still running and exits at once. (The server cannot use
``PR_SET_PDEATHSIG`` itself: the master starts it from short-lived threads, and the
signal follows the parent thread.)

``ForkServer(modules)`` is the client side: it starts the server, and ``start(target)``
returns ``(ForkedProcess, Connection)``. It is thread-safe. A server that died is
restarted on the next ``start``.
"""

import importlib
import logging
import os
import select
import selectors
import signal
import socket
import struct
import subprocess
import sys
import threading
import traceback
from multiprocessing.connection import Connection, Pipe

from labpipe.worker import lifetime

__all__ = ["ForkServer", "ForkedProcess", "ForkServerError"]

logger = logging.getLogger(__name__)

_PID = struct.Struct("=cq")
_CODE = struct.Struct("=i")
_UNKNOWN_EXIT = 255  # the server went away without reporting the exit code


class ForkServerError(RuntimeError):
    """The fork server could not start, or could not fork a process."""


_watchdog_lock = threading.Lock()
_watchdog: tuple[int, int] | None = None  # (read end, write end), for the master's life


def _watchdog_fd() -> int:
    """The read end of this process's watchdog pipe (made on first use). The write end
    stays open, never inherited, until this process ends."""
    global _watchdog
    with _watchdog_lock:
        if _watchdog is None:
            _watchdog = os.pipe()
        return _watchdog[0]


# --- client side (in the master) ---------------------------------------------------------

class ForkedProcess:
    """A process forked by the server: the parts of ``multiprocessing.Process`` that the
    worker handle and the examiner pool use."""

    def __init__(self, pid: int, status_fd: int):
        self.pid = pid
        self.sentinel = status_fd
        self._exitcode: int | None = None
        self._lock = threading.Lock()

    @property
    def exitcode(self) -> int | None:
        """The exit code (``-N`` when killed by signal N), or None while it runs."""
        self._poll(0)
        return self._exitcode

    def is_alive(self) -> bool:
        return self.exitcode is None

    def join(self, timeout: float | None = None) -> None:
        """Wait until the process has ended, at most timeout seconds."""
        self._poll(timeout)

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def _signal(self, signum: int) -> None:
        if self.exitcode is None:
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass  # ended meanwhile: the server reports it

    def _poll(self, timeout: float | None) -> None:
        """Read the exit code if the process ended (waiting at most timeout seconds).
        The pipe stays open, at its end, so an event loop watching the sentinel still
        sees it readable."""
        with self._lock:
            if self._exitcode is not None or self.sentinel < 0:
                return
            poller = select.poll()  # not select(): the master may hold > 1024 fds
            poller.register(self.sentinel, select.POLLIN)
            if not poller.poll(None if timeout is None else 1000 * timeout):
                return
            data = b""
            while len(data) < _CODE.size:
                chunk = os.read(self.sentinel, _CODE.size - len(data))
                if not chunk:
                    break
                data += chunk
            self._exitcode = (_CODE.unpack(data)[0] if len(data) == _CODE.size
                              else _UNKNOWN_EXIT)

    def close(self) -> None:
        """Release the status pipe, once nothing watches the sentinel any more."""
        with self._lock:
            if self.sentinel >= 0:
                os.close(self.sentinel)
                self.sentinel = -1

    def __del__(self) -> None:  # a process dropped without close()
        if getattr(self, "sentinel", -1) >= 0:
            os.close(self.sentinel)


class ForkServer:
    """Client of a fork server process that has imported ``modules``."""

    READY_TIMEOUT = 120.0

    def __init__(self, modules: list[str]):
        self.modules = list(modules)
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._process: subprocess.Popen | None = None

    @property
    def pid(self) -> int | None:
        """The server process's pid (also its process group), None before it started."""
        return None if self._process is None else self._process.pid

    def ensure_started(self) -> None:
        """Start the server if it is not running, and wait until it is ready."""
        with self._lock:
            if self._process is None or self._process.poll() is not None:
                self._start()

    def start(self, target: str) -> tuple[ForkedProcess, Connection]:
        """Fork a process running ``target`` (``"package.module:function"``), which is
        called with the child's end of a duplex connection; returns the process and
        the parent's end."""
        parent_end, child_end = Pipe(duplex=True)
        status_r, status_w = os.pipe()
        try:
            with self._lock:
                if self._process is None or self._process.poll() is not None:
                    if self._process is not None:
                        logger.warning("the worker template process ended (exit code %s); "
                                       "starting a new one", self._process.returncode)
                    self._start()
                pid = self._request(target, child_end.fileno(), status_w)
        except BaseException:
            os.close(status_r)
            parent_end.close()
            raise
        finally:
            child_end.close()
            os.close(status_w)
        return ForkedProcess(pid, status_r), parent_end

    def stop(self, wait: float = 0.0) -> None:
        """Stop serving. Processes forked already keep running, and the server process
        lives on until they have ended, to report their exit codes; wait at most
        ``wait`` seconds for it to end."""
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None
            process, self._process = self._process, None
        if process is None:
            return
        if wait > 0:
            try:
                process.wait(wait)
            except subprocess.TimeoutExpired:
                pass
        if process.poll() is None:
            # reaped once its last child has ended: never a zombie, and never a
            # Popen dropped while its process runs
            threading.Thread(target=process.wait, name=f"labpipe-reap-{process.pid}",
                             daemon=True).start()

    def _start(self) -> None:
        if self._sock is not None:
            self._sock.close()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        watchdog = _watchdog_fd()
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-m", __name__, str(theirs.fileno()), str(watchdog),
                 *self.modules],
                pass_fds=(theirs.fileno(), watchdog), stdin=subprocess.DEVNULL,
                process_group=0)
        except OSError as e:
            ours.close()
            raise ForkServerError(f"cannot start the worker template process: {e}") from e
        finally:
            theirs.close()
        self._sock = ours
        ours.settimeout(self.READY_TIMEOUT)
        try:
            ready = ours.recv(16)
        except (TimeoutError, OSError) as e:
            ready = b""
            logger.error("worker template process: no ready message (%s)", e)
        ours.settimeout(None)
        if ready != b"ready":
            self._process.kill()
            self._process.wait()
            raise ForkServerError("the worker template process did not start; "
                                  "see its error output above")

    def _request(self, target: str, conn_fd: int, status_fd: int) -> int:
        sock = self._sock
        if sock is None:  # start() starts the server first: never the case there
            raise ForkServerError("the worker template process is not running")
        try:
            socket.send_fds(sock, [target.encode()], [conn_fd, status_fd])
            reply = sock.recv(4096)
        except OSError as e:
            raise ForkServerError(f"worker template process unreachable: {e}") from e
        if reply.startswith(b"!"):
            raise ForkServerError(reply[1:].decode(errors="replace"))
        if len(reply) != _PID.size or not reply.startswith(b"+"):
            raise ForkServerError("the worker template process went away")
        return _PID.unpack(reply)[1]


# --- server side (the template process) --------------------------------------------------

def _serve(sock: socket.socket, watchdog: int) -> None:
    status_fds: dict[int, int] = {}  # pid -> write end of its status pipe
    me = os.getpid()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *args: None)  # wakes the selector
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ)
    selector.register(wake_r, selectors.EVENT_READ)
    selector.register(watchdog, selectors.EVENT_READ)
    sock.send(b"ready")
    serving = True
    while serving or status_fds:
        for key, _ in selector.select():
            if key.fileobj == wake_r:
                _drain(wake_r)
                _reap(status_fds)
                continue
            if key.fileobj == watchdog:
                # the master died: nothing it started may outlive it
                for pid in status_fds:
                    lifetime.kill_group(pid)
                os._exit(0)
            try:
                message, fds, _, _ = socket.recv_fds(sock, 4096, 2)
            except OSError:
                message, fds = b"", []
            if not message:
                # the client is gone: report the exit codes of the children still
                # running (their parents may still wait for them), then end
                selector.unregister(sock)
                serving = False
                continue
            if len(fds) != 2:
                for fd in fds:
                    os.close(fd)
                sock.send(b"!malformed fork request")
                continue
            conn_fd, status_fd = fds
            try:
                pid = os.fork()
            except OSError as e:
                os.close(conn_fd)
                os.close(status_fd)
                sock.send(f"!fork failed: {e}".encode())
                continue
            if pid == 0:
                lifetime.own_group()
                lifetime.die_with_parent(signal.SIGKILL, parent=me)
                selector.close()
                for fd in (sock.fileno(), wake_r, wake_w, watchdog, *status_fds.values(),
                           status_fd):
                    os.close(fd)
                os._exit(_child(message.decode(), conn_fd))
            lifetime.own_group(pid)
            os.close(conn_fd)
            status_fds[pid] = status_fd
            sock.send(_PID.pack(b"+", pid))
        _reap(status_fds)


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


def _reap(status_fds: dict[int, int]) -> None:
    while status_fds:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        fd = status_fds.pop(pid, None)
        if fd is not None:
            try:
                os.write(fd, _CODE.pack(os.waitstatus_to_exitcode(status)))
            except OSError:
                pass  # nobody listens any more
            os.close(fd)


def _child(target: str, conn_fd: int) -> int:
    """In the forked child: run target with the connection; the exit code."""
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    try:
        module_name, _, function = target.partition(":")
        getattr(importlib.import_module(module_name), function)(Connection(conn_fd))
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        traceback.print_exc()
        code = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    return code


def main(argv: list[str]) -> None:
    # Ctrl-C in the master's terminal reaches the whole process group: the master stops
    # the server by closing its socket.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = socket.socket(fileno=int(argv[0]))
    watchdog = int(argv[1])
    lifetime.load_libc()
    for name in argv[2:]:
        try:
            importlib.import_module(name)
        except Exception as e:
            print(f"labpipe worker template: cannot preload {name}: "
                  f"{type(e).__name__}: {e}", file=sys.stderr)
    _serve(sock, watchdog)


if __name__ == "__main__":
    main(sys.argv[1:])
