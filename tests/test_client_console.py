"""``labpipe-client show console [RID] [--follow]`` against a real labpipe-master.

Followers (of one run and of every run) that are running while the master is killed
(SIGKILL) and started again on the same ports print, per run, exactly the run's
console as its results file holds it (read back with h5py): nothing twice, nothing
lost, a run that printed while they were reconnecting included. Without ``--follow``:
what there is, readable (time, RID, stream), coloured on a terminal only (none with
``NO_COLOR``); a RID the master never had is one line and exit code 3.
"""

import json
import os
import re
import time

import h5py

from conftest import Lab
from terminal import COLOUR, run, visible
from test_client_monitors import Watched
from test_master_process import MasterProcess, wait_for

CHATTY = """
import logging, os, sys, time
from labpipe.experiment import *

class Chatty(EnvExperiment):
    def build(self):
        self.setattr_argument("lines", NumberValue(100, precision=0, step=1, type="int"))
        self.setattr_argument("gate", StringValue(""))
        self.setattr_argument("pause", NumberValue(0.0))
        self.setattr_argument("word", StringValue("w"))

    def run(self):
        half = self.lines // 2
        for i in range(half):
            print(self.word, i)
        print(self.word, "to stderr", file=sys.stderr)
        logging.getLogger("chatty").warning("%s warns", self.word)
        while self.gate and not os.path.exists(self.gate):
            time.sleep(0.01)
        for i in range(half, self.lines):
            print(self.word, i)
            if self.pause:
                time.sleep(self.pause)
"""


def _file_console(lab, m, rid):
    """[(text, stream)] of run rid's results file (its history record names it)."""
    record = m.json("history", str(rid))
    with h5py.File(os.path.join(lab.root, record["results"])) as f:
        return [(t.decode(), s.decode()) for t, s in zip(f["console/text"][()],
                                                           f["console/stream"][()])]


def _printed(watch):
    """{rid: [(n, text, stream)]} of a --json follower's stdout so far."""
    runs = {}
    for line in watch.seen["out"]:
        obj = json.loads(line)
        runs.setdefault(obj["rid"], []).append((obj["n"], obj["text"], obj["stream"]))
    return runs


def _until_printed(watch, rid, count, timeout=60):
    deadline = time.monotonic() + timeout
    while len(_printed(watch).get(rid, [])) < count:
        try:
            watch.until("out", lambda line: True, timeout=max(0.1, deadline
                                                              - time.monotonic()))
        except AssertionError:
            raise AssertionError(f"RID {rid}: {len(_printed(watch).get(rid, []))} of "
                                 f"{count} lines printed") from None


def _drain(watch, quiet=1.0):
    """Read what the follower prints until it has been quiet for quiet seconds."""
    while True:
        try:
            watch.until("out", lambda line: True, timeout=quiet)
        except AssertionError:
            return


def test_followers_print_each_line_once_across_a_master_kill_and_restart(tmp_path):
    lab = Lab(tmp_path)
    lab.experiment("chatty", CHATTY)
    m = MasterProcess(lab.root)
    gate = lab.path("gate-1")
    first = m.submit("repository/chatty.py", "lines=200", f"gate={gate}", "word=first")
    every = Watched(m.command("--json", "show", "console", "--follow"))
    one = Watched(m.command("--json", "show", "console", str(first), "--follow"))
    restarted = None
    try:
        # both show the first half at once, though it was printed before they started
        for watch in (every, one):
            _until_printed(watch, first, 102)
        with open(gate, "w"):
            pass
        m.cli("wait", str(first))
        for watch in (every, one):
            _until_printed(watch, first, 202)

        ports = m.ports
        m.process.kill()
        m.process.wait(timeout=30)
        for watch in (every, one):
            watch.until("err", lambda line: "lost the master" in line)
        restarted = MasterProcess(lab.root, "--port-control", str(ports["control"]),
                                  "--port-notify", str(ports["notify"]),
                                  "--port-broadcast", str(ports["broadcast"]),
                                  "--port-logging", str(ports["logging"]))
        # printing while the followers wait to reconnect (0.5 s, then 1 s...)
        second = restarted.submit("repository/chatty.py", "lines=300", "pause=0.004",
                                  "word=second")
        restarted.cli("wait", str(second))
        for watch in (every, one):
            watch.until("err", lambda line: "reconnected to the master" in line)
        _until_printed(every, second, 302)
        for watch in (every, one):
            _drain(watch)
        # after the restart the first run's console comes from its results file
        after = restarted.cli("--json", "show", "console", str(first)).stdout
        expected = {rid: [(n, text, stream) for n, (text, stream)
                          in enumerate(_file_console(lab, restarted, rid))]
                    for rid in (first, second)}
    finally:
        codes = [every.stop(), one.stop()]
        m.stop()
        if restarted is not None:
            restarted.stop()
    assert codes == [0, 0]
    assert len(expected[first]) == 202 and len(expected[second]) == 302
    assert ("first to stderr", "stderr") in [line[1:] for line in expected[first]]
    assert ("WARNING:chatty:first warns", "log") in [line[1:] for line in expected[first]]
    assert _printed(every) == expected
    assert _printed(one) == {first: expected[first]}
    assert [(o["n"], o["text"], o["stream"]) for o in map(json.loads, after.splitlines())
            ] == expected[first]
    for watch in (every, one):
        assert not any("Traceback" in line for line in watch.seen["err"])


LINE = re.compile(r"^\d\d:\d\d:\d\d\.\d{3} (\d+) (stdout|stderr|log) +(.*)$")


def test_show_console_prints_what_there_is_readably_and_refuses_unknown_rids(tmp_path):
    lab = Lab(tmp_path)
    lab.experiment("chatty", CHATTY)
    m = MasterProcess(lab.root)
    try:
        rid = m.submit("repository/chatty.py", "lines=4", "word=hello")
        m.cli("wait", str(rid))
        piped = m.cli("show", "console", str(rid)).stdout
        assert "\x1b" not in piped
        shown = [LINE.match(line).groups() for line in piped.splitlines()]
        assert shown == [(str(rid), "stdout", "hello 0"), (str(rid), "stdout", "hello 1"),
                         (str(rid), "stderr", "hello to stderr"),
                         (str(rid), "log", "WARNING:chatty:hello warns"),
                         (str(rid), "stdout", "hello 2"), (str(rid), "stdout", "hello 3")]
        assert m.cli("show", "console").stdout == piped  # every run's: the one there is

        code, raw = run(m.command("show", "console", str(rid)), columns=80)
        assert code == 0 and COLOUR.search(raw), raw
        assert [LINE.match(line).groups() for line in visible(raw).splitlines()
                if line] == shown
        code, raw = run(m.command("show", "console", str(rid)), columns=80,
                        env=dict(os.environ, NO_COLOR="1"))
        assert code == 0 and not COLOUR.search(raw), raw

        for args in ((str(rid + 1),), (str(rid + 1), "--follow")):
            refused = m.cli("show", "console", *args, check=False)
            assert refused.returncode == 3 and refused.stdout == ""
            assert refused.stderr.strip().splitlines() == [
                f"labpipe-client: refused: RID {rid + 1} is not known to the master: it "
                "is neither scheduled nor in the history"]
        usage = m.cli("show", "schedule", str(rid), check=False)
        assert usage.returncode == 2 and "for 'show console' only" in usage.stderr
    finally:
        m.stop()
    wait_for(lambda: m.process.poll() is not None)
