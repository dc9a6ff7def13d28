"""The worker's DatasetManager: the mods it streams, its local and archive records."""

import copy

import numpy
import pytest

from labpipe.master.datasets import DatasetDB
from labpipe.protocol import pyon
from labpipe.protocol.sync import apply_mod
from labpipe.worker.datasets import DatasetManager, DatasetNotFoundError


class Master:
    """Stands in for the master: records mods, answers get_remote from a dict."""

    def __init__(self, remote=None):
        self.mods = []
        self.remote = dict(remote or {})
        self.remote_calls = []

    def send(self, mod):
        # Encode at once, as a pipe would: what is sent is what the master gets.
        self.mods.append(pyon.decode(pyon.encode(mod)))

    def get_remote(self, key):
        self.remote_calls.append(key)
        return self.remote[key]


@pytest.fixture
def master():
    return Master({"remote": (True, [1, 2], {"unit": "V"})})


@pytest.fixture
def dmgr(master):
    return DatasetManager(master.send, master.get_remote)


def test_set_sends_mods_only_with_broadcast_or_persist(dmgr, master):
    dmgr.set("quiet", 1)
    dmgr.set("shown", 2, broadcast=True, metadata={"unit": "ms"})
    dmgr.set("kept", 3, persist=True)
    assert master.mods == [
        {"action": "setitem", "path": [], "key": "shown", "value": (False, 2, {"unit": "ms"})},
        {"action": "setitem", "path": [], "key": "kept", "value": (True, 3, {})},
    ]
    assert dmgr.local == {"quiet": (1, {}), "shown": (2, {"unit": "ms"}), "kept": (3, {})}


def test_archive_false_keeps_the_value_out_of_the_results(dmgr, master):
    dmgr.set("x", 1)
    dmgr.set("x", 2, archive=False)
    assert dmgr.local == {}
    assert dmgr.get("x") == 2  # still this run's value
    assert master.remote_calls == []


def test_numpy_arrays_sent_are_copies(master):
    sent = []
    dmgr = DatasetManager(sent.append, master.get_remote)  # no encoding: the raw objects
    data = numpy.zeros(3)
    dmgr.set("a", data, broadcast=True)
    data[0] = 5.0  # the experiment keeps working on its array
    dmgr.mutate("a", 1, 7.0)
    dmgr.set("l", [numpy.zeros(2)], broadcast=True)
    dmgr.get("l")[0][0] = 9.0
    assert sent[0]["value"][1] is not data
    assert list(sent[0]["value"][1]) == [0.0, 0.0, 0.0]
    assert list(sent[2]["value"][1][0]) == [0.0, 0.0]
    assert list(dmgr.local["a"][0]) == [5.0, 7.0, 0.0]  # the archive sees the final state


def test_mutate_index_forms_and_mods(dmgr, master):
    dmgr.set("a", numpy.zeros((3, 4)), broadcast=True)
    master.mods.clear()
    dmgr.mutate("a", 0, numpy.ones(4))           # a row
    dmgr.mutate("a", (1, 3), 2.0)                # rows 1..2, ARTIQ's (start, stop)
    dmgr.mutate("a", ((0, 1), (2, 4)), 3.0)      # a 2-D slice
    expected = numpy.array([[1, 1, 3, 3], [2, 2, 2, 2], [2, 2, 2, 2]], dtype=float)
    assert numpy.array_equal(dmgr.get("a"), expected)
    assert [m["key"] for m in master.mods] == [0, slice(1, 3), (slice(0, 1), slice(2, 4))]
    assert all(m["action"] == "setitem" and m["path"] == ["a", 1] for m in master.mods)

    dmgr.set("q", [0, 0])  # not broadcast: mutated locally, nothing sent
    master.mods.clear()
    dmgr.mutate("q", 1, 5)
    assert dmgr.get("q") == [0, 5] and master.mods == []


def test_append_to_list_and_array(dmgr, master):
    dmgr.set("l", [], broadcast=True)
    dmgr.set("arr", numpy.zeros((0, 2)), broadcast=True)
    dmgr.set("scalars", numpy.array([1, 2]), broadcast=True)
    master.mods.clear()
    dmgr.append_to("l", 1.5)
    dmgr.append_to("arr", [1.0, 2.0])
    dmgr.append_to("arr", numpy.array([3.0, 4.0]))
    dmgr.append_to("scalars", 3)
    assert dmgr.get("l") == [1.5]
    assert numpy.array_equal(dmgr.get("arr"), [[1.0, 2.0], [3.0, 4.0]])
    assert numpy.array_equal(dmgr.local["arr"][0], [[1.0, 2.0], [3.0, 4.0]])
    assert numpy.array_equal(dmgr.get("scalars"), [1, 2, 3])
    assert [(m["action"], m["path"]) for m in master.mods] == [
        ("append", ["l", 1]), ("append", ["arr", 1]), ("append", ["arr", 1]),
        ("append", ["scalars", 1])]
    assert master.mods[0]["x"] == 1.5 and master.mods[3]["x"] == 3
    with pytest.raises(ValueError, match="'arr': cannot append a value of shape \\(3,\\)"):
        dmgr.append_to("arr", [1.0, 2.0, 3.0])
    dmgr.set("n", 5)
    with pytest.raises(TypeError, match="cannot append to a int"):
        dmgr.append_to("n", 1)


def test_mutating_a_dataset_not_set_in_this_run_is_refused(dmgr):
    for call in (lambda: dmgr.mutate("remote", 0, 1), lambda: dmgr.append_to("remote", 1)):
        with pytest.raises(KeyError, match="'remote' was not set in this run"):
            call()


def test_get_local_first_then_remote_with_archive(dmgr, master):
    assert dmgr.get("remote") == [1, 2]
    assert dmgr.archive == {}
    assert dmgr.get("remote", archive=True) == [1, 2]
    assert dmgr.archive == {"remote": [1, 2]}
    assert dmgr.get_metadata("remote") == {"unit": "V"}
    dmgr.set("remote", "mine", metadata={"unit": "A"})
    assert dmgr.get("remote", archive=True) == "mine"
    assert dmgr.get_metadata("remote") == {"unit": "A"}
    assert master.remote_calls == ["remote", "remote", "remote"]
    with pytest.raises(DatasetNotFoundError, match="dataset 'missing' does not exist"):
        dmgr.get("missing")
    with pytest.raises(KeyError):
        dmgr.get_metadata("missing")


def test_bad_arguments(dmgr):
    with pytest.raises(TypeError, match="key must be a str"):
        dmgr.set(1, 2)
    with pytest.raises(TypeError, match="metadata must be a dict"):
        dmgr.set("k", 2, metadata="ms")


async def test_streamed_mods_reproduce_the_run_in_the_master(tmp_path):
    """The worker's mods applied by a real DatasetDB, and a subscriber mirror of it."""
    async def main():
        db = DatasetDB(str(tmp_path / "dataset_db.mdb"))
        await db.set("calib", 0.5, persist=True)
        mirror = copy.deepcopy(db.data.raw_view)
        db.data.add_listener(lambda mod: apply_mod(mirror, copy.deepcopy(mod)))
        queue = []
        dmgr = DatasetManager(queue.append, lambda key: db.data.raw_view[key])

        dmgr.set("trace", [], broadcast=True)
        dmgr.set("image", numpy.zeros((2, 2)), broadcast=True, metadata={"unit": "counts"})
        dmgr.set("rows", numpy.zeros((0, 3)), persist=True)
        for i in range(100):
            dmgr.append_to("trace", i * 0.1)
        dmgr.mutate("image", (0, 1), 7.0)
        dmgr.append_to("rows", [1, 2, 3])
        dmgr.set("local_only", 1)
        assert dmgr.get("calib", archive=True) == 0.5
        for mod in queue:
            await db.update(pyon.decode(pyon.encode(mod)))
        data = copy.deepcopy(db.data.raw_view)
        db.close()
        return dmgr, data, mirror

    dmgr, data, mirror = await main()
    assert set(data) == {"calib", "trace", "image", "rows"}
    assert data["trace"] == (False, dmgr.get("trace"), {})
    assert numpy.array_equal(data["image"][1], dmgr.get("image"))
    assert data["image"][2] == {"unit": "counts"}
    assert data["rows"][0] is True and numpy.array_equal(data["rows"][1], [[1, 2, 3]])
    assert dmgr.archive == {"calib": 0.5}
    assert pyon.encode(mirror) == pyon.encode(data)
    db = DatasetDB(str(tmp_path / "dataset_db.mdb"))
    try:
        assert numpy.array_equal(db.get("rows"), [[1, 2, 3]])
    finally:
        db.close()
