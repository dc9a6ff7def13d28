"""Interoperability of labpipe's PYON and RPC with an independent implementation.

The first section is a PYON decoder and a pc_rpc client written only from
``shared/docs/wire-compat.md`` with ``socket``, ``json``, ``base64`` and ``numpy``; it
imports nothing from labpipe, so that a misreading shared by labpipe's encoder and
decoder (or by its server and client) cannot hide. The tests then check that:

- the labpipe RPC server completes the handshake, answers calls and reports failures
  in the documented shapes to this client;
- PYON written by labpipe decodes with the independent decoder to the same values;
- PYON written literally as wire-compat.md describes it decodes with labpipe to the
  same values, and labpipe writes exactly that text for those values.
"""

import base64
import json
import math
import socket
from collections import OrderedDict
from fractions import Fraction

import numpy
import pytest

# --------------------------------------------------------------------------- independent side
# Written from wire-compat.md only, with the standard library and numpy: nothing in
# this section uses labpipe (its imports come after the section).


def indep_decode(text):
    """Decode PYON v2 text: JSON plus the {"__jsonclass__": [TYPENAME, ARGS]} escape."""
    return json.loads(text, object_hook=_indep_escape)


def _indep_escape(obj):
    if "__jsonclass__" not in obj:
        return obj
    typename, args = obj["__jsonclass__"]
    if typename == "tuple":
        return tuple(args[0])
    if typename == "dict":
        return {key: value for key, value in args[0]}
    if typename == "set":
        return set(args[0])
    if typename == "complex":
        return complex(args[0], args[1])
    if typename == "bytes":
        return base64.b64decode(args[0])
    if typename == "slice":
        return slice(args[0], args[1], args[2])
    if typename == "Fraction":
        return Fraction(args[0], args[1])
    if typename == "OrderedDict":
        return OrderedDict((key, value) for key, value in args[0])
    if typename == "nparray":
        shape, dtype, data = args
        flat = numpy.frombuffer(base64.b64decode(data), dtype=numpy.dtype(dtype))
        return flat.reshape(shape).copy()  # writable, so that mods can change it
    if typename == "npscalar":
        dtype, data = args
        return numpy.frombuffer(base64.b64decode(data), dtype=numpy.dtype(dtype))[0]
    raise ValueError(f"unknown PYON type {typename}")


def compact_json(obj):
    """PYON's one-line JSON form (separators ',' and ':')."""
    return json.dumps(obj, separators=(",", ":"))


class IndepRPC:
    """A pc_rpc client over a bare socket."""

    def __init__(self, port, timeout=10):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.lines = self.sock.makefile("rb")

    def send_line(self, text):
        self.sock.sendall(text.encode("utf-8") + b"\n")

    def recv_line(self):
        """One line without its newline; None when the server closed the connection."""
        line = self.lines.readline()
        if not line.endswith(b"\n"):
            return None
        return line[:-1].decode("utf-8")

    def hello(self):
        """Send the banner; return the server's identification line (raw text)."""
        self.send_line("ARTIQ pc_rpc")
        return self.recv_line()

    def select(self, target):
        """Select target with the pyon_v2 feature; return the method names line or None."""
        self.send_line(f"{target} pyon_v2")
        return self.recv_line()

    def request(self, request):
        """Send a request dict (plain JSON); return the reply line (raw text)."""
        self.send_line(compact_json(request))
        return self.recv_line()

    def call(self, name, *args, **kwargs):
        return self.request({"action": "call", "name": name, "args": list(args),
                             "kwargs": kwargs})

    def close(self):
        self.lines.close()
        self.sock.close()


# --------------------------------------------------------------------------- labpipe side

from labpipe.protocol import pyon  # noqa: E402
from test_pyon import assert_same  # noqa: E402
from test_rpc import with_server as serve  # noqa: E402


class InteropError(Exception):
    pass


class Target:
    """Interop target."""

    def add(self, a, b=0, *, scale=1):
        """Add and scale."""
        return (a + b) * scale

    def echo(self, x):
        return x

    async def coro_mul(self, a, b):
        return a * b

    def array(self, n):
        return numpy.arange(n, dtype=numpy.float32).reshape(2, -1)

    def fail(self):
        raise InteropError("interop failure")

    def divide(self, a, b):
        return a / b

    def _hidden(self):
        return "should never be reachable"


async def with_server(body):
    """Serve {"calc": Target(), "zeta": Target()}; run body(port) in a thread."""
    return await serve({"zeta": Target(), "calc": Target()}, body, description="interop")


async def with_client(target, body):
    def run(port):
        client = IndepRPC(port)
        try:
            client.hello()
            assert client.select(target) is not None
            return body(client)
        finally:
            client.close()
    return await with_server(run)


async def test_handshake():
    def body(port):
        client = IndepRPC(port)
        try:
            hello_line = client.hello()
            names_line = client.select("calc")
            return hello_line, names_line
        finally:
            client.close()
    hello_line, names_line = await with_server(body)
    hello = json.loads(hello_line)
    assert hello == {"targets": ["calc", "zeta"], "description": "interop",
                     "features": ["pyon_v2"]}
    assert hello_line == compact_json(hello)  # one line, compact separators
    names = indep_decode(names_line)
    assert type(names) is set
    assert names == {"add", "echo", "coro_mul", "array", "fail", "divide"}


@pytest.mark.parametrize("selection", ["nope pyon_v2", "calc pyon_v1", "calc", ""])
async def test_unknown_target_or_feature_closes(selection):
    def body(port):
        client = IndepRPC(port)
        try:
            client.hello()
            client.send_line(selection)
            return client.recv_line()
        finally:
            client.close()
    assert await with_server(body) is None


async def test_calls():
    def body(client):
        return [
            client.call("add", 2, 3, scale=2),
            client.call("add", a=1),
            client.call("echo", {"__jsonclass__": ["tuple", [[1, "a", None]]]}),
            client.call("echo", {"__jsonclass__": ["dict", [[[1, "one"], [2, "two"]]]]}),
            client.call("coro_mul", 6, 7),
            client.call("array", 4),
        ]
    replies = await with_client("calc", body)
    for line in replies:
        assert line == compact_json(json.loads(line))
    decoded = [indep_decode(line) for line in replies]
    assert decoded[0] == {"status": "ok", "ret": 10}
    assert list(json.loads(replies[0])) == ["status", "ret"]
    assert decoded[1] == {"status": "ok", "ret": 1}
    assert_same(decoded[2]["ret"], (1, "a", None))
    assert_same(decoded[3]["ret"], {1: "one", 2: "two"})
    assert decoded[4] == {"status": "ok", "ret": 42}
    array = decoded[5]["ret"]
    assert array.dtype == numpy.float32 and array.shape == (2, 2)
    assert array.tolist() == [[0.0, 1.0], [2.0, 3.0]]


async def test_failures():
    def body(client):
        return [client.call("fail"), client.call("divide", 1, 0), client.call("_hidden"),
                client.call("nope"), client.request({"action": "bogus"}),
                client.call("add", 1, 2)]
    fail, divide, hidden, nope, bogus, after = map(json.loads, await with_client("calc", body))
    assert set(fail) == {"status", "exception"} and fail["status"] == "failed"
    exc = fail["exception"]
    assert set(exc) == {"class", "message", "traceback"}
    assert exc["class"] == "GenericRemoteException"
    assert exc["message"] == "interop failure"
    assert all(isinstance(line, str) for line in exc["traceback"])
    assert "InteropError: interop failure" in "".join(exc["traceback"])
    assert divide["exception"]["class"] == "ZeroDivisionError"
    for refused in (hidden, nope, bogus):
        assert refused["status"] == "failed"
        assert refused["exception"]["class"] in {"AttributeError", "ValueError"}
    assert after == {"status": "ok", "ret": 3}  # the connection is still usable


async def test_method_list():
    reply = indep_decode(await with_client("zeta", lambda c: c.request(
        {"action": "get_rpc_method_list"})))
    assert reply["status"] == "ok"
    ret = reply["ret"]
    assert ret["docstring"] == "Interop target."
    assert set(ret["methods"]) == {"add", "echo", "coro_mul", "array", "fail", "divide"}
    argspec, doc = ret["methods"]["add"]
    assert doc == "Add and scale."
    assert set(argspec) == {"args", "varargs", "varkw", "defaults", "kwonlyargs",
                            "kwonlydefaults", "annotations"}
    assert argspec["args"] == ["a", "b"] and argspec["defaults"] == (0,)
    assert argspec["kwonlyargs"] == ["scale"] and argspec["kwonlydefaults"] == {"scale": 1}


# --------------------------------------------------------------------------- PYON both ways

LABPIPE_VALUES = [
    None, True, 0, -12, 2**64, 1.25, "s ✓", [1, [2]], {"a": {"b": None}},
    (), (1, (2, "x")), {1: "a", (2, 3): "b", None: 0}, {"rid": {7: (True, "x")}},
    {1, 2}, {(1, 2)}, 2 - 3j, b"\x00\x01\xff", slice(0, 10, 2), slice(None), Fraction(3, 7),
    OrderedDict([("z", 1), ("a", (2,))]),
    numpy.arange(6, dtype=numpy.int8).reshape(2, 3), numpy.zeros((0, 2)),
    numpy.array([[1 + 1j]], dtype=numpy.complex128), numpy.array([True, False]),
    numpy.arange(20, dtype=numpy.uint16)[::3], numpy.float32(0.5), numpy.int64(-3),
    numpy.bool_(True), [numpy.uint8(255), {"arr": numpy.ones(3, dtype=">f8")}],
]


@pytest.mark.parametrize("value", LABPIPE_VALUES, ids=repr)
def test_labpipe_pyon_decodes_independently(value):
    text = pyon.encode(value)
    assert text == compact_json(json.loads(text))  # plain compact JSON
    decoded = indep_decode(text)
    expected = numpy.ascontiguousarray(value) if isinstance(value, numpy.ndarray) else value
    assert_same(decoded, expected)


def test_special_floats_decode_independently():
    decoded = indep_decode(pyon.encode([float("nan"), float("inf"), -float("inf")]))
    assert math.isnan(decoded[0]) and decoded[1:] == [math.inf, -math.inf]


HAND_WRITTEN = [
    ('{"a":[1,{"b":null}],"c":true,"d":0.0015}', {"a": [1, {"b": None}], "c": True, "d": 0.0015}),
    ('{"__jsonclass__":["tuple",[[1,"two",3.0]]]}', (1, "two", 3.0)),
    ('{"__jsonclass__":["tuple",[[]]]}', ()),
    ('{"__jsonclass__":["dict",[[[1,"one"],[2,"two"]]]]}', {1: "one", 2: "two"}),
    ('{"__jsonclass__":["dict",[[[{"__jsonclass__":["tuple",[[1,2]]]},"pair"]]]]}',
     {(1, 2): "pair"}),
    ('{"rid":{"__jsonclass__":["dict",[[[3,{"__jsonclass__":["tuple",[[true,"x"]]]}]]]]}}',
     {"rid": {3: (True, "x")}}),
    ('{"__jsonclass__":["set",[[1,2,3]]]}', {1, 2, 3}),
    ('{"__jsonclass__":["complex",[1.5,-2.0]]}', complex(1.5, -2.0)),
    ('{"__jsonclass__":["bytes",["aGVsbG8="]]}', b"hello"),
    ('{"__jsonclass__":["slice",[1,10,2]]}', slice(1, 10, 2)),
    ('{"__jsonclass__":["slice",[null,5,null]]}', slice(None, 5, None)),
    ('{"__jsonclass__":["Fraction",[1,3]]}', Fraction(1, 3)),
    ('{"__jsonclass__":["OrderedDict",[[["b",1],["a",2]]]]}', OrderedDict([("b", 1), ("a", 2)])),
    ('{"__jsonclass__":["nparray",[[2,2],"<i4","AQAAAAIAAAADAAAABAAAAA=="]]}',
     numpy.array([[1, 2], [3, 4]], dtype="<i4")),
    ('{"__jsonclass__":["nparray",[[0],"<f8",""]]}', numpy.zeros(0)),
    ('{"__jsonclass__":["npscalar",["<f8","AAAAAAAA+D8="]]}', numpy.float64(1.5)),
]


@pytest.mark.parametrize("text,expected", HAND_WRITTEN, ids=[t for t, _ in HAND_WRITTEN])
def test_hand_written_pyon_decodes_with_labpipe(text, expected):
    assert_same(pyon.decode(text), expected)
    assert_same(indep_decode(text), expected)  # the reading of the doc agrees
    assert pyon.encode(expected) == text  # and labpipe writes exactly this
