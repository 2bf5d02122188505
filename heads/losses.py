"""Training and evaluation losses for the two-logit binary heads.

The class-weighted, label-smoothed softmax cross-entropy of phase 1:

    t_i   = (1 - ls) * onehot(y_i) + ls / 2                    (symmetric smoothing, 2 classes)
    ce_i  = - sum_k t_ik * log_softmax(z_i)_k
    w_i   = m_i * (pos_weight if y_i = 1 else 1)                (m_i = 1 for valid rows, 0 padding)
    loss  = sum_i w_i * ce_i / sum_i w_i

Normalising by the sum of weights (not by n) keeps the loss scale, and hence the effective step
size of AdamW's first steps, independent of ``pos_weight`` and of how many rows of a padded last
minibatch are masked out; it is the same convention as ``torch.nn.CrossEntropyLoss(weight=...,
reduction="mean")``. With ``pos_weight = n_neg / n_pos`` each class carries half the total weight.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def weighted_ce(
    logits: jax.Array,
    labels: jax.Array,
    *,
    pos_weight: jax.Array | float,
    label_smoothing: jax.Array | float,
    mask: jax.Array | None = None,
) -> jax.Array:
    """Class-weighted, label-smoothed softmax cross-entropy (scalar), see the module docstring.

    Args:
        logits: ``(n, 2)``.
        labels: ``(n,)`` in {0, 1}.
        pos_weight: weight of positive rows; may be a traced scalar.
        label_smoothing: ``ls`` in [0, 1); may be a traced scalar.
        mask: optional ``(n,)`` row weights in {0, 1} (0 = padding row, ignored).

    Returns:
        The weighted mean loss; 0 when no row carries weight.
    """
    logits = jnp.asarray(logits, jnp.float32)
    labels = jnp.asarray(labels).astype(jnp.int32)
    n_classes = logits.shape[-1]
    ls = jnp.asarray(label_smoothing, jnp.float32)
    targets = (1.0 - ls) * jax.nn.one_hot(labels, n_classes) + ls / n_classes
    ce = -jnp.sum(targets * jax.nn.log_softmax(logits, axis=-1), axis=-1)
    w = jnp.where(labels == 1, jnp.asarray(pos_weight, jnp.float32), 1.0)
    if mask is not None:
        w = w * jnp.asarray(mask, jnp.float32)
    total = jnp.sum(w)
    # Division guarded so an all-padding batch contributes 0 (and a zero gradient), not NaN.
    return jnp.sum(w * ce) / jnp.where(total > 0, total, 1.0)


def mean_ce(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Plain mean softmax cross-entropy (NLL of the labels): the validation loss.

    Unweighted and unsmoothed on purpose: it is the proper scoring rule of the probabilities the
    head ships, comparable across configs with different ``pos_weight`` / ``label_smoothing``.
    """
    return weighted_ce(logits, labels, pos_weight=1.0, label_smoothing=0.0)


def resolve_pos_weight(pos_weight: float, labels: np.ndarray) -> float:
    """The positive-class weight to train with: ``pos_weight`` itself if > 0, or ``n_neg / n_pos``
    for -1.

    ``OptimConfig.pos_weight = -1`` means "balance the classes of this training set". 0 is not
    "automatic": it would drop every roadwork image from the loss (a head that never learns the
    positive class), so it is refused here as in ``stage1.config`` (issue 14, item 5).

    Raises:
        ValueError: ``pos_weight`` neither > 0 nor -1, or automatic weighting asked for but the
            labels hold no positive or no negative.
    """
    if pos_weight > 0:
        return float(pos_weight)
    if pos_weight != -1:
        raise ValueError(
            f"pos_weight must be > 0 or -1 (automatic: n_neg/n_pos), got {pos_weight} "
            "(0 would give the positive class no weight)"
        )
    y = np.asarray(labels)
    n_pos = int(np.sum(y == 1))
    n_neg = int(np.sum(y == 0))
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            f"pos_weight=-1 (n_neg/n_pos) needs both classes in train, got {n_pos} pos, {n_neg} neg"
        )
    return n_neg / n_pos
