"""labpipe.stream: the simulator, the buffer and the writer as real processes over
real ZMQ and HTTP on 127.0.0.1; an experiment capturing a window with labpipe-run."""

import argparse
import contextlib
import json
import os
import pathlib
import pwd
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request

import h5py
import numpy as np
import pytest

from conftest import free_ports, terminate, wait_for
from labpipe.stream import wire
from labpipe.stream.client import BufferClient
from labpipe.stream.writer import user_id


def start(module, *args):
    return subprocess.Popen([sys.executable, "-m", f"labpipe.stream.{module}",
                             *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@contextlib.contextmanager
def processes():
    started = []
    try:
        yield started
    finally:
        for item in reversed(started):
            if isinstance(item, subprocess.Popen):
                terminate(item, timeout=10)
                item.stdout.close()
                item.stderr.close()
            else:
                item.close()


class Chain:
    """A simulator and a buffer on free ports."""

    def __init__(self, started, length=400, rate=200, sim_args=(), buffer_args=(),
                 channels=("--image", "3x4", "--scalars", 2, "--waveform", 5)):
        self.started = started
        self.channels = channels
        self.sim_port, self.out_port = free_ports(2)
        self.rate = rate
        self.sim_args = sim_args
        self.length = length
        self.buffer_args = buffer_args
        # the buffer first: it takes the simulator's first messages, whatever the
        # machine's load does to the processes' start
        self.buffer = self.start_buffer()
        self.sim = self.start_sim()
        self.client = BufferClient(f"tcp://127.0.0.1:{self.out_port}", timeout=10)
        started.append(self)

    def close(self):
        self.client.close()

    def start_sim(self):
        process = start("sim", "-p", self.sim_port, "--rate", self.rate,
                        *self.channels, *self.sim_args)
        self.started.append(process)
        assert "sending" in process.stdout.readline()
        return process

    def start_buffer(self):
        process = start("buffer", f"tcp://127.0.0.1:{self.sim_port}", "-o",
                        self.out_port, "-b", self.length, *self.buffer_args)
        self.started.append(process)
        assert "buffering" in process.stdout.readline()
        return process

    def status(self):
        return self.client.status()

    def wait_buffered(self, n):
        wait_for(lambda: self.status()["buffered"] >= n, timeout=20)
        return self.status()

    def address(self):
        return f"tcp://127.0.0.1:{self.out_port}"


def rest(port, method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data,
                                     method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def start_writer(started, chain, path):
    (port,) = free_ports(1)
    process = start("writer", chain.address(), path, -1, port)
    started.append(process)
    assert "REST API" in process.stdout.readline()
    return process, port


def channel(f, name):
    group = f[f"data/{name}"]
    return {key: group[key][()] for key in ("data", "pulse_id", "timestamp",
                                            "is_data_present")}


def test_wire_round_trip_and_malformed_messages():
    channels = [wire.Channel("A", "uint16", (2, 3)), wire.Channel("B", "float64", (1,))]
    header = wire.data_header(channels)
    image = np.arange(6, dtype=np.uint16).reshape(2, 3)
    parts = wire.encode(7, 1, 2, header, [image.tobytes(), b""], [(1, 2), (1, 2)])
    main = json.loads(parts[0])
    assert main["htype"] == "bsr_m-1.1" and main["hash"] == wire.header_hash(header)
    message = wire.Decoder().decode(parts)
    assert message.pulse_id == 7 and (message.values[0] == image).all()
    assert message.values[1] is None
    for bad, words in [([b"{}"], "at least"), ([b"nope", header], "not JSON"),
                       ([parts[0], header, b"x"], "parts where"),
                       ([parts[0].replace(b"bsr_m", b"zzz_m"), header], "htype")]:
        with pytest.raises(wire.WireError, match=words):
            wire.Decoder().decode(bad)


def test_bitshuffle_lz4_round_trip():
    pytest.importorskip("bitshuffle", reason="the [stream] extra is not installed")
    channel_ = wire.Channel("IMG", "uint16", (4, 5), compression="bitshuffle_lz4")
    image = np.arange(20, dtype=np.uint16).reshape(4, 5)
    part = wire.compress(image, "bitshuffle_lz4")
    assert (wire.decompress(part, channel_) == image).all()


def test_window_by_pulse_id_start_in_the_past_stop_in_the_future(tmp_path):
    with processes() as started:
        # a ring of 10 s: the writer's start under load must not outlast the window's past
        chain = Chain(started, length=2000, sim_args=("--skip-every", 25))
        status = chain.wait_buffered(100)
        newest = status["newest_pulse_id"]
        start_pulse, stop_pulse = newest - 80, newest + 60
        stop_pulse -= stop_pulse % 25  # a pulse id the stream skips: the last row
        writer, port = start_writer(started, chain, tmp_path / "out.h5")
        assert rest(port, "GET", "/status") == (200, {"state": "ok", "status": "waiting"})
        assert rest(port, "POST", "/parameters", {"user": "me", "n": 3})[0] == 200
        assert rest(port, "PUT", f"/start_pulse_id/{start_pulse}")[1]["state"] == "ok"
        assert rest(port, "PUT", f"/stop_pulse_id/{stop_pulse}")[1]["state"] == "ok"
        assert writer.wait(timeout=20) == 0, writer.stderr.read()
    with h5py.File(tmp_path / "out.h5") as f:
        scalar = channel(f, "SIM:SCALAR1")
        assert list(scalar["pulse_id"]) == list(range(start_pulse, stop_pulse + 1))
        skipped = scalar["pulse_id"] % 25 == 0
        assert skipped.any()  # gaps: rows with is_data_present false
        assert (scalar["is_data_present"] == ~skipped).all()
        present = scalar["is_data_present"]
        assert np.allclose(scalar["data"][present, 0],
                           scalar["pulse_id"][present] + 0.01)
        image = channel(f, "SIM:IMAGE")
        assert image["data"].shape == (stop_pulse - start_pulse + 1, 3, 4)
        assert (image["data"][present, 0, 0] == (image["pulse_id"][present] & 0xFFFF)).all()
        assert (image["timestamp"][present] > 0).all()
        assert f["general"].attrs["user"] == "me" and f["general"].attrs["n"] == 3
        assert f["data/SIM:IMAGE/data"].chunks is not None
    assert status["gaps"] > 0


def test_scalars_at_a_kilohertz_buffered_and_written_without_loss(tmp_path):
    # bench_stream.py runs the 10 kHz; here 1.5 s of 1 kHz, every pulse id
    with processes() as started:
        chain = Chain(started, length=20_000, rate=1000, channels=("--scalars", 20))
        start_pulse = chain.wait_buffered(10)["newest_pulse_id"] + 500
        stop_pulse = start_pulse + 1499
        writer, port = start_writer(started, chain, tmp_path / "scalars.h5")
        rest(port, "PUT", f"/start_pulse_id/{start_pulse}")
        rest(port, "PUT", f"/stop_pulse_id/{stop_pulse}")
        assert writer.wait(timeout=30) == 0, writer.stderr.read()
        assert chain.status()["gaps"] == 0
    pulses = np.arange(start_pulse, stop_pulse + 1)
    with h5py.File(tmp_path / "scalars.h5") as f:
        assert sorted(f["data"]) == sorted(f"SIM:SCALAR{i}" for i in range(20))
        for index in range(20):
            scalar = channel(f, f"SIM:SCALAR{index}")
            assert (scalar["pulse_id"] == pulses).all()
            assert scalar["is_data_present"].all()
            assert (scalar["data"][:, 0] == pulses + index / 100).all()


def test_a_window_that_starts_in_the_future(tmp_path):
    # the blocks read before the start are all skipped (an empty block ended the
    # writer with exit 0 and no data)
    with processes() as started:
        chain = Chain(started)
        start_pulse = chain.wait_buffered(5)["newest_pulse_id"] + 600  # 3 s ahead
        writer, port = start_writer(started, chain, tmp_path / "future.h5")
        rest(port, "PUT", f"/start_pulse_id/{start_pulse}")
        rest(port, "PUT", f"/stop_pulse_id/{start_pulse + 9}")
        assert writer.wait(timeout=20) == 0, writer.stderr.read()
    with h5py.File(tmp_path / "future.h5") as f:
        scalar = channel(f, "SIM:SCALAR0")
        assert list(scalar["pulse_id"]) == list(range(start_pulse, start_pulse + 10))
        assert scalar["is_data_present"].all()


def test_start_now_stop_now_and_every_rest_error(tmp_path):
    with processes() as started:
        chain = Chain(started)
        chain.wait_buffered(10)
        writer, port = start_writer(started, chain, tmp_path / "now.h5")
        code, reply = rest(port, "PUT", "/stop_now")
        assert code == 400 and reply["state"] == "error" and "not started" in reply["status"]
        assert rest(port, "PUT", "/start_pulse_id/abc") == (
            400, {"state": "error", "status": "pulse id 'abc' is not an integer"})
        assert rest(port, "GET", "/nowhere")[1]["state"] == "error"
        assert rest(port, "POST", "/status")[0] == 405
        assert rest(port, "POST", "/parameters", [1, 2])[1]["status"] == \
            "the parameters are not a JSON object"
        before = chain.status()["newest_pulse_id"]
        assert rest(port, "PUT", "/start_now")[1] == {"state": "ok", "status": "writing"}
        assert rest(port, "PUT", "/start_now")[1]["state"] == "error"
        assert rest(port, "PUT", "/start_pulse_id/5")[1]["state"] == "error"
        wait_for(lambda: rest(port, "GET", "/statistics")[1]["status"]["rows"] >= 20)
        assert rest(port, "PUT", "/stop_now")[1]["state"] == "ok"
        assert rest(port, "PUT", "/stop_now")[1]["state"] == "error"
        assert writer.wait(timeout=20) == 0, writer.stderr.read()
    with h5py.File(tmp_path / "now.h5") as f:
        pulses = f["data/SIM:SCALAR0/pulse_id"][()]
        assert pulses[0] > before and len(pulses) >= 20
        assert f["data/SIM:SCALAR0/is_data_present"][()].all()


def test_stop_kill_and_stop_before_start(tmp_path):
    with processes() as started:
        chain = Chain(started)
        chain.wait_buffered(5)
        writer, port = start_writer(started, chain, tmp_path / "a.h5")
        newest = chain.status()["newest_pulse_id"]
        assert rest(port, "PUT", f"/start_pulse_id/{newest}")[1]["state"] == "ok"
        code, reply = rest(port, "PUT", f"/stop_pulse_id/{newest - 1}")
        assert code == 400 and "before the start" in reply["status"]
        wait_for(lambda: rest(port, "GET", "/statistics")[1]["status"]["rows"] >= 5)
        assert rest(port, "GET", "/stop") == (200, {"state": "ok", "status": "stopping"})
        assert writer.wait(timeout=20) == 0
        with h5py.File(tmp_path / "a.h5") as f:
            assert f["data/SIM:SCALAR0/pulse_id"][0] == newest
        killed, port = start_writer(started, chain, tmp_path / "b.h5")
        assert rest(port, "GET", "/kill")[1]["status"] == "killed"
        assert killed.wait(timeout=20) == 1


def test_window_partly_older_than_the_ring(tmp_path):
    with processes() as started:
        chain = Chain(started, length=50)
        status = chain.wait_buffered(50)
        writer, port = start_writer(started, chain, tmp_path / "old.h5")
        status = chain.status()
        start_pulse = status["oldest_pulse_id"] - 100
        stop_pulse = status["newest_pulse_id"] + 100
        rest(port, "PUT", f"/stop_pulse_id/{stop_pulse}")
        rest(port, "PUT", f"/start_pulse_id/{start_pulse}")
        assert writer.wait(timeout=20) == 1
        line = writer.stderr.read().strip()
        assert len(line.splitlines()) == 1 and "older than the buffer's ring" in line
        assert f"pulse ids {start_pulse} to" in line
    with h5py.File(tmp_path / "old.h5") as f:
        pulses = f["data/SIM:SCALAR0/pulse_id"][()]
        assert pulses[0] > start_pulse and pulses[-1] == stop_pulse
        assert "older than" in f["general"].attrs["errors"]


def test_data_header_change_mid_window(tmp_path):
    with processes() as started:
        # the simulator's pulse ids start where the test says, so the change is known
        first = 10_000
        change = first + 200
        chain = Chain(started, length=2000, sim_args=("--start-pulse-id", first,
                                                      "--change-at", change))
        start_pulse = chain.wait_buffered(30)["oldest_pulse_id"] + 5
        assert start_pulse < change - 20
        writer, port = start_writer(started, chain, tmp_path / "change.h5")
        rest(port, "PUT", f"/start_pulse_id/{start_pulse}")
        rest(port, "PUT", f"/stop_pulse_id/{change + 40}")
        assert writer.wait(timeout=20) == 0, writer.stderr.read()
        assert chain.status()["header_changes"] == 2
    with h5py.File(tmp_path / "change.h5") as f:
        extra = channel(f, "SIM:EXTRA")
        scalar = channel(f, "SIM:SCALAR0")
        assert len(extra["pulse_id"]) == len(scalar["pulse_id"]) == \
            change + 41 - start_pulse
        assert scalar["is_data_present"].all()
        after = extra["pulse_id"] >= change
        assert (extra["is_data_present"] == after).all()
        assert (extra["data"][after, 0] == np.arange(change, change + 41)).all()


def test_buffer_restart_and_source_restart():
    with processes() as started:
        chain = Chain(started)
        chain.wait_buffered(10)
        assert terminate(chain.buffer, timeout=10) == 0
        chain.buffer = chain.start_buffer()
        chain.client.close()
        first = chain.wait_buffered(10)
        assert first["received"] >= 10
        # the source goes away and comes back: the buffer resumes by itself
        assert terminate(chain.sim, timeout=10) == 0
        received = chain.status()["received"]
        chain.sim = chain.start_sim()
        wait_for(lambda: chain.status()["received"] >= received + 20, timeout=20)
        status = chain.status()
        assert status["malformed"] == 0 and status["late"] == 0


def test_analyzer_counts_malformed_messages():
    import zmq
    (out_port,) = free_ports(1)
    context = zmq.Context()
    push = context.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    sim_port = push.bind_to_random_port("tcp://127.0.0.1")
    with processes() as started:
        buffer = start("buffer", f"tcp://127.0.0.1:{sim_port}", "-o", out_port, "-b", 5,
                       "--analyzer")
        started.append(buffer)
        assert "buffering" in buffer.stdout.readline()
        header = wire.data_header([wire.Channel("X", "float64", (1,))])
        push.send_multipart([b"not json", header])
        for pulse in (5, 4, 7):
            push.send_multipart(wire.encode(pulse, 0, 0, header,
                                            [np.float64(pulse).tobytes()], [(0, 0)]))
        client = BufferClient(f"tcp://127.0.0.1:{out_port}")
        wait_for(lambda: client.status()["received"] == 4)
        status = client.status()
        assert (status["malformed"], status["late"], status["gaps"]) == (1, 1, 1)
        assert [m.pulse_id for m in client.last(5)] == [5, 7]
        client.close()
    push.close()
    context.term()


def test_bad_command_lines_are_one_line():
    for module, args, words in [
            ("buffer", ["nowhere", "-o", "1", "-b", "5"], "tcp://HOST:PORT"),
            ("buffer", ["tcp://127.0.0.1:1", "-o", "1", "-b", "0"], "at least 1"),
            ("sim", ["-p", "1", "--image", "3by4"], "ROWSxCOLS"),
            ("writer", ["tcp://127.0.0.1:1", "/nonexistent/dir/x.h5", "-1", "1"],
             "cannot create"),
            ("writer", ["tcp://127.0.0.1:1", "x.h5", "-2", "1"], "-2 is not a user id")]:
        result = subprocess.run([sys.executable, "-m", f"labpipe.stream.{module}", *args],
                                capture_output=True, text=True, timeout=30)
        assert result.returncode != 0
        lines = result.stderr.strip().splitlines()
        assert words in lines[-1] and "Traceback" not in result.stderr, result.stderr


NOBODY = 65534


@pytest.fixture
def open_dir():
    """A directory anyone may write (pytest's tmp_path is root's alone)."""
    path = pathlib.Path(tempfile.mkdtemp(prefix="labpipe_writer_uid_"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path)


def run_writer(*args, prefix=()):
    return subprocess.run([*prefix, sys.executable, "-m", "labpipe.stream.writer",
                           *map(str, args)], capture_output=True, text=True, timeout=30)


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                    reason="dropping to another user needs root (and setpriv)")
def test_the_writer_drops_to_its_user_id_before_it_creates_the_file(open_dir):
    with processes() as started:
        chain = Chain(started, length=5000)  # 25 s: the writer's start is slow
        newest = chain.wait_buffered(20)["newest_pulse_id"]
        (port,) = free_ports(1)
        path = open_dir / "nobody.h5"
        writer = start("writer", chain.address(), path, NOBODY, port)
        started.append(writer)
        assert "REST API" in writer.stdout.readline()
        rest(port, "PUT", f"/start_pulse_id/{newest - 10}")
        rest(port, "PUT", f"/stop_pulse_id/{newest}")
        assert writer.wait(timeout=20) == 0, writer.stderr.read()
        owner = os.stat(path)
        assert (owner.st_uid, owner.st_gid) == (NOBODY, pwd.getpwuid(NOBODY).pw_gid)
        with h5py.File(path) as f:
            assert list(f["data/SIM:SCALAR0/pulse_id"]) == list(range(newest - 10,
                                                                      newest + 1))
        # the writer has nobody's rights, not root's: a directory of root's is closed
        closed = open_dir / "roots"
        closed.mkdir(mode=0o755)
        (port,) = free_ports(1)
        result = run_writer(chain.address(), closed / "x.h5", NOBODY, port)
        assert result.returncode == 1 and not (closed / "x.h5").exists()
        assert result.stderr == (f"labpipe-writer: cannot create {closed / 'x.h5'} as"
                                 f" user {NOBODY}: Permission denied\n")
    # without the right to change users (root's capabilities dropped by setpriv; a
    # plain user could not start this interpreter, which lives in root's home)
    result = run_writer("tcp://127.0.0.1:1", open_dir / "y.h5", NOBODY, port,
                        prefix=("setpriv", "--bounding-set", "-all", "--inh-caps",
                                "-all"))
    assert (result.returncode, result.stderr) == (
        1, f"labpipe-writer: cannot become user {NOBODY}: Operation not permitted\n")
    assert not (open_dir / "y.h5").exists()
    assert sorted(p.name for p in open_dir.iterdir()) == ["nobody.h5", "roots"]


def test_user_ids_the_writer_takes():
    assert [user_id(text) for text in ("-1", "0", "65534")] == [-1, 0, 65534]
    for bad, words in [("-2", "-2 is not"), (str(2**32 - 1), "0 to 4294967294"),
                       ("root", "'root' is not a user id")]:
        with pytest.raises(argparse.ArgumentTypeError, match=words):
            user_id(bad)


CAPTURE = """
import time
from labpipe.stream.device import StreamWindowError

class Capture(EnvExperiment):
    def build(self):
        self.setattr_stream("camera")

    def run(self):
        newest = self.camera.last(3)[-1].pulse_id
        stats = self.camera.capture(newest - 20, newest + 10)
        self.set_dataset("rows", stats["rows"], archive=True)
        self.set_dataset("first", stats["first_pulse_id"], archive=True)
"""

CAPTURE_NOW = """
import time

class CaptureNow(EnvExperiment):
    def build(self):
        self.setattr_stream("camera")

    def run(self):
        self.camera.capture_now()
        time.sleep(0.2)
        stats = self.camera.stop()
        self.set_dataset("rows", stats["rows"], archive=True)
"""


def test_an_experiment_captures_a_window_into_its_results_file(lab):
    with processes() as started:
        chain = Chain(started)
        chain.wait_buffered(30)
        lab.write("device_db.py", f"device_db = {{'camera': {{'type': 'stream',"
                                  f" 'buffer': {chain.address()!r}}}}}\n")
        for name, body in [("capture", CAPTURE), ("capture_now", CAPTURE_NOW)]:
            lab.experiment(name, body)
            result = subprocess.run(
                [sys.executable, "-m", "labpipe.client.run", f"repository/{name}.py",
                 "-o", f"{name}.h5"], cwd=lab.root, capture_output=True, text=True,
                timeout=60)
            assert result.returncode == 0, result.stderr
        with h5py.File(lab.path("capture.h5")) as f:
            group = f["streams/camera/data/SIM:IMAGE"]
            assert len(group["pulse_id"]) == f["datasets/rows"][()] == 31
            assert group["pulse_id"][0] == f["datasets/first"][()]
            assert group["data"].shape == (31, 3, 4)
            assert group["is_data_present"][()].all()
        with h5py.File(lab.path("capture_now.h5")) as f:
            rows = f["datasets/rows"][()]
            assert rows > 5 and len(f["streams/camera/data/SIM:SCALAR0/data"]) == rows


def test_a_bitshuffle_lz4_stream_is_buffered_uncompressed():
    pytest.importorskip("bitshuffle", reason="the [stream] extra is not installed")
    with processes() as started:
        chain = Chain(started, sim_args=("--compression", "bitshuffle_lz4"))
        chain.wait_buffered(3)
        message = chain.client.last(1)[0]
        image = message.values[[c.name for c in message.channels].index("SIM:IMAGE")]
        expected = np.arange(12, dtype=np.uint16).reshape(3, 4)
        expected[0, 0] = message.pulse_id & 0xFFFF
        assert (image == expected).all()
        assert chain.status()["malformed"] == 0


def test_a_large_image_is_buffered_whole():
    # above the buffer's BIG_MESSAGE: received without copies, as memoryviews
    with processes() as started:
        chain = Chain(started, rate=20, channels=("--image", "600x1000", "--scalars", 1))
        chain.wait_buffered(3)
        for message in chain.client.last(2):
            image = message.values[[c.name for c in message.channels].index("SIM:IMAGE")]
            expected = np.arange(600_000, dtype=np.uint16).reshape(600, 1000)
            expected[0, 0] = message.pulse_id & 0xFFFF
            assert (image == expected).all()
            assert message.values[0][0] == message.pulse_id
        assert chain.status()["malformed"] == 0
