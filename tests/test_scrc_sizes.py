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


def _pac_size(a: float, d: float) -> int:
    """Smallest N with (1 - a)^N <= d: zero errors in N trials clear level a at confidence
    1 - d only from there on (Clopper-Pearson at k = 0), by a scan written here."""
    n = 1
    while (1.0 - a) ** n > d:
        n += 1
    return n


@pytest.mark.parametrize("bound", ["dkw", "order_statistic"])
@pytest.mark.parametrize(
    ("risk", "beta", "keys"),
    [
        ("fnr", None, {"images", "positives"}),
        ("fnr_fpr", None, {"images", "positives", "negatives"}),
        ("fnr_fpr", 0.2, {"images", "positives", "negatives"}),
        ("error", None, {"images"}),
    ],
)
def test_min_calibration_states_what_the_fit_needs(bound, risk, beta, keys):
    """``min_calibration`` is what `stage1 train` prints before refusing a small calib split
    (calibrate.policies.calibration_shortfall): its image count must be the one ``fit_scrc_i``
    itself names (exact by the test above), its class counts the zero-error PAC sizes at the
    share of delta the fit spends on each test. alpha, beta, delta_split != 0.5 and the two
    bounds all differ, so a swapped argument changes the answer."""
    from calibrate.scrc import min_calibration

    alpha, delta, target, split = 0.1, 0.1, 0.6, 0.3
    need = min_calibration(alpha, delta, target, risk, split, bound, beta)
    assert set(need) == keys
    rng = np.random.default_rng(0)
    p = rng.uniform(size=3)
    with pytest.raises(ValueError, match=COVERAGE_MSG) as e:
        fit_scrc_i(
            np.abs(p - 0.5), p, (p > 0.5).astype(np.int32), alpha=alpha, delta=delta,
            target_coverage=target, risk=risk, delta_split=split, coverage_bound=bound, beta=beta,
        )  # fmt: skip
    assert need["images"] == int(re.search(r"needs n_calib >= (\d+)", str(e.value)).group(1))
    delta_risk = delta * (1 - split)
    if risk == "fnr":
        assert need["positives"] == _pac_size(alpha, delta_risk)
    if risk == "fnr_fpr":
        assert need["positives"] == _pac_size(alpha, delta_risk / 2)
        assert need["negatives"] == _pac_size(alpha if beta is None else beta, delta_risk / 2)


def test_min_calibration_defaults_are_the_fits_defaults():
    """Called with its defaults it answers for ``fit_scrc_i``'s defaults (fnr_fpr, delta split
    in half, order-statistic coverage bound, beta = alpha)."""
    import inspect

    from calibrate.scrc import min_calibration

    fit = inspect.signature(fit_scrc_i).parameters
    explicit = min_calibration(
        0.1, 0.1, 0.6, fit["risk"].default, fit["delta_split"].default,
        fit["coverage_bound"].default, fit["beta"].default,
    )  # fmt: skip
    assert min_calibration(0.1, 0.1, 0.6) == explicit
    assert explicit != min_calibration(0.1, 0.1, 0.6, coverage_bound="dkw")


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"scrc_risk": "fnr"},
        {"scrc_risk": "error"},
        {"coverage_bound": "dkw"},
        {"beta": 0.3},
        {"target_coverage": 0.7, "alpha": 0.05, "delta": 0.2},
    ],
)
def test_phase2_needs_are_min_calibration_at_the_candidates_delta(fields):
    """What `stage1 train` checks a phase-2 calib split against before training: each SCRC-I
    candidate is fitted at delta / 2 (Bonferroni over the two), with the run's risk, coverage
    bound, target and beta. Each case changes one field from the defaults, so a field that is
    not passed on (or passed as its default) gives another answer in some case."""
    import dataclasses

    from calibrate.exit_policies import scrc_needs
    from calibrate.scrc import min_calibration
    from stage1.config import RiskConfig

    r = dataclasses.replace(RiskConfig(alpha=0.1, delta=0.1, target_coverage=0.5), **fields)
    want = min_calibration(
        r.alpha, r.delta / 2, r.target_coverage, r.scrc_risk, 0.5, r.coverage_bound, r.beta
    )
    assert scrc_needs(r) == want
    if fields:  # the field matters: the defaults' answer differs
        base = RiskConfig(alpha=0.1, delta=0.1, target_coverage=0.5)
        assert scrc_needs(base) != want
