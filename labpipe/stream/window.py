"""A window of a stream, from the buffer into an HDF5 group.

The group gets ``data/<channel>/{data,pulse_id,timestamp,is_data_present}``, one row
per pulse id of the window: a pulse id the stream skipped, or a channel a message
lacks, is a row with ``is_data_present`` false. The buffer sends blocks of messages
by columns; an image is written with a direct chunk write straight from the received
frame, the rest staged and written thousands of rows at a time, and the next block
is asked for before this one is written. At close every dataset is cut to the rows of the window.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import h5py
import numpy as np

from labpipe.stream import wire
from labpipe.stream.client import Block, BufferClient

CHUNK_BYTES = 4 << 20
MAX_CHUNK_ROWS = 4096
STAGE_BYTES = 16 << 20  # rows of a small channel staged before a write
MAX_STAGE_ROWS = 8192
DIRECT_BYTES = 1 << 20  # a value this big is a chunk of its own, written directly
READ_LIMIT = 2000  # messages per block (the buffer bounds a block's bytes too)


class _Column:
    """One channel's datasets, and its rows staged for them: an image is written as
    it comes, a chunk of its own (H5Dwrite_chunk: no selection, no conversion, no
    copy); everything else (values of small channels, every timestamp and presence)
    is staged and written a few thousand rows at a time."""

    def __init__(self, group: h5py.Group, channel: wire.Channel) -> None:
        self.key = (channel.type, channel.shape)
        shape = channel.shape
        dtype = channel.dtype.newbyteorder("<")
        self.rowbytes = int(np.prod(shape)) * dtype.itemsize
        self.direct = self.rowbytes >= DIRECT_BYTES
        chunk = 1 if self.direct else max(1, min(MAX_CHUNK_ROWS,
                                                 CHUNK_BYTES // max(1, self.rowbytes)))
        self.data = group.create_dataset("data", (0, *shape), dtype,
                                         maxshape=(None, *shape),
                                         chunks=(chunk, *shape))
        self.size = max(chunk, min(MAX_STAGE_ROWS, STAGE_BYTES // max(1, self.rowbytes)))
        small = (self.size,)
        self.timestamp = group.create_dataset("timestamp", (0,), np.int64,
                                              maxshape=(None,), chunks=small)
        self.present = group.create_dataset("is_data_present", (0,), bool,
                                            maxshape=(None,), chunks=small)
        self.pulse_id = group.create_dataset("pulse_id", (0,), np.int64,
                                             maxshape=(None,), chunks=small)
        self.stage = None if self.direct else np.zeros((self.size, *shape), dtype)
        self.stage_stamp = np.zeros(self.size, np.int64)
        self.stage_present = np.zeros(self.size, bool)
        self.start = -1  # the row of the stage's first
        self.filled = 0
        self.length = 0  # rows the datasets have
        self.direct_length = 0

    def write(self, rows: np.ndarray[Any, Any], values: np.ndarray[Any, Any],
              stamps: np.ndarray[Any, Any], present: np.ndarray[Any, Any]) -> int:
        """Rows (increasing) of which those ``present`` are written; their bytes."""
        if not present.all():
            index = np.flatnonzero(present)
            rows, stamps = rows[index], stamps[index]
            values = values[index] if not self.direct else values
        else:
            index = None
        if not len(rows):
            return 0
        if self.direct:
            end = int(rows[-1]) + 1
            if end > self.direct_length:  # grown ahead, cut at close
                self.direct_length = max(end, 2 * self.direct_length, 64)
                self.data.resize(self.direct_length, axis=0)
            write = self.data.id.write_direct_chunk
            zeros = (0,) * (values.ndim - 1)
            for position, row in enumerate(rows.tolist()):
                write((row, *zeros),
                      values[position if index is None else index[position]])
        done = 0
        while done < len(rows):
            first = int(rows[done])
            if self.start < 0 or first >= self.start + self.size:
                self.flush()
                self.start = first
            upto = done + int(np.searchsorted(rows[done:], self.start + self.size))
            at = rows[done:upto] - self.start
            if self.stage is not None:
                self.stage[at] = values[done:upto]
            self.stage_stamp[at] = stamps[done:upto]
            self.stage_present[at] = True
            self.filled = max(self.filled, int(at[-1]) + 1)
            done = upto
        return len(rows) * self.rowbytes

    def flush(self) -> None:
        """Write the staged rows."""
        if self.start < 0 or not self.filled:
            return
        end = self.start + self.filled
        if end > self.length:
            self.length = end
            for dataset in (self.timestamp, self.present):
                dataset.resize(end, axis=0)
            if self.stage is not None:
                self.data.resize(end, axis=0)
        rows = slice(self.start, end)
        if self.stage is not None:
            self.data[rows] = self.stage[:self.filled]
            self.stage[:self.filled] = 0
        self.timestamp[rows] = self.stage_stamp[:self.filled]
        self.present[rows] = self.stage_present[:self.filled]
        self.stage_stamp[:self.filled] = 0
        self.stage_present[:self.filled] = False
        self.start, self.filled = -1, 0

    def close(self, rows: int, first_pulse: int) -> None:
        self.flush()
        for dataset in (self.data, self.timestamp, self.present, self.pulse_id):
            dataset.resize(rows, axis=0)
        self.pulse_id[:] = first_pulse + np.arange(rows, dtype=np.int64)


class Window:
    """Writes blocks of a window into ``group`` by pulse id."""

    def __init__(self, group: h5py.Group) -> None:
        self.group = group.require_group("data")
        self.columns: dict[str, _Column] = {}
        self.first_pulse: int | None = None
        self.rows = 0
        self.messages = 0
        self.incompatible = 0
        self.bytes = 0

    def add(self, block: Block) -> None:
        """Messages of the window (pulse ids increasing from block to block)."""
        if self.first_pulse is None:
            self.first_pulse = int(block.pulse_id[0])
        rows = block.pulse_id - self.first_pulse
        skip = int(np.searchsorted(rows, self.rows))  # late: their rows are written
        if skip:
            block, rows = block.part(skip, len(block)), rows[skip:]
        if not len(rows):
            return
        for channel, values, stamps, present in zip(
                block.channels, block.values, block.stamps, block.present, strict=True):
            column = self.columns.get(channel.name)
            if column is None:
                column = _Column(self.group.create_group(channel.name), channel)
                self.columns[channel.name] = column
            if column.key != (channel.type, channel.shape):
                self.incompatible += int(present.sum())
                continue
            self.bytes += column.write(rows, values, stamps, present)
        self.rows = int(rows[-1]) + 1
        self.messages += len(rows)

    def close(self) -> None:
        """Cut every dataset to the window's rows."""
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

    def _first_reply(self, start: int, oldest: int | None) -> None:
        if oldest is not None and oldest > start:
            self.errors.append(
                f"pulse ids {start} to {oldest - 1} were older than the buffer's ring"
                f" (oldest held: {oldest}); the window starts at {oldest}")
        self.window.first_pulse = start if oldest is None or oldest <= start else oldest

    def client_status(self) -> dict[str, Any]:
        """The buffer's status, through a connection of its own (thread safety)."""
        client = BufferClient(self.client.address)
        try:
            return client.status()
        finally:
            client.close()

    def run(self, cancelled: Callable[[], bool], idle: float = 0.005) -> None:
        """Read and write until the window is complete or ``cancelled()``."""
        asked = False
        try:
            while not self.started.wait(0.05):
                if cancelled():
                    return
            seq: int | None = None
            while not cancelled():
                with self._lock:
                    start, stop, start_seq = (self.start_pulse, self.stop_pulse,
                                              self._start_seq)
                if not asked:
                    if seq is None and start is not None:
                        self.client.ask_block(from_pulse=start, limit=READ_LIMIT)
                    else:
                        self.client.ask_block(from_seq=start_seq if seq is None else seq,
                                              limit=READ_LIMIT)
                meta, block = self.client.take_block()
                asked = False
                if seq is None and start is not None:
                    self._first_reply(start, meta["oldest_pulse"])
                elif seq is not None and meta["seq"] > seq:
                    self.overrun += meta["seq"] - seq
                seq = int(meta["next_seq"])
                if block is None:
                    if stop is not None and self._stop_now and (
                            self.window.first_pulse is None
                            or self.window.first_pulse + self.window.rows > stop):
                        return
                    time.sleep(idle)
                    continue
                if stop is None or block.pulse_id[-1] < stop:
                    # the next block travels while this one is written
                    self.client.ask_block(from_seq=seq, limit=READ_LIMIT)
                    asked = True
                if start is not None and block.pulse_id[0] < start:
                    block = block.part(int(np.searchsorted(block.pulse_id, start)),
                                       len(block))
                    if not len(block):
                        continue  # all before a start still to come
                if stop is not None and block.pulse_id[-1] >= stop:
                    block = block.part(0, int(np.searchsorted(block.pulse_id, stop,
                                                              "right")))
                    if len(block):
                        self.window.add(block)
                    if self.window.first_pulse is not None:
                        # the stream went past the stop: pulse ids it skipped up to
                        # the stop are rows without data
                        self.window.rows = max(self.window.rows,
                                               stop - self.window.first_pulse + 1)
                    return
                if len(block):
                    self.window.add(block)
        finally:
            if asked:
                self.client.close()  # the reply to the last ask is not wanted
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
