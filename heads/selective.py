"""SelectiveNet's three heads over a small shared trunk (a Flax module), and its losses.

Architecture (METHODS.md §1.1, §1.5; Geifman & El-Yaniv, ICML 2019)::

    x (D) -> trunk: [Dense -> GELU] x trunk_layers -> u (H)
    u -> f: Dense(H -> 2)                                   classifier logits (z0, z1)
    u -> g: Dense(H -> 512) -> ReLU -> x scale -> Dense(1) -> sigmoid      gate in (0, 1)
    u -> h: Dense(H -> 2)                                   auxiliary classifier logits

The trunk is trainable and shared: with separate heads on frozen features the auxiliary head
``h`` could not influence ``f`` or ``g`` at all (its gradient would stop at its own weights,
§1.5), so the trunk is what ``h`` regularises — it is trained on *all* samples through ``h``
while ``f`` only sees the samples ``g`` accepts.

Gate layout and BatchNorm: the official code (``models/cifar10_vgg_selectivenet.py``) uses
Dense(512) -> ReLU -> BatchNorm -> x 1/10 -> Dense(1) -> sigmoid. We omit the BatchNorm: it would
add batch statistics and a train/eval mode to a pure, jitted, weight-averaged program (the EMA
weights would need recomputed statistics, METHODS.md §11), and a deployed gate's score for one
image must not depend on its batch. What BatchNorm-then-x0.1 does at initialisation — put the
gate's pre-sigmoid value near 0 so g starts near 0.5, unsaturated — is reproduced by a learnable
per-unit ``scale`` initialised at 0.1 (BatchNorm with gamma = 0.1, beta = 0 on inputs that are
already of unit order under the trunk's variance-preserving init). It is not weight-decayed
(``heads.optim.decay_mask`` decays only ``kernel`` leaves).

``SelectiveNet`` is a Flax module used through its pure init/apply (``heads.selective_family``
trains it). Its parameters are the same two-level pytree as ``heads.model``'s,
``{layer: {leaf: array}}``, with layers ``trunk0[, trunk1]``, ``f_out``, ``g_hidden``,
``g_scale`` (leaf ``scale``), ``g_out``, ``h_out``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

N_CLASSES = 2
GATE_HIDDEN = 512  # official Dense(512) of the selection head
GATE_INIT_SCALE = 0.1  # the official "x 1/10" after BatchNorm
FORMS: tuple[str, ...] = ("paper", "code")


class _Scale(nn.Module):
    """A learnable per-unit scale (the gate's stand-in for BatchNorm-then-x0.1, see above)."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, a):
        scale = self.param("scale", nn.initializers.constant(GATE_INIT_SCALE), (a.shape[-1],))
        return a * scale.astype(self.dtype)


class SelectiveNet(nn.Module):
    """Trunk -> (f, g, h); ``__call__`` returns ``(f_logits, gate_logit, h_logits)``.

    ``nn.Dense``'s defaults (LeCun normal kernels, zero biases) keep the trunk's activations of
    unit order for unit-order features, so every head starts near P = 0.5. ``dtype`` is the
    compute dtype (float32, or bfloat16 under mixed precision); outputs are float32. The gate's
    pre-sigmoid value is returned, not g: a float32 sigmoid saturates at exactly 1.0 for logits
    above ~17, where calibrators would lose the ranking.
    """

    trunk_hidden: int = 512
    head_hidden: int = GATE_HIDDEN
    trunk_layers: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        def dense(n, name):
            return nn.Dense(n, dtype=self.dtype, name=name)

        u = jnp.asarray(x, self.dtype)
        for layer in range(self.trunk_layers):
            # Exact (erf) GELU, as heads.model and torch.nn.GELU.
            u = jax.nn.gelu(dense(self.trunk_hidden, f"trunk{layer}")(u), approximate=False)
        f_logits = dense(N_CLASSES, "f_out")(u)
        a = jax.nn.relu(dense(self.head_hidden, "g_hidden")(u))
        a = _Scale(self.dtype, name="g_scale")(a)
        gate_logit = dense(1, "g_out")(a)[..., 0]
        h_logits = dense(N_CLASSES, "h_out")(u)
        f32 = jnp.float32
        return f_logits.astype(f32), gate_logit.astype(f32), h_logits.astype(f32)


def margin(logits: jax.Array) -> jax.Array:
    """Binary logit ``z1 - z0``: ``sigmoid(margin) = softmax(logits)[:, 1] = P(roadwork)``."""
    return logits[..., 1] - logits[..., 0]


# ---------------------------------------------------------------------------------------------
# Losses


def per_row_ce(logits: jax.Array, labels: jax.Array, label_smoothing=0.0) -> jax.Array:
    """Softmax cross-entropy of each row ``(n,)`` with symmetric label smoothing ``ls``:
    targets ``(1 - ls) onehot(y) + ls / 2`` (as ``heads.losses.weighted_ce``)."""
    ls = jnp.asarray(label_smoothing, jnp.float32)
    targets = (1.0 - ls) * jax.nn.one_hot(labels, N_CLASSES) + ls / N_CLASSES
    return -jnp.sum(targets * jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), -1), -1)


def _safe_div(num: jax.Array, den: jax.Array, floor: float = 1e-12) -> jax.Array:
    return num / jnp.maximum(den, floor)


def selective_loss(
    f_logits: jax.Array,
    g: jax.Array,
    h_logits: jax.Array,
    labels: jax.Array,
    *,
    target_coverage,
    lam,
    alpha_mix,
    form: str = "paper",
    pos_weight=1.0,
    label_smoothing=0.0,
    mask: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """SelectiveNet's loss ``alpha L_(f,g) + (1 - alpha) L_h`` (METHODS.md §1.2-§1.3).

    With row weights ``w_i = m_i (pos_weight if y_i = 1 else 1)`` (``m_i`` = 0 for padding rows)
    and ``W = sum_i w_i``, cross-entropies ``l_i`` of f and ``l^h_i`` of h:

        coverage  phi   = sum_i m_i g_i / sum_i m_i          (unweighted: the real exit rate)
        code      r     = sum_i w_i l_i g_i / W              (official code: no division)
        paper     r     = sum_i w_i l_i g_i / sum_i w_i g_i  (= code / phi_w, phi_w the weighted
                                                               coverage sum w g / W)
        L_(f,g)         = r + lam * max(0, c - phi)^2
        L_h             = sum_i w_i l^h_i / W

    With ``pos_weight = 1`` and no padding these are exactly the paper's and the code's forms;
    with a class weight the paper form is the class-weighted mean loss among accepted samples.

    Args:
        f_logits, h_logits: ``(n, 2)``; g: ``(n,)`` gate in (0, 1); labels: ``(n,)`` in {0, 1}.
        target_coverage: ``c``; lam: ``lambda`` (official 32); alpha_mix: ``alpha`` (official
            0.5). All may be traced scalars.
        form: ``"paper"`` (risk divided by empirical coverage) or ``"code"``.
        pos_weight: class weight of positives in both CE terms (1 = unweighted).
        label_smoothing: symmetric smoothing of the CE targets.
        mask: ``(n,)`` row validity in {0, 1}.

    Returns:
        ``(loss, parts)`` with parts ``coverage, selective_risk, penalty, l_fg, l_h``.
    """
    if form not in FORMS:
        raise ValueError(f"selective loss form must be one of {FORMS}, got {form!r}")
    y = jnp.asarray(labels).astype(jnp.int32)
    g = jnp.asarray(g, jnp.float32)
    m = jnp.ones_like(g) if mask is None else jnp.asarray(mask, jnp.float32)
    w = m * jnp.where(y == 1, jnp.asarray(pos_weight, jnp.float32), 1.0)
    total_w = jnp.sum(w)
    l_f = per_row_ce(f_logits, y, label_smoothing)
    l_h = per_row_ce(h_logits, y, label_smoothing)

    coverage = _safe_div(jnp.sum(m * g), jnp.sum(m))
    code_risk = _safe_div(jnp.sum(w * l_f * g), total_w)
    if form == "paper":
        risk = _safe_div(jnp.sum(w * l_f * g), jnp.sum(w * g))
    else:
        risk = code_risk
    penalty = jnp.maximum(0.0, jnp.asarray(target_coverage, jnp.float32) - coverage) ** 2
    l_fg = risk + jnp.asarray(lam, jnp.float32) * penalty
    l_aux = _safe_div(jnp.sum(w * l_h), total_w)
    a = jnp.asarray(alpha_mix, jnp.float32)
    loss = a * l_fg + (1.0 - a) * l_aux
    parts = {
        "coverage": coverage,
        "selective_risk": risk,
        "penalty": penalty,
        "l_fg": l_fg,
        "l_h": l_aux,
    }
    return loss, parts


def fnr_surrogate(
    f_logits: jax.Array,
    g: jax.Array,
    labels: jax.Array,
    *,
    temperature=1.0,
    t0=0.0,
    mask: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Smooth and 0/1 false-negative rate of stage 1's own decisions on a batch (METHODS §2.1).

    A positive (roadwork) image is a stage-1 false negative when the gate lets stage 1 decide
    (g) *and* f calls it negative (margin z < t0); a deferred positive is not missed — stage 2
    sees it. Over the batch positives P (``n+ = |P|``):

        smooth = (1/n+) sum_{i in P} g_i * sigmoid(-(z_i - t0) / temperature)
        hard   = (1/n+) sum_{i in P} 1{g_i >= 1/2} * 1{z_i < t0}

    ``smooth`` is the differentiable surrogate the model player descends; ``hard`` is the 0/1
    rate the multiplier player ascends on (proxy-Lagrangian, Cotter et al., JMLR 2019). Its
    gradient both raises f's margin on accepted positives and lowers g on positives f misses.
    g >= 1/2 is the training-time acceptance rule of the official code; the deployed gate
    threshold is set afterwards on calib (SCRC-I).

    Returns:
        ``(smooth, hard, n_pos)``; both rates are 0 when the batch holds no positive.
    """
    y = jnp.asarray(labels).astype(jnp.int32)
    g = jnp.asarray(g, jnp.float32)
    m = jnp.ones_like(g) if mask is None else jnp.asarray(mask, jnp.float32)
    pos = m * (y == 1)
    n_pos = jnp.sum(pos)
    z = margin(jnp.asarray(f_logits, jnp.float32)) - t0
    soft_miss = g * jax.nn.sigmoid(-z / jnp.asarray(temperature, jnp.float32))
    hard_miss = ((g > 0.5) & (z < 0)).astype(jnp.float32)  # accepted (g > 0.5, as everywhere)
    denom = jnp.maximum(n_pos, 1.0)
    return jnp.sum(pos * soft_miss) / denom, jnp.sum(pos * hard_miss) / denom, n_pos


def multiplier_step(mu, batch_fnr, fnr_target, step_size, n_pos) -> jax.Array:
    """Projected ascent on the Lagrange multiplier: ``max(0, mu + eta (FNR - alpha'))``.

    ``batch_fnr`` is the 0/1 rate (proxy-Lagrangian). A batch without positives carries no
    evidence about the FNR, so it leaves ``mu`` unchanged.
    """
    mu = jnp.asarray(mu, jnp.float32)
    stepped = jnp.maximum(0.0, mu + step_size * (batch_fnr - fnr_target))
    return jnp.where(n_pos > 0, stepped, mu)
