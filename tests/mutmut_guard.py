"""`make mutate` only: a wall-clock limit per test, and a mutant's tests cheapest first.

Both hooks act only in a process mutmut runs for one mutant (``MUTANT_UNDER_TEST`` names a
mutant, ``module.x_function__mutmut_N``); in ``make test`` and in mutmut's stats and clean-test
passes they do nothing. ``tests/conftest.py`` imports them.

Why a limit per test. mutmut limits a mutant's whole test run to ``(sum of the recorded
durations of every test that reaches the mutated function + timeout_constant) x
timeout_multiplier``; for a function that fifty tests reach that is minutes, and a mutant that
turns a search loop around (``n += 1`` -> ``n -= 1`` in ``calibrate.scrc._min_n_for_coverage``)
spends all of it inside the first test (a 2-core run stalled 7 minutes on one). Here each test
item (setup, call and teardown) gets ``BASE_S + FACTOR x`` its own recorded duration; past it
the process exits with status 36, mutmut's code for "timeout", so the mutant is counted as a
timeout (detected), as mutmut's own limit would count it, seconds instead of minutes later.
mutmut's per-mutant limit stays as the backstop for a hang inside C code, where a Python signal
handler cannot run. ``MUTATE_TEST_LIMIT_S`` overrides ``BASE_S`` (a heavily loaded machine).

Why an order. mutmut passes a mutant's tests in set order (random from run to run) and stops at
the first failure (``-x``); most mutants are killed by a cheap unit test, so the cheapest files
run first, and within a file the cheapest tests. A file's tests stay together: interleaving
files would tear down and rebuild a module-scoped fixture (``test_discipline``'s runs). mutmut
records only the call phase; a file's cost also counts its most expensive setup, recorded here
during mutmut's stats pass (``mutmut-setup.json``): test_challenge's two validator-view runs
(~3 s) then come after test_discipline's runs (~1 s), which kill most run-driver mutants.
"""

from __future__ import annotations

import functools
import json
import os
import signal
from pathlib import Path

import pytest

BASE_S = 15.0  # a module-scoped run is built inside one item's setup: ~1-3 s on an idle core
FACTOR = 10.0
TIMEOUT_EXIT = 36  # mutmut.stats.status_by_exit_code[36] == "timeout"


def _active() -> bool:
    return "__mutmut_" in os.environ.get("MUTANT_UNDER_TEST", "")


@functools.cache
def _durations() -> dict[str, float]:
    """Recorded call durations by node id, read once (mutmut runs pytest inside ``mutants/``)."""
    try:
        return json.loads(Path("mutmut-stats.json").read_text())["duration_by_test"]
    except (OSError, ValueError, KeyError):
        return {}


@functools.cache
def _setups() -> dict[str, float]:
    """Setup durations by node id from the stats pass (empty if not recorded)."""
    try:
        return json.loads(Path(SETUPS).read_text())
    except (OSError, ValueError):
        return {}


SETUPS = "mutmut-setup.json"
_recorded: dict[str, float] = {}


def pytest_runtest_logreport(report):
    if report.when == "setup" and os.environ.get("MUTANT_UNDER_TEST") == "stats":
        _recorded[report.nodeid] = report.duration


def pytest_sessionfinish(session):
    if _recorded and os.environ.get("MUTANT_UNDER_TEST") == "stats":
        Path(SETUPS).write_text(json.dumps(_recorded))


def pytest_collection_modifyitems(config, items):
    if not _active():
        return
    d, setup = _durations(), _setups()
    files: dict[str, list] = {}
    for item in items:
        files.setdefault(item.nodeid.split("::")[0], []).append(item)
    fixture = {}  # a file's most expensive recorded setup: its module-scoped fixtures
    for nodeid, seconds in setup.items():
        f = nodeid.split("::")[0]
        fixture[f] = max(fixture.get(f, 0.0), seconds)
    cost = {
        f: sum(d.get(i.nodeid, 0.0) for i in its) + fixture.get(f, 0.0) for f, its in files.items()
    }
    items[:] = [
        i
        for f in sorted(files, key=cost.__getitem__)
        for i in sorted(files[f], key=lambda i: d.get(i.nodeid, 0.0))
    ]


def _timed_out(signum, frame):
    os._exit(TIMEOUT_EXIT)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    if not _active():
        yield
        return
    base = float(os.environ.get("MUTATE_TEST_LIMIT_S", BASE_S))
    limit = base + FACTOR * _durations().get(item.nodeid, 0.0)
    previous = signal.signal(signal.SIGALRM, _timed_out)
    signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
