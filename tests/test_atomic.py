"""protocol.atomic.atomic_path: the temporary file, its name and its removal."""

import os
import stat

import pytest

from labpipe.protocol import atomic
from labpipe.protocol.atomic import atomic_path


def test_temporary_file_is_hidden_private_and_replaces_the_target(tmp_path):
    path = tmp_path / "new" / "folder" / "file.h5"  # missing folders are created
    with atomic_path(path, suffix=".h5.tmp") as tmp:
        assert os.path.dirname(tmp) == str(path.parent)
        name = os.path.basename(tmp)
        assert name.startswith(f".{os.getpid()}.") and name.endswith(".h5.tmp")
        assert stat.S_IMODE(os.stat(tmp).st_mode) == 0o600  # as tempfile.mkstemp
        assert os.path.getsize(tmp) == 0 and not path.exists()
        with open(tmp, "w") as f:
            f.write("new")
    assert path.read_text() == "new"
    assert os.listdir(path.parent) == ["file.h5"]


def test_a_name_that_exists_is_skipped(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic, "_counter", iter([7, 7, 8]))
    with atomic_path(tmp_path / "a") as first:
        with open(first, "w") as f:
            f.write("a")
        with atomic_path(tmp_path / "b") as second:  # .PID.7.tmp exists: .PID.8.tmp
            assert os.path.basename(first) == f".{os.getpid()}.7.tmp"
            assert os.path.basename(second) == f".{os.getpid()}.8.tmp"
    assert (tmp_path / "a").read_text() == "a"
    assert sorted(os.listdir(tmp_path)) == ["a", "b"]


def test_no_free_name_is_an_error(tmp_path, monkeypatch):
    (tmp_path / f".{os.getpid()}.0.tmp").write_text("left over")
    monkeypatch.setattr(atomic, "_counter", iter([0] * 10000))
    with pytest.raises(FileExistsError, match="no free temporary file name"):
        with atomic_path(tmp_path / "x"):
            pass
    assert os.listdir(tmp_path) == [f".{os.getpid()}.0.tmp"]


def test_failure_removes_the_temporary_file_and_keeps_the_target(tmp_path):
    path = tmp_path / "state"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            with open(tmp, "w") as f:
                f.write("half")
            raise RuntimeError
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["state"]
