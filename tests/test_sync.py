"""Tests of labpipe.protocol.sync: Notifier, apply_mod, Publisher and Subscriber."""

import asyncio
import copy
import random
import socket
import threading

import numpy
import pytest

from labpipe.protocol import pyon
from labpipe.protocol.sync import Notifier, Publisher, Subscriber, apply_mod

from conftest import drain_until_closed, raw_exchange, wait_until
from test_interop import indep_decode

HOST = "127.0.0.1"


def same(a, b):
    """Equal with the same types (tuples stay tuples, arrays compared by content)."""
    return pyon.encode(a) == pyon.encode(b)


class Recorder:
    """A listener that keeps each mod as PYON text, frozen at the time it was published."""

    def __init__(self):
        self.mods = []

    def __call__(self, mod):
        self.mods.append(pyon.encode(mod))

    def decoded(self):
        return [pyon.decode(m) for m in self.mods]


class LocalCopy:
    """A Subscriber with its received mods recorded (frozen as PYON text)."""

    def __init__(self, name):
        self.received = Recorder()
        self.disconnects = 0
        self.sub = Subscriber(name, lambda struct: struct, self.received, self._disconnected)

    def _disconnected(self):
        self.disconnects += 1

    async def connect(self, port):
        before = self.count
        await self.sub.connect(HOST, port)
        await wait_until(lambda: self.count > before)  # the init has arrived

    @property
    def count(self):
        return len(self.received.mods)


def dataset_struct():
    return {
        "scan.x": (True, numpy.arange(4.0), {"unit": "V"}),
        "counts": (False, [1, 2, 3], {}),
        7: {"pipeline": "main", "status": "pending", "tags": ["a"]},
    }


# --- Notifier and apply_mod, in process -------------------------------------------------

def test_every_mod_kind_at_nested_paths():
    initial = dataset_struct()
    n = Notifier(copy.deepcopy(initial))
    rec = Recorder()
    n.add_listener(rec)
    mirror = copy.deepcopy(initial)
    steps = [
        (lambda: n.__setitem__("new", 1),
         {"action": "setitem", "path": [], "key": "new", "value": 1}),
        (lambda: n[7].__setitem__("status", "running"),
         {"action": "setitem", "path": [7], "key": "status", "value": "running"}),
        (lambda: n[7]["tags"].append("b"),
         {"action": "append", "path": [7, "tags"], "x": "b"}),
        (lambda: n[7]["tags"].insert(0, {"deep": [1]}),
         {"action": "insert", "path": [7, "tags"], "i": 0, "x": {"deep": [1]}}),
        (lambda: n[7]["tags"][0]["deep"].append(2),
         {"action": "append", "path": [7, "tags", 0, "deep"], "x": 2}),
        (lambda: n[7]["tags"].pop(1),
         {"action": "pop", "path": [7, "tags"], "i": 1}),
        (lambda: n[7]["tags"].pop(),
         {"action": "pop", "path": [7, "tags"], "i": -1}),
        (lambda: n["scan.x"][1].__setitem__(2, 9.5),
         {"action": "setitem", "path": ["scan.x", 1], "key": 2, "value": 9.5}),
        (lambda: n["counts"][1].append(4),
         {"action": "append", "path": ["counts", 1], "x": 4}),
        (lambda: n.__setitem__("counts", (True, [0], {"a": 1})),
         {"action": "setitem", "path": [], "key": "counts", "value": (True, [0], {"a": 1})}),
        (lambda: n[7].__delitem__("pipeline"),
         {"action": "delitem", "path": [7], "key": "pipeline"}),
        (lambda: n.__delitem__("new"),
         {"action": "delitem", "path": [], "key": "new"}),
    ]
    for i, (step, expected) in enumerate(steps):
        step()
        assert len(rec.mods) == i + 1
        assert rec.mods[i] == pyon.encode(expected)
        apply_mod(mirror, pyon.decode(rec.mods[i]))
        assert same(mirror, n.raw_view)
    assert n.raw_view[7] == {"status": "running", "tags": [{"deep": [1, 2]}]}
    assert list(n.raw_view["scan.x"][1]) == [0.0, 1.0, 9.5, 3.0]


def test_pop_returns_the_value_and_views_follow_their_path():
    n = Notifier({"l": [1, 2, 3], "d": {"a": 1}})
    assert n["l"].pop(0) == 1
    assert n["d"].pop("a") == 1
    view = n["d"]
    n["d"] = {"b": 2}  # the view acts on what is at its path now
    view["c"] = 3
    assert n.raw_view == {"l": [2, 3], "d": {"b": 2, "c": 3}}
    assert view.raw_view is n.raw_view["d"]


def test_failed_mutations_publish_nothing():
    n = Notifier({"t": (1, [2], 3), "l": []})
    rec = Recorder()
    n.add_listener(rec)
    with pytest.raises(KeyError):
        n["missing"]
    with pytest.raises(IndexError):
        n["l"].pop()
    with pytest.raises(TypeError, match="tuple"):
        n["t"][0] = 5
    with pytest.raises(TypeError):
        iter(n)
    n["t"][1].append(4)  # a list inside a tuple can change
    assert rec.decoded() == [{"action": "append", "path": ["t", 1], "x": 4}]


def test_listeners(caplog):
    n = Notifier({})
    calls = []

    def failing(mod):
        calls.append("failing")
        raise RuntimeError("listener bug")

    n.add_listener(failing)
    n.add_listener(lambda mod: calls.append("second"))
    n["a"] = 1  # a raising listener is logged, never raised into the mutation's caller
    assert calls == ["failing", "second"]  # every listener ran
    assert "listener bug" in caplog.text
    assert n.raw_view == {"a": 1}
    n.remove_listener(failing)
    n.remove_listener(failing)  # no-op
    n["b"] = 2
    assert calls == ["failing", "second", "second"]


def test_apply_mod_refuses_unknown_actions():
    with pytest.raises(ValueError):
        apply_mod({}, {"action": "explode", "path": []})


def test_apply_mod_refuses_an_init_with_a_reason():
    with pytest.raises(ValueError, match="init"):
        apply_mod({}, {"action": "init", "struct": {}})


# --- Publisher and Subscriber over TCP --------------------------------------------------

async def test_late_joiner_gets_the_full_state():
    n = Notifier(dataset_struct())
    pub = Publisher({"datasets": n})
    await pub.start(HOST, 0)
    n[7]["status"] = "running"
    n["counts"][1].append(4)
    n["scan.x"][1][0] = -1.0
    n["late"] = 5
    late = LocalCopy("datasets")
    await late.connect(pub.port)
    assert same(late.sub.model, n.raw_view)
    assert late.sub.target is late.sub.model
    n[7]["tags"].append("z")
    await wait_until(lambda: late.count == 2)
    assert same(late.sub.model, n.raw_view)
    await late.sub.close()
    await pub.stop()
    assert late.disconnects == 0  # close() is not a disconnection


async def test_nested_mods_follow_exactly_over_the_wire():
    n = Notifier(dataset_struct())
    pub = Publisher({"datasets": n, "other": Notifier([])})
    await pub.start(HOST, 0)
    local = Recorder()
    n.add_listener(local)
    subs = [LocalCopy("datasets"), LocalCopy("datasets")]
    for sub in subs:
        await sub.connect(pub.port)
    steps = [
        lambda: n[7].__setitem__("status", "running"),
        lambda: n[7]["tags"].append("b"),
        lambda: n[7]["tags"].insert(1, {"k": [1, (2, 3)]}),
        lambda: n[7]["tags"][1]["k"].append(4),
        lambda: n[7]["tags"].pop(0),
        lambda: n[7]["tags"].pop(),
        lambda: n["scan.x"][1].__setitem__(1, 2.5),   # through a tuple, into an array
        lambda: n["counts"][1].insert(0, 0),          # through a tuple, into a list
        lambda: n["counts"][2].__setitem__("k", "v"),  # through a tuple, into a dict
        lambda: n.__setitem__(8, {"status": "pending"}),
        lambda: n[7].__delitem__("pipeline"),
        lambda: n.__delitem__("counts"),
    ]
    for i, step in enumerate(steps):
        step()
        for sub in subs:
            await wait_until(lambda: sub.count == i + 2)
            assert same(sub.sub.model, n.raw_view)
    expected = [
        {"action": "setitem", "path": [7], "key": "status", "value": "running"},
        {"action": "append", "path": [7, "tags"], "x": "b"},
        {"action": "insert", "path": [7, "tags"], "i": 1, "x": {"k": [1, (2, 3)]}},
        {"action": "append", "path": [7, "tags", 1, "k"], "x": 4},
        {"action": "pop", "path": [7, "tags"], "i": 0},
        {"action": "pop", "path": [7, "tags"], "i": -1},
        {"action": "setitem", "path": ["scan.x", 1], "key": 1, "value": 2.5},
        {"action": "insert", "path": ["counts", 1], "i": 0, "x": 0},
        {"action": "setitem", "path": ["counts", 2], "key": "k", "value": "v"},
        {"action": "setitem", "path": [], "key": 8, "value": {"status": "pending"}},
        {"action": "delitem", "path": [7], "key": "pipeline"},
        {"action": "delitem", "path": [], "key": "counts"},
    ]
    assert local.mods == [pyon.encode(m) for m in expected]
    for sub in subs:
        assert sub.received.mods[1:] == local.mods
        assert pyon.decode(sub.received.mods[0])["action"] == "init"
        await sub.sub.close()
    await pub.stop()


async def test_disconnect_cb_and_reconnect():
    n = Notifier({"a": 1})
    pub = Publisher({"n": n})
    await pub.start(HOST, 0)
    sub = LocalCopy("n")
    await sub.connect(pub.port)
    await pub.stop()
    await wait_until(lambda: sub.disconnects == 1)
    n["a"] = 2
    await pub.start(HOST, 0)
    await sub.connect(pub.port)  # no close() needed after a disconnection
    assert sub.sub.model == {"a": 2}
    with pytest.raises(RuntimeError):
        await sub.sub.connect(HOST, pub.port)
    await sub.sub.close()
    await pub.stop()
    assert sub.disconnects == 1


async def test_unencodable_mod_disconnects_instead_of_diverging():
    n = Notifier({"a": 1})
    pub = Publisher({"n": n})
    await pub.start(HOST, 0)
    sub = LocalCopy("n")
    await sub.connect(pub.port)
    n["bad"] = object()
    await wait_until(lambda: sub.disconnects == 1)
    del n["bad"]
    await sub.sub.close()
    await sub.connect(pub.port)  # a fresh init is consistent again
    assert sub.sub.model == {"a": 1}
    await sub.sub.close()
    await pub.stop()


async def test_bad_banner_and_unknown_notifier_close_the_connection():
    pub = Publisher({"n": Notifier({})})
    await pub.start(HOST, 0)
    for payload in [b"ARTIQ pc_rpc\n", b"ARTIQ sync_struct\nnope\n"]:
        assert await raw_exchange(pub.port, payload, close_write=False) == b""
    await pub.stop()


async def test_slow_subscriber_is_dropped_and_memory_stays_bounded():
    n = Notifier({"v": None})
    limit = 50
    pub = Publisher({"n": n}, queue_limit=limit, queue_bytes=1 << 20)
    # mods of 200 different keys in turn: none can replace another still queued
    await pub.start(HOST, 0)
    good = LocalCopy("n")
    await good.connect(pub.port)
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.connect((HOST, pub.port))
    slow.sendall(b"ARTIQ sync_struct\nn\n")  # and never read
    try:
        await wait_until(lambda: len(pub.backlogs("n")) == 2)
        payload = "x" * 10_000
        for i in range(3000):
            n[f"k{i % 200}"] = [i, payload]
            assert all(lines <= limit and size <= 1 << 20
                       for lines, size in pub.backlogs("n"))
            if i % 10 == 0:
                await wait_until(lambda: good.count == i + 2)
            if len(pub.backlogs("n")) == 1:
                break
        else:
            pytest.fail("the slow subscriber was never dropped")
        assert await asyncio.to_thread(drain_until_closed, slow)
        for j in range(5):
            n["v"] = [-j]
        await wait_until(lambda: good.sub.model["v"] == [-4])
        assert same(good.sub.model, n.raw_view)
        assert good.disconnects == 0
    finally:
        slow.close()
    await good.sub.close()
    await pub.stop()


async def test_fuzz_then_serves_a_well_behaved_client():
    n = Notifier({"a": [1, 2]})
    pub = Publisher({"n": n}, max_line_length=1024)
    await pub.start(HOST, 0)
    watcher = LocalCopy("n")
    await watcher.connect(pub.port)
    rng = random.Random(1234)
    payloads = [
        b"",
        b"\n\n\n",
        b"garbage\n",
        b"\xff\xfe\xfd\n",
        b"ARTIQ sync_struct\n\xff\xfe\n",
        b"ARTIQ sync_struct\r\nn\r\n",
        b"A" * 5000 + b"\n",
        b"ARTIQ sync_struct\n" + b"n" * 5000,
        b"ARTIQ sync_struct\nn",
        b"ARTIQ sync_struct",
        b"ARTIQ sync_struct\n{\"action\": \"init\"}\n",
        b"ARTIQ sync_struct\nn\n" + bytes(rng.randrange(256) for _ in range(3000)),
    ] + [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 2000)))
         for _ in range(30)]
    for payload in payloads:
        await raw_exchange(pub.port, payload)
    # what should be served still is, and nothing else
    reply = await raw_exchange(pub.port, b"ARTIQ sync_struct\nn\n")
    assert pyon.decode(reply) == {"action": "init", "struct": {"a": [1, 2]}}
    await wait_until(lambda: pub.backlogs("n") and len(pub.backlogs("n")) == 1)
    n["a"].append(3)
    await wait_until(lambda: watcher.count == 2)
    fresh = LocalCopy("n")
    await fresh.connect(pub.port)
    assert fresh.sub.model == watcher.sub.model == {"a": [1, 2, 3]}
    await fresh.sub.close()
    await watcher.sub.close()
    await pub.stop()


# --- Interoperability: a subscriber written only from wire-compat.md ---------------------
# (its PYON decoder is test_interop's, which imports nothing from labpipe)

def independent_subscriber(port, name, n_mods, subscribed):
    """Follow a notifier with a raw socket and test_interop's independent PYON decoder;
    return the final state."""

    def apply(state, mod):
        container = state
        for key in mod["path"]:
            container = container[key]
        action = mod["action"]
        if action == "setitem":
            container[mod["key"]] = mod["value"]
        elif action == "delitem":
            del container[mod["key"]]
        elif action == "append":
            container.append(mod["x"])
        elif action == "insert":
            container.insert(mod["i"], mod["x"])
        elif action == "pop":
            container.pop(mod["i"])
        else:
            raise ValueError(action)

    with socket.create_connection((HOST, port), timeout=10) as sock:
        sock.sendall(b"ARTIQ sync_struct\n" + name.encode() + b"\n")
        lines = sock.makefile("rb")
        init = indep_decode(lines.readline())
        assert init["action"] == "init"
        state = init["struct"]
        subscribed.set()
        for _ in range(n_mods):
            line = lines.readline()
            assert line.endswith(b"\n")
            apply(state, indep_decode(line))
        return state


async def test_independent_subscriber_follows_nested_mods():
    n = Notifier(dataset_struct())
    pub = Publisher({"datasets": n})
    await pub.start(HOST, 0)
    n[7]["status"] = "preparing"  # before it joins: in its init
    subscribed = threading.Event()
    steps = [
        lambda: n[7].__setitem__("status", "running"),
        lambda: n[7]["tags"].append(["x", {"y": 1}]),
        lambda: n[7]["tags"][1][1].__setitem__("z", 2),
        lambda: n[7]["tags"].insert(0, "first"),
        lambda: n[7]["tags"].pop(1),
        lambda: n["scan.x"][1].__setitem__(3, 7.25),
        lambda: n["counts"][1].append(10),
        lambda: n.__setitem__(9, (True, numpy.eye(2), {})),
        lambda: n[9][1].__setitem__((0, 1), 5.0),
        lambda: n.__delitem__("counts"),
        lambda: n[7].__delitem__("pipeline"),
    ]
    follower = asyncio.create_task(asyncio.to_thread(
        independent_subscriber, pub.port, "datasets", len(steps), subscribed))
    assert await asyncio.to_thread(subscribed.wait, 10)
    for step in steps:
        step()
    state = await follower
    assert same(state, n.raw_view)
    assert state[9][1][0, 1] == 5.0
    await pub.stop()


async def test_lagging_subscriber_gets_latest_value_per_key_not_a_backlog():
    n = Notifier({"other": 0})
    limit = 50
    pub = Publisher({"n": n}, queue_limit=limit, queue_bytes=1 << 20)
    await pub.start(HOST, 0)
    lagging = socket.socket()
    lagging.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    lagging.connect((HOST, pub.port))
    lagging.sendall(b"ARTIQ sync_struct\nn\n")  # reads nothing for now
    try:
        await wait_until(lambda: len(pub.backlogs("n")) == 1)
        payload = "x" * 10_000
        n["other"] = 1
        for i in range(3000):
            n["v"] = [i, payload]  # the same key, over and over
            (lines, size), = pub.backlogs("n")
            assert lines <= limit // 2 + 1 and size <= 1 << 20
        n["other"] = 2
        assert len(pub.backlogs("n")) == 1  # still connected: nothing was dropped
        # now it reads: it ends with exactly the master's state, latest values
        copy, mods = await asyncio.to_thread(read_sync_until, lagging,
                                             lambda c: c.get("other") == 2)
        assert copy == n.raw_view
        assert mods < 3000  # it was spared the backlog
    finally:
        lagging.close()
    await pub.stop()


def read_sync_until(sock, done, timeout=10.0):
    """Read a sync stream from a raw socket, applying mods, until done(copy)."""
    sock.settimeout(timeout)
    f = sock.makefile("rb")
    copy = pyon.decode(f.readline())["struct"]
    mods = 0
    while not done(copy):
        apply_mod(copy, pyon.decode(f.readline()))
        mods += 1
    return copy, mods

