"""Readable screens: ``show schedule`` and ``show explist`` on a real pseudo-terminal
of 80 and 150 columns fit its width (no line wider, the key columns there), show held
pipelines and runs waiting for input; colour on a terminal, none with ``NO_COLOR`` or
when piped; nothing cut when piped; a spinner for ``wait`` on a terminal only."""

import os
import sys

import pytest

from conftest import Lab
from terminal import COLOUR, Terminal, run, visible
from test_master_process import MasterProcess, wait_for

from labpipe.client.explist_view import describe_argument
from labpipe.client.formatting import format_schedule
from labpipe.client.screen import Screen
from labpipe.client.tables import Column, elide, fit_table

LONG_FOLDER = "repository/calibrations/laser_alignment_and_cavity_locking_procedures"

WORKING = """
import os, time
from labpipe.experiment import *

class CavityLockingWithAVeryLongExperimentClassName(EnvExperiment):
    def build(self):
        self.setattr_device("scheduler")
        self.setattr_argument("gate", StringValue(""))
        self.setattr_argument("points", NumberValue(20, min=1, max=1000, step=1,
                                                    precision=0, type="int"))
        self.setattr_argument("detuning", NumberValue(2e6, unit="MHz", min=-10e6,
                                                      max=10e6))
        self.setattr_argument("mode", EnumerationValue(["lock", "scan"], "lock"))
        self.setattr_argument("sweep", Scannable(RangeScan(-2e-3, 2e-3, 21), unit="ms"))

    def run(self):
        self.scheduler.set_progress(4, 10, "locking the cavity")
        while self.gate and not os.path.exists(self.gate):
            time.sleep(0.005)
"""

ASKING = """
from labpipe.experiment import *

class Asking(EnvExperiment):
    def run(self):
        with self.interactive("Calibration") as ia:
            ia.setattr_argument("gain", NumberValue(1.0))
"""


@pytest.fixture(scope="module")
def busy_lab(tmp_path_factory):
    """A master whose schedule holds a running run with progress, a run waiting for
    interactive input, a pending run of a held pipeline and a timed run."""
    lab = Lab(tmp_path_factory.mktemp("lab"))
    lab.write(f"{LONG_FOLDER}/cavity.py", WORKING)
    lab.write("repository/asking.py", ASKING)
    m = MasterProcess(lab.root)
    m.lab = lab
    gate = lab.path("gate")
    m.rids = {}
    m.rids["running"] = m.submit("-p", "alignment-of-the-main-optical-cavity",
                                 f"{LONG_FOLDER}/cavity.py", f"gate={gate}")
    m.rids["asking"] = m.submit("-p", "interactive", "repository/asking.py")
    m.cli("hold", "held-pipeline")
    m.rids["held"] = m.submit("-p", "held-pipeline", f"{LONG_FOLDER}/cavity.py")
    m.rids["timed"] = m.submit("-p", "timed", "-t", "+3600", "-c",
                               "CavityLockingWithAVeryLongExperimentClassName",
                               f"{LONG_FOLDER}/cavity.py")
    with m.client("schedule") as schedule:
        wait_for(lambda: schedule.get_status()[m.rids["running"]].get("progress"))
    wait_for(lambda: str(m.rids["asking"]) in m.json("show", "interactive-args"))
    yield m
    with open(gate, "w"):
        pass
    m.cli("cancel-interactive", str(m.rids["asking"]), check=False)
    m.stop()


def lines_of(raw):
    return [line for line in visible(raw).split("\n")]


@pytest.mark.parametrize("columns", [80, 150])
def test_schedule_fits_the_terminal(busy_lab, columns):
    m = busy_lab
    code, raw = run(m.command("show", "schedule"), columns=columns)
    assert code == 0, raw
    lines = lines_of(raw)
    assert all(len(line) <= columns for line in lines), \
        [(len(line), line) for line in lines if len(line) > columns]
    header = next(line for line in lines if line.startswith("RID"))
    for column in ("RID", "Pipeline", "Status", "File", "Progress"):
        assert column in header.split(), header
    assert "Revision" not in header  # a plain folder: no run has a revision
    rows = {line.split()[0]: line for line in lines if line.split()[:1] != ["RID"]
            and line.split() and line.split()[0].isdigit()}
    assert set(rows) == {str(rid) for rid in m.rids.values()}, lines
    assert "running" in rows[str(m.rids["running"])]
    assert "40%" in rows[str(m.rids["running"])]
    assert "pending (held)" in rows[str(m.rids["held"])]
    assert "waits for" in rows[str(m.rids["asking"])]
    assert any(line.startswith("Held pipelines: held-pipeline") for line in lines)
    assert "…" in raw  # long names were shortened, not wrapped
    if columns == 150:  # room for more
        assert {"Class", "ETA", "Due", "Elapsed"} <= set(header.split()), header
    assert COLOUR.search(raw)  # a terminal gets colour


def test_no_color_and_piped_output(busy_lab):
    m = busy_lab
    env = dict(os.environ, NO_COLOR="1")
    code, raw = run(m.command("show", "schedule"), columns=80, env=env)
    assert code == 0 and not COLOUR.search(raw), raw
    assert all(len(line) <= 80 for line in lines_of(raw))
    piped = m.cli("show", "schedule").stdout
    assert "\x1b" not in piped and "…" not in piped  # nothing cut, no escapes
    assert LONG_FOLDER in piped and "alignment-of-the-main-optical-cavity" in piped


def test_explist_shows_each_argument_with_type_default_and_range(busy_lab):
    m = busy_lab
    piped = m.cli("show", "explist").stdout.splitlines()
    rows = {line.split()[0]: line.split() for line in piped[2:] if line.split()
            and line.split()[0] in {"gate", "points", "detuning", "mode", "sweep"}}
    # rows of the experiment's own arguments (the first row also names it)
    first = next(line for line in piped if "CavityLocking" in line).split()
    assert first[-3:] == ["gate", "string", "''"]
    assert rows["points"] == ["points", "int", "20", "1", "to", "1000"]
    assert rows["detuning"] == ["detuning", "float", "(MHz)", "2MHz", "-10MHz", "to",
                                "10MHz"]
    assert rows["mode"] == ["mode", "choice", "lock", "lock", "|", "scan"]
    assert rows["sweep"] == ["sweep", "scan", "(ms)", "-2ms:2ms:21"]
    code, raw = run(m.command("show", "explist"), columns=80)
    assert code == 0
    assert all(len(line) <= 80 for line in lines_of(raw)), lines_of(raw)
    assert "Argument" in visible(raw) and "detuning" in visible(raw)


def test_wait_shows_a_spinner_on_a_terminal_only(busy_lab):
    m = busy_lab
    rid = m.submit("-p", "spin", f"{LONG_FOLDER}/cavity.py")
    piped = m.cli("wait", str(rid))
    assert piped.stderr == "" and piped.stdout.startswith(f"RID:        {rid}")
    gate = m.lab.path("gate-spin")
    rid = m.submit("-p", "spin", f"{LONG_FOLDER}/cavity.py", f"gate={gate}")
    terminal = Terminal(m.command("wait", str(rid)), columns=80)
    try:
        terminal.until(lambda text: f"waiting for RID {rid}" in text)
        with open(gate, "w"):
            pass
        assert terminal.wait(timeout=60) == 0
    finally:
        terminal.kill()
    assert f"RID:        {rid}" in terminal.text and "completed" in terminal.text


# --- layout rules, without a master -------------------------------------------------

def _entry(**fields):
    entry = {"pipeline": "main", "status": "pending", "priority": 0, "due_date": None,
             "flush": False, "repo_msg": None,
             "expid": {"file": "a.py", "class_name": None}}
    entry.update(fields)
    return entry


def test_revisions_are_short_and_eta_in_the_past_is_late():
    now = 10_000.0
    commit = "3f2a9c1e8b7d6a5f4e3d2c1b0a9f8e7d6c5b4a39"
    table = format_schedule({
        1: _entry(status="running", started=now - 30, eta=now - 12,
                  expid={"file": "a.py", "class_name": None, "repo_rev": commit}),
        2: _entry(status="running", started=now - 30, eta=now + 0.2)}, now=now)
    assert "Revision" in table and "3f2a9c1e8b" in table and commit not in table
    assert "(late 12s)" in table and "(in 0s)" not in table
    assert "(late 0s)" in table  # an ETA less than a second ahead is not "in 0s"


def test_fit_table_drops_columns_by_priority_and_elides():
    columns = [Column("Key"), Column("Path", 1, min_width=8, elide="left"),
               Column("Note", 2, min_width=6), Column("Empty", 3)]
    rows = [("k1", "/a/very/long/path/to/file.py", "a long note here", ""),
            ("k2", "b.py", "short", "")]
    text = "\n".join(line.rstrip() for line in _render(fit_table(columns, rows, 30)))
    assert "Empty" not in text  # empty in every row
    assert all(len(line) <= 30 for line in text.splitlines()), text
    assert "…" in text and "file.py" in text  # the path loses its start
    narrow = _render(fit_table(columns, rows, 16))
    assert all(len(line) <= 16 for line in narrow), narrow
    assert "Note" not in narrow[0]  # dropped first
    assert elide("abcdef", 4) == "abc…" and elide("abcdef", 4, "left") == "…def"


def _render(table):
    from labpipe.client.screen import render
    return render(table, Screen(width=1000)).splitlines()


def test_argument_descriptions_in_words():
    assert describe_argument({"ty": "BooleanValue", "default": True}) == ("bool", "true", "")
    assert describe_argument({"ty": "NumberValue", "default": 5e6, "unit": "MHz",
                              "scale": 1e6, "min": 0, "max": None, "step": 1e5,
                              "precision": 2, "type": "auto"}) == \
        ("float (MHz)", "5MHz", ">= 0MHz")
    assert describe_argument({"ty": "Scannable", "unit": "ms", "scale": 1e-3,
                              "default": [{"ty": "CenterScan", "center": 0.01,
                                           "span": 0.004, "step": 0.001}]})[1] == \
        "10ms±2ms/1ms"
    assert describe_argument({"ty": "PYONValue"}) == ("pyon", "", "")


def test_the_terminal_helper_sees_the_width():
    code, raw = run([sys.executable, "-c", "import os; print(os.get_terminal_size())"],
                    columns=80)
    assert code == 0 and "columns=80" in raw
