"""heads.sam: SAM / ASAM / F-SAM against optax's reference and hand-computed steps.

The MLP tests (non-quadratic loss, AdamW with weight decay and a schedule) check the wiring
against the base optimizer; the quadratic tests ``L_t(w) = 1/2 w^T A w - b_t^T w`` check the
update maths against float64 numpy, with a different ``b_t`` per step so each step's minibatch
gradient differs (F-SAM's momentum then matters).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from heads import optim, sam

STEPS = 4
LR = 0.1


# --- MLP helpers -------------------------------------------------------------------------------


def _mlp_params(seed: int = 0) -> dict:
    k1, k2, k3, k4 = jax.random.split(jax.random.key(seed), 4)
    return {
        "hidden": {
            "kernel": jax.random.normal(k1, (3, 5)) * 0.7,
            "bias": jax.random.normal(k2, (5,)) * 0.1,
        },
        "out": {"kernel": jax.random.normal(k3, (5, 1)) * 0.7, "bias": jax.random.normal(k4, (1,))},
    }


def _mlp_batches(batch: int = 8):
    x = jax.random.normal(jax.random.key(1), (STEPS, batch, 3))
    return x, jnp.sign(jnp.sin(3.0 * x.sum(-1)))


def _mlp_loss(params, xb, yb):
    # Non-quadratic (tanh + logistic): the gradient at the perturbed point is not affine in eps.
    h = jnp.tanh(xb @ params["hidden"]["kernel"] + params["hidden"]["bias"])
    f = (h @ params["out"]["kernel"] + params["out"]["bias"])[:, 0]
    return jnp.mean(jax.nn.softplus(-yb * f))


def _adamw():
    # Weight decay (masked to kernels) and a warm-up cosine schedule: optimizer state that a
    # wrong wiring of the base inside ``sam`` (stepped twice, fed the perturbed params) breaks.
    return optim.make_optimizer(0.05, 0.1, 0.25, STEPS, mask=optim.decay_mask(_mlp_params()))


def _train(make_tx, params, batches, *, with_grad_fn: bool = True):
    """``STEPS`` steps under ``lax.scan``; ``make_tx()`` is called inside the trace."""
    tx, grad = make_tx(), jax.grad(_mlp_loss)

    def step(carry, batch):
        p, s = carry
        g = grad(p, *batch)
        if with_grad_fn:
            u, s = tx.update(g, s, p, grad_fn=lambda q, _: grad(q, *batch))
        else:  # the pre-SAM call site
            u, s = tx.update(g, s, p)
        return (optax.apply_updates(p, u), s), None

    (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), batches)
    return params


def _flat(tree) -> np.ndarray:
    return np.asarray(ravel_pytree(tree)[0], np.float64)


# --- quadratic helpers -------------------------------------------------------------------------


def _quad_params() -> dict:
    return {
        "hidden": {"kernel": jnp.array([[0.5, -1.0], [2.0, 0.3]]), "bias": jnp.array([0.4, -0.2])},
        "out": {"kernel": jnp.array([[1.5], [-0.7]]), "bias": jnp.array([0.1])},
    }


def _quad_problem(n_b: int = 3, seed: int = 0):
    """SPD ``A`` (float64) and ``n_b`` right-hand sides ``b_t`` (fixed minibatch gradients)."""
    rng = np.random.default_rng(seed)
    n = _flat(_quad_params()).size
    q = rng.normal(size=(n, n))
    return q @ q.T / n + np.eye(n), rng.normal(size=(n_b, n)) * 2.0


def _quad_grads(a, bs):
    """One pytree gradient function ``(params, i) -> A w - b_t`` per right-hand side."""
    unravel = ravel_pytree(_quad_params())[1]
    a32 = jnp.asarray(a, jnp.float32)

    def make(b):
        b32 = jnp.asarray(b, jnp.float32)
        return lambda params, _=0: unravel(a32 @ ravel_pytree(params)[0] - b32)

    return [make(b) for b in bs]


def _run_quad(tx, grads, params=None):
    """One ``tx`` step per gradient function; returns (flat params after each step, state)."""
    params = _quad_params() if params is None else params
    state, out = tx.init(params), []
    for grad in grads:
        u, state = tx.update(grad(params), state, params, grad_fn=grad)
        params = optax.apply_updates(params, u)
        out.append(_flat(params))
    return out, state


def _sgd_step(a, b, w, eps):
    """Hand SAM-style step: ``w - lr * grad L(w + eps)``."""
    return w - LR * (a @ (w + eps) - b)


# --- tests -------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", sam.MODES)
def test_rho_zero_reproduces_base_optimizer(mode):
    """rho = 0 (every mode) follows AdamW's trajectory exactly; "none" accepts ``grad_fn``."""
    params, batches = _mlp_params(), _mlp_batches()
    base = jax.jit(lambda p, b: _train(_adamw, p, b, with_grad_fn=False))(params, batches)
    got = jax.jit(lambda p, b: _train(lambda: sam.wrap(_adamw(), mode, rho=0.0), p, b))(
        params, batches
    )
    np.testing.assert_allclose(_flat(got), _flat(base), rtol=1e-6, atol=1e-7)
    assert np.abs(_flat(base) - _flat(params)).max() > 1e-2  # the run did move


def test_fsam_sigma_zero_is_sam():
    """F-SAM with sigma = 0 subtracts nothing: the same trajectory as SAM at the same rho."""
    params, batches = _mlp_params(), _mlp_batches()

    def run(mode, sigma):
        def fn(p, b):
            return _train(lambda: sam.wrap(_adamw(), mode, rho=0.2, sigma=sigma), p, b)

        return _flat(jax.jit(fn)(params, batches))

    sam_run = run("sam", 1.0)
    np.testing.assert_allclose(run("fsam", 0.0), sam_run, rtol=1e-6, atol=1e-7)
    assert np.abs(run("fsam", 1.0) - sam_run).max() > 1e-4  # sigma does act when non-zero


def test_sam_matches_optax_reference_and_hand_formula():
    """SAM = optax's documented SAM (contrib.normalize) and ``w - lr grad L(w + rho g/||g||)``."""
    a, bs = _quad_problem()
    grads, rho = _quad_grads(a, bs), 0.3
    ours, _ = _run_quad(sam.wrap(optax.sgd(LR), "sam", rho=rho), grads)
    adv = optax.chain(optax.contrib.normalize(), optax.sgd(rho))
    ref, _ = _run_quad(
        optax.contrib.sam(optax.sgd(LR), adv, sync_period=2, opaque_mode=True), grads
    )
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-7)

    w0 = _flat(_quad_params())
    g = a @ w0 - bs[0]
    np.testing.assert_allclose(ours[0], _sgd_step(a, bs[0], w0, rho * g / np.linalg.norm(g)),
                               rtol=1e-5, atol=1e-6)  # fmt: skip


def _fsam_reference(a, bs, rho, sigma, lam, variant="official"):
    """F-SAM with an sgd base in float64; ``variant`` names a plausible bug to compare against."""
    w, m, out = _flat(_quad_params()), None, []
    for b in bs:
        g = a @ w - b
        if m is None or variant == "reset":  # "reset": state lost each step (reset_state=True)
            d, m = g, (1 - lam) * g if variant == "unseeded" else g
        elif variant == "momentum_first":  # m_t instead of m_{t-1} in the subtraction
            m = lam * m + (1 - lam) * g
            d = g - sigma * m
        else:
            d = g - sigma * m
            m = lam * m + (1 - lam) * g
        w = _sgd_step(a, b, w, rho * d / np.linalg.norm(d))
        out.append(w)
    return out


def test_fsam_matches_hand_computed_three_steps():
    """Three F-SAM steps with fixed per-step gradients equal the official recursion."""
    a, bs = _quad_problem(n_b=3)
    rho, sigma, lam = 0.5, 0.8, 0.6
    ours, state = _run_quad(
        sam.wrap(optax.sgd(LR), "fsam", rho=rho, sigma=sigma, lam=lam), _quad_grads(a, bs)
    )
    want = _fsam_reference(a, bs, rho, sigma, lam)
    for t in range(3):
        np.testing.assert_allclose(ours[t], want[t], rtol=1e-5, atol=1e-6, err_msg=f"step {t}")
    # The adversarial state survives sam()'s steps (reset_state=False): one count per step.
    (fs,) = [x for x in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, sam.FSAMState))
             if isinstance(x, sam.FSAMState)]  # fmt: skip
    assert int(fs.count) == 3
    # A test of the test: each plausible bug moves step 2 or 3 far outside the tolerance.
    for variant in ("momentum_first", "unseeded", "reset"):
        wrong = _fsam_reference(a, bs, rho, sigma, lam, variant)
        assert np.abs(wrong[2] - want[2]).max() > 1e-2, variant


def test_asam_matches_hand_formula():
    """ASAM: ``eps = rho T^2 g / ||T g||`` with ``T = |w| + eta`` on kernels, 1 on biases."""
    a, bs = _quad_problem(n_b=1)
    rho, eta = 0.3, 0.01  # eta = the default of wrap
    ours, _ = _run_quad(sam.wrap(optax.sgd(LR), "asam", rho=rho), _quad_grads(a, bs))

    p0 = _quad_params()
    w0 = _flat(p0)
    kernel = _flat({k: {"kernel": jnp.ones_like(v["kernel"]), "bias": jnp.zeros_like(v["bias"])}
                    for k, v in p0.items()}).astype(bool)  # fmt: skip
    g = a @ w0 - bs[0]

    def step(t):
        return _sgd_step(a, bs[0], w0, rho * t * t * g / np.linalg.norm(t * g))

    want = step(np.where(kernel, np.abs(w0) + eta, 1.0))
    np.testing.assert_allclose(ours[0], want, rtol=1e-5, atol=1e-6)
    assert np.abs(step(np.abs(w0) + eta) - want).max() > 1e-3  # scaling biases too would differ


@pytest.mark.parametrize("mode", ["sam", "asam", "fsam"])
def test_vmap_over_rho_and_sigma_matches_loop(mode):
    """``jit(vmap(run))`` over traced (rho, sigma) = the per-value runs; rho = 0 row = AdamW."""
    params, batches = _mlp_params(), _mlp_batches()
    rhos = jnp.array([0.0, 0.05, 0.2, 0.2])
    sigmas = jnp.array([1.0, 0.5, 1.0, 0.0])

    def run(rho, sigma):
        return _train(lambda: sam.wrap(_adamw(), mode, rho=rho, sigma=sigma), params, batches)

    batched = jax.jit(jax.vmap(run))(rhos, sigmas)
    single = jax.jit(run)
    rows = np.stack([_flat(jax.tree.map(lambda x, i=i: x[i], batched)) for i in range(4)])
    for i in range(4):
        np.testing.assert_allclose(rows[i], _flat(single(rhos[i], sigmas[i])), rtol=1e-5,
                                   atol=1e-6, err_msg=f"row {i}")  # fmt: skip
    base = jax.jit(lambda p, b: _train(_adamw, p, b, with_grad_fn=False))(params, batches)
    np.testing.assert_allclose(rows[0], _flat(base), rtol=1e-5, atol=1e-6)
    assert np.abs(rows[2] - rows[0]).max() > 1e-4  # rho acts
    if mode == "fsam":
        assert np.abs(rows[3] - rows[2]).max() > 1e-5  # sigma acts, per row


@pytest.mark.parametrize("rho", [0.0, 0.1])
@pytest.mark.parametrize("mode", ["sam", "asam", "fsam"])
def test_zero_gradient_gives_zero_move_not_nan(mode, rho):
    """A zero gradient (an all-padding minibatch) gives a zero update and finite state."""
    # A quadratic whose minimum is the current point: g = 0 there, but the gradient at the
    # perturbed point is NaN if the perturbation is (a constant zero grad_fn would hide it).
    params = _quad_params()
    w0, unravel = ravel_pytree(params)
    a = jnp.asarray(_quad_problem()[0], jnp.float32)

    def grad(p, _=0):
        return unravel(a @ (ravel_pytree(p)[0] - w0))  # exactly 0 at w0, NaN at a NaN point

    tx = sam.wrap(optax.sgd(LR), mode, rho=rho)
    state = tx.init(params)
    for _ in range(2):  # the second step exercises F-SAM's momentum branch
        u, state = tx.update(grad(params), state, params, grad_fn=grad)
        assert np.all(_flat(u) == 0.0)
        params = optax.apply_updates(params, u)
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state))
    # Why safe_normalize exists: optax's own normalize() turns a zero gradient into NaN.
    zero = jax.tree.map(jnp.zeros_like, params)
    assert np.isnan(_flat(optax.contrib.normalize().update(zero, None)[0])).all()


def test_none_mode_is_base_and_ignores_grad_fn():
    """``wrap(base, "none")`` has base's state and accepts ``grad_fn`` even for a plain
    ``GradientTransformation`` (whose ``update`` takes no extra arguments)."""
    adam = optax.adam(LR)

    def update(updates, state, params=None):  # no **extra_args, unlike optax's own transforms
        return adam.update(updates, state, params)

    plain = optax.GradientTransformation(adam.init, update)
    params = _quad_params()
    a, bs = _quad_problem(n_b=1)
    (grad,) = _quad_grads(a, bs)
    tx = sam.wrap(plain, "none", rho=0.5)
    s_none, s_base = tx.init(params), plain.init(params)
    assert jax.tree.structure(s_none) == jax.tree.structure(s_base)
    u, _ = tx.update(grad(params), s_none, params, grad_fn=grad)
    want, _ = plain.update(grad(params), s_base, params)
    np.testing.assert_array_equal(_flat(u), _flat(want))


def test_unknown_mode_raises_naming_valid_modes():
    with pytest.raises(ValueError, match=r"'none', 'sam', 'asam', 'fsam'"):
        sam.wrap(optax.sgd(LR), "gsam", rho=0.1)
    with pytest.raises(ValueError, match=r"valid modes"):
        sam.adversarial_direction("SAM")
