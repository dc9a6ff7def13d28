"""write_results: one atomic HDF5 file per run, every field read back with plain h5py."""

import os
import time
from collections import OrderedDict

import h5py
import numpy
import pytest

import labpipe
from labpipe.protocol import pyon
from labpipe.worker.results import _STR, _write_group, results_path, write_results


def read_str(dataset):
    return dataset.asstr()[()]


def decode_value(dataset):
    """The Python value of one results dataset, following labpipe's encoding attribute."""
    encoding = dataset.attrs.get("labpipe_encoding")
    if encoding == "pyon":
        return pyon.decode(read_str(dataset))
    if encoding == "repr" or h5py.check_string_dtype(dataset.dtype):
        return read_str(dataset)
    return dataset[()]


def test_results_path_layout():
    start = time.mktime((2024, 3, 5, 14, 30, 0, 0, 0, -1))  # local time
    path = results_path("/lab/results", 42, "Scan", start)
    assert path == os.path.join("/lab/results", "2024-03-05", "14", "000000042-Scan.h5")
    assert results_path("r", 1234567890, "A", start).endswith("1234567890-A.h5")
    assert results_path("r", 7, "bad/name", start).endswith("000000007-bad_name.h5")


def test_every_field_is_written_and_read_back(tmp_path):
    start = time.time()
    path = results_path(tmp_path / "results", 12, "Exp", start)
    expid = {"file": "scan.py", "class_name": "Exp", "arguments": {"n": 3, 1: (2, 3)},
             "log_level": 20, "repo_rev": "abc123"}
    ramp = numpy.linspace(0, 1, 11)
    datasets = {
        "ramp": (ramp, {"unit": "ms", "scale": 1e-3, "precision": 2, "extra": {"a": 1}}),
        "count": (7, {}),
        "flag": (True, None),
        "cplx": (1 + 2j, None),
        "np_scalar": (numpy.float32(2.5), None),
        "name": ("héllo", None),
        "points": ([1.5, 2.5, 3.5], None),
        "ragged": ([[1], [2, 3]], None),
        "config": ({"a": 1, 2: (3, 4)}, None),
        "pair": ((1, 2), None),
        "nothing": (None, None),
        "words": (["a", "b"], None),
        "odict": (OrderedDict([("z", 1)]), None),
        "huge_int": (2 ** 70, None),
        "group.dotted": (3, None),
        "sub/key": (4, None),
    }
    archive = {"calib": numpy.eye(2), "label": "x", "settings": {"k": [1, "v"]}}
    log_lines = ["INFO:worker(12,Exp):exp:started", "WARNING:worker(12,Exp):exp:hot ✓"]
    write_results(path, rid=12, start_time=start, run_time=start + 1.5, expid=expid,
                  repo_rev="abc123", datasets=datasets, archive=archive,
                  log_lines=log_lines, error="ZeroDivisionError: division by zero",
                  extra_groups={"bluesky": {"start": {"uid": "u1", "plan_name": "count"}}})

    assert sorted(os.listdir(os.path.dirname(path))) == ["000000012-Exp.h5"]
    with h5py.File(path, "r") as f:
        assert f["rid"][()] == 12 and f["rid"].dtype == numpy.int64
        assert f["start_time"][()] == start
        assert f["run_time"][()] == start + 1.5
        assert pyon.decode(read_str(f["expid"])) == expid
        assert read_str(f["repo_rev"]) == "abc123"
        assert read_str(f["labpipe_version"]) == labpipe.__version__
        assert list(f["log"].asstr()[()]) == log_lines
        assert read_str(f["error"]) == "ZeroDivisionError: division by zero"

        d = f["datasets"]
        assert numpy.array_equal(d["ramp"][()], ramp)
        attrs = d["ramp"].attrs
        assert (attrs["unit"], attrs["scale"], attrs["precision"]) == ("ms", 1e-3, 2)
        assert list(attrs["labpipe_pyon_attrs"]) == ["extra"]
        assert pyon.decode(attrs["extra"]) == {"a": 1}
        assert d["count"][()] == 7
        assert d["flag"][()] == numpy.True_
        assert d["cplx"][()] == 1 + 2j
        assert d["np_scalar"].dtype == numpy.float32 and d["np_scalar"][()] == 2.5
        assert read_str(d["name"]) == "héllo" and "labpipe_encoding" not in d["name"].attrs
        assert numpy.array_equal(d["points"][()], [1.5, 2.5, 3.5])
        for key in ("ragged", "config", "pair", "nothing", "words", "odict", "huge_int"):
            assert d[key].attrs["labpipe_encoding"] == "pyon", key
            value = decode_value(d[key])
            assert value == datasets[key][0] and type(value) is type(datasets[key][0]), key
        assert d["group.dotted"][()] == 3
        assert d["sub"]["key"][()] == 4

        a = f["archive"]
        assert numpy.array_equal(a["calib"][()], numpy.eye(2))
        assert read_str(a["label"]) == "x"
        assert decode_value(a["settings"]) == {"k": [1, "v"]}
        assert decode_value(f["bluesky"]["start"]) == {"uid": "u1", "plan_name": "count"}


def test_minimal_file(tmp_path):
    path = tmp_path / "a" / "b" / "000000001-E.h5"  # folders created as needed
    write_results(path, rid=1, start_time=10.0, run_time=None, expid={"file": "e.py"})
    with h5py.File(path, "r") as f:
        assert sorted(f) == ["archive", "datasets", "expid", "labpipe_version", "log",
                             "rid", "start_time"]
        assert len(f["datasets"]) == 0 and len(f["archive"]) == 0
        assert f["log"].shape == (0,)
        assert h5py.check_string_dtype(f["log"].dtype) is not None


def test_unencodable_value_is_kept_as_repr_and_the_rest_written(tmp_path, caplog):
    class Opaque:
        def __repr__(self):
            return "<Opaque thing>"

    path = tmp_path / "r.h5"
    write_results(path, rid=1, start_time=0.0, run_time=0.0, expid={},
                  datasets={"odd": (Opaque(), None), "ok": (1, None)})
    with h5py.File(path, "r") as f:
        assert f["datasets/odd"].attrs["labpipe_encoding"] == "repr"
        assert read_str(f["datasets/odd"]) == "<Opaque thing>"
        assert f["datasets/ok"][()] == 1
    assert "odd" in caplog.text


def test_a_key_that_cannot_be_written_is_skipped(tmp_path, caplog):
    path = tmp_path / "r.h5"
    # "a" is a dataset, so "a/b" cannot make it a group.
    write_results(path, rid=1, start_time=0.0, run_time=0.0, expid={},
                  datasets={"a": (1, None), "a/b": (2, None), "c": (3, None),
                            "not_a_pair": 5})
    with h5py.File(path, "r") as f:
        assert f["datasets/a"][()] == 1 and f["datasets/c"][()] == 3
        assert sorted(f["datasets"]) == ["a", "c"]
    assert "a/b" in caplog.text and "not_a_pair" in caplog.text


def test_atomic_replace_and_no_temp_file_left(tmp_path):
    path = tmp_path / "000000005-E.h5"
    write_results(path, rid=5, start_time=0.0, run_time=1.0, expid={}, error="first")
    write_results(path, rid=5, start_time=0.0, run_time=1.0, expid={}, error="second")
    with h5py.File(path, "r") as f:
        assert read_str(f["error"]) == "second"
    assert os.listdir(tmp_path) == ["000000005-E.h5"]

    # A failing write leaves the old file untouched and no temporary file.
    with pytest.raises(ValueError, match="clashes"):
        write_results(path, rid=5, start_time=0.0, run_time=1.0, expid={}, error="third",
                      extra_groups={"log": {"x": 1}})
    with h5py.File(path, "r") as f:
        assert read_str(f["error"]) == "second"
    assert os.listdir(tmp_path) == ["000000005-E.h5"]


def _write_file_high_level(f, *, rid, start_time, run_time, expid, repo_rev, datasets,
                           archive, log_lines, error, extra_groups):
    """results._write_file as it was with h5py's high-level API only: the reference."""
    _write_group(f, "datasets", datasets or {}, with_metadata=True)
    _write_group(f, "archive", archive or {}, with_metadata=False)
    for group_name, items in (extra_groups or {}).items():
        _write_group(f, group_name, items, with_metadata=False)
    f["rid"] = numpy.int64(rid)
    f["start_time"] = numpy.float64(start_time)
    if run_time is not None:
        f["run_time"] = numpy.float64(run_time)
    f.create_dataset("expid", data=pyon.encode(expid), dtype=_STR)
    if repo_rev is not None:
        f.create_dataset("repo_rev", data=str(repo_rev), dtype=_STR)
    f.create_dataset("labpipe_version", data=labpipe.__version__, dtype=_STR)
    lines = [str(line) for line in (log_lines or [])]
    f.create_dataset("log", data=numpy.array(lines, dtype=object), dtype=_STR,
                     shape=(len(lines),))
    if error is not None:
        f.create_dataset("error", data=str(error), dtype=_STR)


@pytest.mark.parametrize("fields", [
    dict(rid=1, start_time=10.0, run_time=None, expid={"file": "e.py"}),
    dict(rid=2**40, start_time=1.7e9, run_time=1.7e9 + 0.25,
         expid={"file": "scan.py", "class_name": "Scan", "arguments": {"n": (1, 2)}},
         repo_rev="abc123", datasets={"x": (numpy.arange(3), {"unit": "s"}), "s": ("é", None)},
         archive={"calib": 1.5}, log_lines=["one", "dé\nux", 3], error="Traceback: é",
         extra_groups={"bluesky": {"start": {"uid": "u"}}}),
    dict(rid=0, start_time=0, run_time=0, expid={}, log_lines=("a",), repo_rev=7,
         error=""),
])
def test_fixed_fields_are_byte_for_byte_what_the_high_level_api_writes(tmp_path, fields):
    reference = tmp_path / "reference.h5"
    full = {"repo_rev": None, "datasets": None, "archive": None, "log_lines": None,
            "error": None, "extra_groups": None, **fields}
    with h5py.File(reference, "w") as f:
        _write_file_high_level(f, **full)
    write_results(tmp_path / "written.h5", **fields)
    assert (tmp_path / "written.h5").read_bytes() == reference.read_bytes()
