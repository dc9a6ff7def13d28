"""Values as people type them: ``labpipe-client`` reads each NAME=VALUE by its
argument's type (booleans, numbers with units, choices, strings without quotes, scans,
PYON), through a real labpipe-master: the run receives the typed value. Values that
do not parse are one line and exit code 2; ``-t HH:MM`` is the next such time."""

import json
import math
import time
from datetime import datetime, timedelta

import pytest

from conftest import Lab
from test_master_process import MasterProcess, wait_for

from labpipe.client.due_dates import describe_due_date, parse_due_date
from labpipe.client.quantities import QuantityError, format_quantity, parse_quantity
from labpipe.client.values import parse_value, parse_values

TYPED = """
from labpipe.experiment import *

class Typed(EnvExperiment):
    def build(self):
        self.setattr_argument("flag", BooleanValue(False))
        self.setattr_argument("freq", NumberValue(1e6, unit="MHz", min=0, max=20e6))
        self.setattr_argument("count", NumberValue(1, step=1, precision=0, type="int"))
        self.setattr_argument("mode", EnumerationValue(["fast", "slow"], "slow"))
        self.setattr_argument("note", StringValue(""))
        self.setattr_argument("delays", Scannable(default=NoScan(1e-3), unit="ms"))
        self.setattr_argument("extra", PYONValue(None))
        self.setattr_argument("tag", StringValue(""))

    def run(self):
        self.set_dataset("typed." + self.tag,
                         [self.flag, self.freq, self.count, self.mode, self.note,
                          list(self.delays), self.extra], broadcast=True)
"""

ASK = """
from labpipe.experiment import *

class AskTyped(EnvExperiment):
    def run(self):
        with self.interactive("Check") as ia:
            ia.setattr_argument("ok", BooleanValue(False))
            ia.setattr_argument("gain", NumberValue(1.0, unit="dB"))
        self.set_dataset("asked", [ia.ok, ia.gain], broadcast=True)
"""


@pytest.fixture(scope="module")
def master(tmp_path_factory):
    lab = Lab(tmp_path_factory.mktemp("lab"))
    lab.write("repository/typed.py", TYPED)
    lab.write("repository/ask_typed.py", ASK)
    m = MasterProcess(lab.root)
    m.lab = lab
    yield m
    m.stop()


def received(m, rid, tag):
    """The values the run saw (its dataset), once it completed."""
    record = m.json("wait", str(rid))
    assert record["status"] == "completed", record["error"]
    with m.client("dataset_db") as datasets:
        return datasets.get("typed." + tag)


def test_every_type_read_from_a_raw_file_and_from_the_repository(master):
    m = master
    typed = ["flag=yes", "freq=2.5MHz", "count=7", "mode=FAST", "note=new alignment",
             "delays=1ms:3ms:3", 'extra={"a": [1, 2]}']
    # a raw file: the master examines it for the client
    rid = m.submit("repository/typed.py", *typed, "tag=raw")
    flag, freq, count, mode, note, delays, extra = received(m, rid, "raw")
    assert flag is True and freq == 2.5e6 and count == 7 and isinstance(count, int)
    assert mode == "fast" and note == "new alignment" and extra == {"a": [1, 2]}
    assert delays == pytest.approx([1e-3, 2e-3, 3e-3])
    # a repository file at the current revision: from the experiment list
    rid = m.submit("-R", "typed.py", "flag=False", "freq=2500kHz", "count=3",
                   "delays=10ms+-4ms/2ms", "tag=repo")
    flag, freq, count, mode, note, delays, extra = received(m, rid, "repo")
    assert flag is False and freq == 2.5e6 and (count, mode, note, extra) == (
        3, "slow", "", None)
    assert delays == pytest.approx([6e-3, 8e-3, 10e-3, 12e-3, 14e-3])
    # other forms: 0 without a unit, SI base unit, an explicit list, a single value,
    # booleans as 1/0, and the quoted strings older clients needed
    rid = m.submit("repository/typed.py", "flag=1", "freq=0", "delays=1ms,2ms,5ms",
                   'tag="forms"')
    flag, freq, _, _, _, delays, _ = received(m, rid, "forms")
    assert flag is True and freq == 0.0 and delays == pytest.approx([1e-3, 2e-3, 5e-3])
    rid = m.submit("repository/typed.py", "freq=3e6Hz", "delays=250us", "tag=single")
    _, freq, _, _, _, delays, _ = received(m, rid, "single")
    assert freq == 3e6 and delays == pytest.approx([250e-6])


@pytest.mark.parametrize("value, words", [
    ("flag=maybe", "flag: expected true or false"),
    ("freq=2.5", "freq: expected a number: give a unit with '2.5', e.g. 2.5MHz"),
    ("freq=2.5V", "freq: expected a number: unknown unit 'V'"),
    ("count=2.5", "count: expected an integer, got '2.5'"),
    ("mode=medium", "mode: expected one of fast, slow, got 'medium'"),
    ("delays=1ms:3ms", "delays: expected start:stop:npoints"),
    ("delays=1ms:3ms:x", "number of points"),
    ("extra=[1,", "extra: expected PYON"),
])
def test_a_value_that_does_not_parse_is_one_line_and_exit_code_2(master, value, words):
    result = master.cli("submit", "repository/typed.py", value, check=False)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], lines
    assert result.stdout == ""


def test_change_resubmit_and_interactive_values_are_typed_too(master):
    m = master
    m.cli("hold", "typedhold")
    rid = m.submit("-p", "typedhold", "repository/typed.py", "tag=changed")
    m.cli("change", str(rid), "freq=3MHz", "flag=on")
    assert m.cli("change", str(rid), "count=many", check=False).returncode == 2
    m.cli("release", "typedhold")
    flag, freq, *_ = received(m, rid, "changed")
    assert (flag, freq) == (True, 3e6)
    again = m.json("resubmit", str(rid), "freq=4MHz", "mode=fast")["rid"]
    flag, freq, _, mode, *_ = received(m, again, "changed")
    assert (flag, freq, mode) == (True, 4e6, "fast")

    asking = m.submit("repository/ask_typed.py")
    wait_for(lambda: str(asking) in m.json("show", "interactive-args"))
    bad = m.cli("supply-interactive", str(asking), "ok=perhaps", check=False)
    assert bad.returncode == 2 and "ok: expected true or false" in bad.stderr
    m.cli("supply-interactive", str(asking), "ok=yes", "gain=3dB")
    assert m.json("wait", str(asking))["status"] == "completed"
    with m.client("dataset_db") as datasets:
        assert datasets.get("asked") == [True, 3.0]


def test_a_clock_time_is_the_next_one_and_the_client_says_which(master):
    m = master
    m.cli("hold", "later")
    now = datetime.now()
    past = (now - timedelta(minutes=2)).replace(second=0, microsecond=0)
    clock = past.strftime("%H:%M")
    expected = datetime.combine(now.date(), past.time())
    if expected <= now:
        expected += timedelta(days=1)
    result = m.json("submit", "-p", "later", "-t", clock, "repository/typed.py")
    assert result["due_date"] == expected.timestamp() > time.time()
    shown = m.cli("submit", "-p", "later", "-t", clock, "repository/typed.py").stdout
    due_line, rid_line = shown.splitlines()
    assert due_line.startswith(f"Due: {expected:%Y-%m-%d %H:%M}:00 (")
    assert rid_line.startswith("RID: ")
    for rid in (result["rid"], int(rid_line.split()[1])):
        m.cli("delete", str(rid))
    m.cli("release", "later")


# --- the readers themselves --------------------------------------------------------

def test_due_dates():
    evening = datetime(2026, 11, 20, 21, 0).timestamp()
    assert parse_due_date("09:00", now=evening) == datetime(2026, 11, 21, 9, 0).timestamp()
    assert parse_due_date("21:30", now=evening) == datetime(2026, 11, 20, 21, 30).timestamp()
    assert parse_due_date("21:00", now=evening) == datetime(2026, 11, 21, 21, 0).timestamp()
    assert parse_due_date("+90", now=evening) == evening + 90
    assert parse_due_date("+10m", now=evening) == evening + 600
    assert parse_due_date("+2h", now=evening) == evening + 7200
    assert parse_due_date("2026-11-25 14:30", now=evening) == \
        datetime(2026, 11, 25, 14, 30).timestamp()
    for bad in ("soon", "+inf", "+", "25:00", "+-5"):
        with pytest.raises(ValueError, match="cannot read the due date"):
            parse_due_date(bad, now=evening)
    assert describe_due_date(datetime(2026, 11, 21, 9, 0).timestamp(), now=evening) == \
        "2026-11-21 09:00:00 (tomorrow, in 12h00m)"


def test_quantities():
    assert parse_quantity("2.5MHz", "MHz", 1e6) == 2.5e6
    assert parse_quantity("2500 kHz", "MHz", 1e6) == 2.5e6
    assert parse_quantity("20ms", "s", 1.0) == pytest.approx(0.02)
    assert parse_quantity("20ms", "us", 1e-6) == pytest.approx(0.02)
    assert parse_quantity("-2mm", "mm", 1.0) == -2.0
    assert parse_quantity("2um", "mm", 1.0) == pytest.approx(2e-3)  # scale 1: in mm
    assert parse_quantity("5", "", 1.0) == 5.0 and parse_quantity("5", "V", 1.0) == 5.0
    assert parse_quantity("3", "MHz", 1e6, default_unit="kHz") == 3e3
    for text, unit, scale in (("5", "MHz", 1e6), ("5x", "MHz", 1e6), ("5V", "", 1.0),
                              ("abc", "", 1.0)):
        with pytest.raises(QuantityError):
            parse_quantity(text, unit, scale)
    assert format_quantity(2.5e6, "MHz", 1e6) == "2.5MHz"
    assert format_quantity(7, "", 1.0) == "7"


def test_values_without_description_are_pyon_or_text():
    assert parse_values(["a=1", "b=[1, 2]", "c=hello", 'd="x"', "e=true"], None) == \
        {"a": 1, "b": [1, 2], "c": "hello", "d": "x", "e": True}
    # a name the description does not know is read untyped too
    assert parse_values(["n=5"], {"m": {"ty": "BooleanValue"}}) == {"n": 5}
    number = {"ty": "NumberValue", "unit": "", "scale": 1, "step": 1, "precision": 0,
              "type": "auto"}
    assert parse_value("n", "5", number) == 5 and isinstance(parse_value("n", "5", number), int)
    assert math.isnan(parse_value("x", "nan", dict(number, precision=2)))
    scan = {"ty": "Scannable", "unit": "MHz", "scale": 1e6}
    assert parse_value("s", "1:10MHz:4", scan) == {
        "ty": "RangeScan", "start": 1e6, "stop": 10e6, "npoints": 4, "randomize": False,
        "seed": None}
    assert parse_value("s", '{"ty": "NoScan", "value": 1, "repetitions": 2}', scan) == \
        {"ty": "NoScan", "value": 1, "repetitions": 2}
    with pytest.raises(ValueError, match="s: expected a scan"):
        parse_value("s", "1:10:4", scan)
    assert json.dumps(parse_value("s", "5MHz", scan))  # plain data, for the wire
