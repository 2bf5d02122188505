"""Suite-wide settings: JAX's persistent compilation cache goes to a throwaway folder.

`stage1 train` and `stage1 sweep` turn the cache on by default (``stage1.compile_cache``); tests
that run them in-process must neither write into the user's ``~/.cache`` nor read programs an
earlier run left there.
"""

# Imported at collection, not first inside a test: under `make mutate` every mutant's tests run
# in a process forked from one that has only collected them, and a run's lazily imported modules
# (the run driver, h5py's and jsonschema's submodules, JAX's MLIR dialects) cost ~1.3 s in every
# such process (docs/testing.md). In `make test` the first run imports them anyway.
import h5py  # noqa: F401
import jax.experimental.multihost_utils  # noqa: F401
import jaxlib.mlir.dialects.mhlo  # noqa: F401
import jsonschema  # noqa: F401
import pytest

# `make mutate` only (inactive otherwise): a wall-clock limit per test and a mutant's tests
# cheapest first; why in tests/mutmut_guard.py.
from mutmut_guard import (  # noqa: F401
    pytest_collection_modifyitems,
    pytest_fixture_setup,
    pytest_runtest_protocol,
    pytest_sessionfinish,
)

# the run's own modules (why: the first comment)
import calibrate.domain_policy  # noqa: F401
import stage1.run  # noqa: F401
from stage1.artifacts import read_json  # noqa: F401


@pytest.fixture(autouse=True, scope="session")
def _compile_cache_in_tmp(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path_factory.mktemp("jax-cache")))
    yield
    mp.undo()
