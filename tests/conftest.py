"""Suite-wide settings: JAX's persistent compilation cache goes to a throwaway folder.

`stage1 train` and `stage1 sweep` turn the cache on by default (``stage1.compile_cache``); tests
that run them in-process must neither write into the user's ``~/.cache`` nor read programs an
earlier run left there.
"""

import pytest

# `make mutate` only (inactive otherwise): a wall-clock limit per test and a mutant's tests
# cheapest first; why in tests/mutmut_guard.py.
from mutmut_guard import (  # noqa: F401
    pytest_collection_modifyitems,
    pytest_fixture_setup,
    pytest_runtest_protocol,
    pytest_sessionfinish,
)


@pytest.fixture(autouse=True, scope="session")
def _compile_cache_in_tmp(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path_factory.mktemp("jax-cache")))
    yield
    mp.undo()
