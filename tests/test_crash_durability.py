"""Nothing acknowledged is lost: a real labpipe-master killed with SIGKILL and restarted.

Deterministic variants: each operation is acknowledged, the master killed at once,
restarted, and the operation checked. Then a bounded random crash test: clients send
mixed traffic and record every acknowledged operation, a subscriber records what it saw,
the master is killed after a random number of acknowledgements (fixed seed), restarted,
and everything acknowledged or seen is checked to be there, with no RID repeated.

``CrashMaster.kill()`` records the master's descendants just before the kill
(``killed_descendants``), and ``assert_none_alive`` checks that none of them outlives the
master by more than a second.
"""

import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from labpipe.protocol import pyon
from labpipe.protocol.rpc import Client

from conftest import descendants, expid, terminate, wait_gone

#: a held pipeline's entry in the pipelines notifier
HELD = {"held": True, "device_check": True, "stop_pending": False, "stop_on_failure": False}

FAR = 9e9  # a due date that keeps a run pending for good

SET_PERSISTENT = """
class SetPersistent(EnvExperiment):
    def build(self):
        self.setattr_argument("key", StringValue("k"))
        self.setattr_argument("value", NumberValue(0, step=1, precision=0, type="int"))

    def run(self):
        self.set_dataset(self.key, self.value, persist=True)
"""


def assert_none_alive(pids: list[int], timeout: float = 1.0) -> None:
    """Every process of a killed master is gone within timeout seconds of its death."""
    alive = wait_gone(pids, timeout)
    assert not alive, f"processes of the killed master still alive after {timeout} s: {alive}"


def wait_for(predicate, timeout=20.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} not met within {timeout} s"
        time.sleep(0.01)


class CrashMaster:
    """labpipe-master in a lab directory, its output in files (never a full pipe)."""

    def __init__(self, lab_dir: str, generation: int = 0):
        self.lab_dir = lab_dir
        self.out_path = os.path.join(lab_dir, f"master-{generation}.out")
        self.err_path = os.path.join(lab_dir, f"master-{generation}.err")
        self._out = open(self.out_path, "w")
        self._err = open(self.err_path, "w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "labpipe.master", "--bind", "127.0.0.1",
             "--port-control", "0", "--port-notify", "0", "--port-logging", "0",
             "--port-broadcast", "0"],
            cwd=lab_dir, stdout=self._out, stderr=self._err, text=True)
        self.killed_descendants: list[int] = []
        self._clients: list[Client] = []
        wait_for(self._ready, timeout=60, what="the master's ready line")

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            with open(self.err_path) as f:
                raise AssertionError(f"master exited: {f.read()[-2000:]}")
        with open(self.out_path) as f:
            line = f.readline()
        if "ready" not in line or not line.endswith("\n"):
            return False
        ports = line.split(": ", 1)[1]
        self.ports = {name: int(port) for name, port in
                      (p.strip().split(" ") for p in ports.split(","))}
        return True

    def client(self, target: str) -> Client:
        """A client of target, closed (if the caller did not) when the master stops."""
        client = Client("127.0.0.1", self.ports["control"], target, timeout=20)
        self._clients.append(client)
        return client

    def kill(self):
        """SIGKILL the master (its descendants noted first, for the lifetime check)."""
        self.killed_descendants = descendants(self.process.pid)
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self._close_files()

    def stop(self):
        terminate(self.process)
        self._close_files()

    def _close_files(self):
        self._out.close()
        self._err.close()
        for client in self._clients:
            client.close_rpc()


class Watcher(threading.Thread):
    """A raw notify-port subscriber: applies the mods to its copy, records what it saw."""

    def __init__(self, port: int, name: str, on_mod=None):
        super().__init__(daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.sendall(f"ARTIQ sync_struct\n{name}\n".encode())
        self.struct = None
        self.on_mod = on_mod
        self.lock = threading.Lock()
        self.start()
        wait_for(lambda: self.struct is not None, what=f"the {name} init")

    def run(self):
        from labpipe.protocol.sync import apply_mod
        buffer = b""
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            buffer += data
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                mod = pyon.decode(line.decode())
                with self.lock:
                    if mod["action"] == "init":
                        self.struct = mod["struct"]
                    else:
                        apply_mod(self.struct, mod)
                    if self.on_mod is not None:
                        self.on_mod(mod, self.struct)

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


@pytest.fixture
def crash_lab(lab):
    lab.experiment("set_persistent", SET_PERSISTENT)
    return lab


# --- deterministic: acknowledge, kill, restart, check ---------------------------------

def _pending(schedule):
    return schedule.submit("p", expid("repository/set_persistent.py", key="x", value=1), 0, FAR, False)


OPERATIONS = {
    "submit": (lambda m, s, st: st.update(rid=_pending(s)),
               lambda m, s, st: s.get_status()[st["rid"]]["status"] == "pending"),
    "change priority": (
        lambda m, s, st: (st.update(rid=_pending(s)), s.change(st["rid"], priority=7)),
        lambda m, s, st: s.get_status()[st["rid"]]["priority"] == 7),
    "change due date": (
        lambda m, s, st: (st.update(rid=_pending(s)), s.change(st["rid"], due_date=FAR + 5)),
        lambda m, s, st: s.get_status()[st["rid"]]["due_date"] == FAR + 5),
    "change pipeline": (
        lambda m, s, st: (st.update(rid=_pending(s)),
                          s.change(st["rid"], pipeline_name="elsewhere")),
        lambda m, s, st: s.get_status()[st["rid"]]["pipeline"] == "elsewhere"),
    "change arguments": (
        lambda m, s, st: (st.update(rid=_pending(s)),
                          s.change(st["rid"], arguments={"value": 42})),
        lambda m, s, st: s.get_status()[st["rid"]]["expid"]["arguments"]
        == {"key": "x", "value": 42}),
    "change flush": (
        lambda m, s, st: (st.update(rid=_pending(s)), s.change(st["rid"], flush=True)),
        lambda m, s, st: s.get_status()[st["rid"]]["flush"] is True),
    "delete pending": (
        lambda m, s, st: (st.update(rid=_pending(s)), s.delete(st["rid"])),
        lambda m, s, st: st["rid"] not in s.get_status()
        and m.client("history").get(st["rid"])["status"] == "deleted"),
    "hold": (lambda m, s, st: s.hold("p"), None),  # checked on the pipelines notifier
    "release": (lambda m, s, st: (s.hold("p"), s.release("p")), None),
    "dataset set": (
        lambda m, s, st: m.client("dataset_db").set("d.rpc", [1, 2, 3], True),
        lambda m, s, st: m.client("dataset_db").get("d.rpc") == [1, 2, 3]),
}


def _pipelines(master) -> dict:
    watcher = Watcher(master.ports["notify"], "pipelines")
    try:
        with watcher.lock:
            return dict(watcher.struct)
    finally:
        watcher.close()


@pytest.mark.parametrize("operation", sorted(OPERATIONS))
def test_acknowledged_operation_survives_kill(crash_lab, operation):
    act, check = OPERATIONS[operation]
    first = CrashMaster(crash_lab.root)
    state: dict = {}
    try:
        act(first, first.client("schedule"), state)
    finally:
        first.kill()
        assert_none_alive(first.killed_descendants)
    second = CrashMaster(crash_lab.root, generation=1)
    try:
        schedule = second.client("schedule")
        if operation == "hold":
            assert _pipelines(second) == {"p": HELD}
        elif operation == "release":
            assert _pipelines(second) == {}
        else:
            assert check(second, schedule, state)
    finally:
        second.stop()


def test_dataset_an_experiment_set_survives_kill(crash_lab):
    """A persistent dataset a subscriber saw (set by an experiment) is there after a kill."""
    first = CrashMaster(crash_lab.root)
    try:
        watcher = Watcher(first.ports["notify"], "datasets")
        first.client("schedule").submit("run", expid("repository/set_persistent.py", key="d.exp", value=2126), 0, None,
                                        False)
        wait_for(lambda: "d.exp" in watcher.struct, what="the dataset published")
        seen = watcher.struct["d.exp"]
    finally:
        first.kill()
        assert_none_alive(first.killed_descendants)
        watcher.close()
    second = CrashMaster(crash_lab.root, generation=1)
    try:
        assert seen[1] == 2126
        assert second.client("dataset_db").get("d.exp") == 2126
    finally:
        second.stop()


# --- random kills during mixed traffic -------------------------------------------------

class Ledger:
    """Every acknowledged operation, and the one each client had in flight at the kill."""

    def __init__(self):
        self.lock = threading.Lock()
        self.acked = 0
        self.submitted: list[int] = []          # RIDs acknowledged
        self.deleted: set[int] = set()          # deletions acknowledged
        self.fields: dict[int, dict] = {}       # rid -> field -> acknowledged value
        self.maybe: dict[int, dict] = {}        # rid -> field -> value in flight at the kill
        self.held: dict[str, bool] = {}         # pipeline -> acknowledged held state
        self.held_maybe: dict[str, bool] = {}
        self.datasets: dict[str, int] = {}      # key -> highest acknowledged value
        self.seen_rids: set[int] = set()        # RIDs a subscriber saw
        self.seen_datasets: dict[str, int] = {}  # persistent key -> highest value seen
        self.counters: dict[int, int] = {}      # client -> last dataset value it used
        self.killing = threading.Event()        # set just before each kill
        self.errors: list[str] = []             # client failures while the master lived

    def ack(self):
        with self.lock:
            self.acked += 1


def _client_loop(master, ledger: Ledger, rng: random.Random, index: int, stop):
    schedule, datasets = master.client("schedule"), master.client("dataset_db")
    mine: list[int] = []
    # dataset values only grow, across restarts too
    counter = ledger.counters.get(index, 0)
    try:
        while not stop.is_set():
            op = rng.choice(["submit", "submit", "change", "change", "delete", "hold",
                             "dataset", "experiment"])
            if op == "submit" or (op in ("change", "delete") and not mine):
                rid = schedule.submit(f"p{index}", expid("repository/set_persistent.py", key="x", value=0),
                                      0, FAR, False)
                with ledger.lock:
                    ledger.submitted.append(rid)
                mine.append(rid)
            elif op == "change":
                rid = rng.choice(mine)
                field, value = rng.choice([
                    ("priority", rng.randrange(-5, 5)),
                    ("due_date", FAR + rng.randrange(100)),
                    ("pipeline", f"p{index}{rng.choice('ab')}"),
                    ("arguments", rng.randrange(1000)),
                    ("flush", rng.random() < 0.5)])
                ledger.maybe.setdefault(rid, {})[field] = value
                kwargs = {"pipeline": {"pipeline_name": value},
                          "arguments": {"arguments": {"value": value}}}.get(
                    field, {field: value})
                schedule.change(rid, **kwargs)
                ledger.fields.setdefault(rid, {})[field] = value
                ledger.maybe[rid].pop(field)
            elif op == "delete":
                rid = mine.pop(rng.randrange(len(mine)))
                ledger.maybe.setdefault(rid, {})["deleted"] = True
                schedule.delete(rid)
                with ledger.lock:
                    ledger.deleted.add(rid)
            elif op == "hold":
                name, held = f"h{index}", rng.random() < 0.5
                ledger.held_maybe[name] = held
                (schedule.hold if held else schedule.release)(name)
                ledger.held[name] = held
                del ledger.held_maybe[name]
            elif op == "dataset":
                counter += 1
                ledger.counters[index] = counter
                datasets.set(f"c{index}", counter, True)
                ledger.datasets[f"c{index}"] = counter
            else:
                counter += 1
                ledger.counters[index] = counter
                rid = schedule.submit(f"run{index}", expid("repository/set_persistent.py", key=f"e{index}", value=counter),
                                      0, None, False)
                with ledger.lock:
                    ledger.submitted.append(rid)
            ledger.ack()
    except Exception as e:
        # the master killed under this client: what is in flight is "maybe"; any
        # other failure is a bug
        if not ledger.killing.is_set():
            ledger.errors.append(f"client {index}: {type(e).__name__}: {e}")
    finally:
        for c in (schedule, datasets):
            try:
                c.close_rpc()
            except Exception:
                pass


def _check_after_restart(master, ledger: Ledger):
    schedule, history = master.client("schedule"), master.client("history")
    status = schedule.get_status()
    records = {r["rid"]: r for r in history.list(10_000)}
    # no RID handed out twice; every acknowledged or seen RID is somewhere
    assert len(ledger.submitted) == len(set(ledger.submitted))
    for rid in set(ledger.submitted) | ledger.seen_rids:
        assert rid in status or rid in records, f"RID {rid} lost"
    for rid in ledger.deleted:
        assert rid not in status, f"deleted RID {rid} came back"
        assert records[rid]["status"] == "deleted", records[rid]
    for rid, fields in ledger.fields.items():
        if rid not in status:
            continue  # deleted (acknowledged or in flight)
        entry, maybe = status[rid], ledger.maybe.get(rid, {})
        actual = {"priority": entry["priority"], "due_date": entry["due_date"],
                  "pipeline": entry["pipeline"], "flush": entry["flush"],
                  "arguments": entry["expid"]["arguments"]["value"]}
        for field, value in fields.items():
            assert actual[field] in (value, maybe.get(field, value)), (rid, field, entry)
    pipelines = _pipelines(master)
    for name, held in ledger.held.items():
        now = pipelines.get(name, {}).get("held", False)
        assert now in (held, ledger.held_maybe.get(name, held)), (name, pipelines)
    datasets = master.client("dataset_db")
    for key, value in {**ledger.seen_datasets, **ledger.datasets}.items():
        floor = max(value, ledger.datasets.get(key, 0), ledger.seen_datasets.get(key, 0))
        assert datasets.get(key) >= floor, (key, datasets.get(key), floor)
    for c in (schedule, history, datasets):
        c.close_rpc()


def test_random_kills_lose_nothing_acknowledged(crash_lab):
    """A few SIGKILLs at random moments (fixed seed) of mixed traffic from 3 clients."""
    rng = random.Random(1266)
    ledger = Ledger()
    deadline = time.monotonic() + 50  # the whole test stays under a minute
    generation = 0
    master = CrashMaster(crash_lab.root, generation)
    try:
        for kill in range(4):
            def saw(mod, struct, ledger=ledger):
                with ledger.lock:
                    ledger.seen_rids.update(k for k in struct if isinstance(k, int))

            def saw_dataset(mod, struct, ledger=ledger):
                with ledger.lock:
                    for key, (persist, value, _) in struct.items():
                        if persist and isinstance(value, int) and key[0] in "ce":
                            ledger.seen_datasets[key] = max(
                                value, ledger.seen_datasets.get(key, value))
            watchers = [Watcher(master.ports["notify"], "schedule", saw),
                        Watcher(master.ports["notify"], "datasets", saw_dataset)]
            stop = threading.Event()
            clients = [threading.Thread(target=_client_loop, daemon=True, args=(
                master, ledger, random.Random(rng.random()), i, stop)) for i in range(3)]
            target = ledger.acked + rng.randrange(50, 300)
            for c in clients:
                c.start()
            wait_for(lambda: ledger.acked >= target or time.monotonic() > deadline,
                     timeout=60, what="acknowledged traffic")
            ledger.killing.set()
            master.kill()
            assert_none_alive(master.killed_descendants)
            stop.set()
            for c in clients:
                c.join(timeout=30)
            for w in watchers:
                w.close()
                w.join(timeout=10)
            assert ledger.errors == []
            ledger.killing.clear()
            generation += 1
            master = CrashMaster(crash_lab.root, generation)
            _check_after_restart(master, ledger)
        # RIDs continue after every one handed out before
        rid = master.client("schedule").submit("p", expid("repository/set_persistent.py", key="x", value=0), 0, FAR, False)
        assert rid > max(ledger.submitted)
        assert ledger.acked > 150 and ledger.deleted and ledger.fields and ledger.held
        assert any(key.startswith("e") for key in ledger.seen_datasets)  # experiments set some
    finally:
        master.stop()
