"""The experiment's side: what a ``stream`` entry of ``device_db.py`` becomes.

``{"type": "stream", "buffer": "tcp://HOST:PORT"}`` names a ``labpipe-buffer``'s output;
``self.setattr_stream("camera")`` gives a :class:`Stream`. Its window is spooled into a
temporary HDF5 file while the run goes on; the worker copies it into the run's results
file under ``streams/<name>/data/<channel>/...`` when it writes that file.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import tempfile
import threading
import time
from typing import Any

import h5py

from labpipe.stream import wire
from labpipe.stream.client import BufferClient
from labpipe.stream.window import Capture


class StreamWindowError(RuntimeError):
    """A window could not be captured whole; what was captured is kept."""


class Stream:
    """One buffered stream: ``capture``/``capture_now``...``stop`` a window, ``last``."""

    def __init__(self, name: str, buffer: str, timeout: float = 60.0) -> None:
        self.name = name
        self.buffer = buffer
        self.timeout = timeout
        self._path: str | None = None
        self._file: h5py.File | None = None
        self._capture: Capture | None = None
        self._thread: threading.Thread | None = None
        self._cancel = False

    def _new_capture(self) -> Capture:
        if self._file is not None:
            raise StreamWindowError(f"stream {self.name!r}: one window per run (this run"
                                    " captured one already)")
        fd, self._path = tempfile.mkstemp(suffix=".h5", prefix="labpipe_stream_")
        os.close(fd)
        atexit.register(_remove, self._path)  # the run's process ends: the spool goes
        self._file = h5py.File(self._path, "w")
        self._capture = Capture(BufferClient(self.buffer), self._file)
        return self._capture

    def capture(self, start_pulse_id: int, stop_pulse_id: int,
                timeout: float | None = None) -> dict[str, Any]:
        """Write the messages from ``start_pulse_id`` to ``stop_pulse_id`` (both
        included; the start may be past, the stop future); returns statistics."""
        if stop_pulse_id < start_pulse_id:
            raise ValueError(f"stop pulse id {stop_pulse_id} is before the start pulse"
                             f" id {start_pulse_id}")
        capture = self._new_capture()
        capture.start_at(start_pulse_id)
        capture.stop_at(stop_pulse_id)
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        capture.run(lambda: time.monotonic() > deadline)
        if capture.window.first_pulse is None or (
                capture.window.first_pulse + capture.window.rows <= stop_pulse_id
                and time.monotonic() > deadline):
            capture.errors.append(f"timed out before pulse id {stop_pulse_id} arrived")
        return self._finish()

    def capture_now(self) -> None:
        """Start a window with the buffer's next message; ``stop()`` ends it."""
        capture = self._new_capture()
        capture.start_now()
        self._cancel = False
        self._thread = threading.Thread(target=capture.run,
                                        args=(lambda: self._cancel,), daemon=True)
        self._thread.start()

    def stop(self) -> dict[str, Any]:
        """End the window ``capture_now`` started with the newest message buffered."""
        if self._capture is None or self._thread is None:
            raise StreamWindowError(f"stream {self.name!r}: stop() without capture_now()")
        self._capture.stop_now()
        self._thread.join(self.timeout)
        if self._thread.is_alive():
            self._cancel = True
            self._thread.join()
            self._capture.errors.append("timed out waiting for the window's end")
        return self._finish()

    def _finish(self) -> dict[str, Any]:
        assert self._capture is not None and self._file is not None
        window = self._capture.window
        self._file.attrs["errors"] = "; ".join(self._capture.errors)
        self._file.flush()
        stats = {"first_pulse_id": window.first_pulse, "rows": window.rows,
                 "messages": window.messages, "channels": sorted(window.columns)}
        self._capture.client.close()
        if self._capture.errors:
            raise StreamWindowError(f"stream {self.name!r}: "
                                    f"{'; '.join(self._capture.errors)} ({window.rows}"
                                    f" rows from pulse id {window.first_pulse} written)")
        return stats

    def last(self, n: int) -> list[wire.Message]:
        """The newest ``n`` messages the buffer holds, decoded, oldest first."""
        client = BufferClient(self.buffer)
        try:
            return client.last(n)
        finally:
            client.close()

    def spool(self) -> str | None:
        """The temporary file holding the window (closed), None without one."""
        if self._file is not None:
            self._cancel = True
            if self._thread is not None:
                self._thread.join()
            if self._file.id.valid:
                self._file.close()
        return self._path

    def close(self) -> None:
        """End a window still open and close its file (kept until the process ends,
        for the results file written after the devices are closed)."""
        self.spool()


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
