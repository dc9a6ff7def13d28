"""The buffer's ring: the last N messages in arrays preallocated per channel.

No Python object is kept per message: a slot is a row in the pulse-id, timestamp,
sequence and header arrays, and in each channel's value array. The arrays are
written through when allocated, so the buffer's memory is the ring's from the first
message on. A data-header change
allocates arrays for the channels it adds (or whose type or shape it changes) and
frees those no message left in the ring refers to.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from labpipe.stream import wire

ChannelKey = tuple[str, str, tuple[int, ...]]


@dataclass
class _Column:
    values: np.ndarray[Any, Any]
    stamps: np.ndarray[Any, Any]
    present: np.ndarray[Any, Any]

    def __post_init__(self) -> None:
        # flat byte views: a raw part is copied into its slot by one slice assignment
        self.raw_values = self.values.reshape(-1).view(np.uint8).data
        self.raw_stamps = self.stamps.reshape(-1).view(np.uint8).data
        self.value_bytes = self.values[0].nbytes


class Ring:
    """A bounded ring of bsread messages, oldest overwritten first."""

    def __init__(self, length: int) -> None:
        if length < 1:
            raise ValueError(f"ring length {length}: must be at least 1")
        self.length = length
        self.pulse_id = np.zeros(length, np.int64)
        self.sec = np.zeros(length, np.int64)
        self.ns = np.zeros(length, np.int64)
        self.seq = np.full(length, -1, np.int64)
        self.header = np.full(length, -1, np.int32)
        self.count = 0  # messages ever stored; the next one's seq
        self._headers: dict[int, tuple[bytes, list[ChannelKey]]] = {}
        self._hash_to_id: dict[str, int] = {}
        self._next_header = 0
        self._columns: dict[ChannelKey, _Column] = {}

    def nbytes(self) -> int:
        """The bytes the ring's arrays hold."""
        fixed = sum(a.nbytes for a in (self.pulse_id, self.sec, self.ns, self.seq,
                                       self.header))
        return fixed + sum(c.values.nbytes + c.stamps.nbytes + c.present.nbytes
                           for c in self._columns.values())

    def channels(self) -> list[dict[str, Any]]:
        """The channels of the newest message."""
        if not self.count:
            return []
        header, _ = self._headers[int(self.header[(self.count - 1) % self.length])]
        channels: list[dict[str, Any]] = json.loads(header)["channels"]
        return channels

    def put(self, message: wire.Message) -> None:
        """Store one message in the oldest slot (decoded, or raw: see
        :meth:`labpipe.stream.wire.Decoder.decode`)."""
        header_id = self._header_id(message)
        slot = self.count % self.length
        self.pulse_id[slot] = message.pulse_id
        self.sec[slot], self.ns[slot] = message.sec, message.ns
        self.seq[slot] = self.count
        self.header[slot] = header_id
        for key, value, stamp in zip(self._headers[header_id][1], message.values,
                                     message.timestamps, strict=True):
            column = self._columns[key]
            column.present[slot] = value is not None
            if value is None:
                continue
            if isinstance(value, np.ndarray):
                column.values[slot] = value
            else:
                size = column.value_bytes
                column.raw_values[slot * size:(slot + 1) * size] = value
            if isinstance(stamp, tuple):
                column.stamps[slot] = stamp
            else:
                column.raw_stamps[slot * 16:(slot + 1) * 16] = stamp
        self.count += 1

    def oldest_seq(self) -> int:
        """The sequence number of the oldest message held."""
        return max(0, self.count - self.length)

    def find_pulse(self, pulse_id: int) -> int:
        """The seq of the first message held with a pulse id >= pulse_id."""
        first = self.oldest_seq()
        order = (np.arange(first, self.count) % self.length)
        index = int(np.searchsorted(self.pulse_id[order], pulse_id))
        return first + index

    def parts(self, seq: int) -> list[bytes]:
        """The bsread parts of the message with this seq (uncompressed values)."""
        slot = seq % self.length
        header, keys = self._headers[int(self.header[slot])]
        values: list[bytes] = []
        stamps: list[tuple[int, int]] = []
        for key in keys:
            column = self._columns[key]
            if column.present[slot]:
                values.append(column.values[slot].tobytes())
                stamps.append((int(column.stamps[slot][0]), int(column.stamps[slot][1])))
            else:
                values.append(b"")
                stamps.append((int(self.sec[slot]), int(self.ns[slot])))
        return wire.encode(int(self.pulse_id[slot]), int(self.sec[slot]),
                           int(self.ns[slot]), header, values, stamps)

    def block(self, seq: int, limit: int, max_bytes: int) -> tuple[int, int, bytes,
                                                                   list[Any]]:
        """Up to ``limit`` messages from ``seq`` on (at least one when any is held,
        else at most ``max_bytes`` of values) that share one data header and lie in
        one stretch of the ring: their seq, count, data header and arrays (views
        into the ring): pulse ids, seconds, nanoseconds, then per channel its values,
        its timestamps (seconds, nanoseconds) and whether each message has data."""
        seq = max(seq, self.oldest_seq())
        slot = seq % self.length
        count = max(0, min(limit, self.count - seq, self.length - slot))
        if not count:
            return seq, 0, b"", []
        header_id = int(self.header[slot])
        same = self.header[slot:slot + count] == header_id
        if not same.all():
            count = int(np.argmin(same))
        header, keys = self._headers[header_id]
        row = sum(self._columns[key].values[0].nbytes for key in keys)
        count = max(1, min(count, max_bytes // max(row, 1)))
        rows = slice(slot, slot + count)
        arrays: list[Any] = [self.pulse_id[rows], self.sec[rows], self.ns[rows]]
        for key in keys:
            column = self._columns[key]
            arrays += [column.values[rows], column.stamps[rows], column.present[rows]]
        return seq, count, header, arrays

    def _header_id(self, message: wire.Message) -> int:
        known = self._hash_to_id.get(message.data_hash)
        if known is not None:
            return known
        self._forget_unused()
        channels = [wire.Channel(c.name, c.type, c.shape, "little", "none")
                    for c in message.channels]
        keys = [(c.name, c.type, c.shape) for c in channels]
        for channel, key in zip(channels, keys, strict=True):
            if key not in self._columns:
                self._columns[key] = _Column(
                    _touched((self.length, *channel.shape), channel.dtype),
                    _touched((self.length, 2), np.dtype("<i8")),
                    _touched(self.length, bool))
        header_id = self._next_header
        self._next_header += 1
        self._headers[header_id] = (wire.data_header(channels), keys)
        self._hash_to_id[message.data_hash] = header_id
        return header_id

    def _forget_unused(self) -> None:
        used = set(int(h) for h in np.unique(self.header) if h >= 0)
        for header_id in [h for h in self._headers if h not in used]:
            del self._headers[header_id]
        self._hash_to_id = {k: v for k, v in self._hash_to_id.items() if v in used}
        keys = {key for _, ks in self._headers.values() for key in ks}
        for key in [k for k in self._columns if k not in keys]:
            del self._columns[key]


def _touched(shape: Any, dtype: Any) -> np.ndarray[Any, Any]:
    """Zeros in memory now: the first write into an untouched page faults, and a
    ring of images faulted in as it fills costs tens of ms a message."""
    array = np.empty(shape, dtype)
    array.fill(0)
    return array
