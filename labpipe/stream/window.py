"""A window of a stream, from the buffer into an HDF5 group.

The group gets ``data/<channel>/{data,pulse_id,timestamp,is_data_present}``, one row
per pulse id of the window: a pulse id the stream skipped, or a channel a message
lacks, is a row with ``is_data_present`` false. Rows are staged in numpy arrays and
written a chunk at a time; at close every dataset is cut to the rows of the window.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import h5py
import numpy as np

from labpipe.stream import wire
from labpipe.stream.client import BufferClient

CHUNK_BYTES = 4 << 20
MAX_CHUNK_ROWS = 4096
READ_LIMIT = 2000  # messages per read (the buffer bounds a reply's bytes too)


class _Column:
    """One channel's datasets and the rows staged for them."""

    def __init__(self, group: h5py.Group, channel: wire.Channel) -> None:
        self.key = (channel.type, channel.shape)
        dtype = channel.dtype.newbyteorder("<")
        rowbytes = max(1, int(np.prod(channel.shape)) * dtype.itemsize)
        self.rows = max(1, min(MAX_CHUNK_ROWS, CHUNK_BYTES // rowbytes))
        self.data = group.create_dataset("data", (0, *channel.shape), dtype,
                                         maxshape=(None, *channel.shape),
                                         chunks=(self.rows, *channel.shape))
        self.timestamp = group.create_dataset("timestamp", (0,), np.int64,
                                              maxshape=(None,), chunks=(self.rows,))
        self.present = group.create_dataset("is_data_present", (0,), bool,
                                            maxshape=(None,), chunks=(self.rows,))
        self.pulse_id = group.create_dataset("pulse_id", (0,), np.int64,
                                             maxshape=(None,), chunks=(self.rows,))
        self.stage = np.zeros((self.rows, *channel.shape), dtype)
        self.stage_stamp = np.zeros(self.rows, np.int64)
        self.stage_present = np.zeros(self.rows, bool)
        self.start = -1  # the first row staged
        self.filled = 0

    def put(self, row: int, value: np.ndarray[Any, Any], stamp: int) -> None:
        if self.start < 0 or row >= self.start + self.rows:
            self.flush()
            self.start = row - row % self.rows
        index = row - self.start
        self.stage[index] = value
        self.stage_stamp[index] = stamp
        self.stage_present[index] = True
        self.filled = max(self.filled, index + 1)

    def flush(self) -> None:
        if self.start < 0 or not self.filled:
            return
        end = self.start + self.filled
        for dataset in (self.data, self.timestamp, self.present):
            if dataset.shape[0] < end:
                dataset.resize(end, axis=0)
        self.data[self.start:end] = self.stage[:self.filled]
        self.timestamp[self.start:end] = self.stage_stamp[:self.filled]
        self.present[self.start:end] = self.stage_present[:self.filled]
        self.stage_present[:] = False
        self.stage_stamp[:] = 0
        self.filled = 0
        self.start = -1

    def close(self, rows: int, first_pulse: int) -> None:
        self.flush()
        for dataset in (self.data, self.timestamp, self.present, self.pulse_id):
            dataset.resize(rows, axis=0)
        self.pulse_id[:] = first_pulse + np.arange(rows, dtype=np.int64)


class Window:
    """Writes messages of a window into ``group`` by pulse id."""

    def __init__(self, group: h5py.Group) -> None:
        self.group = group.require_group("data")
        self.columns: dict[str, _Column] = {}
        self.first_pulse: int | None = None
        self.rows = 0
        self.messages = 0
        self.incompatible = 0
        self.bytes = 0

    def add(self, message: wire.Message) -> None:
        """One message of the window (pulse ids increasing)."""
        if self.first_pulse is None:
            self.first_pulse = message.pulse_id
        row = message.pulse_id - self.first_pulse
        if row < self.rows - 1 or row < 0:
            return  # late: its row is written already
        for channel, value, (sec, ns) in zip(message.channels, message.values,
                                             message.timestamps, strict=True):
            if value is None:
                continue
            column = self.columns.get(channel.name)
            if column is None:
                column = _Column(self.group.create_group(channel.name), channel)
                self.columns[channel.name] = column
            if column.key != (channel.type, channel.shape):
                self.incompatible += 1
                continue
            column.put(row, value, sec * 1_000_000_000 + ns)
            self.bytes += value.nbytes
        self.rows = row + 1
        self.messages += 1

    def close(self) -> None:
        """Write what is staged and cut every dataset to the window's rows."""
        for column in self.columns.values():
            column.close(self.rows, self.first_pulse or 0)


class Capture:
    """Reads a window from the buffer and writes it: start by pulse id or now, stop by
    pulse id or now; ``run`` in one thread, the setters from any."""

    def __init__(self, client: BufferClient, group: h5py.Group) -> None:
        self.client = client
        self.window = Window(group)
        self.start_pulse: int | None = None
        self.stop_pulse: int | None = None
        self._start_seq: int | None = None
        self._stop_now = False
        self.errors: list[str] = []
        self.overrun = 0  # messages that left the ring before they were read
        self.finished = threading.Event()
        self.started = threading.Event()
        self._lock = threading.Lock()

    def start_at(self, pulse_id: int) -> None:
        """Start the window at this pulse id (it may be past or future)."""
        with self._lock:
            self.start_pulse = pulse_id
        self.started.set()

    def start_now(self) -> None:
        """Start the window with the next message the buffer receives."""
        with self._lock:
            self._start_seq = int(self.client_status()["next_seq"])
        self.started.set()

    def stop_at(self, pulse_id: int) -> None:
        """End the window with this pulse id (included)."""
        with self._lock:
            self.stop_pulse = pulse_id

    def stop_now(self) -> None:
        """End the window with the newest message the buffer holds now."""
        newest = self.client_status()["newest_pulse_id"]
        with self._lock:
            self.stop_pulse = newest if newest is not None else -1
            self._stop_now = True

    def client_status(self) -> dict[str, Any]:
        """The buffer's status, through a connection of its own (thread safety)."""
        client = BufferClient(self.client.address)
        try:
            return client.status()
        finally:
            client.close()

    def run(self, cancelled: Callable[[], bool], idle: float = 0.005) -> None:
        """Read and write until the window is complete or ``cancelled()``."""
        try:
            while not self.started.wait(0.05):
                if cancelled():
                    return
            seq: int | None = None
            decoder = wire.Decoder()
            while not cancelled():
                with self._lock:
                    start, stop, start_seq = (self.start_pulse, self.stop_pulse,
                                              self._start_seq)
                if seq is None:
                    if start is not None:
                        meta, messages = self.client.read(from_pulse=start, limit=READ_LIMIT)
                        oldest = meta["oldest_pulse"]
                        if oldest is not None and oldest > start:
                            self.errors.append(
                                f"pulse ids {start} to {oldest - 1} were older than"
                                f" the buffer's ring (oldest held: {oldest}); the"
                                f" window starts at {oldest}")
                        self.window.first_pulse = (start if oldest is None
                                                   or oldest <= start else oldest)
                    else:
                        meta, messages = self.client.read(from_seq=start_seq, limit=READ_LIMIT)
                else:
                    meta, messages = self.client.read(from_seq=seq, limit=READ_LIMIT)
                    if meta["oldest_seq"] > seq:
                        self.overrun += meta["oldest_seq"] - seq
                seq = meta["next_seq"]
                for parts in messages:
                    message = decoder.decode(parts)
                    if stop is not None and message.pulse_id > stop:
                        return
                    if start is not None and message.pulse_id < start:
                        continue
                    self.window.add(message)
                    if stop is not None and message.pulse_id == stop:
                        return
                if not messages:
                    if stop is not None and self._stop_now and (
                            self.window.first_pulse is None
                            or self.window.first_pulse + self.window.rows > stop):
                        return
                    time.sleep(idle)
        finally:
            if self.overrun:
                self.errors.append(f"{self.overrun} message(s) left the ring before"
                                   " they were written (the writer fell behind)")
            with self._lock:
                stop = self.stop_pulse
            first = self.window.first_pulse
            if stop is not None and first is not None:
                # a stop given after the window had passed it: cut the rows beyond
                self.window.rows = max(0, min(self.window.rows, stop - first + 1))
            self.window.close()
            self.finished.set()
