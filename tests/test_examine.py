"""Importing experiment files and examining their experiment classes."""

import sys
import textwrap
import types

import pytest

from labpipe.protocol import pyon
from labpipe.worker import importer
from labpipe.worker.examine import DummyDevice, examine_file, examine_module
from labpipe.worker.importer import (AmbiguousExperimentError, ExperimentLookupError,
                                     NoExperimentError, forget_module, get_experiment,
                                     import_file, list_experiments, sibling_files)


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def experiment_with_sibling(folder, value):
    """folder/exp.py importing folder/helper.py (and folder/pkg/sub.py)."""
    write(folder / "helper.py", f"VALUE = {value!r}\n")
    write(folder / "pkg" / "__init__.py", "")
    write(folder / "pkg" / "sub.py", f"VALUE = {value!r}\n")
    return write(folder / "exp.py", """
        from labpipe.experiment import *
        import helper
        from pkg import sub

        class Exp(EnvExperiment):
            def run(self):
                return helper.VALUE, sub.VALUE
    """)


# Importer ----------------------------------------------------------------------------

def test_import_file_sees_siblings_and_restores_sys_path(tmp_path):
    path = experiment_with_sibling(tmp_path / "rev1", "one")
    saved_path = list(sys.path)
    module = import_file(path)
    try:
        assert sys.path == saved_path
        assert module.helper.VALUE == "one" and module.sub.VALUE == "one"
        assert module.__name__.startswith("file_import_exp")
        assert sys.modules[module.__name__] is module
        assert "helper" not in sys.modules and "pkg" not in sys.modules
        folder = (tmp_path / "rev1").resolve()
        assert sibling_files(module) == tuple(sorted(
            str(folder / f) for f in ("helper.py", "pkg/__init__.py", "pkg/sub.py")))
    finally:
        forget_module(module)
    assert module.__name__ not in sys.modules


def test_same_file_name_in_two_folders_gets_its_own_siblings(tmp_path):
    first = import_file(experiment_with_sibling(tmp_path / "rev1", "one"))
    second = import_file(experiment_with_sibling(tmp_path / "rev2", "two"))
    again = import_file(tmp_path / "rev1" / "exp.py")
    try:
        assert first.__name__ != second.__name__ != again.__name__
        run = {m: get_experiment(m).run(None) for m in (first, second, again)}
        assert run == {first: ("one", "one"), second: ("two", "two"),
                       again: ("one", "one")}
        assert first.Exp is not again.Exp
    finally:
        for module in (first, second, again):
            forget_module(module)


def test_import_errors_propagate_and_leave_nothing_behind(tmp_path):
    write(tmp_path / "helper_bad.py", "VALUE = 1\n")
    path = write(tmp_path / "broken.py", "import helper_bad\nraise RuntimeError('boom')\n")
    before = set(sys.modules)
    saved_path = list(sys.path)
    with pytest.raises(RuntimeError, match="boom"):
        import_file(path)
    assert sys.path == saved_path
    assert set(sys.modules) == before
    with pytest.raises(SyntaxError):
        import_file(write(tmp_path / "syntax.py", "def (:\n"))
    with pytest.raises(FileNotFoundError, match="nope.py does not exist"):
        import_file(tmp_path / "nope.py")



def _fake_module(name):
    module = types.ModuleType(name)
    sys.modules[name] = module
    return module


def test_added_names_reads_only_the_new_names_and_falls_back_when_older_ones_went():
    _fake_module("_lp_test_old")
    _fake_module("_lp_test_last")
    count, last = len(sys.modules), next(reversed(sys.modules))
    try:
        _fake_module("_lp_test_a")
        _fake_module("_lp_test_b")
        assert importer._added_names(count, last) == ["_lp_test_a", "_lp_test_b"]
        del sys.modules["_lp_test_a"]  # an added name removed again: still exact
        assert importer._added_names(count, last) == ["_lp_test_b"]
        _fake_module("_lp_test_a")
        # an older name removed: the length no longer tells, the full walk does
        del sys.modules["_lp_test_old"]
        assert importer._added_names(count, last) == ["_lp_test_b", "_lp_test_a"]
        del sys.modules["_lp_test_last"]  # the newest gone too: every name
        assert importer._added_names(count, last) == list(sys.modules)
    finally:
        for name in ("_lp_test_old", "_lp_test_last", "_lp_test_a", "_lp_test_b"):
            sys.modules.pop(name, None)


def test_import_file_drops_siblings_when_the_file_removes_older_modules(tmp_path):
    """The file removes a module imported before it (not the newest, then the newest):
    the siblings it imported are still found (by the full walk) and dropped, and a
    module import_file made earlier from the same folder stays."""
    earlier = import_file(write(tmp_path / "earlier.py", "X = 1\n"))
    for victim in ("_lp_test_older", "_lp_test_newest"):
        _fake_module("_lp_test_older")
        _fake_module("_lp_test_newest")
        experiment_with_sibling(tmp_path, victim)
        path = write(tmp_path / "remover.py", f"""
            import sys
            del sys.modules[{victim!r}]
            import helper
            from pkg import sub
        """)
        try:
            module = import_file(path)
            try:
                assert module.helper.VALUE == victim and module.sub.VALUE == victim
                assert "helper" not in sys.modules and "pkg" not in sys.modules
                assert "pkg.sub" not in sys.modules
                assert sys.modules[module.__name__] is module
                assert sys.modules[earlier.__name__] is earlier
                folder = tmp_path.resolve()
                assert sibling_files(module) == tuple(sorted(
                    str(folder / f) for f in ("helper.py", "pkg/__init__.py", "pkg/sub.py")))
            finally:
                forget_module(module)
        finally:
            for name in ("_lp_test_older", "_lp_test_newest"):
                sys.modules.pop(name, None)
    forget_module(earlier)


def test_import_file_keeps_submodules_of_packages_imported_before(tmp_path):
    """A package of the folder imported before the file: the submodule the file adds to
    it stays (the package keeps referring to it); a new sibling is dropped."""
    experiment_with_sibling(tmp_path, "kept")
    sys.path.insert(0, str(tmp_path))
    try:
        import pkg  # noqa: F401 - imported before the experiment file
    finally:
        sys.path.remove(str(tmp_path))
    try:
        module = import_file(write(tmp_path / "user.py", "import helper\nfrom pkg import sub\n"))
        try:
            assert "pkg.sub" in sys.modules and "helper" not in sys.modules
            assert sibling_files(module) == (str(tmp_path.resolve() / "helper.py"),)
        finally:
            forget_module(module)
    finally:
        sys.modules.pop("pkg", None)
        sys.modules.pop("pkg.sub", None)

SEVERAL = """
    import abc
    from labpipe.experiment import *

    class Base(EnvExperiment):
        '''Shared set-up, no run(): not listed.'''
        def build(self):
            self.setattr_device("core")

    class _Hidden(EnvExperiment):
        def run(self):
            pass

    class Abstract(EnvExperiment, abc.ABC):
        @abc.abstractmethod
        def step(self):
            pass

        def run(self):
            self.step()

    class Scan(Base):
        '''Frequency scan.

        Scans the AOM frequency.'''
        argument_ui = "custom_ui"

        def build(self):
            super().build()
            self.setattr_argument("freqs", Scannable(RangeScan(1*MHz, 2*MHz, 11),
                                                     unit="MHz", global_min=0), "RF")
            self.setattr_argument("repeats", NumberValue(3, step=1, precision=0, type="int", min=1), "RF",
                                  "repetitions per point")
            self.setattr_argument("mode", EnumerationValue(["fast", "slow"], "fast"))
            self.setattr_argument("extra", PYONValue({"a": (1, 2)}))
            self.setattr_argument("label", StringValue())
            self.setattr_argument("dry", BooleanValue(False))
            self.setattr_dataset("offset", 0.0)
            self.core.reset().wait(5)
            self.set_default_scheduling(priority=2, pipeline_name="rf", flush=True)
            self.points = len(self.freqs)

        def run(self):
            pass

    class Quick(EnvExperiment):
        def run(self):
            pass
"""


def test_list_and_get_experiments(tmp_path):
    module = import_file(write(tmp_path / "several.py", SEVERAL))
    try:
        assert list(list_experiments(module)) == ["Quick", "Scan"]
        assert get_experiment(module, "Scan") is module.Scan
        assert get_experiment(module, "_Hidden") is module._Hidden  # asked for by name
        with pytest.raises(AmbiguousExperimentError) as info:
            get_experiment(module)
        message = str(info.value)
        assert "several.py" in message and "Quick, Scan" in message
        assert "\n" not in message
        with pytest.raises(NoExperimentError, match="no experiment class 'Nope'.*Quick, Scan"):
            get_experiment(module, "Nope")
        with pytest.raises(NoExperimentError, match="'Base' in .*several.py is abstract"):
            get_experiment(module, "Base")
        with pytest.raises(LookupError, match="'Abstract'.*is abstract"):
            get_experiment(module, "Abstract")
    finally:
        forget_module(module)


def test_get_experiment_without_any(tmp_path):
    module = import_file(write(tmp_path / "empty.py", "from labpipe.experiment import *\n"))
    try:
        with pytest.raises(ExperimentLookupError, match="empty.py defines no experiment"):
            get_experiment(module)
    finally:
        forget_module(module)


# Examine -----------------------------------------------------------------------------

def test_examine_file_describes_every_public_experiment(tmp_path):
    result = examine_file(write(tmp_path / "several.py", SEVERAL))
    assert list(result) == ["Quick", "Scan"]
    assert result["Quick"] == {"name": "Quick", "arginfo": {}, "argument_ui": None,
                               "scheduler_defaults": {}}
    scan = result["Scan"]
    assert scan["name"] == "Frequency scan"
    assert scan["argument_ui"] == "custom_ui"
    assert scan["scheduler_defaults"] == {"priority": 2, "pipeline_name": "rf",
                                          "flush": True}
    arginfo = scan["arginfo"]
    assert list(arginfo) == ["freqs", "repeats", "mode", "extra", "label", "dry"]
    assert arginfo["freqs"] == [
        {"ty": "Scannable",
         "default": [{"ty": "RangeScan", "start": 1e6, "stop": 2e6, "npoints": 11,
                      "randomize": False, "seed": None}],
         "unit": "MHz", "scale": 1e6, "global_step": 1e5, "global_min": 0,
         "global_max": None, "precision": 2},
        "RF", None]
    assert arginfo["repeats"] == [
        {"ty": "NumberValue", "default": 3, "unit": "", "scale": 1.0, "step": 1,
         "min": 1, "max": None, "precision": 0, "type": "int"},
        "RF", "repetitions per point"]
    assert arginfo["mode"][0] == {"ty": "EnumerationValue", "default": "fast",
                                  "choices": ["fast", "slow"], "quickstyle": False}
    assert pyon.decode(arginfo["extra"][0]["default"]) == {"a": (1, 2)}
    assert arginfo["label"] == [{"ty": "StringValue"}, None, None]
    assert arginfo["dry"] == [{"ty": "BooleanValue", "default": False}, None, None]
    assert pyon.decode(pyon.encode(result)) == result


def test_examine_forgets_the_module_and_its_siblings(tmp_path):
    before = set(sys.modules)
    result = examine_file(experiment_with_sibling(tmp_path, "x"))
    assert list(result) == ["Exp"]
    assert set(sys.modules) == before


def test_examine_includes_imported_experiments(tmp_path):
    write(tmp_path / "library.py", """
        from labpipe.experiment import *

        class Shared(EnvExperiment):
            '''A shared experiment.'''
            def run(self):
                pass
    """)
    path = write(tmp_path / "uses.py", "from library import Shared as Renamed\n")
    assert examine_file(path) == {"Renamed": {"name": "A shared experiment",
                                              "arginfo": {}, "argument_ui": None,
                                              "scheduler_defaults": {}}}


def test_examine_reports_the_class_whose_build_fails(tmp_path):
    path = write(tmp_path / "failing.py", """
        from labpipe.experiment import *

        class Failing(EnvExperiment):
            def build(self):
                self.setattr_dataset("calibration")  # no default, and none exists

            def run(self):
                pass
    """)
    with pytest.raises(KeyError) as info:
        examine_file(path)
    assert any("Failing" in note for note in info.value.__notes__)


def test_examine_names_an_argument_that_cannot_be_sent(tmp_path):
    path = write(tmp_path / "odd.py", """
        from labpipe.experiment import *

        class Odd(EnvExperiment):
            def build(self):
                self.setattr_argument("thing", StringValue(), group=object())

            def run(self):
                pass
    """)
    with pytest.raises(TypeError, match="Odd: the description of argument 'thing'"):
        examine_file(path)


def test_examine_module_with_given_managers(tmp_path):
    asked = []

    class Datasets:
        def get(self, key, archive=False):
            asked.append(key)
            return {"offset": 2.5}[key]

    module = import_file(write(tmp_path / "several.py", SEVERAL))
    try:
        assert list(examine_module(module, dataset_mgr=Datasets())) == ["Quick", "Scan"]
        assert asked == ["offset"]   # Scan's build read its dataset from the given manager
    finally:
        forget_module(module)


def test_dummy_device_accepts_anything():
    device = DummyDevice("core")
    assert isinstance(device.a.b(1, x=2).c, DummyDevice)
    device.level = 3
    assert device.level == 3
    assert repr(device.reset()) == "<DummyDevice core.reset()>"
    with pytest.raises(AttributeError):
        device.__array__
