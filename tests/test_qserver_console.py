"""bluesky-queueserver-api's console monitor (``REManagerAPI.console_monitor``, 0MQ,
the info socket of ``--qserver``) gets a run's console: every line of a plan that
prints to stdout and stderr and logs, in order, as the master's ``console.text`` holds
it (and the run's results file)."""

import os
import shutil
import time

import pytest

zmq = pytest.importorskip("zmq")
api = pytest.importorskip("bluesky_queueserver_api.zmq")
from bluesky_queueserver_api import BPlan  # noqa: E402
from bluesky_queueserver_api.comm_base import RequestTimeoutError  # noqa: E402

from qserver_fixtures import start_qserver_master  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:Unclosed context <zmq:ResourceWarning")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHATTY_PLANS = '''
import logging, sys
from bluesky.plans import count
from bluesky.protocols import Readable
from labpipe.bluesky.plans import plan_experiment


@plan_experiment
def chatty(detectors: list[Readable], lines: int = 5):
    """Print, write to stderr, log, then count"""
    for i in range(lines):
        print("chatty line", i)
    print("chatty on stderr", file=sys.stderr)
    logging.getLogger("chatty").warning("chatty warns")
    return (yield from count(detectors))
'''


def _in_order(lines, text):
    """Whether every console line is on a monitor line of its own, in order (the
    monitor prefixes each with the run's source and the record's level and name)."""
    monitored = iter(text.splitlines())
    return all(any(got.endswith(":" + line) for got in monitored) for line in lines)


def test_console_monitor_gets_a_runs_console_text(tmp_path):
    shutil.copy(os.path.join(ROOT, "device_db.py"), tmp_path)
    os.makedirs(tmp_path / "repository")
    (tmp_path / "repository" / "chatty_plans.py").write_text(CHATTY_PLANS)
    m = start_qserver_master(tmp_path)
    rm = api.REManagerAPI(zmq_control_addr=m.control, zmq_info_addr=m.info,
                          timeout_recv=10)
    try:
        rm.console_monitor.enable()
        time.sleep(0.3)  # a PUB socket drops what it sends before the subscription is in
        rm.item_add(BPlan("chatty", ["det"], lines=40))
        rm.queue_start()
        rm.wait_for_idle(timeout=60)
        with m.client("console") as console:
            rids = console.runs()
            assert len(rids) == 1
            lines = [line[1] for line in console.text(rids[0])["lines"]]
        assert lines[:40] == [f"chatty line {i}" for i in range(40)]
        assert {"chatty on stderr", "WARNING:chatty:chatty warns"} <= set(lines)
        text = ""
        deadline = time.monotonic() + 15
        while not _in_order(lines, text) and time.monotonic() < deadline:
            try:
                text += rm.console_monitor.next_msg(timeout=1)["msg"]
            except RequestTimeoutError:
                pass
        assert _in_order(lines, text), (lines, text)
    finally:
        rm.console_monitor.disable()
        rm.close()
        m.stop()
