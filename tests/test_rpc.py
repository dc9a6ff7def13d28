"""RPC (labpipe.protocol.rpc) over real sockets on 127.0.0.1, port 0.

The server always runs in an asyncio event loop (the async test's own loop). The
blocking ``Client`` is used from a worker thread (``asyncio.to_thread``) so that the
loop keeps serving; ``AsyncClient`` runs in the loop itself. Nothing waits on a fixed
sleep: slow calls wait on ``asyncio.Event``s that the test sets.
"""

import asyncio
import contextlib
import json
import logging
import random
import socket
import threading
import time

import numpy
import pytest

from labpipe.protocol import pyon
from labpipe.protocol.rpc import AsyncClient, Client, IncompatibleServer, RemoteError, Server

from conftest import drain_until_closed

HOST = "127.0.0.1"
TIMEOUT = 10  # seconds a raw connection's socket waits at most


class CustomError(Exception):
    pass


class NotFound(KeyError):
    """Like the master's DatasetNotFoundError: not a builtin, but a KeyError."""


class Calc:
    """A calculator target."""

    value = 5  # not callable: not a method

    def __init__(self):
        self.private_called = False
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()

    def add(self, a: int, b: int = 1, *, scale: float = 1) -> float:
        """Add a and b, then scale."""
        return (a + b) * scale

    def echo(self, *args, **kwargs):
        return args, kwargs

    async def async_add(self, a, b):
        await asyncio.sleep(0)
        return a + b

    async def wait_gate(self):
        """Returns once the test opens the gate."""
        self.entered.set()
        await self.gate.wait()
        return "opened"

    def fast(self):
        return "fast"

    def fail_builtin(self):
        raise ValueError("bad value 42")

    def fail_custom(self):
        raise CustomError("custom boom")

    def fail_keyerror(self):
        return {}["missing"]

    def unencodable(self):
        return {"x": object()}

    def odd_defaults(self, sentinel=object(), arr=numpy.arange(2)):
        pass

    def _private(self):
        self.private_called = True


class Other:
    def ping(self):
        return "pong"


@contextlib.asynccontextmanager
async def serving(targets, **kwargs):
    server = Server(targets, **kwargs)
    await server.start(HOST, 0)
    try:
        yield server
    finally:
        await server.stop()


async def with_server(targets, blocking_fn, **kwargs):
    """Serve targets in an event loop and run blocking_fn(port) in a thread."""
    async def main():
        async with serving(targets, **kwargs) as server:
            return await asyncio.to_thread(blocking_fn, server.port)
    return await main()


class RawConnection:
    """A bare socket speaking lines, for what the clients would never send."""

    def __init__(self, port):
        self.sock = socket.create_connection((HOST, port), timeout=TIMEOUT)
        self.file = self.sock.makefile("rb")

    def send(self, data: bytes):
        self.sock.sendall(data)

    def readline(self) -> bytes:
        return self.file.readline()

    def handshake(self, target="calc"):
        self.send(b"ARTIQ pc_rpc\n")
        ident = json.loads(self.readline())
        self.send(f"{target} pyon_v2\n".encode())
        return ident, pyon.decode(self.readline())

    def request(self, line: bytes):
        self.send(line + b"\n")
        return pyon.decode(self.readline())

    def closed_by_peer(self) -> bool:
        """True when the server closes the connection (pending input is discarded)."""
        return drain_until_closed(self.sock)

    def close(self):
        self.file.close()
        self.sock.close()


@contextlib.contextmanager
def raw(port):
    conn = RawConnection(port)
    try:
        yield conn
    finally:
        conn.close()


# --------------------------------------------------------------------------- blocking client


async def test_calls_with_args_and_kwargs():
    def body(port):
        with Client(HOST, port, "calc") as c:
            assert c.add(2, 3) == 5
            assert c.add(2) == 3
            assert c.add(2, b=3, scale=2) == 10
            args = (1, (2, 3), {4: "four"}, numpy.arange(3, dtype=numpy.int8), b"\x00", 1j)
            got_args, got_kwargs = c.echo(*args, key={"n": (1,)})
            assert type(got_args) is tuple and len(got_args) == len(args)
            assert got_args[:3] == args[:3] and got_args[4:] == args[4:]
            assert got_args[3].dtype == numpy.int8 and list(got_args[3]) == [0, 1, 2]
            assert got_kwargs == {"key": {"n": (1,)}}
            assert c.get_selected_target() == "calc"
            assert c.get_local_host() == HOST
            assert c.get_rpc_id() == (["calc", "other"], "test master")
    await with_server({"calc": Calc(), "other": Other()}, body, description="test master")


async def test_subclass_of_a_builtin_is_sent_as_that_builtin():
    class Lookup:
        def find(self, key):
            raise NotFound(f"{key} does not exist")

    def body(port):
        with Client(HOST, port, "lookup") as c:
            with pytest.raises(KeyError) as info:
                c.find("x")
            assert type(info.value) is KeyError  # rebuilt from the wire's "KeyError"
            assert "NotFound" in info.value.remote_traceback
    await with_server({"lookup": Lookup()}, body)


async def test_coroutine_method_is_awaited():
    def body(port):
        with Client(HOST, port, "calc") as c:
            assert c.async_add(40, 2) == 42
    await with_server({"calc": Calc()}, body)


async def test_builtin_exception_class_is_preserved():
    def body(port):
        with Client(HOST, port, "calc") as c:
            with pytest.raises(ValueError, match="bad value 42") as info:
                c.fail_builtin()
            assert type(info.value) is ValueError
            assert "fail_builtin" in info.value.remote_traceback
            assert "ValueError: bad value 42" in info.value.remote_traceback
            assert any("fail_builtin" in note for note in info.value.__notes__)
            with pytest.raises(KeyError):
                c.fail_keyerror()
            assert c.add(1, 1) == 2  # still usable
    await with_server({"calc": Calc()}, body)


async def test_custom_exception_becomes_remote_error():
    def body(port):
        with Client(HOST, port, "calc") as c:
            with pytest.raises(RemoteError, match="custom boom") as info:
                c.fail_custom()
            assert "CustomError: custom boom" in info.value.remote_traceback
            assert "fail_custom" in info.value.remote_traceback
            assert c.add(1, 1) == 2
    await with_server({"calc": Calc()}, body)


async def test_private_names_refused():
    calc = Calc()

    def body(port):
        with Client(HOST, port, "calc") as c:
            with pytest.raises(AttributeError):
                c._private()  # refused locally already
            for name in ["_private", "__init__", "__class__", "__getattribute__"]:
                with pytest.raises(AttributeError, match="private"):
                    c._call(name, (), {})  # bypass the local check: the server refuses
            assert c.add(1, 2) == 3
    await with_server({"calc": calc}, body)
    assert not calc.private_called


async def test_unknown_and_non_callable_methods_refused():
    def body(port):
        with Client(HOST, port, "calc") as c:
            with pytest.raises(AttributeError, match="no method 'nope'"):
                c.nope()
            with pytest.raises(AttributeError, match="no method 'value'"):
                c.value()
            with pytest.raises(TypeError):
                c.add()  # wrong arguments: the remote TypeError comes back
            assert c.add(1, 2) == 3
    await with_server({"calc": Calc()}, body)


async def test_unencodable_return_value_is_a_type_error():
    def body(port):
        with Client(HOST, port, "calc") as c:
            with pytest.raises(TypeError, match="unencodable"):
                c.unencodable()
            assert c.add(1, 2) == 3
    await with_server({"calc": Calc()}, body)


async def test_get_rpc_method_list():
    def body(port):
        with Client(HOST, port, "calc") as c:
            return c.get_rpc_method_list()
    doc = await with_server({"calc": Calc()}, body)
    assert doc["docstring"] == "A calculator target."
    methods = doc["methods"]
    assert set(methods) == {"add", "echo", "async_add", "wait_gate", "fast", "fail_builtin",
                            "fail_custom", "fail_keyerror", "unencodable", "odd_defaults"}
    spec, docstring = methods["add"]
    assert docstring == "Add a and b, then scale."
    assert spec == {"args": ["a", "b"], "varargs": None, "varkw": None, "defaults": (1,),
                    "kwonlyargs": ["scale"], "kwonlydefaults": {"scale": 1},
                    "annotations": {"a": "int", "b": "int", "scale": "float", "return": "float"}}
    spec, _ = methods["echo"]
    assert (spec["args"], spec["varargs"], spec["varkw"], spec["defaults"]) == \
        ([], "args", "kwargs", None)
    spec, _ = methods["odd_defaults"]
    assert isinstance(spec["defaults"][0], str) and "object" in spec["defaults"][0]
    assert type(spec["defaults"][1]) is numpy.ndarray


async def test_target_selection():
    def body(port):
        with Client(HOST, port) as c:  # the only target
            assert c.get_selected_target() == "calc"
            assert c.add(1, 1) == 2
    await with_server({"calc": Calc()}, body)

    def body2(port):
        with pytest.raises(ValueError, match="calc.*other"):
            Client(HOST, port)
        with pytest.raises(ValueError, match="no target 'missing'"):
            Client(HOST, port, "missing")
        with Client(HOST, port, "other") as c:
            assert c.ping() == "pong"
            with pytest.raises(AttributeError):
                c.add(1, 2)
    await with_server({"calc": Calc(), "other": Other()}, body2)


async def test_handshake_on_the_wire():
    def body(port):
        with raw(port) as conn:
            ident, names = conn.handshake("calc")
            assert ident == {"targets": ["a", "calc"], "description": None,
                             "features": ["pyon_v2"]}
            assert type(names) is set and "add" in names and "_private" not in names
            assert "value" not in names
            assert conn.request(b'{"action":"call","name":"add","args":[1,2],"kwargs":{}}') \
                == {"status": "ok", "ret": 3}
    await with_server({"calc": Calc(), "a": Other()}, body)


@pytest.mark.parametrize("first_lines", [
    [b"ARTIQ pc_rpc", b"missing pyon_v2"],
    [b"ARTIQ pc_rpc", b"calc pyon_v1"],
    [b"ARTIQ pc_rpc", b"calc"],
    [b"ARTIQ pc_rpc", b"calc pyon_v2 extra"],
    [b"ARTIQ sync_struct"],
    [b"\xff\xfe"],
])
async def test_bad_handshake_closes_the_connection(first_lines):
    def body(port):
        with raw(port) as conn:
            conn.send(b"".join(line + b"\n" for line in first_lines))
            assert conn.closed_by_peer()
        with Client(HOST, port, "calc") as c:  # others are not affected
            assert c.add(1, 1) == 2
    await with_server({"calc": Calc()}, body)


async def test_client_refuses_incompatible_server():
    """A server without the pyon_v2 feature (an old PYON v1 master, say)."""
    async def main():
        handled = asyncio.Queue()

        async def fake_server(reader, writer):
            try:
                await reader.readline()
                writer.write(b'{"targets":["x"],"description":null,"features":[]}\n')
                await writer.drain()
                handled.put_nowait(await reader.read())  # what the client sent after
            finally:
                writer.close()

        server = await asyncio.start_server(fake_server, HOST, 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            with pytest.raises(IncompatibleServer):
                await asyncio.to_thread(Client, HOST, port, "x")
            client = AsyncClient()
            with pytest.raises(IncompatibleServer):
                await client.connect_rpc(HOST, port, "x")
            # both clients hung up without selecting a target
            assert [await handled.get(), await handled.get()] == [b"", b""]
    await main()


async def test_client_timeout_closes_the_connection():
    def body(port):
        c = Client(HOST, port, "calc", timeout=0.2)
        with pytest.raises(TimeoutError):
            c.wait_gate()  # the gate never opens
        with pytest.raises(OSError):
            c.add(1, 2)  # the connection was closed: a late reply cannot be mistaken
        c.close_rpc()
        c.close_rpc()  # idempotent
    await with_server({"calc": Calc()}, body)


async def test_failed_calls_are_logged(caplog):
    caplog.set_level(logging.DEBUG, logger="labpipe.protocol.rpc")

    def body(port):
        with Client(HOST, port, "calc") as c:
            with pytest.raises(ValueError):
                c.fail_builtin()
            with pytest.raises(AttributeError):
                c._call("_private", (), {})
    await with_server({"calc": Calc()}, body)
    messages = [r.getMessage() for r in caplog.records if r.name == "labpipe.protocol.rpc"]
    assert any("calc.fail_builtin" in m for m in messages)
    assert any("_private" in m for m in messages)


# --------------------------------------------------------------------------- asyncio client


async def test_async_client_calls_and_failures():
    async def main():
        async with serving({"calc": Calc()}) as server:
            c = AsyncClient()
            await c.connect_rpc(HOST, server.port, "calc")
            try:
                assert await c.add(1, b=2) == 3
                assert await c.async_add(1, 2) == 3
                with pytest.raises(ValueError, match="bad value"):
                    await c.fail_builtin()
                with pytest.raises(RemoteError, match="custom boom") as info:
                    await c.fail_custom()
                assert "CustomError" in info.value.remote_traceback
                with pytest.raises(AttributeError):
                    c._private  # private names have no proxy
                with pytest.raises(AttributeError, match="no method 'nope'"):
                    await c.nope()
                methods = (await c.get_rpc_method_list())["methods"]
                assert methods["add"][1] == "Add a and b, then scale."
                assert c.get_selected_target() == "calc"
            finally:
                c.close_rpc()
    await main()


async def test_async_client_serialises_concurrent_calls():
    async def main():
        async with serving({"calc": Calc()}) as server:
            c = AsyncClient()
            await c.connect_rpc(HOST, server.port)
            try:
                results = await asyncio.gather(*(c.echo(i) for i in range(50)))
                assert results == [((i,), {}) for i in range(50)]
            finally:
                c.close_rpc()
    await main()


async def test_slow_call_does_not_block_other_connections():
    async def main():
        calc = Calc()
        async with serving({"calc": calc}) as server:
            slow, fast = AsyncClient(), AsyncClient()
            await slow.connect_rpc(HOST, server.port, "calc")
            await fast.connect_rpc(HOST, server.port, "calc")
            try:
                async with asyncio.TaskGroup() as tg:
                    pending = tg.create_task(slow.wait_gate())
                    await calc.entered.wait()  # the slow call is running on the server
                    assert await fast.fast() == "fast"
                    assert await asyncio.to_thread(blocking_fast_call, server.port) == "fast"
                    assert not pending.done()
                    calc.gate.set()
                assert pending.result() == "opened"
            finally:
                slow.close_rpc()
                fast.close_rpc()
    await main()


def blocking_fast_call(port):
    with Client(HOST, port, "calc") as c:
        return c.fast()


async def test_cancelled_async_call_closes_the_connection():
    async def main():
        calc = Calc()
        async with serving({"calc": calc}) as server:
            c = AsyncClient()
            await c.connect_rpc(HOST, server.port, "calc")
            task = asyncio.create_task(c.wait_gate())
            await calc.entered.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            with pytest.raises(ConnectionError):
                await c.fast()
    await main()


def _call_line(name, *args) -> bytes:
    return pyon.encode({"action": "call", "name": name, "args": list(args),
                        "kwargs": {}}).encode() + b"\n"


async def test_pipelined_requests_are_answered_in_order():
    """Handshake and requests in one write (before any reply was read), plain and
    coroutine methods and failures mixed: one reply per request, in order."""
    def body(port):
        with raw(port) as conn:
            conn.send(b"ARTIQ pc_rpc\ncalc pyon_v2\n" + _call_line("add", 1, 2)
                      + _call_line("async_add", 3, 4) + _call_line("fail_builtin")
                      + b"\xff\n" + _call_line("async_add", 5, 6) + _call_line("fast"))
            assert json.loads(conn.readline())["targets"] == ["calc"]
            assert "add" in pyon.decode(conn.readline())
            replies = [pyon.decode(conn.readline()) for _ in range(6)]
            assert [r["status"] for r in replies] == ["ok", "ok", "failed", "failed", "ok",
                                                      "ok"]
            assert [replies[i]["ret"] for i in (0, 1, 4, 5)] == [3, 7, 11, "fast"]
            assert replies[2]["exception"]["class"] == "ValueError"
            assert "not UTF-8" in replies[3]["exception"]["message"]
    await with_server({"calc": Calc()}, body)


async def test_requests_before_the_clients_end_of_stream_are_all_answered():
    """A client that half-closes after its requests (a coroutine method among them)
    gets every reply, then the server closes."""
    def body(port):
        with raw(port) as conn:
            conn.handshake()
            conn.send(_call_line("async_add", 1, 1) + _call_line("add", 2, 2)
                      + b'{"action":"call","name":"add","args":[1]')  # partial: dropped
            conn.sock.shutdown(socket.SHUT_WR)
            assert pyon.decode(conn.readline())["ret"] == 2
            assert pyon.decode(conn.readline())["ret"] == 4
            assert conn.readline() == b""
    await with_server({"calc": Calc()}, body)


async def test_a_client_not_reading_its_replies_is_paused_then_served():
    """Requests whose replies (16 MB) outgrow the socket buffers while the client does
    not read: the server stops reading until the client reads again; nothing is lost
    or reordered."""
    count, size = 2000, 8000

    def body(port):
        with raw(port) as conn:
            conn.handshake()
            sender = threading.Thread(target=conn.send, args=(b"".join(
                _call_line("echo", "x" * size, i) for i in range(count)),))
            sender.start()
            time.sleep(0.5)  # the replies pile up: the server must pause
            for i in range(count):
                args, _ = pyon.decode(conn.readline())["ret"]
                assert args == ("x" * size, i)
            sender.join(TIMEOUT)
            assert not sender.is_alive()
    await with_server({"calc": Calc()}, body)


async def test_stop_with_a_call_in_progress():
    async def main():
        calc = Calc()
        server = Server({"calc": calc})
        await server.start(HOST, 0)
        c = AsyncClient()
        await c.connect_rpc(HOST, server.port, "calc")
        try:
            task = asyncio.create_task(c.wait_gate())
            await calc.entered.wait()
            await server.stop()
            with pytest.raises(ConnectionError):
                await task
        finally:
            c.close_rpc()
    await main()


# --------------------------------------------------------------------------- fuzz

MALFORMED_LINES = [
    b"", b"   ", b"{", b"}", b"[", b"null", b"1", b'"call"', b"[]", b"{}", b"NaN",
    b"\xff\xfe\xfd", b"\xc3\x28", b'{"action":"call","name":"add","args":[1]\xff}',
    b"{'action': 'call'}", b"(1, 2)",
    b'{"action":"nope"}', b'{"action":1}', b'{"action":null}', b'{"action":["call"]}',
    b'{"action":"call"}', b'{"action":"call","name":"add"}',
    b'{"action":"call","name":"add","args":{},"kwargs":{}}',
    b'{"action":"call","name":"add","args":{"__jsonclass__":["set",[[1]]]},"kwargs":{}}',
    b'{"action":"call","name":"add","args":[' + b'9' * 5000 + b'],"kwargs":{}}',
    b'{"action":"call","name":"add","args":[{"__jsonclass__":["Fraction",["1e10000000"]]}],"kwargs":{}}',
    b'{"action":"call","name":"add","args":[1],"kwargs":[]}',
    b'{"action":"call","name":"add","args":"12","kwargs":{}}',
    b'{"action":"call","name":"add","args":null,"kwargs":{}}',
    b'{"action":"call","name":1,"args":[],"kwargs":{}}',
    b'{"action":"call","name":null,"args":[],"kwargs":{}}',
    b'{"action":"call","name":["add"],"args":[],"kwargs":{}}',
    b'{"action":"call","name":"add","args":[1],"kwargs":{},"extra":1}',
    b'{"action":"call","name":"_private","args":[],"kwargs":{}}',
    b'{"action":"call","name":"__class__","args":[],"kwargs":{}}',
    b'{"action":"call","name":"value","args":[],"kwargs":{}}',
    b'{"action":"call","name":"missing","args":[],"kwargs":{}}',
    b'{"action":"call","name":"add","args":[1],'
    b'"kwargs":{"__jsonclass__":["dict",[[[1,2]]]]}}',
    b'{"action":"call","name":"add","args":[{"__jsonclass__":["os.system",["true"]]}],'
    b'"kwargs":{}}',
    b'{"__jsonclass__":["tuple",[["call"]]]}',
    b'{"action":"get_rpc_method_list","name":"x"}',
    b"[" * 5000 + b"]" * 5000,
    b'{"a":' * 3000 + b"1" + b"}" * 3000,
]

GOOD_CALL = b'{"action":"call","name":"add","args":[2,3],"kwargs":{}}'
LIMIT = 64 * 1024


async def test_fuzz_malformed_lines():
    calc = Calc()

    def body(port):
        with Client(HOST, port, "calc") as survivor:  # opened before, used after
            with raw(port) as conn:
                conn.handshake()
                for line in MALFORMED_LINES:
                    reply = conn.request(line)
                    assert reply["status"] == "failed", line
                    assert reply["exception"]["class"] in {"ValueError", "AttributeError"}, line
                    assert conn.request(GOOD_CALL) == {"status": "ok", "ret": 5}, line

            rng = random.Random(1234)
            for _ in range(30):
                junk = rng.randbytes(rng.randrange(1, 2000))
                with raw(port) as conn:
                    conn.handshake()
                    conn.send(junk + b"\n" + GOOD_CALL + b"\n")
                    # one failed reply per junk line, then the good call's reply
                    for _ in range(junk.count(b"\n") + 1):
                        assert pyon.decode(conn.readline())["status"] == "failed"
                    assert pyon.decode(conn.readline()) == {"status": "ok", "ret": 5}

            for _ in range(10):  # junk instead of the banner or the target line
                with raw(port) as conn:
                    conn.send(rng.randbytes(rng.randrange(1, 500)) + b"\n")
                    assert conn.closed_by_peer()
                with raw(port) as conn:
                    conn.send(b"ARTIQ pc_rpc\n")
                    conn.readline()
                    conn.send(rng.randbytes(rng.randrange(1, 500)) + b"\n")
                    assert conn.closed_by_peer()

            with raw(port) as conn:  # over the limit: refused, then that connection closes
                conn.handshake()
                conn.send(b'{"action":"call","name":"add","args":["' + b"x" * (2 * LIMIT)
                          + b'"],"kwargs":{}}\n')
                reply = pyon.decode(conn.readline())
                assert reply["status"] == "failed"
                assert "longer" in reply["exception"]["message"]
                assert conn.closed_by_peer()

            with raw(port) as conn:  # over the limit during the handshake
                conn.send(b"A" * (2 * LIMIT) + b"\n")
                assert conn.closed_by_peer()

            with raw(port) as conn:  # peer vanishes mid-line
                conn.handshake()
                conn.send(GOOD_CALL[:10])

            assert survivor.add(1, 1) == 2
        with Client(HOST, port, "calc") as fresh:
            assert fresh.add(20, 22) == 42
            assert fresh.async_add(1, 2) == 3
        return True

    assert await with_server({"calc": calc}, body, max_line_length=LIMIT)
    assert not calc.private_called


# --------------------------------------------------------------------------- args as sipyco sends them


async def test_args_as_pyon_tuple_or_list_on_the_wire():
    def body(port):
        with raw(port) as conn:
            conn.handshake()
            tuple_call = (b'{"action":"call","name":"add","args":'
                          b'{"__jsonclass__":["tuple",[[2,3]]]},"kwargs":{}}')
            assert conn.request(tuple_call) == {"status": "ok", "ret": 5}
            assert conn.request(b'{"action":"call","name":"fast","args":'
                                b'{"__jsonclass__":["tuple",[[]]]},"kwargs":{}}') \
                == {"status": "ok", "ret": "fast"}
            assert conn.request(b'{"action":"call","name":"add","args":[2,3],"kwargs":{}}') \
                == {"status": "ok", "ret": 5}
            for bad in [b'{"__jsonclass__":["set",[[1]]]}', b'{"a":1}', b'"12"', b"null", b"5",
                        b'{"__jsonclass__":["bytes",["AA=="]]}',
                        b'{"__jsonclass__":["dict",[[[1,2]]]]}']:
                reply = conn.request(b'{"action":"call","name":"add","args":' + bad
                                     + b',"kwargs":{}}')
                assert reply["status"] == "failed", bad
                message = reply["exception"]["message"]
                assert "'args' must be a tuple or a list" in message and "\n" not in message
        return True
    assert await with_server({"calc": Calc()}, body)


async def _capture_request(call):
    """The request line one labpipe client sends for call(client), read by a fake server."""
    async def main():
        got = asyncio.get_running_loop().create_future()

        async def handle(reader, writer):
            await reader.readline()
            writer.write(b'{"targets":["t"],"description":null,"features":["pyon_v2"]}\n')
            await reader.readline()
            writer.write(pyon.encode({"add"}).encode() + b"\n")
            got.set_result(await reader.readline())
            writer.write(b'{"status":"ok","ret":null}\n')
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, HOST, 0)
        port = server.sockets[0].getsockname()[1]
        try:
            await call(port)
            return await got
        finally:
            server.close()
            await server.wait_closed()
    return await main()


async def test_own_clients_send_args_as_a_tuple():
    expected = b'{"action":"call","name":"add","args":{"__jsonclass__":["tuple",[[5,[1]]]]},' \
               b'"kwargs":{"b":2}}\n'

    async def blocking(port):
        def call():
            with Client(HOST, port, "t") as c:
                c.add(5, [1], b=2)
        await asyncio.to_thread(call)

    async def asynchronous(port):
        c = AsyncClient()
        await c.connect_rpc(HOST, port, "t")
        try:
            await c.add(5, [1], b=2)
        finally:
            c.close_rpc()
    assert await _capture_request(blocking) == expected
    assert await _capture_request(asynchronous) == expected
