"""tests/mutmut_guard.py, `make mutate`'s hooks: under a mutant a test past its limit ends the
process with mutmut's "timeout" status, and the mutant's tests run cheapest file first (calls and
fixture setup), cheapest test first; outside a mutant (``make test``, mutmut's stats and clean
runs) nothing changes, except that the stats pass records the setup times.

Each case runs pytest in a subprocess on a two-file project that uses the real hooks.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
TEST = """
import os, time
from pathlib import Path

import pytest

def _run(name):
    with Path(os.environ["ORDER_LOG"]).open("a") as f:
        f.write(name + "\\n")
    if os.environ.get("SLOW") == name:
        time.sleep(0.6)

@pytest.fixture(scope="module")
def shared_{f}():
    pass

def test_{f}1():
    _run("{f}1")

def test_{f}2(shared_{f}):
    _run("{f}2")
"""


@pytest.fixture
def project(tmp_path):
    tests = tmp_path / "tests"
    tests.mkdir()
    shutil.copy(HERE / "mutmut_guard.py", tests)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    hooks = "pytest_collection_modifyitems, pytest_fixture_setup, pytest_runtest_protocol"
    (tests / "conftest.py").write_text(f"from mutmut_guard import {hooks}, pytest_sessionfinish\n")
    for f in "ab":
        (tests / f"test_{f}.py").write_text(TEST.format(f=f))
    # recorded durations: file a costs 3 s in all, file b 3 ms; a2 and b1 the cheaper of their file
    durations = {"tests/test_a.py::test_a1": 2.0, "tests/test_a.py::test_a2": 1.0}
    durations |= {"tests/test_b.py::test_b1": 0.001, "tests/test_b.py::test_b2": 0.002}
    (tmp_path / "mutmut-stats.json").write_text(json.dumps({"duration_by_test": durations}))
    return tmp_path


def _pytest(root, mutant, *args, **env):
    e = {k: v for k, v in os.environ.items() if k != "MUTANT_UNDER_TEST"}
    e |= {"ORDER_LOG": str(root / "order.log"), **env}
    if mutant is not None:
        e["MUTANT_UNDER_TEST"] = mutant
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args]
    r = subprocess.run(cmd, cwd=root, env=e, capture_output=True, text=True, timeout=120)
    order = (root / "order.log").read_text().split() if (root / "order.log").exists() else []
    (root / "order.log").unlink(missing_ok=True)
    return r.returncode, order


IDS = ("tests/test_a.py::test_a1", "tests/test_b.py::test_b2", "tests/test_a.py::test_a2")
IDS += ("tests/test_b.py::test_b1",)
MUTANT = "calibrate.x_f__mutmut_1"


def test_a_mutants_tests_run_cheapest_first_and_a_slow_one_ends_as_a_timeout(project):
    env = {"MUTATE_TEST_LIMIT_S": "0.3"}
    # cheapest file first (b), in it the cheapest test first; a1 sleeps 0.6 s within its limit
    # of 0.3 s + 10 x its recorded 2 s
    assert _pytest(project, MUTANT, *IDS, SLOW="a1", **env) == (0, ["b1", "b2", "a2", "a1"])
    # b2's limit is 0.3 s + 10 x 2 ms: sleeping 0.6 s ends the process with status 36
    # (mutmut.stats: "timeout"), and nothing runs after it
    assert _pytest(project, MUTANT, *IDS, SLOW="b2", **env) == (36, ["b1", "b2"])
    # outside a mutant (make test; mutmut's stats and clean runs): the given order, no limit;
    # the stats pass records the cost of each shared fixture
    assert _pytest(project, "stats", *IDS, SLOW="b2", **env) == (0, ["a1", "b2", "a2", "b1"])
    assert set(json.loads((project / "mutmut-fixtures.json").read_text())) == {
        "shared_a",
        "shared_b",
    }
    # a file whose shared fixtures take long to build goes last (b: 5 s, more than a's 3 s),
    # and in a file the tests without them first (a1 before a2 although a2's call is cheaper)
    (project / "mutmut-fixtures.json").write_text(json.dumps({"shared_b": 5.0, "shared_a": 0.5}))
    assert _pytest(project, MUTANT, *IDS) == (0, ["a1", "a2", "b1", "b2"])
