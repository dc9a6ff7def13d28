"""Stream buffer and writer (labpipe.stream), as real processes over real ZMQ.

1. Buffer: ``labpipe-stream-sim`` at RATE Hz of ROWSxCOLS uint16 images plus 50 scalar
   channels for DURATION s into ``labpipe-buffer``: messages lost (dropped by the
   simulator because nobody took them, plus pulse-id gaps the buffer saw), the
   buffer's CPU time per message (floor: one in-memory copy of the image), its RSS
   beside its ring's size (the floor of RSS).
2. Writer, the same stream running: ``labpipe-writer`` writing a window of WINDOW
   images,
   a. *past*: a window the ring holds whole, asked for once its last pulse was sent
      (its first WINDOW/RATE s before), from the start call to the writer's
      exit with the file fsynced: its throughput beside this disk's sequential write
      speed for the same bytes, in the same run, interleaved with the writers:
      ``dd bs=4M conv=fsync`` and an h5py write into a contiguous dataset, fsynced;
      REPEAT times, medians;
   b. *live*: a window whose first pulse id was sent 2 s before the start call, the
      rest still to come: the first pulse id written against the one asked for,
      rows without data (floor: 0), its rate beside the stream's (its floor).
3. Scalars: 10 kHz of 20 float64 channels for SCALAR_DURATION s, buffered and
   written: messages the simulator dropped, pulse ids the buffer missed, rows without
   data, the writer's errors (floor: 0 lost); REPEAT times.

``--duration``, ``--window`` and ``--scalar-duration`` shorten the run on a shared
machine.
"""

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

import h5py
import numpy as np

import floors
from labpipe.stream.client import BufferClient


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(module, *args):
    """A labpipe.stream process, once it printed its first line."""
    process = subprocess.Popen([sys.executable, "-m", f"labpipe.stream.{module}",
                                *map(str, args)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None
    process.stdout.readline()
    return process


def stop(process):
    """SIGTERM, then its stderr."""
    process.terminate()
    _, err = process.communicate(timeout=60)
    return err


class Chain:
    """A simulator and a buffer; ``sim_counts`` once stopped: (sent, dropped)."""

    def __init__(self, ring, rate, image=None, scalars=50):
        sim_port, self.out_port = free_port(), free_port()
        self.address = f"tcp://127.0.0.1:{self.out_port}"
        self.buffer = start("buffer", f"tcp://127.0.0.1:{sim_port}", "-o",
                            self.out_port, "-b", ring)
        image_args = ("--image", f"{image[0]}x{image[1]}") if image else ()
        self.sim = start("sim", "-p", sim_port, "--rate", rate, "--scalars", scalars,
                         *image_args)
        # long: the buffer writes its ring through at the first message (seconds a GB)
        self.client = BufferClient(self.address, timeout=180)
        self.sim_counts = (0, 0)

    def stop_sim(self):
        line = [x for x in stop(self.sim).splitlines() if "sent" in x][-1]
        self.sim_counts = (int(line.split("sent ")[1].split(",")[0]),
                           int(line.split("dropped ")[1]))

    def close(self):
        if self.sim.returncode is None:
            self.stop_sim()
        self.client.close()
        stop(self.buffer)


@contextlib.contextmanager
def chain(*args, **kwargs):
    started = Chain(*args, **kwargs)
    try:
        yield started
    finally:
        started.close()


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def rest(port, method, path):
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def wait_buffered(client, n, timeout):
    deadline = time.monotonic() + timeout
    while client.status()["buffered"] < n:
        if time.monotonic() > deadline:
            raise SystemExit(f"bench_stream: the buffer did not hold {n} messages"
                             f" within {timeout:g} s")
        time.sleep(0.2)
    return client.status()


def write_window(address, path, first, last):
    """A labpipe-writer for pulse ids first..last: seconds from the start call to
    its exit, exit code, stderr."""
    port = free_port()
    writer = start("writer", address, path, -1, port)
    began = time.monotonic()
    rest(port, "PUT", f"/stop_pulse_id/{last}")
    rest(port, "PUT", f"/start_pulse_id/{first}")
    code = writer.wait(timeout=600)
    seconds = time.monotonic() - began
    err = writer.stderr.read().strip()
    writer.stdout.close()
    writer.stderr.close()
    return seconds, code, err


def read_window(path, name):
    """First pulse id, rows, rows without data of channel ``name``; file size."""
    with h5py.File(path) as f:
        pulses = f[f"data/{name}/pulse_id"][()]
        present = int(f[f"data/{name}/is_data_present"][()].sum())
    size = os.path.getsize(path)
    os.unlink(path)
    return int(pulses[0]) if len(pulses) else None, len(pulses), len(pulses) - present, size


def _fsync(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def h5py_floor(directory, size):
    """Bytes per second of an h5py write of ``size`` bytes into a contiguous dataset,
    16 MiB at a time, fsynced."""
    path = os.path.join(directory, "floor.h5")
    block = np.ones(8 << 20, np.uint16)
    count = size // block.itemsize
    began = time.perf_counter()
    with h5py.File(path, "w") as f:
        dataset = f.create_dataset("d", (count,), np.uint16)
        for index in range(0, count, len(block)):
            n = min(len(block), count - index)
            dataset[index:index + n] = block[:n]
    _fsync(path)
    seconds = time.perf_counter() - began
    written = os.path.getsize(path)
    os.unlink(path)
    return written / seconds


def dd_floor(directory, size):
    """Bytes per second of ``dd if=/dev/zero bs=4M conv=fsync`` of ``size`` bytes."""
    path = os.path.join(directory, "floor.dd")
    count = max(1, size // (4 << 20))
    began = time.perf_counter()
    subprocess.run(["dd", "if=/dev/zero", f"of={path}", "bs=4M", f"count={count}",
                    "conv=fsync"], check=True, capture_output=True)
    seconds = time.perf_counter() - began
    written = os.path.getsize(path)
    os.unlink(path)
    return written / seconds


def copy_floor(image):
    """Median seconds of one copy of one image in memory (numpy), measured here."""
    source = np.ones(image, np.uint16)
    target = np.empty_like(source)
    times = []
    for _ in range(50):
        began = time.perf_counter()
        np.copyto(target, source)
        times.append(time.perf_counter() - began)
    return float(np.median(times))


def mbps(value):
    return f"{value / 1e6:.0f} MB/s"


def bench_buffer(args, image):
    with chain(args.ring, args.rate, image) as c:
        time.sleep(1)
        status0 = c.client.status()
        cpu0 = cpu_seconds(c.buffer.pid)
        rss = []
        began = time.monotonic()
        while time.monotonic() - began < args.duration:
            time.sleep(1)
            rss.append(rss_bytes(c.buffer.pid))
        status1 = c.client.status()
        cpu1 = cpu_seconds(c.buffer.pid)
        c.stop_sim()
    sent, dropped = c.sim_counts
    received = status1["received"] - status0["received"]
    print(f"buffer: {args.rate:g} Hz of {image[0]}x{image[1]} uint16 + 50 scalars for"
          f" {args.duration:g} s: {received} messages received,"
          f" {status1['gaps']} pulse ids missing (gaps) after the buffer's first message;"
          f" the simulator dropped {dropped} of {sent + dropped} (those not seen as"
          f" gaps: before the buffer's first message), malformed"
          f" {status1['malformed']}, late {status1['late']}")
    floor = copy_floor(image)
    print(f"buffer: CPU per message {1e6 * (cpu1 - cpu0) / max(received, 1):.0f} us"
          f" (floor: one in-memory copy of the image {1e6 * floor:.0f} us; the"
          f" buffer makes one, from the received frame into the ring, after the"
          f" kernel's off the socket);"
          f" RSS {min(rss) / 1e6:.0f}..{max(rss) / 1e6:.0f} MB beside the ring's"
          f" {status1['ring_bytes'] / 1e6:.0f} MB (floor)")


def bench_writer(args, image, directory):
    # the ring holds the window, 2 s more, and the pulses sent while a writer writes
    ring = args.window + int(5 * args.rate)
    path = os.path.join(directory, "window.h5")
    with chain(ring, args.rate, image) as c:
        wait_buffered(c.client, args.window + int(2 * args.rate),
                      timeout=3 * ring / args.rate + 120)
        rates, dds, h5s = [], [], []
        for _ in range(args.repeat):
            size = args.window * image[0] * image[1] * 2
            dds.append(dd_floor(directory, size))
            h5s.append(h5py_floor(directory, size))
            newest = c.client.status()["newest_pulse_id"]
            first = newest - args.window + 1  # its first pulse sent WINDOW/RATE s ago
            seconds, code, err = write_window(c.address, path, first,
                                              first + args.window - 1)
            written, rows, missing, size = read_window(path, "SIM:IMAGE")
            rates.append(size / seconds)
            print(f"writer, past window: exit {code} {err!r}, first pulse id {written}"
                  f" (asked {first}), {rows} rows, {missing} without data;"
                  f" {mbps(size / seconds)} over {seconds:.2f} s (floors: dd"
                  f" {mbps(dds[-1])}, h5py contiguous {mbps(h5s[-1])})")
        dd, h5 = statistics.median(dds), statistics.median(h5s)
        rate = statistics.median(rates)
        print(f"writer, past window of {args.window} images, median of {args.repeat}:"
              f" {mbps(rate)} (floors, medians: dd {mbps(dd)}, x{rate / dd:.2f};"
              f" h5py contiguous {mbps(h5)}, x{rate / h5:.2f}; target x0.80)")
        newest = c.client.status()["newest_pulse_id"]
        time.sleep(2)  # the start pulse id is asked for 2 s after it was sent
        seconds, code, err = write_window(c.address, path, newest,
                                          newest + args.window - 1)
        written, rows, missing, size = read_window(path, "SIM:IMAGE")
    stream = args.rate * image[0] * image[1] * 2
    print(f"writer, live window of {args.window} images asked 2 s after its first"
          f" pulse: exit {code} {err!r}, first pulse id {written} (asked {newest}),"
          f" {rows} rows, {missing} without data (floor 0); {mbps(size / seconds)}"
          f" over {seconds:.1f} s (floor: the stream's own"
          f" {mbps(stream * (args.window / args.rate) / (args.window / args.rate - 2))}"
          f" over the {args.window / args.rate - 2:.1f} s left of it)")


def bench_scalars(args, directory):
    path = os.path.join(directory, "scalars.h5")
    count = int(10000 * args.scalar_duration)
    for _ in range(args.repeat):
        with chain(count + 20000, 10000, scalars=20) as c:
            time.sleep(1)
            first = c.client.status()["newest_pulse_id"] + 1000  # 0.1 s from now
            seconds, code, err = write_window(c.address, path, first, first + count - 1)
            status = c.client.status()
            buffer_cpu = cpu_seconds(c.buffer.pid)
            c.stop_sim()
        _, rows, missing, _ = read_window(path, "SIM:SCALAR0")
        sent, dropped = c.sim_counts
        print(f"scalars: 10 kHz x 20 float64, a window of {count}: simulator sent"
              f" {sent}, dropped {dropped}; buffer gaps {status['gaps']}, its CPU"
              f" {buffer_cpu:.1f} s in all; writer exit {code} {err!r} after"
              f" {seconds:.1f} s, {rows} rows, {missing} without data (floor: 0 lost)")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=60)
    parser.add_argument("--rate", type=float, default=100)
    parser.add_argument("--image", default="1024x1280")
    parser.add_argument("--ring", type=int, default=300, help="of the buffer part")
    parser.add_argument("--window", type=int, default=1000)
    parser.add_argument("--scalar-duration", type=float, default=10)
    parser.add_argument("--repeat", type=int, default=3,
                        help="past windows and scalar windows, each")
    parser.add_argument("--parts", default="buffer,writer,scalars",
                        help="which of the three to run, comma-separated")
    args = parser.parse_args()
    image = tuple(int(n) for n in args.image.split("x"))
    floors.header("bench_stream.py")
    with tempfile.TemporaryDirectory(dir=".") as directory:
        parts = args.parts.split(",")
        if "buffer" in parts:
            bench_buffer(args, image)
        if "writer" in parts:
            bench_writer(args, image, directory)
        if "scalars" in parts:
            bench_scalars(args, directory)
    floors.load_average("end")


if __name__ == "__main__":
    main()
