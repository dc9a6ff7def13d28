"""script.is_black_box_script's pre-check: the usual experiment file is decided without
``ast.parse``, and only where the full analysis gives the same answer."""

import pathlib
import random

import pytest

from labpipe.worker import script
from labpipe.worker.script import _STARTS_WITH_API_IMPORT, _looks_like_experiment

ROOT = pathlib.Path(__file__).resolve().parent.parent


def full_analysis_says_script(source: str) -> bool:
    return _looks_like_experiment(source, None, set()) is False


@pytest.mark.parametrize("source", [
    "from labpipe.experiment import *\n",
    "import artiq\n",
    "import labpipe.language.environment as e\n",
    "#!/usr/bin/env python3\n# -*- coding: utf-8 -*-\n\nfrom artiq.experiment import *\n",
    '"""An experiment."""\n\nimport time\n\nimport numpy as np\n\n'
    "from labpipe.experiment import *\n\nclass A(EnvExperiment):\n    def run(self): pass\n",
    "'''Doc with \\''' and \"\"\" inside.\n'''  # comment\nfrom __future__ import annotations\n"
    "from labpipe . experiment import (\n    EnvExperiment,\n)\n",
    "import os, sys\nfrom labpipe import experiment\n",
    "from labpipe.experiment import *\ndef broken(:\n",  # not a script either way
])
def test_pre_check_decides_experiment_files(source):
    assert _STARTS_WITH_API_IMPORT.match(source)
    assert not full_analysis_says_script(source)
    assert script.is_black_box_script(source) is False


@pytest.mark.parametrize("source", [
    '"""\nfrom labpipe.experiment import *\n"""\nprint(1)\n',  # in a docstring
    "x = '''\nfrom labpipe.experiment import *\n'''\nprint(x)\n",
    'r"""\\\n"""\nfrom labpipe.experiment import *\n',  # prefixed string: not skipped
    "import labpipe_tools\n",
    "import labpipeé\n",
    "import os, \\\n    sys\nfrom labpipe import x\n",  # a continuation before it
    "print((\nfrom labpipe import x\n",
    "# from labpipe.experiment import *\nprint('hello')\n",
    "    from labpipe import x\n",  # not at column 0
    "import numpy\nprint('labpipe')\n",
])
def test_pre_check_leaves_everything_else_to_the_full_analysis(source):
    assert not _STARTS_WITH_API_IMPORT.match(source)


def test_pre_check_agrees_with_the_full_analysis_on_the_samples():
    sources = [p.read_text(encoding="utf-8") for folder in ("repository", "benchmarks", "tests")
               for p in sorted((ROOT / folder).glob("*.py"))]
    assert sum(bool(_STARTS_WITH_API_IMPORT.match(s)) for s in sources) >= 3
    for source in sources:
        if _STARTS_WITH_API_IMPORT.match(source):
            assert not full_analysis_says_script(source)


def test_pre_check_agrees_with_the_full_analysis_on_random_sources():
    """Whenever the pre-check decides, the full analysis says "not a script" too."""
    pieces = ['"""', "'''", '"', "'", "\\", "\n", "\n", "\n", "\r\n", "#", " ", "\t", "(",
              ")", "[", ":", "=", ",", ".", "*", "r", "x", "import", "from", "labpipe",
              "artiq", "labpipe_x", "from labpipe.experiment import *",
              "from artiq import x", "import labpipe", "import os", "print(1)",
              "class A(EnvExperiment):", "    def run(self): pass", "é", "\\\n",
              '"""doc"""\n', "'''a\\'''b'''\n", '"""a\nb"""']
    rng = random.Random(20240611)
    decided = 0
    for _ in range(20000):
        source = "".join(rng.choice(pieces) for _ in range(rng.randrange(1, 12)))
        if _STARTS_WITH_API_IMPORT.match(source):
            decided += 1
            assert not full_analysis_says_script(source), repr(source)
    assert decided > 100
