"""Calibrators, risk control (FNR thresholds, SCRC-I), metrics and bootstrap. JAX/numpy only."""

from calibrate import metrics
from calibrate.bootstrap import bootstrap_ci
from calibrate.calibrators import (
    DirichletCalibrator,
    NotFittedError,
    PlattCalibrator,
    TemperatureCalibrator,
    odir_penalty,
)
from calibrate.decision import is_roadwork
from calibrate.groups import one_per_group
from calibrate.mondrian import mondrian_fnr_thresholds
from calibrate.policy import TwoSidedPolicy, fit_two_sided
from calibrate.scrc import SCRCResult, fit_scrc_i
from calibrate.thresholds import fnr_threshold, min_calibration_size

__all__ = [
    "DirichletCalibrator",
    "NotFittedError",
    "PlattCalibrator",
    "SCRCResult",
    "TemperatureCalibrator",
    "TwoSidedPolicy",
    "bootstrap_ci",
    "fit_scrc_i",
    "fit_two_sided",
    "fnr_threshold",
    "is_roadwork",
    "metrics",
    "min_calibration_size",
    "mondrian_fnr_thresholds",
    "odir_penalty",
    "one_per_group",
]
