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
An item that uses a shared fixture (a run built in its setup) also gets ``FACTOR x`` that
fixture's recorded cost (below).
mutmut's per-mutant limit stays as the backstop for a hang inside C code, where a Python signal
handler cannot run. ``MUTATE_TEST_LIMIT_S`` overrides ``BASE_S`` (a heavily loaded machine).

Why an order. mutmut passes a mutant's tests in set order (random from run to run) and stops at
the first failure (``-x``); most mutants are killed by a cheap unit test, so the cheapest files
run first, and within a file the cheapest tests. A file's tests stay together: interleaving
files would tear down and rebuild a module-scoped fixture (``test_discipline``'s runs). mutmut
records only the call phase, so the cost of each module- or session-scoped fixture is recorded
here during mutmut's stats pass (``mutmut-fixtures.json``): a file costs its tests' calls plus
the shared fixtures they use, and within a file the tests without expensive fixtures (the
constructed-score tests) run before those that build a run, phase 1's before phase 2's.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import time
from pathlib import Path

import pytest

BASE_S = 6.0
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
def _fixture_costs() -> dict[str, float]:
    """Seconds to set up each module- or session-scoped fixture, by name, from the stats pass."""
    try:
        return json.loads(Path(FIXTURES).read_text())
    except (OSError, ValueError):
        return {}


FIXTURES = "mutmut-fixtures.json"
_recorded: dict[str, float] = {}


@pytest.hookimpl(hookwrapper=True)
def pytest_fixture_setup(fixturedef, request):
    t0 = time.perf_counter()
    yield
    if fixturedef.scope != "function" and os.environ.get("MUTANT_UNDER_TEST") == "stats":
        seconds = time.perf_counter() - t0
        _recorded[fixturedef.argname] = max(_recorded.get(fixturedef.argname, 0.0), seconds)


def pytest_sessionfinish(session):
    if _recorded and os.environ.get("MUTANT_UNDER_TEST") == "stats":
        Path(FIXTURES).write_text(json.dumps(_recorded))


def pytest_collection_modifyitems(config, items):
    if not _active():
        return
    d, fixture = _durations(), _fixture_costs()

    def fixtures(its):  # the shared fixtures these tests build, and their cost
        return sum(fixture.get(n, 0.0) for n in set().union(*(i.fixturenames for i in its)))

    files: dict[str, list] = {}
    for item in items:
        files.setdefault(item.nodeid.split("::")[0], []).append(item)
    cost = {f: sum(d.get(i.nodeid, 0.0) for i in its) + fixtures(its) for f, its in files.items()}
    items[:] = [
        i
        for f in sorted(files, key=cost.__getitem__)
        for i in sorted(files[f], key=lambda i: (fixtures([i]), d.get(i.nodeid, 0.0)))
    ]


def _timed_out(signum, frame):
    os._exit(TIMEOUT_EXIT)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    if not _active():
        yield
        return
    base = float(os.environ.get("MUTATE_TEST_LIMIT_S", BASE_S))
    shared = sum(_fixture_costs().get(n, 0.0) for n in item.fixturenames)
    limit = base + FACTOR * (_durations().get(item.nodeid, 0.0) + shared)
    previous = signal.signal(signal.SIGALRM, _timed_out)
    signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
