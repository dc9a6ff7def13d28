"""Fuzz every method of every target of a real labpipe-master process (issue 13).

Random values of wrong types, sizes and depths (fixed seed, bounded in count and time),
sent as raw request lines on one connection per target. After each batch: every reply
was one line and a builtin-class refusal without Python internals, another client's
``schedule.get_status`` answered within 1 s, and the master's RSS stayed within a
bound; at the end the master still serves. Calls the spec accepts are sent too
(destructive but valid is fine), except ``master_management.terminate`` and waits
that could block.
"""

import asyncio
import math
import os
import random
import subprocess
import sys
import time
from fractions import Fraction

import numpy

from conftest import terminate, write_file
from labpipe.master.params import Method
from labpipe.master.targets import SPECS
from labpipe.protocol import pyon

SEED = 1313
TIME_BUDGET = 35.0       # seconds of fuzzing at most
BATCHES = 40
CALLS_PER_BATCH = 12     # per target
LIVENESS = 1.0           # seconds another client's get_status may take
RSS_GROWTH = 64 << 20    # bytes the master may grow by during the fuzz (about 6 MiB seen)

#: Python internals a client must never see (issue 13)
INTERNALS = ("object of type", "not subscriptable", "int too large", "Traceback",
             "expected str, bytes or os.PathLike", "unhashable type")

EXP = """from labpipe.experiment import *

class Exp(EnvExperiment):
    def build(self):
        self.setattr_argument("x", NumberValue(1.0))

    def run(self):
        pass
"""


class _Deep:
    """A list nested ``depth`` deep around ``leaf``, written into the request text
    directly: PYON's encoder rightly refuses to write the deepest ones itself."""

    def __init__(self, depth, leaf):
        self.depth, self.leaf = depth, leaf


def _nested(depth, leaf):
    return _Deep(depth, leaf)


def _encode_with_deep(request) -> str:
    """pyon.encode(request), each _Deep in it written as its nested lists."""
    deep = []

    def placeholders(value):
        if isinstance(value, _Deep):
            deep.append(value)
            return f"__deep_{len(deep) - 1}__"
        if type(value) in (list, tuple):
            return type(value)(placeholders(v) for v in value)
        if type(value) is dict:
            return {k: placeholders(v) for k, v in value.items()}
        return value

    text = pyon.encode(placeholders(request))
    for i, d in enumerate(deep):
        text = text.replace(f'"__deep_{i}__"',
                            "[" * d.depth + pyon.encode(d.leaf) + "]" * d.depth)
    return text


def hostile(rng: random.Random, depth: int = 0):
    """A random value, mostly of the wrong type, size or depth for any parameter."""
    choice = rng.randrange(30 if depth < 3 else 20)
    simple = [
        None, True, False, 0, -1, 1, 7, 2 ** 63, -2 ** 63 - 1, 10 ** 30, 10 ** 400,
        0.0, 1.0, -0.5, math.nan, math.inf, -math.inf, 1e308, "", "x", "main",
        "repository/exp.py", "exp.py", "\0", "line\nbreak", "../../..", "/", "a" * 5000,
        numpy.int64(1), numpy.float64(2.5), numpy.bool_(True), numpy.uint8(3), b"bytes",
        complex(1, 2), Fraction(1, 3), slice(1, 2), (), [], {}, {1: 2}, {"x": 1}, {3},
    ]
    if choice < 20:
        return rng.choice(simple)
    if choice == 20:
        return _nested(rng.choice([5, 31, 33, 60, 200]), rng.choice([1, "x", {}]))
    if choice == 21:
        return [hostile(rng, depth + 1) for _ in range(rng.randrange(5))]
    if choice == 22:
        return tuple(hostile(rng, depth + 1) for _ in range(rng.randrange(5)))
    if choice == 23:
        return {rng.choice(["file", "class_name", "arguments", "log_level", "repo_rev",
                            "content", "devarg_override", "action", "path", "key", "value",
                            "pipeline", "priority", "bogus"]): hostile(rng, depth + 1)
                for _ in range(rng.randrange(5))}
    if choice == 24:  # a plausible expid with one wrong field
        expid = {"file": "repository/exp.py", "class_name": "Exp", "arguments": {},
                 "log_level": 30}
        expid[rng.choice(list(expid) + ["content", "repo_rev", "devarg_override"])] = \
            hostile(rng, depth + 1)
        return expid
    if choice == 25:
        return list(range(rng.choice([10, 10_001, 20_000])))
    if choice == 26:
        return numpy.arange(rng.randrange(1, 1000)).reshape(-1, 1)
    if choice == 27:
        return {"action": rng.choice(["setitem", "append", "pop", "x"]),
                "path": [hostile(rng, depth + 1)], "key": hostile(rng, depth + 1),
                "value": hostile(rng, depth + 1), "x": 1, "i": hostile(rng, depth + 1)}
    if choice == 28:
        return {str(i): i for i in range(rng.choice([3, 10_001]))}
    return "c" * rng.choice([10, 1 << 20, (4 << 20) + 1])


def plausible(rng, name):
    """A value of the right type for a parameter called name (often valid)."""
    expid = {"file": "repository/exp.py", "class_name": "Exp",
             "arguments": {"x": rng.choice([1.0, 2, "3", [4]])}, "log_level": 30}
    pool = {
        "rid": [0, 1, 2, 7, 10 ** 6], "before_rid": [None, 3], "limit": [0, 5, 100],
        "pipeline_name": ["main", "fuzz", "x" * 1000], "expid": [expid, {"content": EXP}],
        "priority": [0, -5, 2 ** 62], "due_date": [None, 0, time.time() + 1e5],
        "flush": [False, True], "enabled": [False, True], "persist": [None, True, False],
        "metadata": [None, {"unit": "V"}], "key": ["k", "dev", "dev2"],
        "resolve_alias": [False, True], "new_cur_rev": [None, "HEAD"],
        "filename": ["exp.py", "repository/exp.py", "device_db.py"],
        "use_repository": [True, False], "revision": [None, "abc"],
        "directory": ["", "repository", "results"], "timeout": [0, 0.01],
        "values": [{}, {"x": 1}], "arguments": [None, {"x": 3.0}],
        "overrides": [None, {"priority": 3}, {"arguments": {"x": 5.0}}],
        "mod": [{"action": "setitem", "path": [], "key": "k", "value": (False, 1, {})},
                {"action": "append", "path": ["k", 1], "x": 2}],
        "name": ["count", "scan"], "args": [(), [["det"]]], "kwargs": [None, {"num": 2}],
        "file": [None, "repository/exp.py"],
    }
    if name in pool:
        return rng.choice(pool[name])
    return hostile(rng)


def make_call(rng, target, method):
    """(args, kwargs) for one call: random arity, random names, values of the right
    type or hostile ones."""
    spec = SPECS[target][method]
    names = [p.name for p in spec]
    p_plausible = rng.choice([0.0, 0.5, 0.9])
    value = lambda name: plausible(rng, name) if rng.random() < p_plausible else hostile(rng)
    args = [value(names[i] if i < len(names) else "")
            for i in range(rng.randrange(len(spec) + 2))]
    kwargs = {}
    if rng.random() < 0.3:
        for _ in range(rng.randrange(1, 3)):
            name = rng.choice(names + ["bogus", "_private"])
            kwargs[name] = value(name)
    return args, kwargs


def _as_sent(value):
    """value as the master decodes it: each _Deep the nested lists it is written as."""
    if isinstance(value, _Deep):
        nested = value.leaf
        for _ in range(value.depth):
            nested = [nested]
        return nested
    if type(value) in (list, tuple):
        return type(value)(_as_sent(v) for v in value)
    if type(value) is dict:
        return {k: _as_sent(v) for k, v in value.items()}
    return value


def accepted_by_spec(target, method, args, kwargs) -> bool:
    """Whether the spec accepts the call as the master receives it."""
    try:
        Method(f"{target}.{method}", SPECS[target][method]).bind(
            tuple(_as_sent(a) for a in args), _as_sent(kwargs))
    except (TypeError, ValueError):
        return False
    return True


def call_line(method, args, kwargs, as_tuple):
    # tuples are what sipyco's clients send; lists are what older clients sent
    return _encode_with_deep({"action": "call", "name": method,
                              "args": tuple(args) if as_tuple else list(args),
                              "kwargs": kwargs})


class RawConnection:
    """One control-port connection to one target, speaking raw lines."""

    @classmethod
    async def open(cls, port, target):
        self = cls()
        self.reader, self.writer = await asyncio.open_connection(
            "127.0.0.1", port, limit=64 << 20)
        self.writer.write(b"ARTIQ pc_rpc\n")
        await self.reader.readline()
        self.writer.write(f"{target} pyon_v2\n".encode())
        await self.writer.drain()
        assert isinstance(pyon.decode(await self.reader.readline()), set)
        return self

    async def request(self, line: str, timeout: float = 30.0) -> bytes:
        self.writer.write(line.encode() + b"\n")
        await self.writer.drain()
        async with asyncio.timeout(timeout):
            reply = await self.reader.readline()
        assert reply.endswith(b"\n") and reply.count(b"\n") == 1, reply[:200]
        return reply

    async def close(self):
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except ConnectionError:
            pass


def rss(pid) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def start_master(lab_dir):
    with open(os.path.join(lab_dir, "master.stderr"), "w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "labpipe.master", "--bind", "127.0.0.1",
             "--port-control", "0", "--port-notify", "0", "--port-logging", "0",
             "--port-broadcast", "0"],
            cwd=lab_dir, stdout=subprocess.PIPE, stderr=stderr, text=True)
    line = process.stdout.readline()
    if "ready" not in line:
        process.kill()
        process.wait()
        process.stdout.close()
        raise AssertionError(f"master did not start: {line!r}")
    ports = dict(p.strip().split(" ") for p in line.split(": ", 1)[1].split(","))
    return process, int(ports["control"])


def check_reply(reply: bytes, target, method, spec_refused: bool, seen: dict):
    decoded = pyon.decode(reply)
    assert isinstance(decoded, dict) and decoded.get("status") in ("ok", "failed"), reply[:200]
    if decoded["status"] == "ok":
        assert not spec_refused, (target, method, reply[:300])
        return
    exc = decoded["exception"]
    message = exc["message"]
    where = f"{target}.{method}: {message[:300]!r}"
    assert "\n" not in message and "\r" not in message, where
    assert len(message) <= 2000, where
    for internal in INTERNALS:
        assert internal not in message, where
    if spec_refused:
        assert exc["class"] in ("TypeError", "ValueError"), where
        seen["refused"] += 1
        if message.startswith(f"{target}.{method}: "):
            seen["named"] += 1


async def liveness(port):
    """Another client's get_status, timed."""
    connection = await RawConnection.open(port, "schedule")
    try:
        start = time.monotonic()
        reply = await connection.request(call_line("get_status", [], {}, False),
                                         timeout=10)
        elapsed = time.monotonic() - start
    finally:
        await connection.close()
    assert pyon.decode(reply)["status"] == "ok"
    return elapsed


async def fuzz_target(rng, connection, target, as_tuple, seen, calls):
    for _ in range(calls):
        method = rng.choice(sorted(SPECS[target]))
        args, kwargs = make_call(rng, target, method)
        spec_ok = accepted_by_spec(target, method, args, kwargs)
        if spec_ok and (target, method) == ("master_management", "terminate"):
            continue  # the one valid call that would end the test
        if spec_ok and (target, method) == ("history", "wait"):
            args, kwargs = [args[0] if args else kwargs["rid"]], {"timeout": 0}
        line = call_line(method, args, kwargs, as_tuple and rng.random() < 0.5)
        reply = await connection.request(line)
        check_reply(reply, target, method, not spec_ok, seen)
        seen["calls"] += 1


async def test_fuzz_every_method_of_every_target(tmp_path):
    lab_dir = str(tmp_path)
    write_file(lab_dir, "device_db.py", "device_db = {'dev': 'dev2', 'dev2': {'type': "
               "'local', 'module': 'os', 'class': 'getcwd'}}\n")
    write_file(lab_dir, "repository/exp.py", EXP)
    # the fuzz may lock the master (lock.lock with any key): the end opens it with this
    write_file(lab_dir, "labpipe.toml", '[lock]\nemergency_key = "fuzz-emergency"\n')
    process, port = start_master(lab_dir)

    async def main():
        rng = random.Random(SEED)
        connections = {t: await RawConnection.open(port, t) for t in sorted(SPECS)}
        # tuple args (what sipyco clients send) are fuzzed once the server takes them
        probe = await connections["schedule"].request(call_line("get_status", [], {}, True))
        as_tuple = pyon.decode(probe)["status"] == "ok"
        seen = {"calls": 0, "refused": 0, "named": 0}
        # one generator per target: the calls do not depend on how the targets'
        # coroutines interleave, so a failure repeats with the same seed
        await asyncio.gather(*(fuzz_target(random.Random(rng.random()), c, t, False,
                                           seen, 3)
                               for t, c in connections.items()))  # warm up
        rss_before = rss(process.pid)
        deadline = time.monotonic() + TIME_BUDGET
        worst = 0.0
        for _ in range(BATCHES):
            if time.monotonic() > deadline:
                break
            await asyncio.gather(*(fuzz_target(random.Random(rng.random()), c, t,
                                               as_tuple, seen, CALLS_PER_BATCH)
                                   for t, c in connections.items()))
            worst = max(worst, await liveness(port))
            assert worst < LIVENESS, f"get_status took {worst:.2f} s"
            growth = rss(process.pid) - rss_before
            assert growth < RSS_GROWTH, f"the master grew by {growth >> 20} MiB"
        assert process.poll() is None, "the master died"
        # still serving: a valid submission runs and is recorded
        schedule = connections["schedule"]
        await connections["lock"].request(call_line("unlock", ["fuzz-emergency"], {}, False))
        await schedule.request(call_line("release", ["main"], {}, False))
        reply = pyon.decode(await schedule.request(call_line(
            "submit", ["fuzz-end", {"file": "repository/exp.py", "class_name": "Exp",
                                    "arguments": {}, "log_level": 30}], {}, False)))
        assert reply["status"] == "ok", reply
        record = pyon.decode(await connections["history"].request(call_line(
            "wait", [reply["ret"], 30.0], {}, False), timeout=40))
        assert record["status"] == "ok" and record["ret"]["status"] == "completed", record
        for connection in connections.values():
            await connection.close()
        # most refusals came from the parameter checks, named after the method
        assert seen["calls"] > 500 and seen["named"] > seen["refused"] * 0.8, seen

    try:
        await main()
    finally:
        terminate(process)
        process.stdout.close()
    with open(os.path.join(lab_dir, "master.stderr")) as stderr:
        assert process.returncode == 0, stderr.read()[-3000:]
