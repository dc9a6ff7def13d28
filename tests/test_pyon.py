"""PYON v2 (labpipe.protocol.pyon): type fidelity, numpy, refusals, no evaluation, files.

Every round trip is checked with ``assert_same``, which compares types as well as
values, recursively (``1 == 1.0 == True`` and ``(1,) != [1]`` would otherwise hide
fidelity bugs).
"""

import builtins
import json
import math
import os
import random
from collections import OrderedDict
from fractions import Fraction

import numpy
import pytest

from labpipe.protocol import pyon


def assert_same(a, b, where="value"):
    """Assert a and b are equal with the same types, all the way down."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, numpy.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert numpy.array_equal(a, b, equal_nan=a.dtype.kind in "fc"), where
    elif isinstance(a, numpy.generic):
        assert a.dtype == b.dtype, where
        assert a.tobytes() == b.tobytes(), where
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b), where
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, dict):
        assert list(a) == list(b), where  # same keys, same order (and same key types below)
        for (ka, va), (kb, vb) in zip(a.items(), b.items()):
            assert_same(ka, kb, f"{where} key {ka!r}")
            assert_same(va, vb, f"{where}[{ka!r}]")
    elif isinstance(a, set):
        assert a == b, where
        assert sorted(map(repr, a)) == sorted(map(repr, b)), where  # element types too
    else:
        assert a == b, where


def roundtrip(obj):
    text = pyon.encode(obj)
    assert "\n" not in text
    assert text.isascii()
    return pyon.decode(text)


SCALARS = [
    None, True, False, 0, -1, 2**70, -(2**80), 0.0, -0.0, 1.5, 1e300, float("inf"),
    float("-inf"), float("nan"), "", "text", "ünïcødé ✓ \U0001F600", "line\nbreak\ttab\"quote\\",
]

VALUES = SCALARS + [
    [], [1, "a", None], {}, {"a": 1, "b": [2, 3]},
    (), (1,), (1, "two", 3.0), ((1, 2), [3, (4,)]),
    {1: "one", 2: "two"}, {1: "int", "1": "str"}, {(1, 2): "tuple key"},
    {True: "bool key", None: "none key", 2.5: "float key"},
    {"__jsonclass__": "a plain dict that looks like an escape"},
    set(), {1, 2, 3}, {"a", (1, 2)},
    1 + 2j, complex(0, -1), complex(float("inf"), 0),
    b"", b"\x00\xff binary", bytes(range(256)),
    slice(1, 10, 2), slice(None, 5, None), slice(None),
    Fraction(1, 3), Fraction(-7, 2), Fraction(0),
    OrderedDict(), OrderedDict([("z", 1), ("a", 2), ("m", (3, 4))]), OrderedDict([(1, "x")]),
]


def _id(value) -> str:
    """A test id that is the same in every process (a set's repr follows the hash
    seed of str items: pytest-xdist's workers must collect the same ids)."""
    if isinstance(value, (set, frozenset)):
        return type(value).__name__ + repr(sorted(value, key=repr))
    return repr(value)


@pytest.mark.parametrize("value", VALUES, ids=_id)
def test_roundtrip_keeps_types(value):
    assert_same(roundtrip(value), value)


def test_nested_structure_keeps_types():
    value = {
        "tuple": (1, (2, 3), [4, (5,)]),
        "int keys": {1: {2: (3, {4: b"x"})}},
        "set": {(1, "a"), 2},
        "mixed": [OrderedDict([("b", Fraction(1, 2))]), slice(0, 1), 1j, None],
        "array": numpy.arange(6, dtype=numpy.int16).reshape(2, 3),
        "scalar": numpy.float32(0.25),
        ("tuple", "key"): [numpy.array([True, False])],
    }
    assert_same(roundtrip(value), value)


def test_wire_form_is_compact_json():
    text = pyon.encode({"a": (1, 2), "b": [1, 2]})
    assert text == '{"a":{"__jsonclass__":["tuple",[[1,2]]]},"b":[1,2]}'
    assert pyon.encode({1: 2}) == '{"__jsonclass__":["dict",[[[1,2]]]]}'


def test_pretty_output_decodes_the_same():
    value = {"a": (1, [2, {3: "x"}]), "b": numpy.arange(3)}
    text = pyon.encode(value, pretty=True)
    assert "\n" in text
    assert_same(pyon.decode(text), value)


def test_bytes_input_decodes():
    assert_same(pyon.decode(pyon.encode((1, "é")).encode()), (1, "é"))


# --------------------------------------------------------------------------- numpy

DTYPES = ["int8", "uint8", "uint16", "int32", "int64", "uint64", "float16", "float32",
          "float64", "complex64", "complex128", "bool", ">i4", ">f8", "<U3", "S4"]


@pytest.mark.parametrize("dtype", DTYPES)
def test_numpy_array_dtypes(dtype):
    a = (numpy.arange(12) % 5).astype(dtype).reshape(3, 4)
    b = roundtrip(a)
    assert_same(b, a)
    assert b.flags.c_contiguous and b.flags.writeable  # a usable copy, not a view
    b[0, 0] = b[1, 1]


@pytest.mark.parametrize("shape", [(0,), (0, 3), (2, 0, 4), (), (5,), (2, 3, 4), (1, 1, 1, 1)])
def test_numpy_array_shapes(shape):
    a = numpy.random.default_rng(1).normal(size=shape)
    assert_same(roundtrip(a), a)


def test_numpy_special_float_values():
    a = numpy.array([numpy.nan, numpy.inf, -numpy.inf, -0.0, 1e-310])
    b = roundtrip(a)
    assert_same(b, a)
    assert numpy.signbit(b[3])


def test_numpy_non_contiguous_input():
    base = numpy.arange(60, dtype=numpy.float64).reshape(6, 10)
    for view in [base[::2, 1::3], base.T, numpy.asfortranarray(base), base[:, 5], base[::-1]]:
        assert not view.flags.c_contiguous
        assert_same(roundtrip(view), numpy.ascontiguousarray(view))


@pytest.mark.parametrize("scalar", [
    numpy.int8(-5), numpy.uint16(65535), numpy.int32(7), numpy.int64(-(2**62)),
    numpy.uint64(2**64 - 1), numpy.float16(0.5), numpy.float32(1.25), numpy.float64(-2.5),
    numpy.complex64(1 - 2j), numpy.complex128(3 + 4j), numpy.bool_(True), numpy.bool_(False),
    numpy.float64("nan"), numpy.datetime64("2020-01-02"),
], ids=repr)
def test_numpy_scalars(scalar):
    assert_same(roundtrip(scalar), scalar)


def test_numpy_in_containers():
    value = [numpy.int64(3), {"x": numpy.zeros((2, 2), dtype=numpy.complex128)}, (numpy.bool_(0),)]
    assert_same(roundtrip(value), value)


def test_object_dtype_refused():
    with pytest.raises(TypeError):
        pyon.encode(numpy.array([1, "a", None], dtype=object))
    with pytest.raises(TypeError):
        pyon.encode({"nested": [numpy.empty(2, dtype=object)]})
    with pytest.raises(ValueError):
        pyon.decode('{"__jsonclass__":["nparray",[[1],"|O","AAAAAAAAAAA="]]}')
    with pytest.raises(ValueError):
        pyon.decode('{"__jsonclass__":["npscalar",["|O","AAAAAAAAAAA="]]}')


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("text", [
    '{"__jsonclass__":["unknown_type",[1]]}',
    '{"__jsonclass__":["os.system",["echo hi"]]}',
    '{"__jsonclass__":["eval",["1+1"]]}',
    '{"__jsonclass__":["__import__",["os"]]}',
    '[1,{"__jsonclass__":["frozenset",[[1]]]}]',
])
def test_unknown_escape_is_an_error(text):
    with pytest.raises(ValueError):
        pyon.decode(text)


@pytest.mark.parametrize("text", [
    '{"__jsonclass__":"tuple"}',
    '{"__jsonclass__":["tuple"]}',
    '{"__jsonclass__":["tuple",{"a":1}]}',
    '{"__jsonclass__":["complex",["a","b","c"]]}',
    '{"__jsonclass__":["bytes",["not base64!"]]}',
    '{"__jsonclass__":["nparray",[[3],"<f8","AAAA"]]}',
    '{"__jsonclass__":["nparray",[[1],"not a dtype","AAAAAAAAAAA="]]}',
    '{"__jsonclass__":["dict",[[[[1],2]]]]}',
    '{"__jsonclass__":["Fraction",[1,0]]}',
    '{', '', 'undefined', "{'a': 1}", "(1, 2)", "[" * 100000,
])
def test_malformed_text_is_a_value_error(text):
    with pytest.raises(ValueError):
        pyon.decode(text)


def test_unencodable_types_are_refused():
    for value in [object(), {1, (2, object())}, lambda: 0, {"a": Exception()}, frozenset]:
        with pytest.raises(TypeError):
            pyon.encode(value)


def test_decoding_never_evaluates_code(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("decode evaluated code")

    for name in ["eval", "exec", "compile", "__import__"]:
        monkeypatch.setattr(builtins, name, forbidden)
    code = "__import__('os').system('echo pwned')"
    samples = {
        json.dumps(code): code,
        json.dumps([code, {"k": code}]): [code, {"k": code}],
        '{"__jsonclass__":["tuple",[["1+1","[1,2]"]]]}': ("1+1", "[1,2]"),
        '{"__jsonclass__":["dict",[[["os.getcwd()","x"]]]]}': {"os.getcwd()": "x"},
        '{"__jsonclass__":["set",[["(1, 2)"]]]}': {"(1, 2)"},
        pyon.encode(numpy.arange(3)): numpy.arange(3),
    }
    for text, expected in samples.items():
        assert_same(pyon.decode(text), expected)
    # Python literal syntax (PYON v1) is not decoded at all
    for text in ["(1, 2)", "{1: 'a'}", "set()", "None", "b'x'"]:
        with pytest.raises(ValueError):
            pyon.decode(text)


# --------------------------------------------------------------------------- files


def test_store_and_load_file(tmp_path):
    path = tmp_path / "state.pyon"
    value = {"last_rid": 41, "t": (1, 2), 3: numpy.arange(4, dtype=numpy.uint16)}
    pyon.store_file(path, value)
    assert_same(pyon.load_file(path), value)
    assert os.listdir(tmp_path) == ["state.pyon"]  # no temp file left behind

    pyon.store_file(str(path), {"last_rid": 42})  # overwrite, str path
    assert_same(pyon.load_file(path), {"last_rid": 42})
    assert os.listdir(tmp_path) == ["state.pyon"]


def test_failed_store_keeps_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "state.pyon"
    pyon.store_file(path, [1, 2])
    before = path.read_bytes()
    with pytest.raises(TypeError):
        pyon.store_file(path, [1, object()])
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["state.pyon"]


def test_store_file_replaces_atomically(tmp_path, monkeypatch):
    """The new content appears by one rename of a complete file over the old one."""
    path = tmp_path / "state.pyon"
    pyon.store_file(path, "old")
    renames = []
    real_replace = os.replace

    def spy_replace(src, dst):
        # at the moment of the rename the target still holds the old content
        # and the source is the complete new file
        assert pyon.load_file(dst) == "old"
        renames.append((pyon.load_file(src), os.fspath(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy_replace)
    pyon.store_file(path, {"new": (1, 2)})
    assert renames == [({"new": (1, 2)}, str(path))]
    assert pyon.load_file(path) == {"new": (1, 2)}
    assert os.listdir(tmp_path) == ["state.pyon"]


def test_load_hand_written_file(tmp_path):
    path = tmp_path / "hand.pyon"
    path.write_text('{\n  "rid": 7,\n  "pair": {"__jsonclass__": ["tuple", [[1, 2]]]}\n}\n')
    assert_same(pyon.load_file(path), {"rid": 7, "pair": (1, 2)})


# --------------------------------------------------------------------------- limits


@pytest.mark.parametrize("text, what", [
    ('{"__jsonclass__": ["Fraction", ["1e10000000"]]}', "two integers"),
    ('{"__jsonclass__": ["Fraction", [1, "3"]]}', "two integers"),
    ('{"__jsonclass__": ["Fraction", [true, 2]]}', "two integers"),
    ("[" + "1" * 5000 + "]", "integer"),
    ('{"__jsonclass__": ["Fraction", [' + "7" * 5000 + ", 3]]}", "integer"),
    ('{"__jsonclass__": ["complex", [1' + "0" * 400 + ", 0]]}", "complex"),
    ('{"__jsonclass__": ["complex", ["1e10000000", 0]]}', "two numbers"),
    ('{"__jsonclass__": ["complex", ["1+2j"]]}', "two numbers"),
    ("[" * 65 + "]" * 65, "nested deeper than 64"),
    ('{"__jsonclass__":["tuple",[[' * 65 + "]]]}" * 65, "nested"),
    ('{"__jsonclass__":["nparray",[[100000000000],"<f8",""]]}', "bytes"),
    ('{"__jsonclass__":["nparray",[[4000000000,4000000000],"|u1",""]]}', "bytes"),
    ('{"__jsonclass__":["nparray",[[0,99999999999999999999999],"<f8",""]]}', "shape"),
    ('{"__jsonclass__":["nparray",[[2],"<f8","AAAAAAAAAAA="]]}', "need 16 bytes"),
    ('{"__jsonclass__":["nparray",[[-1],"<f8",""]]}', "non-negative"),
    ('{"__jsonclass__":["nparray",[[1],"|V2000000000",""]]}', "dtype"),
    ('{"__jsonclass__":["nparray",[[1],"i4,i4","AAAAAAAAAAA="]]}', "dtype"),
    ('{"__jsonclass__":["nparray",[[1],"(2,)i4","AAAAAAAAAAA="]]}', "dtype"),
    ('{"__jsonclass__":["nparray",[[1],"|O8","AAAAAAAAAAA="]]}', "dtype"),
    ('{"__jsonclass__":["npscalar",["<f8","AAAAAAAAAAAAAAAAAAAAAA=="]]}', "needs 8 bytes"),
    ('{"__jsonclass__":["tuple",[[1]]],"extra":1}', "malformed"),
    ('{"__jsonclass__":["slice",[1]]}', "slice"),
    ('{"__jsonclass__":["set",[[[1]]]]}', "unhashable"),
])
def test_decode_limits_refuse_with_one_line_naming_the_problem(text, what):
    with pytest.raises(ValueError) as info:
        pyon.decode(text)
    message = str(info.value)
    assert what in message
    assert "\n" not in message and len(message) < 300


def test_limit_errors_have_their_own_class():
    with pytest.raises(pyon.LimitExceeded):
        pyon.decode("[" + "9" * 5000 + "]")
    with pytest.raises(pyon.LimitExceeded):
        pyon.decode("[1, 2, 3]", pyon.Limits(max_size=5))
    with pytest.raises(pyon.LimitExceeded):
        pyon.decode(pyon.encode(numpy.zeros(100)), pyon.Limits(max_array_bytes=799))
    assert pyon.decode(pyon.encode(numpy.zeros(100)), pyon.Limits(max_array_bytes=800)).size == 100
    with pytest.raises(pyon.LimitExceeded):
        pyon.decode("[[[1]]]", pyon.Limits(max_depth=2))
    assert pyon.decode("[[1]]", pyon.Limits(max_depth=2)) == [[1]]


def test_deepest_accepted_value_encodes_even_from_a_deep_stack():
    """A value at the depth limit, in the form that nests deepest in JSON (the dict
    escape), wrapped in WRAP_HEADROOM more levels, encodes from a caller already 200
    frames deep."""
    value = "leaf"
    for i in range(pyon.DEFAULT_LIMITS.max_depth):
        value = {i: value} if i % 2 else (value,)
    text = pyon.encode(value)
    decoded = pyon.decode(text)
    for i in range(pyon.WRAP_HEADROOM):
        decoded = {(i,): decoded}

    def deep(n):
        return deep(n - 1) if n else pyon.encode(decoded)
    assert deep(200)
    with pytest.raises(pyon.LimitExceeded):
        pyon.decode("[" + text + "]")


def test_encode_refuses_too_deep_and_too_long_in_one_line():
    value = []
    for _ in range(2000):
        value = [value]
    with pytest.raises(ValueError, match="nested deeper than 128"):
        pyon.encode(value)
    with pytest.raises(ValueError, match="integer of more than 4300 digits"):
        pyon.encode(10 ** 5000)
    with pytest.raises(ValueError, match="integer of more than 4300 digits"):
        pyon.encode(Fraction(10 ** 5000, 3))


def _random_value(rng, depth):
    """A random PYON value, sometimes as deep or as long as the limits allow."""
    scalars = [
        lambda: None, lambda: rng.random() < 0.5, lambda: rng.randrange(-10**6, 10**6),
        lambda: int("9" * rng.choice([1, 300, 4300])) * rng.choice([1, -1]),
        lambda: rng.choice([0.5, -1e308, float("inf"), float("nan"), 5e-324]),
        lambda: rng.choice(["", "x", "\ud800", "é\n\"", "__jsonclass__"]),
        lambda: complex(rng.random(), -1e308), lambda: rng.randbytes(rng.randrange(5)),
        lambda: Fraction(rng.randrange(-10**40, 10**40), rng.randrange(1, 10**40)),
        lambda: numpy.arange(rng.randrange(4), dtype=rng.choice(["<i4", ">f8", "<u2", "<c8"])),
        lambda: numpy.datetime64("2020-01-02"), lambda: numpy.uint64(2**64 - 1),
    ]
    if depth <= 1 or rng.random() < 0.3:
        return rng.choice(scalars)()
    child = lambda: _random_value(rng, depth - 1)
    key = lambda: rng.choice([rng.randrange(100), "k" + str(rng.randrange(100)), (1, "t"),
                              None, Fraction(1, 3)])
    kind = rng.randrange(7)
    n = rng.randrange(1, 4) if depth < 10 else 1  # deep values are chains: bounded size
    if kind == 0:
        return [child() for _ in range(n)]
    if kind == 1:
        return tuple(child() for _ in range(n))
    if kind == 2:
        return {key(): child() for _ in range(n)}
    if kind == 3:
        return OrderedDict((key(), child()) for _ in range(n))
    if kind == 4:
        return {rng.randrange(100), (1, rng.random())}
    if kind == 5:
        return slice(child(), None, rng.randrange(5))
    return {"s" + str(i): child() for i in range(n)}


def _mutations(rng, text):
    """Texts near text: a character changed, dropped or repeated, a part duplicated."""
    for _ in range(5):
        i = rng.randrange(len(text))
        yield text[:i] + rng.choice('[]{}",:0-e9.') + text[i + 1:]
        yield text[:i] + text[i + 1:]
        j = rng.randrange(i, len(text))
        yield text[:j] + text[i:j] + text[j:]


def test_whatever_decode_accepts_encodes_again():
    """The door's guarantee: a value decode accepted can always be sent on."""
    rng = random.Random(13)
    accepted = 0
    for _ in range(400):
        value = _random_value(rng, rng.choice([3, 8, pyon.DEFAULT_LIMITS.max_depth + 5]))
        try:
            text = pyon.encode(value)
        except ValueError:
            continue  # deeper than encode takes: that is encode's refusal, not decode's
        assert pyon.encode(pyon.decode(text)) is not None
        for candidate in [text, *_mutations(rng, text)]:
            try:
                decoded = pyon.decode(candidate)
            except ValueError as e:
                assert "\n" not in str(e)
                continue
            accepted += 1
            pyon.encode(decoded)  # must not raise
    assert accepted > 400

