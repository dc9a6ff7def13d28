"""Queue control's decisions and helpers without a master: device conflicts, time
estimates, change checks, pipeline states, black-box detection, dry-run validation."""

import os
import textwrap
from dataclasses import dataclass, field

import pytest

from labpipe.master.conflicts import Conflict, blocked_by, conflicts
from labpipe.master.precedence import RunStatus
from labpipe.master.progress import Progress, estimate_end, experiment_key, parse_report
from labpipe.master.queue_control import PipelineStates, check_change
from labpipe.worker.script import is_black_box_script
from labpipe.worker.validate import validate_experiment


@dataclass(eq=False)
class R:
    rid: int
    pipeline_name: str
    devices: list = field(default_factory=list)
    status: RunStatus = RunStatus.prepare_done


# --- conflicts --------------------------------------------------------------------

def test_shared_device_in_another_pipeline_blocks():
    waiting = R(5, "b", ["dds0", "ttl1"])
    runs = [waiting, R(1, "a", ["ttl1", "pmt"], RunStatus.running),
            R(2, "c", ["dds0"], RunStatus.paused), R(3, "d", ["dds0"], RunStatus.prepare_done),
            R(4, "b", ["dds0"], RunStatus.running)]  # same pipeline: never a conflict
    found = conflicts(waiting, runs)
    assert found == [Conflict(1, "a", ("ttl1",)), Conflict(2, "c", ("dds0",))]
    assert blocked_by(found) == [{"rid": 1, "pipeline": "a", "devices": ["ttl1"]},
                                 {"rid": 2, "pipeline": "c", "devices": ["dds0"]}]


def test_disjoint_devices_and_finished_runs_do_not_block():
    waiting = R(5, "b", ["dds0"])
    runs = [waiting, R(1, "a", ["ttl1"], RunStatus.running),
            R(2, "a", ["dds0"], RunStatus.run_done), R(3, "a", ["dds0"], RunStatus.pending)]
    assert conflicts(waiting, runs) == []
    assert blocked_by([]) is None
    assert conflicts(R(6, "b", []), [R(1, "a", ["x"], RunStatus.running)]) == []


def test_aliases_resolved_and_exempt_pipelines():
    aliases = {"laser": "dds0", "cooling": "dds0"}
    waiting = R(5, "b", ["laser"])
    holder = R(1, "a", ["cooling"], RunStatus.running)
    assert conflicts(waiting, [holder]) == []
    found = conflicts(waiting, [holder], resolve=lambda k: aliases.get(k, k))
    assert found == [Conflict(1, "a", ("dds0",))]
    # a pipeline whose check is off neither waits nor makes others wait
    assert conflicts(waiting, [holder], resolve=lambda k: aliases.get(k, k),
                     exempt={"b"}) == []
    assert conflicts(waiting, [holder], resolve=lambda k: aliases.get(k, k),
                     exempt={"a"}) == []


def test_unresolvable_key_stands_for_itself():
    def resolve(key):
        raise KeyError(key)
    assert conflicts(R(5, "b", ["x"]), [R(1, "a", ["x"], RunStatus.running)],
                     resolve=resolve) == [Conflict(1, "a", ("x",))]


# --- estimates --------------------------------------------------------------------

def test_eta_from_rate_then_history_then_none():
    started = 1000.0
    # 10 of 40 in 5 s: 15 s more
    assert estimate_end(started, Progress(10, 40, "", 1005.0), []) == pytest.approx(1020.0)
    # without total or progress: the median of earlier durations
    assert estimate_end(started, Progress(3, None, "", 1001.0), [10, 30, 20]) == 1020.0
    assert estimate_end(started, None, [8.0]) == 1008.0
    assert estimate_end(started, Progress(0, 10, "", 1001.0), []) is None
    assert estimate_end(started, None, []) is None
    assert estimate_end(None, None, [5.0]) is None
    # done: ends now
    assert estimate_end(started, Progress(10, 10, "", 1003.0), [100]) == 1003.0


def test_experiment_key_and_report_parsing():
    assert experiment_key({"file": "a.py", "class_name": "A"}) == ("file", "a.py", "A")
    assert experiment_key({"content": "x"}) == experiment_key({"content": "x",
                                                                "class_name": None})
    assert experiment_key({"content": "x"}) != experiment_key({"content": "y"})
    p = parse_report({"done": 3, "total": 10, "message": "scan", "time": 5.0})
    assert p == Progress(3, 10, "scan", 5.0)
    with pytest.raises(TypeError):
        parse_report({"done": "3"})
    with pytest.raises(ValueError):
        parse_report({"done": 1, "total": -1})


# --- change -----------------------------------------------------------------------

def test_check_change_validates_every_field():
    assert check_change() == {}
    assert check_change(priority=3, due_date=0, pipeline_name="b", arguments={"n": 1},
                        flush=True) == {"priority": 3, "due_date": None,
                                        "pipeline_name": "b", "arguments": {"n": 1},
                                        "flush": True}
    assert check_change(due_date=12.5) == {"due_date": 12.5}
    for kwargs, word in [({"priority": "high"}, "priority"), ({"priority": True}, "priority"),
                         ({"due_date": "soon"}, "due_date"), ({"pipeline_name": ""}, "pipeline"),
                         ({"arguments": [1]}, "arguments"), ({"flush": 1}, "flush")]:
        with pytest.raises((TypeError, ValueError), match=word):
            check_change(**kwargs)


async def test_pipeline_states_published_and_kept(tmp_path):
    path = str(tmp_path / "pipelines.pyon")

    async def main():
        states = PipelineStates(path)
        mods = []
        states.notifier.add_listener(mods.append)
        await states.set("nobody-yet", held=True)
        await states.set("b", device_check=False)
        assert states.is_held("nobody-yet") and not states.is_held("b")
        assert states.exempt() == {"b"}
        again = PipelineStates(path)
        assert again.notifier.raw_view == {
            "nobody-yet": {"held": True, "device_check": True, "stop_pending": False,
                           "stop_on_failure": False},
            "b": {"held": False, "device_check": False, "stop_pending": False,
                  "stop_on_failure": False}}
        await again.set("nobody-yet", held=False)
        assert "nobody-yet" not in PipelineStates(path).notifier.raw_view
        assert [m["action"] for m in mods] == ["setitem", "setitem"]

    await main()


def test_unreadable_pipeline_states_start_empty(tmp_path):
    path = tmp_path / "pipelines.pyon"
    path.write_text("not pyon")
    assert PipelineStates(str(path)).notifier.raw_view == {}


# --- black-box scripts --------------------------------------------------------------

@pytest.mark.parametrize("source, script", [
    ("print('hello')\n", True),
    ("import time\nclass Helper:\n    pass\nHelper()\n", True),
    ("from labpipe.experiment import *\nclass A(EnvExperiment):\n    def run(self): pass\n",
     False),
    ("from artiq.experiment import *\n", False),
    ("import labpipe.language.environment as e\n", False),
    ("from labpipe.bluesky.plans import experiments_from_plans\n", False),
    ("import artiq\n", False),
    ("import labpipe_helpers\n", True),
    ("from mybase import Base\nclass A(Base):\n    def run(self):\n        pass\n", False),
    ("from mybase import *\nclass A(MyExperiment):\n    pass\n", False),
    ("def f(:\n", False),  # does not parse: the import reports it
])
def test_black_box_detection(source, script):
    assert is_black_box_script(source) is script


def test_black_box_detection_follows_siblings(tmp_path):
    (tmp_path / "library.py").write_text(
        "from labpipe.experiment import *\nclass Shared(EnvExperiment):\n"
        "    def run(self): pass\n")
    (tmp_path / "helpers.py").write_text("def twice(x):\n    return 2 * x\n")
    (tmp_path / "loop_a.py").write_text("import loop_b\n")
    (tmp_path / "loop_b.py").write_text("import loop_a\n")
    folder = str(tmp_path)
    assert not is_black_box_script("from library import Shared as S\n", folder)
    assert is_black_box_script("from helpers import twice\nprint(twice(2))\n", folder)
    assert is_black_box_script("import loop_a\n", folder)
    assert is_black_box_script("from library import Shared\n")  # no folder: own text only


# --- validation -------------------------------------------------------------------

EXP = """
from labpipe.experiment import *

class Exp(EnvExperiment):
    def build(self):
        self.setattr_argument("n", NumberValue(1, min=0, max=10, step=1, precision=0, type="int"))
        self.setattr_argument("mode", EnumerationValue(["a", "b"], "a"))
        self.setattr_argument("name", StringValue("x"))
        self.setattr_device("dds0")
        self.setattr_device("laser")

    def run(self):
        raise RuntimeError("never run by a dry run")
"""

DDB = {"dds0": {"type": "local", "module": "os", "class": "X"}, "laser": "dds0",
       "ghost": {"type": "local", "module": "no_such_module_xyz", "class": "X"}}


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_validate_accepts_a_good_submission(tmp_path):
    path = _write(tmp_path, "exp.py", EXP)
    expid = {"file": path, "class_name": None, "arguments": {"n": 3, "mode": "b"}}
    assert validate_experiment(expid, workdir=None, device_db=DDB) == []


def test_validate_reports_every_problem_kind(tmp_path):
    path = _write(tmp_path, "exp.py", EXP)

    def problems(arguments=None, ddb=DDB, **expid):
        expid = {"file": path, "class_name": None, "arguments": arguments or {}, **expid}
        return validate_experiment(expid, workdir=None, device_db=ddb)

    found = problems({"n": 99, "mode": "c", "name": 5, "bogus": 1})
    assert len(found) == 4, found
    assert "'n'" in found[0] and "maximum" in found[0]
    assert "'mode'" in found[1] and "choices" in found[1]
    assert "'name'" in found[2] and "string" in found[2]
    assert "bogus" in found[3] and "unknown" in found[3]
    assert problems({"n": "three"})[0].startswith("argument 'n'")
    assert problems(ddb={}) == ["device 'dds0' is not in the device database",
                                "device 'laser' is not in the device database"]
    assert "no_such_module_xyz" in problems(ddb={**DDB, "dds0": "ghost"})[0]
    missing = problems(file=str(tmp_path / "missing.py"))
    assert len(missing) == 1 and "missing.py" in missing[0] and "does not exist" in missing[0]
    nope = problems(class_name="Nope")
    assert len(nope) == 1 and "Nope" in nope[0]
    broken = _write(tmp_path, "broken.py", "from labpipe.experiment import *\nclass B(\n")
    assert "SyntaxError" in problems(file=broken)[0]


def test_validate_script_and_content(tmp_path):
    script = _write(tmp_path, "script.py", "print('would print')\n")
    assert validate_experiment({"file": script}, workdir=None, device_db={}) == []
    assert "takes none" in validate_experiment(
        {"file": script, "arguments": {"x": 1}}, workdir=None, device_db={})[0]
    assert validate_experiment({"content": EXP, "arguments": {"n": 2}}, workdir=None,
                               device_db=DDB) == []
    assert not any(name.startswith("labpipe_content_") for name in os.listdir(tmp_path))


# --- client formatting -------------------------------------------------------------

def test_client_shows_progress_elapsed_eta_and_blocking():
    from labpipe.client.formatting import format_duration, format_progress, format_schedule
    assert [format_duration(s) for s in (4.4, 65, 7380)] == ["4s", "1m05s", "2h03m"]
    assert format_progress(None) == ""
    assert format_progress({"done": 4, "total": 10, "message": "scan"}) == \
        "[####------]  40% 4/10 scan"
    assert format_progress({"done": 7, "total": None, "message": ""}) == "7 done"
    now = 10_000.0
    base = {"expid": {"file": "a.py", "class_name": None}, "priority": 0,
            "due_date": None, "flush": False, "repo_msg": None}
    table = format_schedule({
        1: dict(base, pipeline="a", status="running", started=now - 75, eta=now + 100,
                progress={"done": 1, "total": 2, "message": "half"}),
        2: dict(base, pipeline="b", status="prepare_done",
                blocked_by=[{"rid": 1, "pipeline": "a", "devices": ["dds0"]}]),
        3: dict(base, pipeline="c", status="pending")}, now=now)
    lines = table.splitlines()
    assert lines[0].split()[-3:] == ["Progress", "Elapsed", "ETA"]
    assert "[#####-----]  50% 1/2 half" in lines[1] and "1m15s" in lines[1]
    assert "(in 1m40s)" in lines[1]
    assert lines[2].rstrip().endswith("blocked by RID 1")
    # an ARTIQ master's entries (no labpipe keys) still show
    assert lines[3].split()[:4] == ["3", "c", "1", "pending"]  # first in its queue
