"""DatasetDB: real LMDB files, durability across reopen and kill -9, mods published."""

import asyncio
import copy
import os
import signal
import subprocess
import sys
import threading
import textwrap
from collections import OrderedDict
from fractions import Fraction

import lmdb
import numpy
import pytest


from labpipe.master import datasets as datasets_module
from labpipe.master.datasets import DatasetDB, DatasetNotFoundError
from labpipe.protocol.sync import apply_mod


@pytest.fixture
def db_path(tmp_path):
    return str(tmp_path / "dataset_db.mdb")


def reopen(path, **kwargs):
    db = DatasetDB(path, **kwargs)
    return db, copy.deepcopy(db.data.raw_view)


def on_disk(path):
    """What a fresh DatasetDB loads from path (opened and closed again)."""
    db, data = reopen(path)
    db.close()
    return data


def assert_same(a, b):
    """Equal with the same types, numpy arrays included (dtype and shape)."""
    assert type(a) is type(b), (a, b)
    if isinstance(a, numpy.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert numpy.array_equal(a, b, equal_nan=a.dtype.kind in "fc")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, float) and a != a:
        assert b != b
    else:
        assert a == b


PYON_VALUES = {
    "none": None,
    "bool": True,
    "int": -12345678901234567890,
    "float": 1.5e-300,
    "nan": float("nan"),
    "inf": float("-inf"),
    "str": "héllo\nworld",
    "list": [1, "a", [2.5, None]],
    "tuple": (1, (2, 3), "x"),
    "dict_str_keys": {"a": 1, "b": {"c": [1, 2]}},
    "dict_int_keys": {1: "one", 2: (3, 4)},
    "dict_tuple_keys": {(1, 2): "pair"},
    "set": {1, 2, 3},
    "complex": 1 + 2j,
    "bytes": b"\x00\xffbinary",
    "slice": slice(1, 10, 2),
    "fraction": Fraction(3, 7),
    "ordereddict": OrderedDict([("z", 1), ("a", 2)]),
    "nparray_f64": numpy.linspace(0, 1, 7).reshape(7, 1),
    "nparray_i32_2d": numpy.arange(12, dtype=numpy.int32).reshape(3, 4),
    "nparray_c128": numpy.array([1 + 1j, 2 - 2j]),
    "nparray_bool": numpy.array([True, False]),
    "nparray_empty": numpy.zeros((0, 3)),
    "npscalar_f32": numpy.float32(2.5),
    "npscalar_i64": numpy.int64(-7),
    "jsonclass_lookalike": {"__jsonclass__": ["tuple", [[1]]]},
}


async def test_every_pyon_type_survives_reopen(db_path):
    async def main():
        db = DatasetDB(db_path)
        for key, value in PYON_VALUES.items():
            await db.set(key, value, persist=True, metadata={"unit": "ms", "scale": 1e-3,
                                                             "precision": 2})
        db.close()

    await main()
    db, data = reopen(db_path)
    try:
        assert set(data) == set(PYON_VALUES)
        for key, value in PYON_VALUES.items():
            persist, stored, metadata = data[key]
            assert persist is True
            assert_same(stored, value)
            assert metadata == {"unit": "ms", "scale": 1e-3, "precision": 2}
            assert_same(db.get(key), value)
            assert db.get_metadata(key) == metadata
    finally:
        db.close()


async def test_non_persistent_datasets_stay_in_memory(db_path):
    async def main():
        db = DatasetDB(db_path)
        await db.set("volatile", 1)
        await db.set("kept", 2, persist=True)
        assert db.data.raw_view == {"volatile": (False, 1, {}), "kept": (True, 2, {})}
        db.close()

    await main()
    data = on_disk(db_path)
    assert data == {"kept": (True, 2, {})}


async def test_persist_none_and_metadata_none_keep_the_current_ones(db_path):
    async def main():
        db = DatasetDB(db_path)
        await db.set("x", 1, persist=True, metadata={"unit": "V"})
        await db.set("x", 2)  # keeps persist=True and the unit
        await db.set("y", 3)  # new: persist False, metadata {}
        assert db.data.raw_view == {"x": (True, 2, {"unit": "V"}), "y": (False, 3, {})}
        await db.set("x", 4, metadata={})
        assert db.data.raw_view["x"] == (True, 4, {})
        db.close()

    await main()
    data = on_disk(db_path)
    assert data == {"x": (True, 4, {})}


async def test_turning_persist_off_deletes_from_disk(db_path):
    async def main():
        db = DatasetDB(db_path)
        await db.set("x", 1, persist=True)
        await db.set("x", 2, persist=False)
        assert db.get("x") == 2
        db.close()

    await main()
    data = on_disk(db_path)
    assert data == {}


async def test_deleted_datasets_stay_deleted(db_path):
    async def main():
        db = DatasetDB(db_path)
        for i in range(5):
            await db.set(f"k{i}", i, persist=True)
        await db.delete("k1")
        await db.update({"action": "delitem", "path": [], "key": "k3"})
        db.close()

    await main()
    for _ in range(2):  # and again after a second reopen
        data = on_disk(db_path)
        assert data == {"k0": (True, 0, {}), "k2": (True, 2, {}), "k4": (True, 4, {})}


async def test_map_grows_beyond_its_initial_size(db_path):
    initial = 64 * 1024
    big = numpy.random.default_rng(1).random((400, 400))  # 1.28 MB, 1.7 MB in PYON

    async def main():
        db = DatasetDB(db_path, map_size=initial)
        await db.set("big", big, persist=True)
        for i in range(50):
            await db.set(f"row{i}", big[i], persist=True)
        db.close()

    await main()
    assert os.path.getsize(db_path) > 20 * initial
    db, data = reopen(db_path, map_size=initial)
    try:
        assert_same(data["big"][1], big)
        assert_same(data["row49"][1], big[49])
        await db.set("more", big.T.copy(), persist=True)  # grows again after reopening
    finally:
        db.close()
    data = on_disk(db_path)
    assert_same(data["more"][1], big.T.copy())


async def test_mods_are_published_in_order(db_path):
    async def main():
        db = DatasetDB(db_path)
        mods = []
        db.data.add_listener(lambda mod: mods.append(copy.deepcopy(mod)))
        await db.set("a", [1, 2], persist=True, metadata={"unit": "s"})
        await db.set("b", 5)
        await db.update({"action": "append", "path": ["a", 1], "x": 3})
        await db.update({"action": "setitem", "path": ["a", 1], "key": 0, "value": 10})
        await db.update({"action": "insert", "path": ["a", 1], "i": 1, "x": 7})
        await db.update({"action": "pop", "path": ["a", 1], "i": 0})
        await db.update({"action": "setitem", "path": ["a", 2], "key": "scale", "value": 2})
        await db.update({"action": "setitem", "path": [], "key": "c", "value": (False, "v", {})})
        await db.delete("b")
        await db.update({"action": "delitem", "path": [], "key": "c"})
        db.close()
        return mods

    mods = await main()
    assert mods == [
        {"action": "setitem", "path": [], "key": "a", "value": (True, [1, 2], {"unit": "s"})},
        {"action": "setitem", "path": [], "key": "b", "value": (False, 5, {})},
        {"action": "append", "path": ["a", 1], "x": 3},
        {"action": "setitem", "path": ["a", 1], "key": 0, "value": 10},
        {"action": "insert", "path": ["a", 1], "i": 1, "x": 7},
        {"action": "pop", "path": ["a", 1], "i": 0},
        {"action": "setitem", "path": ["a", 2], "key": "scale", "value": 2},
        {"action": "setitem", "path": [], "key": "c", "value": (False, "v", {})},
        {"action": "delitem", "path": [], "key": "b"},
        {"action": "delitem", "path": [], "key": "c"},
    ]
    data = on_disk(db_path)
    assert data == {"a": (True, [7, 2, 3], {"unit": "s", "scale": 2})}


async def test_mirror_built_from_mods_matches(db_path):
    """A subscriber applying the published mods ends with the same structure."""
    async def main():
        db = DatasetDB(db_path)
        mirror = copy.deepcopy(db.data.raw_view)
        db.data.add_listener(lambda mod: apply_mod(mirror, copy.deepcopy(mod)))
        await db.set("arr", numpy.zeros((0, 2)), persist=True)
        await db.update({"action": "append", "path": ["arr", 1], "x": numpy.array([1.0, 2.0])})
        await db.update({"action": "append", "path": ["arr", 1], "x": [3.0, 4.0]})
        await db.set("nested", {"pts": [numpy.zeros(1)]})
        await db.update({"action": "append", "path": ["nested", 1, "pts", 0], "x": 5.0})
        await db.update({"action": "setitem", "path": ["arr", 1], "key": (0, 1), "value": 9.0})
        data = copy.deepcopy(db.data.raw_view)
        db.close()
        return mirror, data

    mirror, data = await main()
    assert_same(mirror, data)
    assert_same(data["arr"][1], numpy.array([[1.0, 9.0], [3.0, 4.0]]))
    assert_same(data["nested"][1], {"pts": [numpy.array([0.0, 5.0])]})
    stored = on_disk(db_path)
    assert_same(stored["arr"], data["arr"])


async def test_append_to_numpy_array_publishes_the_new_entry(db_path):
    async def main():
        db = DatasetDB(db_path)
        await db.set("arr", numpy.array([1, 2]), metadata={"unit": "Hz"})
        mods = []
        db.data.add_listener(mods.append)
        await db.update({"action": "append", "path": ["arr", 1], "x": 3})
        db.close()
        return mods

    (mod,) = await main()
    assert mod["action"] == "setitem" and mod["path"] == [] and mod["key"] == "arr"
    persist, value, metadata = mod["value"]
    assert (persist, metadata) == (False, {"unit": "Hz"})
    assert_same(value, numpy.array([1, 2, 3]))


async def test_update_of_a_persistent_dataset_is_committed(db_path):
    async def main():
        db = DatasetDB(db_path)
        await db.update({"action": "setitem", "path": [], "key": "p",
                         "value": [True, {"n": 0}, {}]})  # a list of three is accepted
        assert db.data.raw_view["p"] == (True, {"n": 0}, {})
        await db.update({"action": "setitem", "path": ["p", 1], "key": "n", "value": 1})
        db.close()

    await main()
    data = on_disk(db_path)
    assert data == {"p": (True, {"n": 1}, {})}


async def test_update_soon_is_update_done_at_once_when_it_can_be(db_path):
    """A worker's broadcast set is applied (and published) before update_soon returns;
    what needs the disk, or comes behind a change waiting for it, is the update()
    coroutine, in order; a bad entry is refused as update() refuses it."""
    async def main():
        db = DatasetDB(db_path)
        mods = []
        db.data.add_listener(mods.append)
        assert db.update_soon({"action": "setitem", "path": [], "key": "b",
                               "value": (False, 1, {})}) is None
        assert db.data.raw_view["b"] == (False, 1, {}) and len(mods) == 1
        persist = db.update_soon({"action": "setitem", "path": [], "key": "p",
                                  "value": (True, 2, {})})
        behind = db.update_soon({"action": "setitem", "path": [], "key": "b",
                                 "value": (False, 3, {})})
        assert persist is not None and behind is not None  # the disk, then behind it
        await asyncio.gather(persist, behind)
        assert [m["value"][1] for m in mods] == [1, 2, 3]
        # persist turned off: the dataset leaves the file, so it waits for the disk too
        off = db.update_soon({"action": "setitem", "path": [], "key": "p",
                              "value": (False, 4, {})})
        assert off is not None
        await off
        with pytest.raises(ValueError, match="persist flag must be a bool"):
            db.update_soon({"action": "setitem", "path": [], "key": "b",
                            "value": ("no", 5, {})})
        assert db.data.raw_view["b"] == (False, 3, {})
        db.close()

    await main()
    assert on_disk(db_path) == {}


async def test_errors_are_clear_and_change_nothing(db_path):
    async def main():
        db = DatasetDB(db_path)
        await db.set("x", [1], persist=True)
        mods = []
        db.data.add_listener(mods.append)
        for call in (lambda: db.get("nope"), lambda: db.get_metadata("nope")):
            with pytest.raises(KeyError, match="dataset 'nope' does not exist"):
                call()
        with pytest.raises(DatasetNotFoundError, match="'nope'"):
            await db.delete("nope")
        with pytest.raises(KeyError, match="'nope'"):
            await db.update({"action": "append", "path": ["nope", 1], "x": 1})
        with pytest.raises(ValueError, match="entry tuple"):
            await db.update({"action": "setitem", "path": ["x"], "key": 1, "value": 2})
        with pytest.raises(ValueError, match="cannot apply to the datasets dict"):
            await db.update({"action": "append", "path": [], "x": 1})
        with pytest.raises(ValueError, match="not a dataset mod"):
            await db.update({"action": "explode", "path": []})
        with pytest.raises(ValueError, match="append mod without x"):
            await db.update({"action": "append", "path": ["x", 1]})
        with pytest.raises(ValueError, match=r"'x': cannot apply the pop mod at path \['x', 1\]: "
                                             r"IndexError"):
            await db.update({"action": "pop", "path": ["x", 1], "i": 5})
        with pytest.raises(ValueError, match=r"cannot apply the append mod at path \['x', 1, 0\]"):
            await db.update({"action": "append", "path": ["x", 1, 0], "x": 1})
        with pytest.raises(ValueError, match=r"at path \['x', 2\]: KeyError"):
            await db.update({"action": "delitem", "path": ["x", 2], "key": "unit"})
        with pytest.raises(ValueError, match="persist, value, metadata"):
            await db.update({"action": "setitem", "path": [], "key": "y", "value": 3})
        with pytest.raises(ValueError, match="metadata must be a dict"):
            await db.set("y", 1, metadata=[1])
        with pytest.raises(ValueError, match="non-empty str"):
            await db.set("", 1)
        with pytest.raises(TypeError, match="'y' cannot be persisted"):
            await db.set("y", object(), persist=True)
        with pytest.raises(ValueError, match="too long to persist"):
            await db.set("k" * 600, 1, persist=True)
        assert mods == []
        assert db.data.raw_view == {"x": (True, [1], {})}
        db.close()

    await main()


async def test_commits_run_in_the_writer_thread_batched_and_in_order(db_path, monkeypatch):
    threads = []
    commit = datasets_module._Writer._commit

    def recording_commit(self, ops):
        threads.append((threading.get_ident(), len(ops)))
        return commit(self, ops)

    monkeypatch.setattr(datasets_module._Writer, "_commit", recording_commit)

    async def main():
        db = DatasetDB(db_path)
        # 300 concurrent writers: later writes to the same key must win on disk.
        await asyncio.gather(*(db.set(f"k{i % 10}", i, persist=True) for i in range(300)))
        await db.set("after", 1, persist=True)
        db.close()

    await main()
    main_thread = threading.get_ident()
    assert threads and all(ident != main_thread for ident, _ in threads)
    assert sum(n for _, n in threads) == 301
    assert len(threads) < 301  # concurrent writes shared transactions
    env = lmdb.open(db_path, subdir=False, readonly=True, lock=False)
    try:
        assert env.info()["last_txnid"] == len(threads)
    finally:
        env.close()
    data = on_disk(db_path)
    assert data == {**{f"k{i}": (True, 290 + i, {}) for i in range(10)}, "after": (True, 1, {})}


async def test_a_cancelled_caller_still_gets_its_write_committed(db_path):
    async def main():
        db = DatasetDB(db_path)
        task = asyncio.create_task(db.set("x", numpy.zeros(100_000), persist=True))
        await asyncio.sleep(0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        db.close()  # waits for queued commits

    await main()
    data = on_disk(db_path)
    assert data["x"][1].shape == (100_000,)


async def test_closed_database_refuses_persistent_writes(db_path):
    async def main():
        db = DatasetDB(db_path)
        db.close()
        db.close()  # idempotent
        with pytest.raises(RuntimeError, match="closed"):
            await db.set("x", 1, persist=True)

    await main()


KILL_CHILD = textwrap.dedent("""
    import asyncio, sys
    from labpipe.master.datasets import DatasetDB

    async def writer(db, name):
        i = 0
        while True:
            key = f"{name}-{i}"
            await db.set(key, {"i": i, "points": list(range(i % 40))}, persist=True)
            print(f"done {key}", flush=True)
            i += 1

    async def main():
        db = DatasetDB(sys.argv[1])
        print("ready", flush=True)
        await asyncio.gather(*(writer(db, f"w{n}") for n in range(4)))

    asyncio.run(main())
""")


def test_acknowledged_sets_survive_kill_9(db_path):
    child = subprocess.Popen([sys.executable, "-c", KILL_CHILD, db_path],
                             stdout=subprocess.PIPE, text=True)
    acknowledged = []
    try:
        assert child.stdout.readline() == "ready\n"
        while len(acknowledged) < 300:
            line = child.stdout.readline()
            assert line.startswith("done "), line
            acknowledged.append(line.split()[1])
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    # Lines still in the pipe were acknowledged too.
    acknowledged += [line.split()[1] for line in child.stdout.read().splitlines()
                     if line.startswith("done ")]
    child.stdout.close()
    assert child.returncode == -signal.SIGKILL

    data = on_disk(db_path)
    for key in acknowledged:
        i = int(key.split("-")[1])
        assert data[key] == (True, {"i": i, "points": list(range(i % 40))}, {}), key
