"""Stream buffer and writer (labpipe.stream), as real processes over real ZMQ.

1. Buffer: ``labpipe-stream-sim`` at RATE Hz of ROWSxCOLS uint16 images plus 50 scalar
   channels for DURATION s into ``labpipe-buffer``: messages lost (dropped by the
   simulator because nobody took them, plus pulse-id gaps the buffer saw), the
   buffer's CPU time per message, its RSS beside its ring's size (the floor of RSS).
2. Writer: ``labpipe-writer`` writing a window of WINDOW images, started by a pulse id
   sent 2 s before the start call, its throughput beside this disk's sequential write
   speed (an h5py contiguous write of the same bytes, fsynced, in the same run); the
   first pulse id written against the one asked for.
3. Scalars: 10 kHz of 20 float64 channels for SCALAR_DURATION s, buffered and written:
   messages lost and rows without data.

``--duration`` and ``--window`` shorten the run on a shared machine.
"""

import argparse
import json
import os
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
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(module, *args):
    process = subprocess.Popen([sys.executable, "-m", f"labpipe.stream.{module}",
                                *map(str, args)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None
    process.stdout.readline()
    return process


def stop(process):
    process.terminate()
    _, err = process.communicate(timeout=60)
    return err


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


def sim_counts(err):
    line = [x for x in err.splitlines() if "sent" in x][-1]
    sent = int(line.split("sent ")[1].split(",")[0])
    dropped = int(line.split("dropped ")[1])
    return sent, dropped


def rest(port, method, path):
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def disk_floor(directory, image, count):
    """Seconds to write count images into a contiguous HDF5 dataset, fsynced."""
    path = os.path.join(directory, "floor.h5")
    block = np.ones((min(count, 16), *image), np.uint16)
    began = time.perf_counter()
    with h5py.File(path, "w") as f:
        dataset = f.create_dataset("d", (count, *image), np.uint16)
        for index in range(0, count, len(block)):
            n = min(len(block), count - index)
            dataset[index:index + n] = block[:n]
        f.flush()
        os.fsync(os.open(path, os.O_RDONLY))
    seconds = time.perf_counter() - began
    size = os.path.getsize(path)
    os.unlink(path)
    return size / seconds


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


def bench_buffer(args, image):
    sim_port, out_port = free_port(), free_port()
    buffer = start("buffer", f"tcp://127.0.0.1:{sim_port}", "-o", out_port, "-b",
                   args.ring)
    sim = start("sim", "-p", sim_port, "--rate", args.rate, "--image",
                f"{image[0]}x{image[1]}", "--scalars", 50)
    client = BufferClient(f"tcp://127.0.0.1:{out_port}", timeout=30)
    time.sleep(1)
    status0 = client.status()
    cpu0 = cpu_seconds(buffer.pid)
    rss = []
    began = time.monotonic()
    while time.monotonic() - began < args.duration:
        time.sleep(1)
        rss.append(rss_bytes(buffer.pid))
    status1 = client.status()
    cpu1 = cpu_seconds(buffer.pid)
    sent, dropped = sim_counts(stop(sim))
    received = status1["received"] - status0["received"]
    print(f"buffer: {args.rate:g} Hz of {image[0]}x{image[1]} uint16 + 50 scalars for"
          f" {args.duration:g} s: {received} messages received,"
          f" {status1['gaps']} pulse ids missing (gaps) after the buffer's first message;"
          f" the simulator dropped {dropped} of {sent + dropped} (those not seen as"
          f" gaps: before the buffer's first message), malformed {status1['malformed']}, late {status1['late']}")
    floor = copy_floor(image)
    print(f"buffer: CPU per message {1e6 * (cpu1 - cpu0) / max(received, 1):.0f} us"
          f" (floor: one in-memory copy of the image {1e6 * floor:.0f} us; the"
          f" buffer makes two, off the socket and into the ring);"
          f" RSS {min(rss) / 1e6:.0f}..{max(rss) / 1e6:.0f} MB beside the ring's"
          f" {status1['ring_bytes'] / 1e6:.0f} MB (floor)")
    return buffer, client, out_port


def bench_writer(args, image, directory):
    port = free_port()
    path = os.path.join(directory, "window.h5")
    sim_port = free_port()
    out_port = free_port()
    buffer = start("buffer", f"tcp://127.0.0.1:{sim_port}", "-o", out_port, "-b",
                   args.ring)
    sim = start("sim", "-p", sim_port, "--rate", args.rate, "--image",
                f"{image[0]}x{image[1]}", "--scalars", 50)
    client = BufferClient(f"tcp://127.0.0.1:{out_port}", timeout=30)
    time.sleep(1)
    writer = start("writer", f"tcp://127.0.0.1:{out_port}", path, -1, port)
    asked = client.status()["newest_pulse_id"]
    time.sleep(2)  # the start pulse id is asked for 2 s after it was sent
    began = time.monotonic()
    rest(port, "PUT", f"/stop_pulse_id/{asked + args.window - 1}")
    rest(port, "PUT", f"/start_pulse_id/{asked}")
    code = writer.wait(timeout=args.window / args.rate + 120)
    seconds = time.monotonic() - began
    err = writer.stderr.read().strip()
    writer.stdout.close()
    writer.stderr.close()
    stop(sim)
    stop(buffer)
    client.close()
    with h5py.File(path) as f:
        pulses = f["data/SIM:IMAGE/pulse_id"][()]
        present = int(f["data/SIM:IMAGE/is_data_present"][()].sum())
    size = os.path.getsize(path)
    os.unlink(path)
    floor = disk_floor(directory, image, args.window)
    print(f"writer: window of {args.window} images, exit {code} {err!r}: first pulse id"
          f" {pulses[0]} (asked {asked}), {len(pulses)} rows, {present} with data")
    print(f"writer: {size / seconds / 1e6:.0f} MB/s over the window's"
          f" {seconds:.1f} s, the stream's own rate"
          f" {args.rate * image[0] * image[1] * 2 / 1e6:.0f} MB/s (floor: this disk's"
          f" sequential h5py write {floor / 1e6:.0f} MB/s)")


def bench_scalars(args, directory):
    sim_port, out_port, port = free_port(), free_port(), free_port()
    buffer = start("buffer", f"tcp://127.0.0.1:{sim_port}", "-o", out_port, "-b",
                   20000)
    sim = start("sim", "-p", sim_port, "--rate", 10000, "--scalars", 20)
    client = BufferClient(f"tcp://127.0.0.1:{out_port}", timeout=30)
    time.sleep(1)
    path = os.path.join(directory, "scalars.h5")
    writer = start("writer", f"tcp://127.0.0.1:{out_port}", path, -1, port)
    first = client.status()["newest_pulse_id"] + 1
    rest(port, "PUT", f"/start_pulse_id/{first}")
    rest(port, "PUT", f"/stop_pulse_id/{first + int(10000 * args.scalar_duration) - 1}")
    code = writer.wait(timeout=args.scalar_duration * 10 + 60)
    status = client.status()
    sent, dropped = sim_counts(stop(sim))
    stop(buffer)
    client.close()
    with h5py.File(path) as f:
        rows = len(f["data/SIM:SCALAR0/pulse_id"])
        missing = rows - int(f["data/SIM:SCALAR0/is_data_present"][()].sum())
    os.unlink(path)
    print(f"scalars: 10 kHz x 20 float64 for {args.scalar_duration:g} s: simulator"
          f" sent {sent}, dropped {dropped}; buffer gaps {status['gaps']}; writer exit"
          f" {code}, {rows} rows, {missing} without data (floor: 0 lost)")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=60)
    parser.add_argument("--rate", type=float, default=100)
    parser.add_argument("--image", default="1024x1280")
    parser.add_argument("--ring", type=int, default=300)
    parser.add_argument("--window", type=int, default=1000)
    parser.add_argument("--scalar-duration", type=float, default=10)
    parser.add_argument("--parts", default="buffer,writer,scalars",
                        help="which of the three to run, comma-separated")
    args = parser.parse_args()
    image = tuple(int(n) for n in args.image.split("x"))
    floors.header("bench_stream.py")
    with tempfile.TemporaryDirectory(dir=".") as directory:
        parts = args.parts.split(",")
        if "buffer" in parts:
            buffer, client, _ = bench_buffer(args, image)
            client.close()
            stop(buffer)
        if "writer" in parts:
            bench_writer(args, image, directory)
        if "scalars" in parts:
            bench_scalars(args, directory)
    floors.load_average("end")


if __name__ == "__main__":
    main()
