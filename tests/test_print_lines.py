"""An experiment's print lines (stdout, stderr, fd 1/2) reach the log broadcast as
``print:<line>`` at INFO with the run's source, whatever its log_level, and its results
file's log (read back with h5py); the same for black-box scripts and labpipe-run."""

import logging
import subprocess
import sys

import h5py

from conftest import run_ends, running_master, wait_until
from labpipe.protocol.broadcast import Receiver

HOST = "127.0.0.1"

PRINTER = """
import logging, os, sys

class Printer(EnvExperiment):
    def run(self):
        print("hello", 1)
        print("two\\nlines")
        print("to stderr", file=sys.stderr)
        sys.stdout.write("partial ")
        sys.stdout.write("line")
        sys.stdout.flush()
        for i in range(2000):
            print("many", i)
        logging.getLogger("exp").info("filtered by the run's log level")
        logging.getLogger("exp").warning("a warning")
        os.write(1, b"fd one\\n")
        os.write(2, b"fd two\\n")
        print("last")
"""


def texts_of(messages, rid, class_name):
    source = f"worker({rid},{class_name})"
    return [(level, text) for level, src, _, text in messages if src == source]


def results_log(path):
    with h5py.File(path) as f:
        return [line.decode() for line in f["log"][()]]


async def test_prints_reach_the_broadcast_and_the_results_file_at_the_default_level(lab):
    lab.experiment("printer", PRINTER)

    async def main():
        async with running_master(lab) as m:
            messages = []
            receiver = Receiver("log", messages.append)
            await receiver.connect(HOST, m.port("broadcast"))
            await wait_until(lambda: m.broadcaster.receiver_count("log") == 1)
            ends = run_ends(m.scheduler)
            rid = await m.scheduler.submit(
                "main", {"file": "repository/printer.py", "class_name": "Printer",
                         "arguments": {}, "log_level": 30})
            await wait_until(lambda: rid in ends, timeout=30)
            texts = lambda: texts_of(messages, rid, "Printer")  # noqa: E731
            await wait_until(lambda: (20, "print:fd two") in texts()
                             and (20, "print:last") in texts(), timeout=10)
            await receiver.close()
            return rid, ends[rid], texts()

    rid, end, texts = await main()
    assert end.status == "completed"
    python_lines = [t for t in texts if not t[1].startswith("print:fd ")]
    assert python_lines == (
        [(20, "print:hello 1"), (20, "print:two"), (20, "print:lines"),
         (20, "print:to stderr"), (20, "print:partial line")]
        + [(20, f"print:many {i}") for i in range(2000)]
        + [(30, "exp:a warning"), (20, "print:last")])
    assert {(20, "print:fd one"), (20, "print:fd two")} <= set(texts)
    log = results_log(end.results)
    assert log[:5] == ["INFO:print:hello 1", "INFO:print:two", "INFO:print:lines",
                       "INFO:print:to stderr", "INFO:print:partial line"]
    assert "INFO:print:many 1999" in log and "WARNING:exp:a warning" in log
    assert log[-1] == "INFO:print:last"
    assert not any("filtered" in line for line in log)


async def test_a_crashing_worker_output_and_a_script_output_are_logged(lab):
    lab.experiment("crasher", """
import os, sys

class Crasher(EnvExperiment):
    def run(self):
        os.write(2, b"written before dying\\n")
        os._exit(3)
""")
    lab.write("repository/script.py", """
import sys
print("script says hi")
print("script error", file=sys.stderr)
""")

    async def main():
        async with running_master(lab) as m:
            messages = []
            receiver = Receiver("log", messages.append)
            await receiver.connect(HOST, m.port("broadcast"))
            await wait_until(lambda: m.broadcaster.receiver_count("log") == 1)
            ends = run_ends(m.scheduler)
            crash = await m.scheduler.submit(
                "main", {"file": "repository/crasher.py", "class_name": "Crasher",
                         "arguments": {}})
            script = await m.scheduler.submit(
                "main", {"file": "repository/script.py", "class_name": None,
                         "arguments": {}})
            await wait_until(lambda: crash in ends and script in ends, timeout=30)
            await wait_until(lambda: (20, "print:written before dying")
                             in texts_of(messages, crash, "Crasher"), timeout=10)
            await receiver.close()
            return ends[script], texts_of(messages, script, "Script")

    script_end, script_texts = await main()
    assert script_end.status == "completed"
    assert script_texts == [(20, "print:script says hi"), (20, "print:script error")]
    assert results_log(script_end.results) == ["INFO:print:script says hi",
                                               "INFO:print:script error"]


def test_labpipe_run_shows_prints_and_keeps_them_in_its_results_file(lab):
    lab.experiment("printer", PRINTER)
    result = subprocess.run(
        [sys.executable, "-m", "labpipe.client.run", "repository/printer.py", "-c",
         "Printer", "-o", "out.h5"],
        cwd=lab.root, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("hello 1\ntwo\nlines\npartial linemany 0\n")  # as written
    assert "to stderr" in result.stderr and "a warning" in result.stderr
    log = results_log(lab.path("out.h5"))
    assert log[:5] == ["INFO:print:hello 1", "INFO:print:two", "INFO:print:lines",
                       "INFO:print:to stderr", "INFO:print:partial line"]
    assert "WARNING:exp:a warning" in log and log[-1] == "INFO:print:last"


def test_master_terminal_shows_records_of_runs_whatever_its_level():
    from labpipe.master.main import _SourceLevel
    console = _SourceLevel(30)

    def record(level, source):
        entry = logging.LogRecord("print", level, __file__, 1, "m", None, None)
        entry.source = source
        return entry
    assert [console.filter(record(level, source)) for level, source in [
        (20, "worker(3,Printer)"), (20, "ctl_a"), (20, "master"), (30, "master")]] == [
        True, True, False, True]
