"""A command run on a real pseudo-terminal of a chosen size (``os.openpty`` and
``TIOCSWINSZ``), its output read in a thread, for tests of what people see."""

import fcntl
import os
import re
import signal
import struct
import subprocess
import termios
import threading
import time

#: Escape sequences: CSI (colours, cursor) and OSC.
ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)")

#: Colour SGR parameters: 30-37, 39, 40-47, 49, 90-97, 100-107, 38;... and 48;...
COLOUR = re.compile(r"\x1b\[(?:[0-9;]*;)?(?:3[0-9]|4[0-9]|9[0-7]|10[0-7])(?:;[0-9;]*)?m")


def visible(text: str) -> str:
    """text without escape sequences and carriage returns."""
    return ESCAPES.sub("", text).replace("\r", "")


class Terminal:
    """command on a pseudo-terminal of columns x rows (stdin, stdout and stderr)."""

    def __init__(self, command, columns=80, rows=40, env=None, cwd=None):
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
        environ = dict(os.environ if env is None else env)
        environ.pop("COLUMNS", None)
        environ.pop("LINES", None)
        environ.setdefault("TERM", "xterm-256color")
        self.process = subprocess.Popen(command, stdin=slave, stdout=slave, stderr=slave,
                                        env=environ, cwd=cwd, close_fds=True,
                                        start_new_session=True)
        os.close(slave)
        self._fd = master
        self._data = bytearray()
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        fd = self._fd
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: every holder of the slave side has closed it
                return
            if not chunk:
                return
            with self._lock:
                self._data += chunk

    @property
    def raw(self) -> str:
        """Everything the command wrote, escape sequences included."""
        with self._lock:
            return self._data.decode("utf-8", errors="replace")

    @property
    def text(self) -> str:
        return visible(self.raw)

    def until(self, predicate, timeout=30):
        """Wait until predicate(visible text) is true; the text."""
        deadline = time.monotonic() + timeout
        while not predicate(self.text):
            if time.monotonic() > deadline or (self.process.poll() is not None
                                               and not self._reader.is_alive()):
                if predicate(self.text):
                    break
                raise AssertionError(f"not seen within {timeout} s: {self.text!r}")
            time.sleep(0.02)
        return self.text

    def wait(self, timeout=60):
        """The exit code, once the command ended and its output was read."""
        code = self.process.wait(timeout=timeout)
        self._reader.join(timeout=10)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        return code

    def interrupt(self):
        """Ctrl-C (SIGINT to the command, as the terminal sends it)."""
        self.process.send_signal(signal.SIGINT)

    def kill(self):
        if self.process.poll() is None:
            self.process.kill()
        self.wait(timeout=10)


def run(command, columns=80, env=None, timeout=60, cwd=None):
    """Run command on a terminal until it ends: (exit code, raw output)."""
    terminal = Terminal(command, columns=columns, env=env, cwd=cwd)
    try:
        code = terminal.wait(timeout=timeout)
    finally:
        if terminal.process.poll() is None:
            terminal.kill()
    return code, terminal.raw
