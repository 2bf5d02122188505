"""Closed-form ridge linear probe: every L2 strength from one eigendecomposition.

The big_vision few-shot evaluator (``big_vision/evaluators/fewshot_lsr.py``; DOMAIN.md §4.2),
specialised to one binary target. Preprocessing, fitted on the training rows only:

    x~ = [(x - mean) / (std + 1e-5), 100]          whitened features plus a constant bias column
    t  = 2 y - 1 in {-1, +1}                        least-squares target

The bias column's value 100 makes its penalty ``lambda * b**2`` act on ``b / 100``, so the bias
is almost unregularised. For a design ``X`` (n x p, p = D + 1) the ridge solution is

    w(lambda) = argmin ||X w - t||^2 + lambda ||w||^2 = (X^T X + lambda I)^-1 X^T t.

One eigendecomposition serves every lambda (big_vision, Rodolphe Jenatton's derivation):

    (A) n >= p:  X^T X = Q diag(e) Q^T           w = Q diag(1/(e + lambda)) Q^T X^T t
                 lhs = Q (p x p),                rhs = Q^T X^T t (p,)
    (B) n <  p:  X X^T = Q diag(e) Q^T, and the push-through identity
                 (X^T X + lambda I)^-1 X^T = X^T (X X^T + lambda I)^-1 gives
                 w = X^T Q diag(1/(e + lambda)) Q^T t
                 lhs = X^T Q (p x n),            rhs = Q^T t (n,)

so ``w(lambda) = lhs @ (rhs / (e + lambda))``: a diagonal rescale and one matrix-vector product,
and for L strengths one (p x K) @ (K x L) matrix product. The score ``x~ . w`` is a regression
output, not a probability; rank-based metrics (AUROC, the exit rate at an FNR constraint) use it
as is, and a calibrator must come before it could drive exits.

Everything runs in float64 (each public function enters ``jax.enable_x64`` itself; callers need
not). Why: ``eigh`` has an absolute eigenvalue error of about ``eps * ||X^T X||``, and the bias
column puts ``100^2 * n`` on that norm; in float32 that is ~1e-3 of the small eigenvalues of a
few thousand rows, and ``w`` moves by as much. On GPUs the float32 alternative would also need
``Precision.HIGHEST`` (the default float32 matmul is TF32), whose GEMMs XLA autotunes for
seconds at the first call; float64 GEMMs go straight to cuBLAS. The cost is small: one
(n x p) Gram product, one p x p eigh and two GEMMs for the whole lambda grid.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from calibrate.metrics import auroc

__all__ = [
    "BIAS_CONSTANT",
    "RidgeProbe",
    "RidgeSweep",
    "augment",
    "default_lambdas",
    "fit_ridge",
    "ridge_scores",
    "ridge_sweep",
    "ridge_weights",
]

BIAS_CONSTANT = 100.0  # value of the appended bias column (big_vision's BIAS_CONSTANT)
STD_EPS = 1e-5  # added to the per-feature std before whitening (big_vision)


class RidgeProbe(NamedTuple):
    """Everything ``w(lambda)`` needs, for any lambda > 0 (float64 arrays)."""

    mean: jax.Array  # (D,) train mean
    std: jax.Array  # (D,) train std + STD_EPS
    eigs: jax.Array  # (K,) eigenvalues of X^T X (K = p) or X X^T (K = n)
    lhs: jax.Array  # (p, K)
    rhs: jax.Array  # (K,)


class RidgeSweep(NamedTuple):
    """Validation results of a lambda grid."""

    lambdas: np.ndarray  # (L,)
    val_auroc: np.ndarray  # (L,)
    val_scores: jax.Array  # (L, n_val) float64 scores x~ . w(lambda) on val (left on device)
    best: int  # index of the highest val AUROC (first on ties; NaN ranks last)


def default_lambdas(n_train: int, num: int = 41) -> np.ndarray:
    """``n_train * 10**linspace(-7, 1, num)``: per-example penalties from ~0 to strong.

    Whitened columns have ``sum_i x_ij^2 = n``, so ``lambda / n`` is the penalty relative to the
    per-example squared loss; this grid covers 1e-7 (plain least squares) to 10 (heavy shrinkage).
    """
    return n_train * np.logspace(-7.0, 1.0, num)


def _augment(probe: RidgeProbe, x: jax.Array) -> jax.Array:
    z = (jnp.asarray(x).astype(jnp.float64) - probe.mean) / probe.std
    return jnp.pad(z, ((0, 0), (0, 1)), constant_values=BIAS_CONSTANT)


@jax.jit
def _precompute(x: jax.Array, y: jax.Array) -> RidgeProbe:
    x = jnp.asarray(x).astype(jnp.float64)
    mean = jnp.mean(x, axis=0)
    std = jnp.std(x, axis=0) + STD_EPS
    z = jnp.pad((x - mean) / std, ((0, 0), (0, 1)), constant_values=BIAS_CONSTANT)
    t = 2.0 * jnp.asarray(y).astype(jnp.float64) - 1.0
    n, p = z.shape
    if n >= p:  # (A) p x p Gram matrix
        eigs, q = jnp.linalg.eigh(z.T @ z)
        lhs, rhs = q, q.T @ (z.T @ t)
    else:  # (B) n x n kernel matrix
        eigs, q = jnp.linalg.eigh(z @ z.T)
        lhs, rhs = z.T @ q, q.T @ t
    return RidgeProbe(mean=mean, std=std, eigs=eigs, lhs=lhs, rhs=rhs)


@jax.jit
def _weights(probe: RidgeProbe, lambdas: jax.Array) -> jax.Array:
    # vmap over lambda of w = lhs @ (rhs / (eigs + lambda)): XLA makes it one (L x K) @ (K x p)
    return jax.vmap(lambda lam: probe.lhs @ (probe.rhs / (probe.eigs + lam)))(lambdas)


@jax.jit
def _scores(probe: RidgeProbe, lambdas: jax.Array, x: jax.Array) -> jax.Array:
    xa = _augment(probe, x)
    return jax.vmap(lambda w: xa @ w)(_weights(probe, lambdas))


_auroc_many = jax.jit(jax.vmap(auroc, in_axes=(0, None)))


def _f64(a) -> jax.Array:
    return jnp.asarray(np.asarray(a), jnp.float64)


def fit_ridge(x, y) -> RidgeProbe:
    """The one eigendecomposition behind every ``w(lambda)`` (module docstring, cases A/B).

    Args:
        x: ``(n, D)`` training features (any float dtype; uploaded as is, widened on device).
        y: ``(n,)`` labels in {0, 1}.

    Returns:
        A float64 ``RidgeProbe``.
    """
    with jax.enable_x64(True):
        return _precompute(jnp.asarray(x), jnp.asarray(y))


def augment(probe: RidgeProbe, x) -> jax.Array:
    """Whiten with the train statistics and append the bias column: ``(n, D) -> (n, D + 1)``."""
    with jax.enable_x64(True):
        return _augment(probe, jnp.asarray(x))


def ridge_weights(probe: RidgeProbe, lambdas) -> jax.Array:
    """``(L, D + 1)`` weights for L strengths (the bias weight is last), vmapped over lambda."""
    with jax.enable_x64(True):
        return _weights(probe, _f64(lambdas))


def ridge_scores(probe: RidgeProbe, lambdas, x) -> jax.Array:
    """``(L, n)`` scores ``x~ . w(lambda)`` of rows ``x`` for every lambda (vmapped)."""
    with jax.enable_x64(True):
        return _scores(probe, _f64(lambdas), jnp.asarray(x))


def ridge_sweep(x_train, y_train, x_val, y_val, lambdas=None) -> RidgeSweep:
    """Fit once, score val for every lambda, rank by val AUROC.

    Args:
        x_train, y_train: training rows and {0, 1} labels.
        x_val, y_val: validation rows and labels.
        lambdas: positive L2 strengths; default ``default_lambdas(n_train)``.

    Returns:
        ``RidgeSweep`` (numpy arrays, except the device-resident ``val_scores``).

    Raises:
        ValueError: an empty or non-positive lambda grid.
    """
    lam = default_lambdas(len(y_train)) if lambdas is None else np.asarray(lambdas, np.float64)
    if lam.ndim != 1 or lam.size == 0 or not np.all(lam > 0):
        raise ValueError("ridge lambdas must be a non-empty list of numbers > 0")
    probe = fit_ridge(x_train, y_train)
    scores = ridge_scores(probe, lam, x_val)
    with jax.enable_x64(True):
        auc = np.asarray(_auroc_many(scores, jnp.asarray(y_val)), np.float64)
    ranked = np.where(np.isnan(auc), -np.inf, auc)
    return RidgeSweep(lam, auc, scores, int(np.argmax(ranked)))
