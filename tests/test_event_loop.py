"""Nothing blocks the master's event loop: a real master in asyncio debug mode with a
100 ms slow-callback threshold, under typical traffic, logs no slow callback."""

import os
import signal
import subprocess
import sys
import threading
import time

from labpipe.protocol.rpc import Client
from conftest import StreamReader, terminate, wait_for

#: labpipe-master with every event loop in debug mode, slow callbacks from 100 ms
DEBUG_MASTER = """
import asyncio, sys

class DebugPolicy(asyncio.DefaultEventLoopPolicy):
    def new_event_loop(self):
        loop = super().new_event_loop()
        loop.set_debug(True)
        loop.slow_callback_duration = 0.1
        return loop

asyncio.set_event_loop_policy(DebugPolicy())
from labpipe.master.main import main
main(sys.argv[1:])
"""

SLOW_DEVICE_DB = """
import time
time.sleep(1)  # a device database that takes its time (network lookups, say)
device_db = {"dev": {"type": "local", "module": "m", "class": "C"}}
"""

QUICK = """
class Quick(EnvExperiment):
    def build(self):
        self.setattr_argument("n", NumberValue(0, precision=0, step=1, type="int"))

    def run(self):
        self.set_dataset("quick.n", self.n, broadcast=True, persist=True)

    def analyze(self):
        pass
"""


def test_no_slow_callback_under_typical_traffic(lab):
    lab.experiment("quick", QUICK)
    lab.write("device_db.py", SLOW_DEVICE_DB)
    process = subprocess.Popen(
        [sys.executable, "-c", DEBUG_MASTER, "--bind", "127.0.0.1",
         "--port-control", "0", "--port-notify", "0", "--port-logging", "0",
         "--port-broadcast", "0"],
        cwd=lab.root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stderr = StreamReader(process.stderr, "debug-master-stderr")
    try:
        line = process.stdout.readline()
        assert "ready" in line, stderr.text()
        ports = {name: int(port) for name, port in
                 (p.strip().split(" ") for p in line.split(": ", 1)[1].split(","))}

        def client(target):
            return Client("127.0.0.1", ports["control"], target, timeout=20)

        stop = threading.Event()
        gaps = []

        def poll_status():
            with client("schedule") as schedule:
                while not stop.is_set():
                    started = time.monotonic()
                    schedule.get_status()
                    gaps.append(time.monotonic() - started)

        poller = threading.Thread(target=poll_status, daemon=True)
        poller.start()
        with client("schedule") as schedule, client("device_db") as devices, \
                client("experiment_db") as experiments:
            expid = {"file": "repository/quick.py", "class_name": None,
                     "arguments": {"n": 0}, "log_level": 30}
            rids = [schedule.submit("main", dict(expid, arguments={"n": n}), 0, None, False)
                    for n in range(10)]
            devices.scan()  # one second in device_db.py, while get_status goes on
            assert "dev" in devices.get_device_db()
            experiments.scan_repository(None)
            wait_for(lambda: not set(rids) & set(schedule.get_status()), timeout=60)
            # a dead template is restarted off the loop
            for pid in _templates(process.pid):
                os.kill(pid, signal.SIGKILL)
            rids += [schedule.submit("main", expid, 0, None, False) for _ in range(5)]
            wait_for(lambda: not set(rids) & set(schedule.get_status()), timeout=60)
        stop.set()
        poller.join(30)
        assert gaps and max(gaps) < 1.0  # get_status always answered within 1 s
    finally:
        terminate(process)
        stderr.text(wait=10)
        process.stdout.close()
    slow = [line for line in stderr.lines if "Executing" in line and " took " in line]
    assert slow == [], "".join(slow)


def _templates(master_pid):
    """The master's worker template processes (its children running the fork server)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if ppid == master_pid and b"labpipe.worker.forkserver" in cmdline:
            found.append(int(entry))
    assert found
    return found
