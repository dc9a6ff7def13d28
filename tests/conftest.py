"""Shared fixtures: a lab directory, a real master in the test's event loop, and the
check every test goes through (``asyncio_hygiene.py``)."""

import asyncio
import contextlib
import os
import socket
import sys
import textwrap
import time

import pytest

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


@contextlib.asynccontextmanager
async def running_master(lab, **options):
    """A Master on 127.0.0.1, all ports picked free, in the current event loop."""
    from labpipe.master.assembly import Master, MasterOptions
    opts = MasterOptions(lab_dir=lab.root, bind=["127.0.0.1"], port_notify=0,
                         port_control=0, port_logging=0, port_broadcast=0,
                         repository=lab.path("repository"),
                         device_db=lab.path("device_db.py"),
                         dataset_db=lab.path("dataset_db.mdb"), **options)
    master = Master(opts)
    try:
        await master.start()
        yield master
    finally:
        await master.stop()


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
