"""Calibration maps fitted on held-out scores: Platt, temperature and Dirichlet (ODIR) scaling.

All three are monotone in the binary case (Platt, temperature) or rank-changing only through
the learned map (Dirichlet), and all are small convex problems solved to machine precision in
float64 numpy/scipy (METHODS.md §5). Fit them on a split disjoint from training and from the
conformal calibration split (§5.5): recalibration does not move the rank-based exit thresholds.
"""

from __future__ import annotations

import numpy as np
from scipy import optimize, special

from calibrate.thresholds import validate_scores_labels


class NotFittedError(RuntimeError):
    """Raised when ``predict_proba`` is called before ``fit``."""


def _require_fitted(obj, attr: str) -> None:
    if not hasattr(obj, attr):
        raise NotFittedError(f"{type(obj).__name__} is not fitted yet: call fit() first")


def _newton(fun, grad_hess, x0: np.ndarray, max_iter: int = 100) -> np.ndarray:
    """Damped Newton's method for a smooth convex objective ``fun`` with ``grad_hess(x) -> (g, H)``.

    Armijo backtracking far from the optimum; once the Newton decrement ``g' H^-1 g`` is below
    1e-10 the full step is taken (local quadratic convergence), and the loop stops when the
    decrement reaches 1e-24 (parameters then sit at the optimum to ~1e-12). A 1e-12 ridge keeps
    H invertible on flat directions (Lin, Lin & Weng 2007 use the same device for Platt).
    """
    x = np.asarray(x0, dtype=np.float64).copy()
    f = fun(x)
    for _ in range(max_iter):
        g, h = grad_hess(x)
        step = np.linalg.solve(h + 1e-12 * np.eye(x.size), g)
        decrement = float(g @ step)
        if not decrement > 1e-24 * max(1.0, abs(f)):
            break
        t = 1.0
        if decrement > 1e-10:
            while t > 1e-10 and not fun(x - t * step) <= f - 1e-4 * t * decrement:
                t *= 0.5
        x = x - t * step
        f = fun(x)
    return x


class PlattCalibrator:
    """Platt scaling ``P(y=1 | s) = sigmoid(slope_ * s + intercept_)``.

    Fitted on Platt's smoothed targets ``t+ = (N+ + 1)/(N+ + 2)``, ``t- = 1/(N- + 2)`` by
    minimising ``-sum t_i ln p_i + (1 - t_i) ln(1 - p_i)`` with Newton's method from Platt's
    initialisation ``slope = 0``, ``intercept = ln((N+ + 1)/(N- + 1))`` (Platt 1999; Lin, Lin &
    Weng 2007). Same objective as ``sklearn.calibration._SigmoidCalibration`` (whose ``a_, b_``
    are ``-slope_, -intercept_``).
    """

    def fit(self, scores, labels) -> PlattCalibrator:
        s, y = validate_scores_labels(scores, labels)
        if s.size == 0:
            raise ValueError("PlattCalibrator.fit needs at least one sample")
        n_pos = float(y.sum())
        n_neg = float(y.size - n_pos)
        t = np.where(y == 1, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))
        x = np.stack([s, np.ones_like(s)], axis=1)

        def fun(w):
            z = x @ w
            return float(np.sum(np.logaddexp(0.0, z) - t * z))

        def grad_hess(w):
            p = special.expit(x @ w)
            return x.T @ (p - t), (x * (p * (1.0 - p))[:, None]).T @ x

        w0 = np.array([0.0, np.log((n_pos + 1.0) / (n_neg + 1.0))])
        self.slope_, self.intercept_ = (float(v) for v in _newton(fun, grad_hess, w0))
        return self

    def predict_proba(self, scores) -> np.ndarray:
        """Calibrated P(roadwork) for each score, shape (n,)."""
        _require_fitted(self, "slope_")
        s = np.asarray(scores, dtype=np.float64)
        return special.expit(self.slope_ * s + self.intercept_)


class TemperatureCalibrator:
    """Temperature scaling: ``p = sigmoid(z / T)`` (1-D binary logits) or ``softmax(z / T)``.

    One parameter, ranking unchanged, no bias term (Guo et al., ICML 2017). The NLL is convex in
    ``a = 1/T``, so its derivative is monotone and the optimum of ``log T`` is found by
    root-finding the score equation with ``brentq`` on ``log T in [-10, 10]`` (the boundary is
    returned when the optimum lies outside, e.g. for logits anti-correlated with the labels).
    Matches scikit-learn's ``method="temperature"`` with ``T = 1/(2 beta)`` for 1-D logits
    (sklearn maps ``x -> (-x, x)``) and ``T = 1/beta`` for (n, k) logits.
    """

    log_t_bounds = (-10.0, 10.0)

    def fit(self, logits, labels) -> TemperatureCalibrator:
        z = np.asarray(logits, dtype=np.float64)
        if z.ndim == 1:
            z, y = validate_scores_labels(z, labels)
        elif z.ndim == 2 and z.shape[1] >= 2:
            y = _class_labels(labels, z.shape[0], z.shape[1])
            if not np.all(np.isfinite(z)):
                raise ValueError("logits contain NaN or infinite values")
        else:
            raise ValueError(f"logits must be (n,) or (n, k >= 2), got shape {z.shape}")
        if z.shape[0] == 0:
            raise ValueError("TemperatureCalibrator.fit needs at least one sample")

        def dnll_dlog_t(log_t: float) -> float:
            # d/d(log T) of the summed NLL = -a * d/da, with a = exp(-log T); sign is all we need.
            a = np.exp(-log_t)
            if z.ndim == 1:
                return -float(np.sum((special.expit(a * z) - y) * z))
            q = special.softmax(a * z, axis=1)
            return -float(np.sum(q * z) - np.sum(z[np.arange(z.shape[0]), y]))

        lo, hi = self.log_t_bounds
        if dnll_dlog_t(lo) >= 0.0:
            log_t = lo
        elif dnll_dlog_t(hi) <= 0.0:
            log_t = hi
        else:
            log_t = optimize.brentq(dnll_dlog_t, lo, hi, xtol=1e-14, rtol=4 * np.finfo(float).eps)
        self.temperature_ = float(np.exp(log_t))
        return self

    def predict_proba(self, logits) -> np.ndarray:
        """``sigmoid(z/T)`` of shape (n,) for 1-D logits, ``softmax(z/T)`` (n, k) for 2-D."""
        _require_fitted(self, "temperature_")
        z = np.asarray(logits, dtype=np.float64) / self.temperature_
        return special.expit(z) if z.ndim == 1 else special.softmax(z, axis=1)


def _class_labels(labels, n: int, k: int) -> np.ndarray:
    y = np.asarray(labels)
    if y.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {y.shape}")
    if not np.all(np.isin(y, np.arange(k))):
        raise ValueError(f"labels must be integers in 0..{k - 1}")
    return y.astype(np.int64)


def odir_penalty(W, b, reg_lambda: float, reg_mu: float | None) -> float:
    """Regulariser of Dirichlet calibration (Kull et al., NeurIPS 2019).

    ODIR (``reg_mu`` a number): ``reg_lambda/(k(k-1)) sum_{i != j} W_ij^2 + reg_mu/k sum_j b_j^2``
    — the diagonal is left free so the temperature-like part is not shrunk. ``reg_mu=None``: plain
    L2 ``reg_lambda * (sum W^2 + sum b^2)`` (the dirichletcal convention, METHODS.md §5.4).
    """
    W = np.asarray(W, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if reg_mu is None:
        return float(reg_lambda * (np.sum(W**2) + np.sum(b**2)))
    k = W.shape[0]
    off = W - np.diag(np.diag(W))
    return float(reg_lambda / (k * (k - 1)) * np.sum(off**2) + reg_mu / k * np.sum(b**2))


class DirichletCalibrator:
    """Dirichlet calibration ``mu(p) = softmax(W ln p + b)`` (Kull et al., NeurIPS 2019).

    ``probs`` is (n,) for binary P(class 1) — then ``p = [1 - p1, p1]`` and ``predict_proba``
    returns (n,) — or an (n, k) probability matrix. Probabilities are clipped to
    ``[eps, 1 - eps]`` before the log. As in dirichletcal, the last row of ``[W | b]`` is fixed
    at zero (softmax is invariant to a common shift of the rows), which makes the unregularised
    problem multinomial logistic regression on ``ln p`` and the binary case logistic regression
    on ``[ln p, ln(1 - p)]`` (beta calibration without sign constraints). Objective: mean NLL +
    ``odir_penalty(W, b, reg_lambda, reg_mu)``, minimised by Newton's method with the exact
    Hessian of the ``(k - 1)(k + 1)`` free parameters (O(n k^4) per step: meant for the binary
    case and small k).

    Attributes after fit: ``coef_`` (k, k) = W, ``intercept_`` (k,) = b, ``n_classes_``.
    """

    def __init__(self, reg_lambda: float = 0.0, reg_mu: float | None = None, eps: float = 1e-12):
        if reg_lambda < 0 or (reg_mu is not None and reg_mu < 0):
            raise ValueError("reg_lambda and reg_mu must be >= 0")
        self.reg_lambda = reg_lambda
        self.reg_mu = reg_mu
        self.eps = eps

    def _log_features(self, probs) -> tuple[np.ndarray, bool]:
        p = np.asarray(probs, dtype=np.float64)
        binary = p.ndim == 1
        if binary:
            p = np.stack([1.0 - p, p], axis=1)
        if p.ndim != 2 or p.shape[1] < 2:
            raise ValueError(f"probs must be (n,) or (n, k >= 2), got shape {p.shape}")
        if not np.all(np.isfinite(p)) or np.any(p < 0) or np.any(p > 1):
            raise ValueError("probs must be finite probabilities in [0, 1]")
        lp = np.log(np.clip(p, self.eps, 1.0 - self.eps))
        return np.concatenate([lp, np.ones((lp.shape[0], 1))], axis=1), binary

    def fit(self, probs, labels) -> DirichletCalibrator:
        x, binary = self._log_features(probs)
        n, d = x.shape
        k = d - 1
        if binary:
            y = validate_scores_labels(np.zeros(n), labels)[1]
        else:
            y = _class_labels(labels, n, k)
        if n == 0:
            raise ValueError("DirichletCalibrator.fit needs at least one sample")
        onehot = np.eye(k)[y][:, : k - 1]
        # Penalty weights on the free rows theta = [W | b][:k-1] (coefficient c: c * theta^2).
        pen = np.full((k - 1, d), float(self.reg_lambda))
        if self.reg_mu is not None:
            pen[:, :k] = self.reg_lambda / (k * (k - 1))
            pen[np.arange(k - 1), np.arange(k - 1)] = 0.0
            pen[:, k] = self.reg_mu / k

        def probs_free(th):
            z = np.concatenate([x @ th.T, np.zeros((n, 1))], axis=1)
            lse = special.logsumexp(z, axis=1)
            return z, lse, np.exp(z[:, : k - 1] - lse[:, None])

        def fun(theta_flat):
            th = theta_flat.reshape(k - 1, d)
            z, lse, _ = probs_free(th)
            return float(np.mean(lse - z[np.arange(n), y]) + np.sum(pen * th**2))

        def grad_hess(theta_flat):
            th = theta_flat.reshape(k - 1, d)
            q = probs_free(th)[2]
            g = ((q - onehot).T @ x / n + 2.0 * pen * th).ravel()
            # H = mean_i (diag(q_i) - q_i q_i^T) kron x_i x_i^T, blocks ordered (class, feature);
            # accumulated over row chunks so memory stays O(chunk * k * d).
            h = np.diag(2.0 * pen.ravel())
            for lo in range(0, n, 4096):
                qc, xc = q[lo : lo + 4096], x[lo : lo + 4096]
                qx = (qc[:, :, None] * xc[:, None, :]).reshape(qc.shape[0], -1)
                h -= qx.T @ qx / n
                for a in range(k - 1):
                    sl = slice(a * d, (a + 1) * d)
                    h[sl, sl] += (xc * qc[:, a : a + 1]).T @ xc / n
            return g, h

        theta0 = np.concatenate([np.eye(k)[: k - 1] - np.eye(k)[k - 1], np.zeros((k - 1, 1))], 1)
        theta = _newton(fun, grad_hess, theta0.ravel())
        full = np.zeros((k, d))
        full[: k - 1] = theta.reshape(k - 1, d)
        self.coef_, self.intercept_ = full[:, :k], full[:, k]
        self.n_classes_ = k
        self._binary = binary
        return self

    def predict_proba(self, probs) -> np.ndarray:
        """Calibrated probabilities: (n,) P(class 1) for binary input, else (n, k)."""
        _require_fitted(self, "coef_")
        x, binary = self._log_features(probs)
        if x.shape[1] - 1 != self.n_classes_:
            raise ValueError(f"fitted for {self.n_classes_} classes, got {x.shape[1] - 1}")
        q = special.softmax(x[:, :-1] @ self.coef_.T + self.intercept_, axis=1)
        return q[:, 1] if binary else q
