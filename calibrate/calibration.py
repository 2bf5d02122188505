"""Post-hoc calibration of a trained head's outputs, found by name (each head family names one).

A head outputs per image a binary logit ``"logit"`` (and, for the selective net, ``"gate_logit"``
and ``"aux_logit"``; ``heads.predict``). A calibration procedure is fitted on **val** only —
never on calib, whose exchangeability the conformal step needs (METHODS.md §3.4, §5.5) — and
maps those outputs to the scores the exit policies use: ``"p"`` = P(roadwork), the probability
that ships, and for gated heads ``"gate_calibrated"``, P(the classifier's decision is right | x).

- ``"none"``: ``p = sigmoid(logit)`` (the phase-1 heads: their class-weighted CE is what sets the
  scale, and the FNR threshold only needs the ranking).
- ``"dirichlet_gate"``: Dirichlet calibration of ``sigmoid(logit)`` (binary: a logistic fit on
  ``(log p, log(1 - p))``, Kull et al. 2019) and Platt calibration of the gate's logit for the
  event "the calibrated classifier's decision q > 1/2 is right": the selective loss trains g to
  accept where f's loss is low, so correctness is the event it scores.

Each procedure also says what it adds to predictions.npz (``arrays``), to metrics.json
(``metrics``) and which JSON records it writes (``records``: file name -> (object, schema)), and
rebuilds from those records a description of ``apply`` as data (``serving_program``) that a
runtime without scipy or JAX evaluates (``stage1.serve.ops``): a straight-line program of
elementwise ops over named per-image float vectors (``SCORE_OPS``)::

    {"dtype": "float32" | "float64", "ops": [{"op": OP, "in": [names], "out": name, "args": {}}],
     "scores": {score name: vector name}}
"""

from __future__ import annotations

import abc
from typing import Any

import numpy as np
from scipy.special import expit

from calibrate import metrics as M
from calibrate.calibrators import DirichletCalibrator, PlattCalibrator
from calibrate.decision import is_roadwork

__all__ = ["CALIBRATIONS", "SCORE_OPS", "Calibration", "fit_calibration", "serving_program"]

# The vocabulary of serving programs: sigmoid; affine a*x + b; one_minus 1 - x; clip to
# [lo, hi]; log; linear sum_i w_i x_i + b over several inputs; max_complement max(x, 1 - x).
SCORE_OPS: tuple[str, ...] = (
    "sigmoid",
    "affine",
    "one_minus",
    "clip",
    "log",
    "linear",
    "max_complement",
)


def score_op(name: str, inputs: list[str] | str, out: str, **args) -> dict[str, Any]:
    """One op of a serving program (module docstring)."""
    inputs = [inputs] if isinstance(inputs, str) else list(inputs)
    return {"op": name, "in": inputs, "out": out, "args": args}


# Tiny plain-L2 penalty on the 3 free Dirichlet parameters: on a (nearly) separable val split the
# unregularised logistic fit diverges to 0/1 probabilities, which turns distinct scores into ties
# at the calib thresholds; 1e-3 caps the weights at O(10) and is negligible otherwise.
DIRICHLET_REG = 1e-3


class Calibration(abc.ABC):
    """A fitted calibration procedure (``fit_calibration``)."""

    name: str

    @abc.abstractmethod
    def apply(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Scores of one split: ``"p"`` always, plus the procedure's own (float64)."""

    def arrays(self, scores: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Extra per-image arrays for predictions.npz (suffix -> array)."""
        return {}

    def metrics(self, scores: dict[str, np.ndarray], labels: np.ndarray) -> dict[str, Any]:
        """Extra entries of metrics.json's ``metrics`` block on the test scores."""
        return {}

    def records(self, scores_by_split: dict[str, dict], y_val: np.ndarray) -> dict[str, tuple]:
        """JSON records to write: file name -> (object, schema name)."""
        return {}

    @staticmethod
    @abc.abstractmethod
    def serving(records: dict[str, Any]) -> dict[str, Any]:
        """``apply`` as a serving program (module docstring), from the JSON records this
        procedure wrote (file name -> parsed object)."""


class NoCalibration(Calibration):
    name = "none"

    @staticmethod
    def serving(records):
        # float32, as apply: the exit threshold is a float32 order statistic of these values.
        ops = [score_op("sigmoid", "logit", "p")]
        return {"dtype": "float32", "ops": ops, "scores": {"p": "p"}}

    def apply(self, outputs):
        # float32 like the logit: the threshold is then an exact float32 order statistic of
        # the probabilities predictions.npz stores.
        return {"p": expit(np.asarray(outputs["logit"], np.float32))}


class DirichletGate(Calibration):
    """Dirichlet on f's probability and Platt on the gate's logit, both fitted on val."""

    name = "dirichlet_gate"

    def __init__(self, outputs_val: dict[str, np.ndarray], y_val: np.ndarray):
        y = np.asarray(y_val)
        p_raw = expit(np.asarray(outputs_val["logit"], np.float64))
        self.dirichlet = DirichletCalibrator(reg_lambda=DIRICHLET_REG).fit(p_raw, y)
        right = (is_roadwork(self.dirichlet.predict_proba(p_raw)).astype(int) == y).astype(int)
        self.platt = PlattCalibrator().fit(np.asarray(outputs_val["gate_logit"], np.float64), right)
        self.n_right = int(right.sum())

    def apply(self, outputs):
        p_raw = expit(np.asarray(outputs["logit"], np.float64))
        gate_logit = np.asarray(outputs["gate_logit"], np.float64)
        return {
            "p": self.dirichlet.predict_proba(p_raw),
            "p_raw": p_raw,
            "gate": expit(gate_logit),
            "gate_calibrated": self.platt.predict_proba(gate_logit),
        }

    @staticmethod
    def serving(records):
        """Binary Dirichlet = softmax(W [ln(1 - p), ln p] + b)[1] = sigmoid(z1 - z0), with the
        clipping of ``DirichletCalibrator._log_features``; Platt = sigmoid(slope s + intercept)."""
        cal = records["calibration.json"]
        w, b = np.asarray(cal["classifier"]["coef"]), np.asarray(cal["classifier"]["intercept"])
        eps = DirichletCalibrator().eps
        ops = [
            score_op("sigmoid", "logit", "p_raw"),
            score_op("one_minus", "p_raw", "p0"),
            score_op("clip", "p0", "p0", lo=eps, hi=1.0 - eps),
            score_op("clip", "p_raw", "p1", lo=eps, hi=1.0 - eps),
            score_op("log", "p0", "l0"),
            score_op("log", "p1", "l1"),
            score_op(
                "linear",
                ["l0", "l1"],
                "z",
                weights=(w[1] - w[0]).tolist(),
                bias=float(b[1] - b[0]),
            ),
            score_op("sigmoid", "z", "p"),
            score_op("sigmoid", "gate_logit", "gate"),
            score_op(
                "affine",
                "gate_logit",
                "gz",
                a=float(cal["gate"]["slope"]),
                b=float(cal["gate"]["intercept"]),
            ),
            score_op("sigmoid", "gz", "gate_calibrated"),
        ]
        scores = {k: k for k in ("p", "p_raw", "gate", "gate_calibrated")}
        return {"dtype": "float64", "ops": ops, "scores": scores}

    def arrays(self, scores):
        return {
            "probs_raw": scores["p_raw"],
            "gate": scores["gate"],
            "gate_calibrated": scores["gate_calibrated"],
        }

    def metrics(self, scores, labels):
        y = np.asarray(labels)
        right = (is_roadwork(scores["p"]).astype(int) == y).astype(int)
        both = 0 < right.sum() < right.size
        return {
            "ece": float(M.ece(scores["p"], y)),
            "ece_raw": float(M.ece(scores["p_raw"], y)),
            "auroc_gate_right": float(M.auroc(scores["gate_calibrated"], right)) if both else None,
        }

    def records(self, scores_by_split, y_val):
        d, pl, val = self.dirichlet, self.platt, scores_by_split["val"]
        calibration = {
            "fitted_on": "val",
            "n_fit": int(len(y_val)),
            "classifier": {
                "method": "dirichlet",
                "input": "p_f",
                "coef": d.coef_.tolist(),
                "intercept": d.intercept_.tolist(),
                "reg_lambda": d.reg_lambda,
                "reg_mu": d.reg_mu,
            },
            "gate": {
                "method": "platt",
                "input": "gate_logit",
                "slope": pl.slope_,
                "intercept": pl.intercept_,
            },
            "temperature": None,  # not used: Dirichlet subsumes it (its diagonal is a temperature)
            "val_ece": {
                "raw": float(M.ece(val["p_raw"], y_val)),
                "calibrated": float(M.ece(val["p"], y_val)),
            },
        }
        gateparams = {
            "score": "gate_logit",
            "calibrator": "platt",
            "slope": pl.slope_,
            "intercept": pl.intercept_,
            "target": "f is right: (calibrated q > 1/2) == label",
            "fitted_on": "val",
            "n_fit": int(len(y_val)),
            "n_fit_positive_target": self.n_right,
            "stats": {
                s: _gate_stats(v["gate"], v["gate_calibrated"]) for s, v in scores_by_split.items()
            },
        }
        return {
            "calibration.json": (calibration, "calibration"),
            "gateparams.json": (gateparams, "gateparams"),
        }


def _gate_stats(g: np.ndarray, g_cal: np.ndarray) -> dict[str, Any]:
    qs = (0.05, 0.25, 0.5, 0.75, 0.95)
    return {
        "n": int(g.size),
        "mean": float(np.mean(g)),
        "std": float(np.std(g)),
        "min": float(np.min(g)),
        "max": float(np.max(g)),
        "frac_above_half": float(np.mean(g > 0.5)),
        "quantiles": {f"q{round(100 * q):02d}": float(np.quantile(g, q)) for q in qs},
        "mean_calibrated": float(np.mean(g_cal)),
    }


CALIBRATIONS = {"none": lambda outputs_val, y_val: NoCalibration(), "dirichlet_gate": DirichletGate}


def serving_program(name: str, records: dict[str, Any]) -> dict[str, Any]:
    """The serving program of calibration ``name`` rebuilt from a run's JSON records."""
    if name not in _SERVING:
        raise ValueError(f"unknown calibration {name!r}; known: {', '.join(_SERVING)}")
    return _SERVING[name](records)


_SERVING = {"none": NoCalibration.serving, "dirichlet_gate": DirichletGate.serving}


def fit_calibration(name: str, outputs_val: dict[str, np.ndarray], y_val) -> Calibration:
    """Fit calibration procedure ``name`` on the val outputs (``heads.predict.predict``)."""
    if name not in CALIBRATIONS:
        raise ValueError(f"unknown calibration {name!r}; known: {', '.join(CALIBRATIONS)}")
    return CALIBRATIONS[name](outputs_val, np.asarray(y_val))
