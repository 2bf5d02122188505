"""Sharpness-aware updates (SAM, ASAM, F-SAM) for head training, on ``optax.contrib.sam``.

All three methods take the base optimizer's step at a perturbed point instead of at ``w``:

    g      = grad L(w)                      (computed by the caller, as for any optimizer)
    eps    = rho * direction(g, w, state)   (the adversarial move; the methods differ only here)
    g_adv  = grad L(w + eps)                (computed inside ``update`` through ``grad_fn``)
    w     <- w + Base(g_adv, base_state, w)

with the directions (norms are GLOBAL L2 norms over the whole parameter pytree, as in
google-research/sam's ``dual_vector``, not per leaf):

    sam   d = g / ||g||                                    Foret et al., ICLR 2021, 2010.01412
    asam  d = T_w^2 g / ||T_w g||,  T_w = |w| + eta         Kwon et al., ICML 2021, 2102.11600
          on ``kernel`` leaves, T = 1 on biases (the official code scales only "weight" tensors)
    fsam  d = u / ||u||,  u_t = g_t - sigma m_{t-1},        Li et al., CVPR 2024, 2403.12350
          m_t = lam m_{t-1} + (1 - lam) g_t, and u_1 = m_1 = g_1 (official nblt/F-SAM
          ``FriendlySAM``: the first step is a plain SAM step that seeds the momentum)

F-SAM removes from the SAM direction its "full-gradient" component (estimated by the EMA m of
the minibatch gradients), keeping the batch-specific part that the paper argues carries the
generalisation benefit. ``u_t`` uses the momentum from BEFORE this step's gradient is folded in.

Why ``optax.contrib.sam`` in opaque mode: one ``update`` call does the whole SAM step (the
adversarial move, the second gradient, the base update), so the training loop's carry, EMA and
step counter see one step per minibatch, exactly as without SAM. The adversarial optimizer is
``chain(direction, sgd(rho))``; ``sam`` negates its output, so the perturbation is ``+rho d``.
``reset_state=False`` is required by F-SAM: with the default ``True`` optax re-initialises the
adversarial state after every step and the momentum m would never survive past one step.

Every hyperparameter except ``mode`` may be a traced JAX scalar, so a vmapped sweep over rho or
sigma is one compiled program (the same reason as ``heads.optim``).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

__all__ = [
    "MODES",
    "FSAMState",
    "adversarial_direction",
    "asam_direction",
    "fsam_direction",
    "safe_normalize",
    "wrap",
]

MODES: tuple[str, ...] = ("none", "sam", "asam", "fsam")


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown SAM mode {mode!r}; valid modes are {MODES}")


def _global_norm(tree) -> jax.Array:
    # Accumulate in float32 even for bfloat16 leaves: squares of small gradients underflow.
    leaves = jax.tree.leaves(tree)
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves))


def _scale_by(tree, scale: jax.Array):
    return jax.tree.map(lambda x: (x * scale).astype(x.dtype), tree)


def safe_normalize(eps: float = 1e-12) -> optax.GradientTransformation:
    """``g / max(||g||_2, eps)`` with the global L2 norm over the whole pytree.

    ``optax.contrib.normalize()`` divides by ``||g||`` with no floor, so a zero gradient (an
    all-padding minibatch, or a head whose loss is saturated) gives 0/0 = NaN, and
    ``rho * NaN`` is still NaN even at ``rho = 0``: one such batch would poison the weights.
    With the floor a zero gradient gives a zero move. The official F-SAM and ASAM codes add
    1e-12 / 1e-16 to the norm instead; for any non-negligible gradient the two are identical.
    """

    def update_fn(updates, state, params=None):
        del params
        return _scale_by(updates, 1.0 / jnp.maximum(_global_norm(updates), eps)), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def asam_direction(
    eta: float | jax.Array = 0.01, eps: float = 1e-12
) -> optax.GradientTransformation:
    """ASAM's normalised direction ``T^2 g / max(||T g||_2, eps)``, ``T = |w| + eta`` on kernels.

    Adaptive SAM (Kwon et al., ICML 2021, arXiv 2102.11600, Algorithm 1) maximises the loss
    over the ellipsoid ``||T_w^{-1} eps|| <= rho``, whose solution is
    ``eps = rho T_w^2 g / ||T_w g||``; the perturbation then scales with the weights, making the
    sharpness measure invariant to the per-weight rescalings that leave a ReLU network's
    function unchanged. As in the official SamsungLabs/ASAM code, only weight matrices (our
    leaves named ``kernel``) get ``T = |w| + eta``; biases and any other leaf use ``T = 1``, but
    still count in the global norm. The output is already normalised: chain only ``sgd(rho)``
    after it. Needs ``params`` in ``update``.
    """

    def is_kernel(path) -> bool:
        return bool(path) and getattr(path[-1], "key", None) == "kernel"

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("asam_direction needs params: call update(updates, state, params)")
        t = jax.tree_util.tree_map_with_path(
            lambda path, w: jnp.abs(w) + eta if is_kernel(path) else jnp.ones_like(w), params
        )
        tg = jax.tree.map(lambda ti, g: ti * g, t, updates)
        scale = 1.0 / jnp.maximum(_global_norm(tg), eps)
        out = jax.tree.map(lambda ti, x, g: (ti * x * scale).astype(g.dtype), t, tg, updates)
        return out, state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


class FSAMState(NamedTuple):
    """State of ``fsam_direction``: steps taken so far and the gradient EMA ``m``."""

    count: jax.Array  # int32 scalar
    m: optax.Updates


def fsam_direction(
    sigma: float | jax.Array, lam: float | jax.Array
) -> optax.GradientTransformation:
    """F-SAM's unnormalised direction ``u_t = g_t - sigma m_{t-1}`` (chain ``safe_normalize``).

    Friendly SAM (Li et al., CVPR 2024, arXiv 2403.12350; official nblt/F-SAM ``FriendlySAM``):

        t = 1:  u_1 = g_1,                     m_1 = g_1
        t > 1:  u_t = g_t - sigma m_{t-1},     m_t = lam m_{t-1} + (1 - lam) g_t

    ``u_t`` is formed BEFORE ``m`` absorbs ``g_t`` (otherwise part of the batch-specific signal
    is subtracted away with the full-gradient estimate). ``sigma = 0`` is plain SAM. The first
    step is selected with ``jnp.where`` on the traced counter, so the transform runs inside
    ``jit``/``vmap``/``scan``; ``sigma`` and ``lam`` may be traced scalars.
    """

    def init_fn(params):
        return FSAMState(count=jnp.zeros((), jnp.int32), m=jax.tree.map(jnp.zeros_like, params))

    def update_fn(updates, state, params=None):
        del params
        first = state.count == 0

        def direction(g, m):
            return jnp.where(first, g, g - sigma * m).astype(g.dtype)

        def momentum(g, m):
            return jnp.where(first, g, lam * m + (1.0 - lam) * g).astype(m.dtype)

        u = jax.tree.map(direction, updates, state.m)
        m = jax.tree.map(momentum, updates, state.m)
        return u, FSAMState(count=optax.safe_int32_increment(state.count), m=m)

    return optax.GradientTransformation(init_fn, update_fn)


def adversarial_direction(
    mode: str,
    *,
    sigma: float | jax.Array = 1.0,
    lam: float | jax.Array = 0.9,
    eta: float | jax.Array = 0.01,
) -> optax.GradientTransformation:
    """The unit-norm (in its own metric) direction ``d`` of ``mode``'s adversarial move.

    ``sam``: ``safe_normalize()``; ``asam``: ``asam_direction(eta)``; ``fsam``:
    ``chain(fsam_direction(sigma, lam), safe_normalize())``. ``wrap`` appends ``sgd(rho)``.
    """
    _check_mode(mode)
    if mode == "none":
        raise ValueError("mode 'none' has no adversarial direction")
    if mode == "sam":
        return safe_normalize()
    if mode == "asam":
        return asam_direction(eta)
    return optax.chain(fsam_direction(sigma, lam), safe_normalize())


def _ignore_grad_fn(base: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
    # Same init and state as ``base``; ``update`` drops ``grad_fn`` explicitly (rather than via
    # ``optax.with_extra_args_support``, which passes extra args on to a base that is already an
    # ExtraArgs transform and may not accept them) so one call site serves every mode.
    def update_fn(updates, state, params=None, *, grad_fn=None, **extra_args):
        del grad_fn
        return optax.with_extra_args_support(base).update(updates, state, params, **extra_args)

    return optax.GradientTransformationExtraArgs(base.init, update_fn)


def wrap(
    base: optax.GradientTransformation,
    mode: str,
    *,
    rho: float | jax.Array,
    sigma: float | jax.Array = 1.0,
    lam: float | jax.Array = 0.9,
    eta: float | jax.Array = 0.01,
) -> optax.GradientTransformationExtraArgs:
    """``base`` made sharpness-aware according to ``mode`` (one of ``MODES``).

    ``"none"`` returns ``base`` itself (same state) with an ``update`` that also accepts and
    ignores ``grad_fn``. Otherwise returns ``optax.contrib.sam(base, chain(direction,
    sgd(rho)), sync_period=2, reset_state=False, opaque_mode=True)``, to be called as::

        updates, state = tx.update(g, state, params, grad_fn=lambda p, i: grad_at(p))

    where ``g = grad L(params)`` on the minibatch and ``grad_at`` differentiates the SAME
    minibatch loss (same dropout key) at the perturbed point; ``i`` is the adversarial step
    index (always 0 here). The result's state is an ``optax.contrib.SAMState`` whose
    ``opt_state`` is the base optimizer's state (e.g. ``state.opt_state.hyperparams``) and
    ``adv_state`` the direction's state (F-SAM's momentum).

    Args:
        base: the outer optimizer, e.g. ``heads.optim.make_optimizer(...)``.
        mode: ``"none"``, ``"sam"``, ``"asam"`` or ``"fsam"`` (static).
        rho: perturbation radius (may be traced; ``rho = 0`` reproduces ``base`` exactly).
        sigma, lam: F-SAM's subtraction weight and momentum (may be traced).
        eta: ASAM's offset in ``T_w = |w| + eta``.
    """
    _check_mode(mode)
    if mode == "none":
        return _ignore_grad_fn(base)
    adv = optax.chain(adversarial_direction(mode, sigma=sigma, lam=lam, eta=eta), optax.sgd(rho))
    return optax.contrib.sam(base, adv, sync_period=2, reset_state=False, opaque_mode=True)
