"""The bsread wire format (PSI's ZMQ stream protocol), encoded and decoded.

A message is a ZMQ multipart message: the main header (JSON, ``htype`` ``bsr_m-1.1``,
``pulse_id``, ``global_timestamp`` ``{sec, ns}``, ``hash`` the MD5 of the data header
part as sent, ``dh_compression``), the data header (JSON, ``htype`` ``bsr_d-1.1``,
``channels``: ``name``, ``type``, ``shape``, ``encoding``, ``compression``), then for
each channel a value part and a timestamp part (two int64, seconds and nanoseconds).
An empty value part is a channel without data in this message.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

MAIN_HTYPE = "bsr_m-1.1"
DATA_HTYPE = "bsr_d-1.1"
TYPES = {"bool": "?", "int8": "i1", "uint8": "u1", "int16": "i2", "uint16": "u2",
         "int32": "i4", "uint32": "u4", "int64": "i8", "uint64": "u8",
         "float32": "f4", "float64": "f8"}
COMPRESSIONS = ("none", "bitshuffle_lz4")


class WireError(ValueError):
    """A message that is not valid bsread; the text names what was wrong."""


@dataclass(frozen=True)
class Channel:
    """One channel of a data header."""

    name: str
    type: str
    shape: tuple[int, ...]
    encoding: str = "little"
    compression: str = "none"

    @cached_property
    def dtype(self) -> np.dtype[Any]:
        """The numpy dtype of one value, byte order included."""
        order = ">" if self.encoding == "big" else "<"
        return np.dtype(order + TYPES[self.type])

    @cached_property
    def nbytes(self) -> int:
        """The bytes of one uncompressed value."""
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def to_json(self) -> dict[str, Any]:
        """The channel as the data header's JSON lists it."""
        return {"name": self.name, "type": self.type, "shape": list(self.shape),
                "encoding": self.encoding, "compression": self.compression}


@dataclass
class Message:
    """One decoded message: values are numpy arrays (None: no data), or raw parts as
    ``Decoder.decode(parts, raw=True)`` leaves them; timestamps (sec, ns) pairs or
    raw 16-byte parts likewise."""

    pulse_id: int
    sec: int
    ns: int
    channels: list[Channel]
    data_hash: str
    values: list[Any] = field(default_factory=list)
    timestamps: list[Any] = field(default_factory=list)


def data_header(channels: list[Channel]) -> bytes:
    """The data header part for these channels."""
    return json.dumps({"htype": DATA_HTYPE,
                       "channels": [c.to_json() for c in channels]}).encode()


def header_hash(part: bytes) -> str:
    """The main header's ``hash`` of a data header part."""
    return hashlib.md5(part).hexdigest()


def compress(value: np.ndarray[Any, Any], compression: str) -> bytes:
    """A value's bytes as a channel with this compression carries them."""
    raw = np.ascontiguousarray(value)
    if compression == "none":
        return raw.tobytes()
    return _bitshuffle().compress(raw)


def decompress(part: bytes, channel: Channel) -> np.ndarray[Any, Any]:
    """A value part back to an array of the channel's type and shape."""
    if channel.compression == "none":
        if len(part) != channel.nbytes:
            raise WireError(f"channel {channel.name}: {len(part)} bytes where its type"
                            f" {channel.type} and shape {list(channel.shape)} need"
                            f" {channel.nbytes}")
        return np.frombuffer(part, dtype=channel.dtype).reshape(channel.shape)
    count = channel.nbytes // channel.dtype.itemsize
    if channel.compression == "bitshuffle_lz4":
        value = _bitshuffle().decompress(part, channel.dtype)
    else:
        raise WireError(f"channel {channel.name}: compression {channel.compression!r}"
                        f" is not one of {', '.join(COMPRESSIONS)}")
    if value.size != count:
        raise WireError(f"channel {channel.name}: {value.size} values where its shape"
                        f" {list(channel.shape)} needs {count}")
    return value.reshape(channel.shape) if channel.shape else value.reshape(())


def encode(pulse_id: int, sec: int, ns: int, header: bytes,
           values: list[bytes], timestamps: list[tuple[int, int]],
           digest: str | None = None) -> list[bytes]:
    """The parts of one message (value parts already encoded, b"" for no data);
    ``digest``: the data header's :func:`header_hash`, when the caller keeps it."""
    main = json.dumps({"htype": MAIN_HTYPE, "pulse_id": pulse_id,
                       "global_timestamp": {"sec": sec, "ns": ns},
                       "hash": digest or header_hash(header),
                       "dh_compression": "none"}).encode()
    parts = [main, header]
    packed: dict[tuple[int, int], bytes] = {}
    for value, stamp in zip(values, timestamps, strict=True):
        parts.append(value)
        part = packed.get(stamp)
        if part is None:
            part = packed[stamp] = struct.pack("<qq", *stamp)
        parts.append(part)
    return parts


class Decoder:
    """Decodes messages; remembers the last data header so each is parsed once."""

    def __init__(self) -> None:
        self._hash = ""
        self.channels: list[Channel] = []
        self.header_changes = 0

    def decode(self, parts: list[bytes], raw: bool = False) -> Message:
        """One message from its parts; WireError names what was wrong. ``raw``: an
        uncompressed little-endian value is its part itself (its length checked) and
        a timestamp its 16-byte part, for a copy straight into the buffer's ring."""
        if len(parts) < 2:
            raise WireError(f"{len(parts)} part(s): a message has at least a main and"
                            " a data header")
        main = _json(parts[0], "main header")
        if main.get("htype") != MAIN_HTYPE:
            raise WireError(f"main header htype {main.get('htype')!r}, not {MAIN_HTYPE}")
        try:
            pulse_id = int(main["pulse_id"])
            stamp = main.get("global_timestamp", {"sec": 0, "ns": 0})
            sec, ns = int(stamp["sec"]), int(stamp["ns"])
            digest = str(main["hash"])
        except (KeyError, TypeError, ValueError) as error:
            raise WireError(f"main header lacks or mistypes {error}") from None
        if main.get("dh_compression", "none") not in ("none", None):
            raise WireError(f"data header compression {main['dh_compression']!r}"
                            " is not supported (only none)")
        if digest != self._hash:
            self.channels = _channels(_json(parts[1], "data header"))
            self._hash = digest
            self.header_changes += 1
        if len(parts) != 2 + 2 * len(self.channels):
            raise WireError(f"{len(parts)} parts where the data header's"
                            f" {len(self.channels)} channels need"
                            f" {2 + 2 * len(self.channels)}")
        message = Message(pulse_id, sec, ns, self.channels, digest)
        values, timestamps = message.values, message.timestamps
        for index, channel in enumerate(self.channels):
            value, stamp_part = parts[2 + 2 * index], parts[3 + 2 * index]
            if not value:
                values.append(None)
            elif raw and channel.compression == "none" and channel.dtype.byteorder != ">":
                if len(value) != channel.nbytes:
                    decompress(value, channel)  # raises, naming what was wrong
                values.append(value)
            else:
                values.append(decompress(value, channel))
            if len(stamp_part) != 16:
                timestamps.append((sec, ns))
            elif raw:
                timestamps.append(stamp_part)
            else:
                timestamps.append(struct.unpack("<qq", stamp_part))
        return message


def parse_data_header(part: bytes) -> list[Channel]:
    """The channels of a data header part; WireError names what was wrong."""
    return _channels(_json(part, "data header"))


def _json(part: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(part)
    except (ValueError, UnicodeDecodeError):
        raise WireError(f"{what} is not JSON") from None
    if not isinstance(value, dict):
        raise WireError(f"{what} is not a JSON object")
    return value


def _channels(header: dict[str, Any]) -> list[Channel]:
    if header.get("htype") != DATA_HTYPE:
        raise WireError(f"data header htype {header.get('htype')!r}, not {DATA_HTYPE}")
    channels = []
    for entry in header.get("channels", []):
        try:
            channel = Channel(str(entry["name"]), str(entry.get("type", "float64")),
                              tuple(int(n) for n in entry.get("shape", [1])),
                              str(entry.get("encoding", "little")),
                              str(entry.get("compression", "none")))
        except (KeyError, TypeError, ValueError, AttributeError):
            raise WireError(f"data header channel {entry!r} lacks a name or a shape") \
                from None
        if channel.type not in TYPES:
            raise WireError(f"channel {channel.name}: type {channel.type!r} unknown")
        if channel.compression not in COMPRESSIONS:
            raise WireError(f"channel {channel.name}: compression"
                            f" {channel.compression!r} is not one of"
                            f" {', '.join(COMPRESSIONS)}")
        channels.append(channel)
    return channels


class _Bitshuffle:
    def __init__(self, module: Any) -> None:
        self._module = module

    def compress(self, raw: np.ndarray[Any, Any]) -> bytes:
        # bsread's framing: uncompressed size (uint64 BE), block size (uint32 BE), data
        body = self._module.compress_lz4(raw.reshape(-1), 0)
        return struct.pack(">QI", raw.nbytes, 0) + body.tobytes()

    def decompress(self, part: bytes, dtype: np.dtype[Any]) -> np.ndarray[Any, Any]:
        if len(part) < 12:
            raise WireError("bitshuffle_lz4 value shorter than its 12-byte header")
        size, block = struct.unpack(">QI", part[:12])
        body = np.frombuffer(part, dtype=np.uint8, offset=12)
        value: np.ndarray[Any, Any] = self._module.decompress_lz4(
            body, (size // dtype.itemsize,), dtype, block // dtype.itemsize if block
            else 0)
        return value


_codec: _Bitshuffle | None = None


def _bitshuffle() -> _Bitshuffle:
    global _codec
    if _codec is None:
        try:
            import bitshuffle
        except ImportError:
            raise WireError("compression bitshuffle_lz4 needs the bitshuffle package"
                            " (pip install bitshuffle), which is not installed") from None
        _codec = _Bitshuffle(bitshuffle)
    return _codec
