"""TemperatureCalibrator at its edges: two-class (n, 2) logits, the input shapes it refuses, a
single sample, and the lower temperature bound for separable logits (found by mutation testing:
each of these branches was free to change without a test noticing)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.calibration import _TemperatureScaling

from calibrate.calibrators import TemperatureCalibrator


def test_two_class_logits_are_the_multiclass_case_and_match_sklearn():
    rng = np.random.default_rng(4)
    n = 800
    y = rng.integers(0, 2, n)
    z = rng.normal(size=(n, 2))
    z[np.arange(n), y] += 1.0
    z *= 2.5
    ours = TemperatureCalibrator().fit(z, y)
    ts = _TemperatureScaling().fit(z, y)
    assert ours.temperature_ == pytest.approx(1.0 / ts.beta_, rel=1e-6)
    p = ours.predict_proba(z)
    assert p.shape == (n, 2)
    assert np.abs(p - ts.predict(z)).max() <= 1e-6


@pytest.mark.parametrize("shape", [(5, 1), (5, 2, 2), ()])
def test_other_shapes_are_refused(shape):
    with pytest.raises(ValueError, match=r"logits must be \(n,\) or \(n, k >= 2\)"):
        TemperatureCalibrator().fit(np.zeros(shape), np.zeros(5, int))


def test_empty_is_refused_and_one_sample_is_fitted():
    with pytest.raises(ValueError, match="at least one sample"):
        TemperatureCalibrator().fit(np.zeros((0, 3)), np.zeros(0, int))
    cal = TemperatureCalibrator().fit(np.array([0.5]), np.array([1]))
    assert cal.temperature_ == pytest.approx(np.exp(-10.0))  # one right answer: T -> 0


def test_separable_logits_give_the_lower_temperature_bound():
    # Tiny separable logits: at T = e^-10 the score equation is still (barely) positive, so the
    # optimum T -> 0 lies below the bracket and the lower bound itself is returned.
    z = np.array([-2e-3, -1e-3, 1e-3, 2e-3])
    cal = TemperatureCalibrator().fit(z, np.array([0, 0, 1, 1]))
    assert cal.temperature_ == pytest.approx(np.exp(-10.0), rel=1e-12)
    p = cal.predict_proba(z)
    assert np.all(p[:2] < 1e-4) and np.all(p[2:] > 1 - 1e-4)
