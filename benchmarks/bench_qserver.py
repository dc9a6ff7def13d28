"""The queueserver API of labpipe (``labpipe-master --qserver``), timed with the peer's
own client: ``status`` round trip and ``queue_item_add`` per call, each beside its floor
(``floors.py``, measured in this run) and beside the real RE Manager's published figures
(status ~0.43 ms, queue_item_add ~1.8 ms).

- status: ``REManagerAPI.status(reload=True)`` (not its cache) (bluesky-queueserver-api, 0MQ), median of 300, and
  a raw 0MQ REQ of the same request (no client library); floor: a loopback round trip.
- queue_item_add: ``REManagerAPI.item_add(BPlan("count", ["det"]))`` into a held
  queue, median of 100, and a raw 0MQ REQ of the same request (median of 100 more);
  each is a labpipe submission (the run on disk before the reply); floor: a loopback
  round trip + a synced LMDB commit.

Usage: python benchmarks/bench_qserver.py (needs the test extra's
bluesky-queueserver-api).
"""

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import floors  # noqa: E402
import zmq  # noqa: E402
from bluesky_queueserver_api import BPlan  # noqa: E402
from bluesky_queueserver_api.zmq import REManagerAPI  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RE_MANAGER = {"status": 0.43e-3, "queue_item_add": 1.8e-3}


def start_master(lab):
    shutil.copy(os.path.join(ROOT, "device_db.py"), lab)
    os.makedirs(os.path.join(lab, "repository"))
    shutil.copy(os.path.join(ROOT, "repository", "plans.py"),
                os.path.join(lab, "repository"))
    process = subprocess.Popen(
        [sys.executable, "-m", "labpipe.master", "--bind", "127.0.0.1", "-q",
         "--port-control", "0", "--port-notify", "0", "--port-logging", "0",
         "--port-broadcast", "0", "--qserver", "--qserver-control-addr",
         "tcp://127.0.0.1:*", "--qserver-info-addr", "tcp://127.0.0.1:*"],
        cwd=lab, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()
    ports = dict(p.strip().split(" ") for p in line.split(": ", 1)[1].split(","))
    return process, f"tcp://127.0.0.1:{ports['qserver-control']}"


def timed(call, repeats):
    walls = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        walls.append(time.perf_counter() - t0)
    return statistics.median(walls)


def main():
    floors.header("bench_qserver.py")
    loopback = floors.loopback_round_trip()
    commit = floors.synced_lmdb_commit()
    with tempfile.TemporaryDirectory() as lab:
        process, control = start_master(lab)
        try:
            rm = REManagerAPI(zmq_control_addr=control, timeout_recv=10)
            rm.queue_stop()  # held: the items stay queued
            status = timed(lambda: rm.status(reload=True), 300)  # not its cache
            context = zmq.Context()
            sock = context.socket(zmq.REQ)
            sock.connect(control)
            request = json.dumps({"method": "status", "params": {}}).encode()

            def raw_status():
                sock.send(request)
                sock.recv()
            raw = timed(raw_status, 300)
            add = timed(lambda: rm.item_add(BPlan("count", ["det"])), 100)
            add_request = json.dumps({"method": "queue_item_add", "params": {
                "item": {"item_type": "plan", "name": "count", "args": [["det"]]},
                "user": "bench", "user_group": "primary"}}).encode()

            def raw_add():
                sock.send(add_request)
                assert json.loads(sock.recv())["success"]
            raw_add_time = timed(raw_add, 100)
            sock.close(0)
            context.term()
            rm.queue_clear()
            rm.close()
        finally:
            process.terminate()
            process.wait(30)
    print(floors.beside("status (REManagerAPI)", status, loopback),
          f"[RE Manager: {floors.duration(RE_MANAGER['status'])}]")
    print(floors.beside("status (raw 0MQ REQ)", raw, loopback))
    print(floors.beside("queue_item_add (REManagerAPI)", add,
                        floors.total(loopback, commit)),
          f"[RE Manager: {floors.duration(RE_MANAGER['queue_item_add'])}]")
    print(floors.beside("queue_item_add (raw 0MQ REQ)", raw_add_time,
                        floors.total(loopback, commit)))
    floors.load_average("end")


if __name__ == "__main__":
    main()
