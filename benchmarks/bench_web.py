"""Benchmark the web dashboard (labpipe-web) against a real master.

Starts ``python -m labpipe.master`` in a temporary lab and ``python -m labpipe.web``
beside it, then prints each figure beside its floor, measured in the same run (the
ratio figure / floor after it):

- event fan-out: a dataset set over RPC 100 times, one at a time, while N WebSockets
  (N = 1, 10, 100, all in this process) follow the web server; the time from the set
  to the mod on the first and on the last WebSocket (medians). Floor: the same set
  seen by a subscriber of the master's own ``datasets`` notifier in the same run (what
  a client of the master gets without the web layer); the web layer adds the hop from
  that subscriber to each WebSocket;
- in Debian's chromium (Playwright; skipped without /usr/bin/chromium or playwright):
  - first meaningful paint of the schedule page holding 1,000 pending runs: from the
    start of the navigation to the first 100 rows (more than a screenful; the page
    draws the rest in the next frames) drawn with the connection up, and to all 1,000
    rows drawn (medians of 5 loads). Floor: the same browser's navigation to a static
    file of the same server (median of 5);
  - a status change reaching the page: a run submitted into the held pipeline
    (1,000 rows shown), from the master's notifier mod (as its own subscriber receives
    it) to the row drawn in the page (a MutationObserver's ``Date.now()``: the same
    host's wall clock as the subscriber's ``time.time()``, to the millisecond), median
    and 90th percentile of 100. Floor: a loopback round trip;
  - a 10,000-point dataset set at 10 Hz for 60 s while plotted (uPlot): the page's lag
    (the frame that first shows a set) behind the master's own subscriber receiving it,
    the median in each 10 s, to show whether it grows.

The load average is printed at start and at end. Linux only (``floors.py``).

Usage: python benchmarks/bench_web.py
"""

import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import floors  # noqa: E402
from bench_master import master_in_temporary_lab  # noqa: E402

from labpipe.protocol.rpc import AsyncClient
from labpipe.protocol.sync import Subscriber

CHROMIUM = "/usr/bin/chromium"
TRIVIAL = """
from labpipe.experiment import *

class Trivial(EnvExperiment):
    def run(self):
        pass
"""


def start_web(ports: dict) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "labpipe.web", "--bind", "127.0.0.1", "--web-port", "0",
         "--port", str(ports["control"]), "--port-notify", str(ports["notify"]),
         "--port-broadcast", str(ports["broadcast"])],
        stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()
    if "ready" not in line:
        process.kill()
        raise SystemExit(f"labpipe-web did not start: {line!r}")
    return process, line.split("ready: ", 1)[1].strip()


class Seen:
    """When each value of dataset KEY arrived (perf_counter and wall clock)."""

    def __init__(self, key: str):
        self.key = key
        self.at: dict[object, float] = {}
        self.wall: dict[object, float] = {}
        self.changed = asyncio.Event()

    def on_mod(self, mod: Any) -> None:
        if mod.get("action") == "setitem" and mod.get("key") == self.key:
            value = mod["value"][1]
            # an array's marker is its first value
            marker = float(value[0]) if hasattr(value, "__len__") else value
            self.at[marker] = time.perf_counter()
            self.wall[marker] = time.time()
            self.changed.set()

    async def wait(self, marker: object) -> None:
        while marker not in self.at:
            self.changed.clear()
            await self.changed.wait()


async def fan_out(ports: dict, url: str, n: int, floor_watch: Seen,
                  db: AsyncClient) -> tuple[float, float, float]:
    """Medians of (master subscriber, first WebSocket, last WebSocket) latency; with
    n = 0 the master's subscriber alone."""
    import aiohttp
    key = f"bench.fan{n}"
    floor_watch.key = key
    floor_watch.at.clear()
    floor_watch.wall.clear()
    arrived = asyncio.Event()
    async with aiohttp.ClientSession() as session:
        sockets = [await session.ws_connect(url + "ws", max_msg_size=0) for _ in range(n)]
        for ws in sockets:  # each has its copies and "connected"
            while True:
                msg = json.loads((await ws.receive()).data)
                if msg.get("type") == "connection" and msg["connected"]:
                    break
        arrivals: list[dict[int, float]] = [dict() for _ in range(n)]

        async def follow(i: int, ws: Any) -> None:
            async for msg in ws:
                m = json.loads(msg.data)
                if m.get("type") == "mod" and m["mod"].get("key") == key:
                    arrivals[i][m["mod"]["value"][1]] = time.perf_counter()
                    arrived.set()

        readers = [asyncio.create_task(follow(i, ws)) for i, ws in enumerate(sockets)]
        direct, first, last = [], [], []
        for value in range(100):
            t0 = time.perf_counter()
            await db.set(key, value)
            await floor_watch.wait(value)
            while not all(value in a for a in arrivals):
                arrived.clear()
                await arrived.wait()
            times = [a[value] for a in arrivals] or [floor_watch.at[value]]
            direct.append(floor_watch.at[value] - t0)
            first.append(min(times) - t0)
            last.append(max(times) - t0)
        for task in readers:
            task.cancel()
        for ws in sockets:
            await ws.close()
    return statistics.median(direct), statistics.median(first), statistics.median(last)


async def browser_figures(ports: dict, url: str, loopback: floors.Floor) -> None:
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        print("browser figures skipped: no playwright")
        return
    if not os.path.exists(CHROMIUM):
        print(f"browser figures skipped: no {CHROMIUM}")
        return
    await _fill_schedule(ports, 1000)
    profile = tempfile.mkdtemp(prefix="bench-web-chromium-")
    try:
        async with async_playwright() as p:
            context = await p.chromium.launch_persistent_context(
                profile, executable_path=CHROMIUM, headless=True,
                args=["--headless", "--no-sandbox", "--disable-gpu"])
            tab = context.pages[0] if context.pages else await context.new_page()
            await _first_paint(tab, url)
            await _status_latency(ports, tab, loopback)
            await _live_plot(ports, tab)
            await context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


async def _fill_schedule(ports: dict, n: int) -> None:
    schedule = AsyncClient()
    await schedule.connect_rpc("127.0.0.1", ports["control"], "schedule")
    await schedule.hold("held")
    expid: dict[str, Any] = {"file": "repository/trivial.py", "class_name": None, "arguments": {},
             "log_level": 30}
    for _ in range(n):
        await schedule.submit("held", expid, 0, None, False)
    schedule.close_rpc()


# the first screenful (the page draws 100 rows at once, the rest in the next frames)
PAINTED = """(n) => new Promise((resolve) => {
  const done = () => document.querySelector('#conn[data-connected=true]')
    && document.querySelectorAll('#schedule-body .run[data-rid]').length >= n;
  const check = () => done() ? resolve(performance.now()) : requestAnimationFrame(check);
  check();
})"""


async def _first_paint(tab: Any, url: str) -> None:
    paints, statics, drawn = [], [], []
    for _ in range(5):
        await tab.goto(url + "static/style.css")
        statics.append(await tab.evaluate(
            "() => performance.getEntriesByType('navigation')[0].responseEnd") / 1e3)
        await tab.goto(url + "#schedule")
        paints.append(await tab.evaluate(PAINTED, 100) / 1e3)
        drawn.append(await tab.evaluate(PAINTED, 1000) / 1e3)
    floor = floors.Floor("navigation to a static file", statistics.median(statics))
    print(floors.beside("first meaningful paint (connected, first 100 rows), schedule page "
                        "with 1,000 runs, median of 5", statistics.median(paints), floor))
    print(floors.beside("  all 1,000 rows drawn, median of 5", statistics.median(drawn), floor))


OBSERVE = """() => { window.rowSeen = {};
  new MutationObserver((records) => { const t = Date.now();
    for (const r of records) for (const n of r.addedNodes)
      if (n.dataset && n.dataset.rid && !(n.dataset.rid in window.rowSeen)) window.rowSeen[n.dataset.rid] = t; })
  .observe(document.getElementById('schedule-body'), {childList: true}); }"""


async def _status_latency(ports: dict, tab: Any, loopback: floors.Floor) -> None:
    await tab.evaluate(OBSERVE)
    schedule = AsyncClient()
    await schedule.connect_rpc("127.0.0.1", ports["control"], "schedule")
    added: dict[int, float] = {}
    changed = asyncio.Event()

    def on_mod(mod: Any) -> None:
        if mod.get("action") == "setitem" and mod.get("path") == []:
            added[mod["key"]] = time.time()
            changed.set()
    sub = Subscriber("schedule", lambda s: s, on_mod)
    await sub.connect("127.0.0.1", ports["notify"])
    expid: dict[str, Any] = {"file": "repository/trivial.py", "class_name": None, "arguments": {},
             "log_level": 30}
    lags = []
    for _ in range(100):
        rid = await schedule.submit("held", expid, 0, None, False)
        while rid not in added:
            changed.clear()
            await changed.wait()
        while (seen := await tab.evaluate(f"() => window.rowSeen['{rid}']")) is None:
            await asyncio.sleep(0.001)
        lags.append(seen / 1e3 - added[rid])
    await sub.close()
    schedule.close_rpc()
    lags.sort()
    print(floors.beside("status change to the page (master's mod to row drawn), median of 100",
                        statistics.median(lags), loopback))
    print(floors.beside("  90th percentile", lags[89], loopback))


LIVE = """
import time
import numpy as np
from labpipe.experiment import *

class Live(EnvExperiment):
    def run(self):
        rng = np.random.default_rng(0)
        t_end = time.time() + 60
        i = 0
        while time.time() < t_end:
            y = rng.random(10000)
            y[0] = i + 1  # the marker the page and the subscriber report
            self.set_dataset("bench.live", y, broadcast=True)
            i += 1
            time.sleep(0.1)
"""

# each frame, which set the plot shows (its marker, the first y value) and since when
PLOT_WATCH = """() => { window.plotSeen = {}; const box = document.getElementById('plot');
  const check = () => { const p = box._plot;
    if (p && p.data[1].length === 10000) { const m = p.data[1][0];
      if (!(m in window.plotSeen)) window.plotSeen[m] = Date.now(); }
    requestAnimationFrame(check); };
  check(); }"""


async def _live_plot(ports: dict, tab: Any) -> None:
    watch = Seen("bench.live")
    sub = Subscriber("datasets", lambda s: s, watch.on_mod)
    await sub.connect("127.0.0.1", ports["notify"])
    schedule = AsyncClient()
    await schedule.connect_rpc("127.0.0.1", ports["control"], "schedule")
    live: dict[str, Any] = {"file": "repository/live.py", "class_name": None, "arguments": {},
            "log_level": 30}
    db = AsyncClient()
    await db.connect_rpc("127.0.0.1", ports["control"], "dataset_db")
    await db.set("bench.live", [0.0] * 10000)
    await tab.click("button[data-page=datasets]")
    await tab.wait_for_selector("#datasets-body tr[data-key='bench.live'] button.plot")
    await tab.click("#datasets-body tr[data-key='bench.live'] button.plot")
    await tab.evaluate(PLOT_WATCH)
    await schedule.submit("main", live, 0, None, False)
    await asyncio.sleep(62)
    seen_page = await tab.evaluate("() => window.plotSeen")
    await sub.close()
    schedule.close_rpc()
    db.close_rpc()
    page_at = {float(k): v / 1e3 for k, v in seen_page.items()}
    markers = sorted(m for m in watch.wall if isinstance(m, (int, float)) and m >= 1
                     and float(m) in page_at)
    sets = sum(1 for m in watch.wall if isinstance(m, (int, float)) and m >= 1)
    if len(markers) < 100:
        print(f"live plot: only {len(markers)} of {sets} sets reached the page")
        return
    start = watch.wall[markers[0]]

    def lag(lo: float, hi: float) -> float:
        return statistics.median(page_at[float(m)] - watch.wall[m] for m in markers
                                 if lo <= watch.wall[m] - start < hi)

    windows = ", ".join(floors.duration(lag(t, t + 10)) for t in range(0, 60, 10))
    print(f"10,000-point dataset at 10 Hz for 60 s, plotted: {len(markers)} of {sets} sets "
          f"drawn; the page's lag behind the master's own subscriber, median in each 10 s: "
          f"{windows} (floor: the subscriber itself, 0)")


async def fan_out_figures(ports: dict, url: str) -> None:
    watch = Seen("")
    sub = Subscriber("datasets", lambda s: s, watch.on_mod)
    await sub.connect("127.0.0.1", ports["notify"])
    db = AsyncClient()
    await db.connect_rpc("127.0.0.1", ports["control"], "dataset_db")
    try:
        alone, _, _ = await fan_out(ports, url, 0, watch, db)
        floor = floors.Floor("the master's own subscriber, no WebSocket open", alone)
        for n in (1, 10, 100):
            _, first, last = await fan_out(ports, url, n, watch, db)
            print(floors.beside(f"fan-out to {n} WebSocket(s), set to first, median of 100",
                                first, floor))
            print(floors.beside(f"fan-out to {n} WebSocket(s), set to last, median of 100",
                                last, floor))
    finally:
        await sub.close()
        db.close_rpc()


def main() -> None:
    floors.header("bench_web.py")
    loopback = floors.loopback_round_trip()
    print(f"floor: {loopback}")
    with master_in_temporary_lab({"trivial": TRIVIAL, "live": LIVE}) as ports:
        web, url = start_web(ports)
        try:
            asyncio.run(fan_out_figures(ports, url))
            asyncio.run(browser_figures(ports, url, loopback))
        finally:
            web.terminate()
            web.wait(timeout=30)
    floors.load_average("end")


if __name__ == "__main__":
    main()
