"""Classification, calibration and selective metrics in pure JAX (jittable, vmappable).

Conventions: predictions first, labels second; labels are {0, 1} with 1 = roadwork.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _average_ranks(x: jax.Array) -> jax.Array:
    """1-based ranks of ``x`` with ties given their average rank (as scipy.stats.rankdata)."""
    n = x.shape[0]
    order = jnp.argsort(x)
    xs = x[order]
    # For every sorted position, the first and last index of its tie group.
    first = jnp.searchsorted(xs, xs, side="left")
    last = jnp.searchsorted(xs, xs, side="right") - 1
    ranks_sorted = (first + last) / 2.0 + 1.0
    return jnp.zeros(n, ranks_sorted.dtype).at[order].set(ranks_sorted)


def auroc(scores: jax.Array, labels: jax.Array) -> jax.Array:
    """Area under the ROC curve via the Mann-Whitney U statistic with average ranks for ties.

    Equals ``sklearn.metrics.roc_auc_score`` (which integrates the tie-collapsed ROC curve with
    the trapezoid rule, the same quantity). NaN when only one class is present.
    """
    scores = jnp.asarray(scores, jnp.float32)
    y = jnp.asarray(labels).astype(jnp.float32)
    ranks = _average_ranks(scores)
    n_pos = y.sum()
    n_neg = y.shape[0] - n_pos
    u = (ranks * y).sum() - n_pos * (n_pos + 1) / 2.0
    return jnp.where((n_pos > 0) & (n_neg > 0), u / (n_pos * n_neg), jnp.nan)
