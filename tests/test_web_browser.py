"""The web dashboard in a real headless browser (Debian's chromium, driven by
Playwright) against a real master and real runs: the master's name, the explorer's
argument editors (every kind, every scan) submitting what was typed, the master's
refusal in one line, a run followed from schedule to history, a deletion, a dataset
plotted live (uPlot) as a run sets it, against another dataset and as an image,
interactive arguments supplied and cancelled, a results file opened, the lock shown,
taken and given back, a Git lab's run at an older revision, bluesky plans of
``__plans__`` submitted, the rows in the master's queue order. One master, one web
server and one browser for the module; each test opens its own tab. Screenshots go to tmp/web-screenshots/."""

import datetime
import json
import os
import shutil
import subprocess
import tempfile

import h5py
import numpy

import pytest

from conftest import ASK, TERMINATING, Lab, MasterProcess, expid, wait_for
from web_fixtures import SCANNER, WebProcess

CHROMIUM = "/usr/bin/chromium"
if not os.path.exists(CHROMIUM):
    pytest.skip(f"no {CHROMIUM} (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")

ROOT = os.path.join(os.path.dirname(__file__), "..")
SHOTS = os.path.join(ROOT, "tmp", "web-screenshots")
# the HTTPS test's certificate is self-signed: the browser is told to take it
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run",
        "--ignore-certificate-errors"]
NAME = "lab-7 master"

#: Every kind of argument, each scan kind; the run stores what it was given as JSON.
KINDS = """
import json
from labpipe.experiment import *

class Kinds(EnvExperiment):
    def build(self):
        self.setattr_argument("delay", NumberValue(2*ms, unit="ms", min=0, max=10*ms, step=0.1*ms))
        self.setattr_argument("count", NumberValue(3, step=1, precision=0, type="int"))
        self.setattr_argument("enabled", BooleanValue(False))
        self.setattr_argument("mode", EnumerationValue(["fast", "slow", "careful"], "fast"))
        self.setattr_argument("label", StringValue("none"))
        self.setattr_argument("extra", PYONValue({"a": 1}))
        self.setattr_argument("ramp", Scannable(default=RangeScan(1*MHz, 2*MHz, 2), unit="MHz"))
        self.setattr_argument("center", Scannable(default=NoScan(5*kHz), unit="kHz"))
        self.setattr_argument("listed", Scannable(default=NoScan(1.0)))
        self.setattr_argument("single", Scannable(default=RangeScan(0, 1, 2)))

    def run(self):
        got = {k: getattr(self, k) for k in ("delay", "count", "enabled", "mode", "label", "extra")}
        for k in ("ramp", "center", "listed", "single"):
            got[k] = [float(x) for x in getattr(self, k)]
        self.set_dataset("kinds.got", json.dumps(got), broadcast=True)
"""

#: Logs one INFO and one WARNING line, prints one.
LOGS = """
import logging
from labpipe.experiment import *

class Logs(EnvExperiment):
    def run(self):
        logging.getLogger("probe").info("coil nominal")
        logging.getLogger("probe").warning("flux capacitor at %d", 88)
        print("printed by the run", 42)
"""


@pytest.fixture(scope="module")
def master(tmp_path_factory):
    lab = Lab(str(tmp_path_factory.mktemp("web-browser-lab")))
    lab.write("repository/scanner.py", SCANNER)
    lab.write("repository/kinds.py", KINDS)
    lab.write("repository/ask.py", ASK)
    lab.write("repository/sub/ask2.py", ASK)
    lab.write("repository/terminating.py", TERMINATING)
    # the example lab's bluesky plans (__plans__ and @plan_experiment) on its simulated
    # ophyd devices
    shutil.copy(os.path.join(ROOT, "repository", "plans.py"), lab.path("repository"))
    shutil.copy(os.path.join(ROOT, "device_db.py"), lab.root)
    m = MasterProcess(lab.root, "--name", NAME)
    m.lab = lab
    yield m
    m.stop()


@pytest.fixture(scope="module")
def web(master):
    w = WebProcess(master)
    yield w
    w.stop()


@pytest.fixture(scope="module")
def browser():
    profile = tempfile.mkdtemp(prefix="labpipe-web-chromium-")
    with sync_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, args=ARGS, headless=True,
            viewport={"width": 1400, "height": 900})
        context.requested = []  # every URL the pages asked for
        context.on("request", lambda r: context.requested.append(r.url))
        try:
            yield context
        finally:
            context.close()
            shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def page(browser, web):
    tab = browser.new_page()
    tab.set_default_timeout(15000)
    tab.goto(web.url)
    tab.wait_for_selector("#conn[data-connected=true]")
    yield tab
    tab.close()


def shot(tab, name: str) -> None:
    os.makedirs(SHOTS, exist_ok=True)
    tab.screenshot(path=os.path.join(SHOTS, f"{name}.png"))


def dataset(master, key):
    with master.client("dataset_db") as db:
        return db.get(key)


def wait_dataset(tab, key: str, text: str) -> None:
    """Until the datasets page shows key with a value containing text."""
    tab.wait_for_function(
        "([k, t]) => { const r = [...document.querySelectorAll('#datasets-body tr')]"
        ".find((r) => r.dataset.key === k); return r && r.querySelector('.value')"
        ".textContent.includes(t); }", arg=[key, text])


def open_experiment(tab, name: str) -> None:
    tab.click("button[data-page=explorer]")
    tab.click(f"li.exp[data-exp='{name}']")
    tab.wait_for_selector("#exp-args")


def sub_result(tab) -> tuple[bool, str]:
    """Whether the explorer's last Validate or Submit succeeded, and what it says."""
    tab.wait_for_selector("#sub-result[data-ok=true], #sub-result[data-ok=false]")
    return tab.get_attribute("#sub-result", "data-ok") == "true", tab.inner_text("#sub-result")


def submitted_rid(tab) -> int:
    ok, text = sub_result(tab)
    assert ok, text
    return int(tab.get_attribute("#sub-result", "data-rid"))


def test_the_masters_name_is_shown_and_nothing_comes_from_elsewhere(page, browser, web):
    assert page.inner_text("#master-name") == NAME
    assert page.title().startswith(NAME)
    # the page, its scripts (uPlot vendored) and styles: all from the web server
    assert any("/static/vendor/uplot-1.6.32/uPlot.iife.min.js" in u for u in browser.requested)
    assert page.evaluate("() => typeof uPlot") == "function"
    assert all(u.startswith(web.url) for u in browser.requested), browser.requested


#: A Git lab's experiment, changed between two commits: its argument's default and
#: what its run sets.
MARK = """
from labpipe.experiment import *

class Mark(EnvExperiment):
    def build(self):
        self.setattr_argument("version", StringValue("{version}"))

    def run(self):
        self.set_dataset("mark", "code-{version}:" + self.version, broadcast=True)
"""


def git(cwd, *args) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.org",
                           "-c", "init.defaultBranch=main", *args], cwd=cwd, check=True,
                          capture_output=True, text=True).stdout.strip()


def test_a_git_lab_runs_at_the_revision_typed_in_the_explorer(browser, tmp_path):
    lab = Lab(str(tmp_path / "lab"))
    lab.write("repository/mark.py", MARK.replace("{version}", "v1"))
    repo = lab.path("repository")
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "first")
    first = git(repo, "rev-parse", "HEAD")
    lab.write("repository/mark.py", MARK.replace("{version}", "v2"))
    git(repo, "commit", "-q", "-am", "second")
    second = git(repo, "rev-parse", "HEAD")
    m = MasterProcess(lab.root, "-g")
    w = WebProcess(m)
    tab = browser.new_page()
    try:
        tab.set_default_timeout(15000)
        tab.goto(w.url)
        tab.wait_for_selector("#conn[data-connected=true]")
        open_experiment(tab, "Mark")
        # the revision field offers the current commit by default
        assert tab.is_visible("#sub-rev")
        assert tab.get_attribute("#sub-rev", "placeholder") == "current: " + second[:12]
        assert tab.input_value("input[data-arg=version]") == "v2"
        tab.click("#submit")
        rid = submitted_rid(tab)
        with m.client("history") as history:
            assert history.wait(rid, 20)["repo_rev"] == second
        assert dataset(m, "mark") == "code-v2:v2"
        # the older commit: its arguments loaded, then run at it
        tab.fill("#sub-rev", first[:8])
        tab.click("#rev-load")
        tab.wait_for_selector(f"#sub-result[data-loaded='{first[:8]}']")
        assert tab.input_value("input[data-arg=version]") == "v1"
        tab.click("#submit")
        old = submitted_rid(tab)
        with m.client("history") as history:
            record = history.wait(old, 20)
        assert (record["status"], record["repo_rev"]) == ("completed", first)
        assert dataset(m, "mark") == "code-v1:v1"
        # the run shows the revision it ran at
        tab.click("button[data-page=history]")
        for r, commit in ((rid, second), (old, first)):
            cell = f"#history-body tr[data-rid='{r}'] td.rev span.rev"
            tab.wait_for_selector(cell)
            assert tab.get_attribute(cell, "data-rev") == commit
            assert tab.inner_text(cell) == commit[:10]
        # a revision that does not exist: one line, nothing submitted
        tab.click("button[data-page=explorer]")
        tab.fill("#sub-rev", "no-such-branch")
        tab.click("#submit")
        ok, refusal = sub_result(tab)
        assert not ok and "no-such-branch" in refusal and "\n" not in refusal, refusal
        shot(tab, "explorer-git")
        # and a queued run's row shows it too
        with m.client("schedule") as schedule:
            schedule.hold("main")
        tab.fill("#sub-rev", first)
        tab.click("#submit")
        queued = submitted_rid(tab)
        tab.click("button[data-page=schedule]")
        cell = f"#schedule-body .run[data-rid='{queued}'] .file span.rev"
        tab.wait_for_selector(cell)
        assert tab.get_attribute(cell, "data-rev") == first
    finally:
        tab.close()
        w.stop()
        m.stop()


def test_https_to_the_browser_and_tls_to_the_master_and_a_restart(browser, tmp_path):
    from tls_certs import make_certs
    certs = make_certs(str(tmp_path / "certs"))
    lab = Lab(str(tmp_path / "lab"))
    lab.write("repository/scanner.py", SCANNER)
    m = MasterProcess(lab.root, "--ssl", certs.server.cert, certs.server.key,
                      certs.trusted_clients, "--name", "tls lab")
    files = certs.client_files()
    w = WebProcess(m, "--ssl", files.cert, files.key, files.peer)
    tab = browser.new_page()
    try:
        assert w.url.startswith("https://")
        tab.set_default_timeout(15000)
        tab.goto(w.url)
        tab.wait_for_selector("#conn[data-connected=true]")
        assert tab.inner_text("#master-name") == "tls lab"
        open_experiment(tab, "Scanner")
        tab.fill("input[data-arg=amplitude]", "0.75")
        tab.click("#submit")
        rid = submitted_rid(tab)
        tab.click("button[data-page=history]")
        tab.wait_for_selector(f"#history-body tr[data-rid='{rid}'][data-status=completed]")
        shot(tab, "https")
        # the master restarts: the page says it lost it, then reconnects by itself
        ports, tls = m.ports, ["--ssl", certs.server.cert, certs.server.key,
                               certs.trusted_clients]
        m.stop()
        tab.wait_for_selector("#conn[data-connected=false]")
        assert "reconnecting" in tab.inner_text("#conn")
        m = MasterProcess(lab.root, *tls, "--name", "tls lab again",
                          *[f"--port-{n}={ports[n]}" for n in ("control", "notify",
                                                               "broadcast")])
        tab.wait_for_selector("#conn[data-connected=true]", timeout=30000)
        assert tab.inner_text("#master-name") == "tls lab again"
        tab.wait_for_selector(f"#history-body tr[data-rid='{rid}'][data-status=completed]")
    finally:
        tab.close()
        w.stop()
        m.stop()


def test_explorer_submits_every_kind_of_argument_as_edited(page, master):
    open_experiment(page, "Kinds")
    listed = page.inner_text("#explist")
    assert "sub/" in listed and "Scanner" in listed, listed
    # the editors show the defaults in the arguments' units
    assert page.input_value("input[data-arg=delay]") == "2"
    assert page.input_value("[data-arg=center] input[data-part=value]") == "5"
    page.fill("input[data-arg=delay]", "7.5")
    page.fill("input[data-arg=count]", "12")
    page.check("input[data-arg=enabled]")
    page.select_option("select[data-arg=mode]", "careful")
    page.fill("input[data-arg=label]", "run by the page")
    page.fill("input[data-arg=extra]", '{"b": [1, 2]}')
    ramp = "[data-arg=ramp]"
    page.fill(f"{ramp} input[data-part=start]", "10")
    page.fill(f"{ramp} input[data-part=stop]", "12")
    page.fill(f"{ramp} input[data-part=npoints]", "3")
    center = "[data-arg=center]"
    page.select_option(f"{center} select[data-part=ty]", "CenterScan")
    page.fill(f"{center} input[data-part=center]", "100")
    page.fill(f"{center} input[data-part=span]", "20")
    page.fill(f"{center} input[data-part=step]", "10")
    listed_scan = "[data-arg=listed]"
    page.select_option(f"{listed_scan} select[data-part=ty]", "ExplicitScan")
    page.fill(f"{listed_scan} input[data-part=sequence]", "3, 1.5, 2")
    single = "[data-arg=single]"
    page.select_option(f"{single} select[data-part=ty]", "NoScan")
    page.fill(f"{single} input[data-part=value]", "0.25")
    page.fill(f"{single} input[data-part=repetitions]", "2")
    page.click("#validate")
    assert sub_result(page) == (True, "valid")
    shot(page, "explorer-kinds")
    page.click("#submit")
    rid = submitted_rid(page)
    page.click("button[data-page=history]")
    page.wait_for_selector(f"#history-body tr[data-rid='{rid}'][data-status=completed]")
    got = json.loads(dataset(master, "kinds.got"))
    assert got["delay"] == pytest.approx(7.5e-3)
    assert got["count"] == 12 and isinstance(got["count"], int)
    assert got["enabled"] is True and got["mode"] == "careful"
    assert got["label"] == "run by the page" and got["extra"] == {"b": [1, 2]}
    assert got["ramp"] == pytest.approx([10e6, 11e6, 12e6])
    assert got["center"] == pytest.approx([90e3, 100e3, 110e3])
    assert got["listed"] == [3.0, 1.5, 2.0]
    assert got["single"] == [0.25, 0.25]


def test_scheduler_settings_are_submitted_as_typed(page, master):
    with master.client("schedule") as schedule:
        schedule.hold("third")  # where the run is moved to: it stays pending there
    open_experiment(page, "Scanner")
    page.fill("#sub-pipeline", "other")
    page.fill("#sub-priority", "3")
    page.fill("#sub-due", "2099-01-02T03:04")
    page.click("#submit")
    rid = submitted_rid(page)
    try:
        with master.client("schedule") as schedule:
            entry = schedule.get_status()[rid]
        assert (entry["pipeline"], entry["priority"], entry["status"]) == ("other", 3, "pending")
        assert entry["due_date"] == pytest.approx(
            datetime.datetime(2099, 1, 2, 3, 4).timestamp())
        page.click("button[data-page=schedule]")
        row = f"#schedule-body .run[data-rid='{rid}']"
        assert page.inner_text(f"{row} .pipeline").startswith("other")
        # the priority changed in the page
        page.fill(f"{row} input[type=number]", "7")
        page.press(f"{row} input[type=number]", "Enter")
        with master.client("schedule") as schedule:
            wait_for(lambda: schedule.get_status()[rid]["priority"] == 7, timeout=10)
            # and the master's change shows in the page
            schedule.change(rid, priority=9)
        page.wait_for_function(
            "(rid) => { const r = document.querySelector(`#schedule-body .run[data-rid='${rid}']`);"
            " return r && r.querySelector('input[type=number]').value === '9'; }", arg=rid)
        # the due date and the pipeline changed in the page
        page.click(f"{row} button.edit-due")
        assert page.input_value(f"{row} .due-edit") == "2099-01-02T03:04"
        page.fill(f"{row} .due-edit", "2098-05-06T07:08")
        with master.client("schedule") as schedule:
            wait_for(lambda: schedule.get_status()[rid]["due_date"] == pytest.approx(
                datetime.datetime(2098, 5, 6, 7, 8).timestamp()), timeout=10)
        page.click(f"{row} button.edit-pipeline")
        assert page.input_value(f"{row} .pipeline-edit") == "other"
        page.fill(f"{row} .pipeline-edit", "third")
        page.press(f"{row} .pipeline-edit", "Enter")
        with master.client("schedule") as schedule:
            wait_for(lambda: schedule.get_status()[rid]["pipeline"] == "third", timeout=10)
        page.click(f"{row} button.edit-due")
        page.fill(f"{row} .due-edit", "")
        with master.client("schedule") as schedule:
            wait_for(lambda: schedule.get_status()[rid]["due_date"] is None, timeout=10)
    finally:
        with master.client("schedule") as schedule:
            schedule.delete(rid)
            schedule.release("third")


def test_the_log_and_console_follow_live_with_level_and_search(page, master):
    page.click("button[data-page=log]")
    with master.client("schedule") as schedule:
        rid = schedule.submit("main", expid(content=LOGS, log_level=10))
    page.wait_for_selector("#log:has-text('flux capacitor at 88')")
    text = page.inner_text("#log")
    assert "WARNING" in text and "coil nominal" in text
    page.select_option("#log-level", "30")
    assert "coil nominal" not in page.inner_text("#log")
    assert "flux capacitor at 88" in page.inner_text("#log")
    page.fill("#log-search", "no such words")
    assert "flux capacitor" not in page.inner_text("#log")
    page.fill("#log-search", "capacitor")
    assert "flux capacitor at 88" in page.inner_text("#log")
    page.fill("#log-search", "")
    page.wait_for_selector(f"#console:has-text('[RID {rid}]'):has-text('printed by the run 42')")
    shot(page, "log")
    with master.client("history") as history:
        assert history.wait(rid, 20)["status"] == "completed"


def test_a_refused_submission_is_one_line_in_the_page(page, master):
    open_experiment(page, "Scanner")
    page.fill("input[data-arg=amplitude]", "5")
    page.click("#submit")
    ok, refusal = sub_result(page)
    assert not ok
    assert "amplitude" in refusal and "maximum" in refusal and "\n" not in refusal, refusal
    # what the page cannot read is refused before the master is asked
    page.fill("input[data-arg=amplitude]", "")
    page.click("#submit")
    assert sub_result(page) == (False, 'amplitude: "" is not a number')
    page.fill("[data-arg=freqs] input[data-part=npoints]", "2.5")
    page.fill("input[data-arg=amplitude]", "0.5")
    page.click("#submit")
    assert sub_result(page) == (False, "freqs npoints: 2.5 is not a whole number")
    with master.client("schedule") as schedule:
        assert not schedule.get_status()


def test_the_page_follows_a_run_from_schedule_to_history(page, master):
    gate = os.path.join(master.lab.root, "gate-follow")
    with master.client("schedule") as schedule:
        rid = schedule.submit("main", expid("repository/scanner.py", gate=gate))
    page.click("button[data-page=schedule]")
    page.wait_for_selector(f"#schedule-body .run[data-rid='{rid}'][data-status=running]")
    shot(page, "schedule")
    for i in range(3):
        open(gate + str(i), "w").close()
    page.click("button[data-page=history]")
    page.wait_for_selector(f"#history-body tr[data-rid='{rid}'][data-status=completed]")
    page.wait_for_selector(f"#schedule-body .run[data-rid='{rid}']", state="detached")
    shot(page, "history")


def test_a_deletion_from_the_page_removes_a_pending_run(page, master):
    with master.client("schedule") as schedule:
        schedule.hold("main")
        rid = schedule.submit("main", expid("repository/scanner.py"))
    try:
        page.click("button[data-page=schedule]")
        row = f"#schedule-body .run[data-rid='{rid}']"
        page.wait_for_selector(row)
        page.click(f"{row} button.delete")
        page.wait_for_selector(row, state="detached")
        with master.client("schedule") as schedule:
            assert rid not in schedule.get_status()
    finally:
        with master.client("schedule") as schedule:
            schedule.release("main")


def places(tab, rids):
    # the text the rows hold (a row just moved is not yet rendered: content-visibility
    # gives its innerText only once it has been laid out)
    return [tab.text_content(f"#schedule-body .run[data-rid='{rid}'] .place .n")
            for rid in rids]


def master_order(master, rids):
    with master.client("schedule") as schedule:
        status = schedule.get_status()
    return sorted(rids, key=lambda rid: status[rid]["queue_position"])


def test_queued_runs_are_moved_and_cleared_from_the_page(page, master):
    with master.client("schedule") as schedule:
        schedule.hold("moves")
        a, b, c = (schedule.submit("moves", expid("repository/scanner.py")) for _ in range(3))
    try:
        page.click("button[data-page=schedule]")
        row = "#schedule-body .run[data-rid='{}']".format
        page.wait_for_selector(row(c))
        assert places(page, [a, b, c]) == ["1", "2", "3"]
        page.click(f"{row(c)} button.move-front")
        page.wait_for_function("(rid) => document.querySelector("
                               "`#schedule-body .run[data-rid='${rid}'] .place .n`)"
                               ".textContent === '1'", arg=c)
        assert places(page, [c, a, b]) == ["1", "2", "3"]
        assert master_order(master, [a, b, c]) == [c, a, b]
        page.click(f"{row(a)} button.move-down")  # after b
        page.wait_for_function("(rid) => document.querySelector("
                               "`#schedule-body .run[data-rid='${rid}'] .place .n`)"
                               ".textContent === '3'", arg=a)
        assert master_order(master, [a, b, c]) == [c, b, a]
        page.click(f"{row(a)} button.move-up")  # before b again
        page.wait_for_function("(rid) => document.querySelector("
                               "`#schedule-body .run[data-rid='${rid}'] .place .n`)"
                               ".textContent === '2'", arg=a)
        assert master_order(master, [a, b, c]) == [c, a, b]
        shot(page, "moves")
        page.once("dialog", lambda dialog: dialog.accept())
        page.click("#pipelines span[data-pipeline=moves] button.clear")
        for rid in (a, b, c):
            page.wait_for_selector(row(rid), state="detached")
        with master.client("schedule") as schedule:
            assert not {a, b, c} & set(schedule.get_status())
    finally:
        with master.client("schedule") as schedule:
            for rid in {a, b, c} & set(schedule.get_status()):
                schedule.delete(rid)
            schedule.release("moves")


def row_order(tab, rids):
    """The RIDs among rids in the order of the schedule page's rows."""
    shown = tab.evaluate("() => [...document.querySelectorAll('#schedule-body .run')]"
                         ".map((r) => Number(r.dataset.rid))")
    return [rid for rid in shown if rid in rids]


def test_schedule_rows_are_in_the_masters_order(page, master):
    with master.client("schedule") as schedule:
        schedule.hold("order")
        a, b, c = (schedule.submit("order", expid("repository/scanner.py")) for _ in range(3))
    try:
        page.click("button[data-page=schedule]")
        row = "#schedule-body .run[data-rid='{}']".format
        page.wait_for_selector(row(c))
        assert row_order(page, {a, b, c}) == [a, b, c]
        page.click(f"{row(c)} button.move-front")
        page.wait_for_function("(rid) => document.querySelector("
                               "`#schedule-body .run[data-rid='${rid}'] .place .n`)"
                               ".textContent === '1'", arg=c)
        assert row_order(page, {a, b, c}) == [c, a, b] == master_order(master, [a, b, c])
        # a higher priority goes first, whatever the queue positions
        with master.client("schedule") as schedule:
            schedule.change(b, priority=5)
        page.wait_for_function("(rid) => document.querySelector("
                               "`#schedule-body .run[data-rid='${rid}'] .place .n`)"
                               ".textContent === '1'", arg=b)
        assert row_order(page, {a, b, c}) == [b, c, a]
        # a new tab draws them in that order from its first copy
        tab = page.context.new_page()
        try:
            tab.goto(page.url)
            tab.wait_for_selector(row(a))
            assert row_order(tab, {a, b, c}) == [b, c, a]
        finally:
            tab.close()
    finally:
        with master.client("schedule") as schedule:
            for rid in (a, b, c):
                schedule.delete(rid)
            schedule.release("order")


def test_a_bluesky_plan_of_plans_is_submitted_with_edited_arguments(page, master):
    page.click("button[data-page=explorer]")
    # every plan of plans.py: two of __plans__ (bluesky's own), one @plan_experiment
    for name in ("Take one or more readings from detectors",
                 "Scan over one multi-motor trajectory", "Scan a motor over a peak"):
        page.wait_for_selector(f"li.exp[data-exp='{name}']", timeout=30000)
    open_experiment(page, "Scan a motor over a peak")
    # a plain folder has no revisions: no revision field
    assert page.query_selector("#sub-rev") is not None and not page.is_visible("#sub-rev")
    # a device argument offers the device database's keys; the tooltip says what it is
    options = page.eval_on_selector_all("select[data-arg=motor] option",
                                        "(os) => os.map((o) => o.value)")
    assert {"det", "motor", "shutter", "stage"} <= set(options), options
    assert "device_db key" in page.inner_text("#exp-args")
    page.fill("input[data-arg=detectors]", '["det"]')
    page.select_option("select[data-arg=motor]", "motor")
    page.fill("input[data-arg=start]", "0")
    page.fill("input[data-arg=stop]", "2")
    page.fill("input[data-arg=num]", "3")
    shot(page, "explorer-plan")
    page.click("#submit")
    rid = submitted_rid(page)
    page.click("button[data-page=history]")
    page.wait_for_selector(f"#history-body tr[data-rid='{rid}'][data-status=completed]",
                           timeout=30000)
    with master.client("history") as history:
        record = history.wait(rid, 20)
    with h5py.File(os.path.join(master.lab.root, record["results"]), "r") as f:
        data = f["bluesky/run_0/primary/data"]
        numpy.testing.assert_allclose(data["motor"][()], [0.0, 1.0, 2.0])
        numpy.testing.assert_allclose(
            data["det"][()], [1000.0 * numpy.exp(-x * x / 2) for x in (0, 1, 2)])
    # __plans__'s count, its PYON arguments edited
    open_experiment(page, "Take one or more readings from detectors")
    page.fill("input[data-arg=detectors]", '["det"]')
    page.fill("input[data-arg=num]", "2")
    page.click("#submit")
    rid = submitted_rid(page)
    with master.client("history") as history:
        record = history.wait(rid, 30)
    assert record["status"] == "completed", record["error"]
    with h5py.File(os.path.join(master.lab.root, record["results"]), "r") as f:
        assert len(f["bluesky/run_0/primary/data/det"][()]) == 2


def test_a_running_run_is_terminated_from_the_page(page, master):
    with master.client("schedule") as schedule:
        rid = schedule.submit("main", expid("repository/terminating.py"))
    page.click("button[data-page=schedule]")
    row = f"#schedule-body .run[data-rid='{rid}'][data-status=running]"
    page.wait_for_selector(row)
    wait_dataset(page, "terminating.started", "true")
    page.click(f"{row} button.terminate")
    page.click("button[data-page=history]")
    page.wait_for_selector(f"#history-body tr[data-rid='{rid}'][data-status=terminated]")


def plotted(tab):
    return tab.evaluate("() => { const p = document.getElementById('plot')._plot;"
                        " return p ? [Array.from(p.data[0]), Array.from(p.data[1])] : null; }")


def test_a_dataset_is_plotted_live_as_the_run_sets_it(page, master):
    gate = os.path.join(master.lab.root, "gate-plot")
    with master.client("schedule") as schedule:
        rid = schedule.submit("main", expid("repository/scanner.py", gate=gate,
                                            amplitude=0.5))
    page.click("button[data-page=datasets]")
    wait_dataset(page, "scan.freqs", "1000000")
    page.click("#datasets-body tr[data-key='scan.y'] button.plot")
    for i in range(3):
        open(gate + str(i), "w").close()
        page.wait_for_selector(f"#plot[data-points='{i + 1}']")
        assert plotted(page) == [list(range(i + 1)), [0.5 * j for j in range(i + 1)]]
    assert page.query_selector("#plot .uplot canvas") is not None
    # against another dataset
    page.select_option("#plot-x", "scan.freqs")
    page.wait_for_function("() => document.getElementById('plot')._plot.data[0][2] === 3e6")
    assert plotted(page) == [[1e6, 2e6, 3e6], [0.0, 0.5, 1.0]]
    assert page.inner_text("#plot-title") == "scan.y vs scan.freqs"
    assert "scan.freqs" in page.inner_text("#plot .u-legend")
    shot(page, "datasets-plot")
    # a 2-D array as an image, replaced live
    with master.client("dataset_db") as db:
        db.set("img", [[0, 1, 2], [3, 4, 5]])
    wait_dataset(page, "img", "[[0,1,2]")
    page.click("#datasets-body tr[data-key='img'] button.plot")
    page.wait_for_selector("#plot[data-kind=image][data-points='6']")
    with master.client("dataset_db") as db:
        db.set("img", [[0, 1], [2, 3], [4, 9]])
    page.wait_for_selector("#plot[data-kind=image][data-last='9']")
    with master.client("history") as history:
        assert history.wait(rid, 20)["status"] == "completed"


def test_interactive_arguments_are_supplied_and_cancelled_in_the_page(page, master):
    with master.client("schedule") as schedule:
        rid = schedule.submit("main", expid("repository/ask.py"))
    page.click("button[data-page=interactive]")
    form = f"#interactive-body div[data-rid='{rid}']"
    page.wait_for_selector(form)
    assert "Calibration" in page.inner_text(form)
    assert page.inner_text("button[data-page=interactive]") == "Interactive (1)"
    page.fill(f"{form} input[data-arg=gain]", "")
    page.click(f"{form} button.supply")
    page.wait_for_selector(f"{form} .result:has-text('not a number')")
    page.fill(f"{form} input[data-arg=gain]", "2.5")
    shot(page, "interactive")
    page.click(f"{form} button.supply")
    page.wait_for_selector(form, state="detached")
    with master.client("history") as history:
        assert history.wait(rid, 20)["status"] == "completed"
    assert dataset(master, "ask.result") == 2.5
    with master.client("schedule") as schedule:
        rid = schedule.submit("main", expid("repository/ask.py"))
    form = f"#interactive-body div[data-rid='{rid}']"
    page.click(f"{form} button.cancel")
    page.wait_for_selector(form, state="detached")
    with master.client("history") as history:
        assert history.wait(rid, 20)["status"] == "completed"
    assert dataset(master, "ask.result") == "cancelled"
    assert page.inner_text("button[data-page=interactive]") == "Interactive"


def test_a_results_file_opens_in_the_page(page, master):
    with master.client("schedule") as schedule:
        rid = schedule.submit("main", expid("repository/scanner.py", amplitude=0.25))
    with master.client("history") as history:
        assert history.wait(rid, 20)["status"] == "completed"
    page.click("button[data-page=history]")
    page.click(f"#history-body tr[data-rid='{rid}'] button.open-results")
    page.wait_for_selector(f"#results[data-rid='{rid}']")
    row = "#results table[data-group=datasets] tr[data-key='scan.y']"
    assert page.inner_text(f"{row} .value") == "[0,0.25,0.5]"
    assert page.get_attribute(f"{row} .small-plot", "data-points") == "3"
    assert page.query_selector(f"{row} .small-plot .uplot canvas") is not None
    freqs = "#results table[data-group=datasets] tr[data-key='scan.freqs'] .value"
    assert page.inner_text(freqs) == "[1000000,2000000,3000000]"
    shot(page, "results")


def test_the_lock_is_shown_taken_and_given_back_in_the_page(page, master):
    assert page.inner_text("#lock-state") == "unlocked"
    with master.client("schedule") as schedule:
        schedule.hold("main")
        rid = schedule.submit("main", expid("repository/scanner.py"))
    row = f"#schedule-body .run[data-rid='{rid}']"
    try:
        page.fill("#lock-key", "s3cret")
        page.fill("#lock-note", "cooling down")
        page.click("#lock-do")
        page.wait_for_selector("#lock-state[data-locked=true]")
        assert "cooling down" in page.inner_text("#lock-state")
        with master.client("lock") as lock:
            assert lock.info()["locked"]
        # without the key the page's call is refused, in one line
        page.fill("#lock-key", "")
        page.click("button[data-page=schedule]")
        page.click(f"{row} button.delete")
        page.wait_for_selector("#message:has-text('cooling down')")
        refusal = page.inner_text("#message")
        assert "\n" not in refusal and "locked" in refusal, refusal
        assert "not reachable" not in refusal, refusal
        shot(page, "locked")
        with master.client("schedule") as schedule:
            assert rid in schedule.get_status()
        # with it, the page's calls pass
        page.fill("#lock-key", "s3cret")
        page.click(f"{row} button.delete")
        page.wait_for_selector(row, state="detached")
        page.click("#unlock-do")
        page.wait_for_selector("#lock-state[data-locked=false]")
        with master.client("lock") as lock:
            assert not lock.info()["locked"]
    finally:
        with master.client("lock") as lock:
            if lock.info()["locked"]:
                lock.unlock("s3cret")
        with master.client("schedule") as schedule:
            schedule.release("main")


def test_a_long_schedule_is_drawn_whole_in_order_and_follows_mods(browser, web, master):
    """More runs than the page draws in one chunk: every row, in RID order; a run
    deleted as the page loads is not drawn."""
    with master.client("schedule") as schedule:
        schedule.hold("many")
        rids = [schedule.submit("many", expid("repository/scanner.py")) for _ in range(250)]
    tab = browser.new_page()
    try:
        tab.set_default_timeout(15000)
        tab.goto(web.url + "#schedule")
        with master.client("schedule") as schedule:
            schedule.delete(rids[200])
        tab.wait_for_selector("#conn[data-connected=true]")
        tab.wait_for_selector(f"#schedule-body .run[data-rid='{rids[-1]}']")
        shown = tab.evaluate("() => [...document.querySelectorAll('#schedule-body .run')]"
                             ".map((r) => Number(r.dataset.rid))")
        assert shown == rids[:200] + rids[201:]
    finally:
        tab.close()
        with master.client("schedule") as schedule:
            for rid in rids[:200] + rids[201:]:
                schedule.delete(rid)
            schedule.release("many")
