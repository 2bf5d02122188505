"""SCRC-I's "needs n_calib >= N" is exact: with N calibration images the coverage bound clears
the target, with N - 1 it does not (both coverage bounds). Checked by calling ``fit_scrc_i`` at
both sizes, not by re-deriving the closed forms the code starts from."""

from __future__ import annotations

import re

import numpy as np
import pytest

from calibrate.scrc import fit_scrc_i

COVERAGE_MSG = "cannot certify coverage"


def _fit(n: int, target: float, delta: float, bound: str):
    rng = np.random.default_rng(n)
    p = rng.uniform(size=n)
    y = (rng.uniform(size=n) < p).astype(np.int32)
    return fit_scrc_i(
        np.abs(p - 0.5), p, y, alpha=0.99, delta=delta, target_coverage=target,
        coverage_bound=bound,
    )  # fmt: skip


@pytest.mark.parametrize("bound", ["dkw", "order_statistic"])
@pytest.mark.parametrize(("target", "delta"), [(0.5, 0.2), (0.8, 0.1), (0.3, 0.05)])
def test_the_needed_calibration_size_is_the_smallest_that_works(bound, target, delta):
    with pytest.raises(ValueError, match=COVERAGE_MSG) as e:
        _fit(3, target, delta, bound)
    need = int(re.search(r"needs n_calib >= (\d+)", str(e.value)).group(1))
    assert need > 3
    try:
        res = _fit(need, target, delta, bound)
    except ValueError as err:  # only the risk stage may still refuse
        assert COVERAGE_MSG not in str(err)
    else:
        assert res.coverage_lcb >= target
    with pytest.raises(ValueError, match=COVERAGE_MSG):
        _fit(need - 1, target, delta, bound)
