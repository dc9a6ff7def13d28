"""Shared fixtures and helpers: a lab directory, the experiments and expids tests
share, a real master in the test's event loop or as a process (``MasterProcess``), and
the check every test goes through (``asyncio_hygiene.py``)."""

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from labpipe.worker.launcher import Launcher

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

# the check every test goes through (its fixtures are found here by pytest)
from asyncio_hygiene import _loop_hygiene, asyncio_hygiene  # noqa: E402, F401


def write_file(root, relpath, text):
    """Write text to root/relpath, making the folders it needs."""
    path = os.path.join(root, relpath)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def free_ports(n: int) -> list[int]:
    """n TCP ports on 127.0.0.1 free just now (for a process that binds them itself)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class Lab:
    """A temporary lab directory: ``repository/``, ``device_db.py``, results."""

    def __init__(self, root):
        self.root = str(root)
        os.makedirs(self.path("repository"), exist_ok=True)
        self.write("device_db.py", "device_db = {}\n")

    def path(self, *parts):
        return os.path.join(self.root, *parts)

    def write(self, relpath, text):
        """Write a file (dedented) into the lab; returns its path relative to the lab."""
        write_file(self.root, relpath, textwrap.dedent(text))
        return relpath

    def experiment(self, name, body):
        """Write repository/NAME.py with the experiment imports prepended."""
        return self.write(f"repository/{name}.py",
                          "from labpipe.experiment import *\n" + textwrap.dedent(body))


# --- experiments and expids shared by the tests -------------------------------------

#: Runs until the file named by its ``gate`` argument exists (at once without a gate);
#: requests the devices listed in ``devices`` in build; sets datasets
#: ``started_TAG`` and ``ended_TAG`` to the times its run started and ended
#: (broadcast; persistent with ``persist=True``).
#: an experiment asking for interactive arguments (``gain``), reporting what it got
ASK = """
from labpipe.experiment import *

class Ask(EnvExperiment):
    def run(self):
        try:
            with self.interactive("Calibration") as ia:
                ia.setattr_argument("gain", NumberValue(1.0))
        except CancelledArgsError:
            self.set_dataset("ask.result", "cancelled", broadcast=True)
        else:
            self.set_dataset("ask.result", ia.gain, broadcast=True)
"""


GATED = """
import os, time
from labpipe.experiment import *

class Gated(EnvExperiment):
    def build(self):
        self.setattr_argument("gate", StringValue(""))
        self.setattr_argument("tag", StringValue(""))
        self.setattr_argument("devices", PYONValue([]))
        self.setattr_argument("persist", BooleanValue(False))
        for key in self.devices:
            self.get_device(key)

    def run(self):
        self.set_dataset("started_" + self.tag, time.time(), broadcast=True,
                         persist=self.persist)
        while self.gate and not os.path.exists(self.gate):
            time.sleep(0.005)
        self.set_dataset("ended_" + self.tag, time.time(), broadcast=True,
                         persist=self.persist)
"""

#: Fails in its run with ``ValueError("the magnet quenched")``.
FAILING = """
from labpipe.experiment import *

class Failing(EnvExperiment):
    def run(self):
        raise ValueError("the magnet quenched")
"""

#: Sets dataset ``slow.step`` to 0 .. ``steps`` - 1, 10 ms apart.
SLOW = """
import time
from labpipe.experiment import *

class Slow(EnvExperiment):
    def build(self):
        self.setattr_argument("steps", NumberValue(10, step=1, precision=0, type="int"))

    def run(self):
        for i in range(self.steps):
            self.set_dataset("slow.step", i, broadcast=True)
            time.sleep(0.01)
"""

#: Sets dataset ``high_ran_at`` to the time it ran.
STAMP = """
import time
from labpipe.experiment import *

class Stamp(EnvExperiment):
    def run(self):
        self.set_dataset("high_ran_at", time.time(), broadcast=True)
"""

#: Sets dataset ``terminating.started``, then pauses until it is terminated.
TERMINATING = """
import time
from labpipe.experiment import *

class Terminating(EnvExperiment):
    def build(self):
        self.setattr_device("scheduler")

    def run(self):
        self.set_dataset("terminating.started", True, broadcast=True)
        while True:
            self.scheduler.pause()
            time.sleep(0.005)
"""


def expid(file: str | None = None, log_level: int = 30, *, content: str | None = None,
          **arguments) -> dict:
    """An expid as the scheduler takes it: the only experiment of FILE (a path, relative
    to the lab, or to the repository with ``repo_rev``), or of the source CONTENT, with
    the arguments given."""
    made = {"class_name": None, "arguments": arguments, "log_level": log_level}
    if file is not None:
        made["file"] = file
    if content is not None:
        made["content"] = content
    return made


@pytest.fixture
def lab(tmp_path):
    return Lab(tmp_path)


async def wait_until(predicate, timeout=10.0, interval=0.005):
    """Poll predicate() until it is true; fail the test after timeout seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


#: The worker launcher of the tests' in-process masters and experiment databases: one
#: warm template for the session (a template of its own would cost each master about a
#: second). Closed when the session ends; tests of the master's own lifetime make
#: masters with their own launcher (``own_launcher=True``).
session_launcher = Launcher()


@pytest.fixture(scope="session", autouse=True)
def _close_session_launcher():
    yield
    session_launcher.close()


def master_options(lab, **options):
    """MasterOptions of a master of lab on 127.0.0.1, all ports picked free (options
    override these)."""
    from labpipe.master.assembly import MasterOptions
    defaults = dict(lab_dir=lab.root, bind=["127.0.0.1"], port_notify=0, port_control=0,
                    port_logging=0, port_broadcast=0, repository=lab.path("repository"),
                    device_db=lab.path("device_db.py"),
                    dataset_db=lab.path("dataset_db.mdb"))
    return MasterOptions(**{**defaults, **options})


@contextlib.asynccontextmanager
async def running_master(lab, own_launcher=False, **options):
    """A Master on 127.0.0.1, all ports picked free, in the current event loop; it
    borrows ``session_launcher`` unless own_launcher."""
    from labpipe.master.assembly import Master
    launcher = None if own_launcher else session_launcher
    async with Master(master_options(lab, **options), launcher=launcher) as master:
        yield master


async def one_line_refusal(call, cls, *fragments) -> str:
    """The message of the exception the awaitable call raises, which must be cls, fit
    on one line and contain every fragment."""
    with pytest.raises(cls) as info:
        await call
    message = str(info.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


@pytest.fixture(autouse=True)
def _end_the_queueserver_clients_zmq_contexts(request):
    """REManagerAPI (the peer's client) leaves its 0MQ contexts to the garbage
    collector, which would warn of them in whatever test of this process runs then:
    after each test of the queueserver modules they are ended."""
    if not request.module.__name__.startswith("test_qserver"):
        yield
        return
    from qserver_fixtures import zmq_contexts_ended
    with zmq_contexts_ended():
        yield


def run_ends(scheduler):
    """{rid: RunEnd}, filled as the scheduler's runs end."""
    ends = {}
    scheduler.on_run_end.append(lambda run, end: ends.__setitem__(run.rid, end))
    return ends


class ScheduleRecorder:
    """Records (rid, status) from the schedule notifier's mods, in order."""

    def __init__(self, notifier):
        self.events = []
        self.removed = []
        notifier.add_listener(self._on_mod)

    def _on_mod(self, mod):
        if mod["action"] == "setitem" and mod["path"] == []:
            self.events.append((mod["key"], mod["value"]["status"]))
        elif mod["action"] == "setitem" and mod["key"] == "status":
            self.events.append((mod["path"][0], mod["value"]))
        elif mod["action"] == "delitem" and mod["path"] == []:
            self.events.append((mod["key"], "removed"))
            self.removed.append(mod["key"])

    def statuses(self, rid):
        return [s for r, s in self.events if r == rid]

    def index(self, rid, status):
        return self.events.index((rid, status))


async def raw_exchange(port, payload, close_write=True):
    """Send payload on a raw connection; return what the server sent before closing."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    received = b""
    try:
        try:
            writer.write(payload)
            await writer.drain()
            if close_write:
                writer.write_eof()
        except ConnectionError:
            pass
        try:
            received = await reader.read()  # until the server closes
        except ConnectionError:
            pass
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except ConnectionError:
            pass
    return received


def drain_until_closed(sock):
    """Read a blocking socket until the peer closes or resets it; True if it did."""
    sock.settimeout(10)
    try:
        while sock.recv(1 << 20):
            pass
    except ConnectionResetError:
        pass
    except socket.timeout:
        return False
    return True


def process_alive(pid: int) -> bool:
    """Running (a zombie has ended: only its parent has not reaped it yet)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_gone(pids, timeout):
    """The pids still running after waiting up to timeout seconds for them to end."""
    deadline = time.monotonic() + timeout
    while True:
        alive = [p for p in pids if process_alive(p)]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.01)


# --- labpipe-master as a process -----------------------------------------------------

def wait_for(predicate, timeout=20):
    """Poll predicate() (blocking) until it is true; fail the test after timeout s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def descendants(pid: int) -> list[int]:
    """All processes below pid, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def terminate(process: subprocess.Popen, timeout: float = 30,
              sig: int = signal.SIGTERM) -> int:
    """End process as a person would: sig (SIGTERM; SIGINT is Ctrl-C) if it still runs,
    then SIGKILL after timeout seconds; its exit code, once it has been reaped."""
    if process.poll() is None:
        process.send_signal(sig)
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


class StreamReader:
    """Reads a process's output stream in a thread, so that the process never blocks
    on a full pipe however much it writes; keeps every line."""

    def __init__(self, stream, name: str):
        self.lines: list[str] = []
        self._stream = stream
        self._thread = threading.Thread(target=self._read, name=name, daemon=True)
        self._thread.start()

    def _read(self):
        with self._stream:  # the thread owns it: closed at end of file
            for line in self._stream:
                self.lines.append(line)

    def text(self, wait: float = 0.0) -> str:
        """What was read, after waiting up to wait seconds for the end of the stream
        (the master's worker processes hold it open until they end too)."""
        self._thread.join(wait)
        return "".join(self.lines)

    def tail(self, count: int) -> str:
        return "".join(self.lines[-count:])


#: The MasterProcesses started by the running test (their output tails go into its
#: report when it fails).
_started_masters: list["MasterProcess"] = []


class MasterProcess:
    """labpipe-master started in a lab directory with every port picked free. Its
    output is read continuously; a failing test's report shows its tail."""

    def __init__(self, lab_dir, *extra):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "labpipe.master", "--bind", "127.0.0.1",
             "--port-control", "0", "--port-notify", "0", "--port-logging", "0",
             "--port-broadcast", "0", *extra],
            cwd=lab_dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.stderr = StreamReader(self.process.stderr, f"master-{self.process.pid}-stderr")
        _started_masters.append(self)
        line = self.process.stdout.readline()
        if "ready" not in line:
            self.process.kill()
            self.process.wait()
            self.process.stdout.close()
            raise AssertionError(f"master did not start: {line!r} {self.stderr.text(10)}")
        # after the ready line the master writes nothing to stdout, but the processes
        # it starts might: drained too
        self.stdout = StreamReader(self.process.stdout, f"master-{self.process.pid}-stdout")
        ports = line.split(": ", 1)[1]
        self.ports = {name: int(port) for name, port in
                      (p.strip().split(" ") for p in ports.split(","))}

    def client(self, target):
        from labpipe.protocol.rpc import Client
        return Client("127.0.0.1", self.ports["control"], target, timeout=20)

    def command(self, *args):
        """The labpipe-client command line for this master (every port given)."""
        return [sys.executable, "-m", "labpipe.client.main",
                "--port", str(self.ports["control"]),
                "--port-notify", str(self.ports["notify"]),
                "--port-broadcast", str(self.ports["broadcast"]), *args]

    def cli(self, *args, check=True):
        result = subprocess.run(self.command(*args), capture_output=True, text=True,
                                timeout=60)
        if check:
            assert result.returncode == 0, result.stderr
        return result

    def json(self, *args):
        return json.loads(self.cli("--json", *args).stdout)

    def submit(self, *args):
        """labpipe-client submit; the RID."""
        return int(self.cli("submit", *args).stdout.split("RID: ")[1])

    def stop(self):
        terminate(self.process)

    def report(self, lines: int = 60) -> str:
        """The tail of the master's error output, for a failing test's report."""
        state = ("running" if self.process.poll() is None
                 else f"exit code {self.process.returncode}")
        return (f"labpipe-master pid {self.process.pid} ({state}), last {lines} lines "
                f"of its error output:\n{self.stderr.tail(lines)}")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    _started_masters.clear()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed:
        for master in _started_masters:
            report.sections.append((f"labpipe-master {master.process.pid} stderr",
                                    master.report()))
    return report
