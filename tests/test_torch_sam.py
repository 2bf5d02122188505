"""feature_extract.torch_sam: the PyTorch SAM/ASAM/F-SAM against a float64 hand recursion and
against the heads' optax version (heads.sam) on the same quadratic.

``L_t(w) = 1/2 w^T A w - b_t^T w`` with a different ``b_t`` per step, so each step's
minibatch gradient differs and F-SAM's EMA matters. Parameters are a (2, 2) matrix, a (2,)
bias, a (2, 1) matrix and a (1,) bias, so ASAM's matrices-only scaling is exercised.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from jax.flatten_util import ravel_pytree

from feature_extract.torch_sam import SAM
from heads import sam as jsam

LR = 0.1
SHAPES = [(2, 2), (2,), (2, 1), (1,)]
W0 = np.array([0.5, -1.0, 2.0, 0.3, 0.4, -0.2, 1.5, -0.7, 0.1])


def _problem(n_b=3, seed=0):
    rng = np.random.default_rng(seed)
    n = W0.size
    q = rng.normal(size=(n, n))
    return q @ q.T / n + np.eye(n), rng.normal(size=(n_b, n)) * 2.0


def _torch_params(dtype=torch.float64):
    out, k = [], 0
    for s in SHAPES:
        size = int(np.prod(s))
        out.append(torch.nn.Parameter(torch.tensor(W0[k : k + size], dtype=dtype).reshape(s)))
        k += size
    return out


def _flat(params) -> np.ndarray:
    return np.concatenate([p.detach().double().numpy().ravel() for p in params])


def _run_torch(a, bs, mode, steps=None, make_base=None, **kw):
    params = _torch_params()
    base = (make_base or (lambda p: torch.optim.SGD(p, lr=LR)))(params)
    opt = SAM(base, mode, **kw)
    at = torch.tensor(a)
    out = []
    for b in bs[:steps]:
        bt = torch.tensor(b)

        def loss(bt=bt):
            w = torch.cat([p.reshape(-1) for p in params])
            return 0.5 * w @ at @ w - bt @ w

        opt.zero_grad()
        loss().backward()
        opt.step(lambda loss=loss: loss().backward())
        out.append(_flat(params))
    return out, opt


def _fsam_hand(a, bs, rho, sigma, lam):
    """The official F-SAM recursion in float64 with an SGD base."""
    w, m, out = W0.copy(), None, []
    for b in bs:
        g = a @ w - b
        if m is None:
            d, m = g, g
        else:
            d = g - sigma * m
            m = lam * m + (1 - lam) * g
        eps = rho * d / np.linalg.norm(d)
        w = w - LR * (a @ (w + eps) - b)
        out.append(w)
    return out


def test_fsam_equals_hand_computed_three_steps():
    a, bs = _problem()
    rho, sigma, lam = 0.5, 0.8, 0.6
    ours, opt = _run_torch(a, bs, "fsam", rho=rho, sigma=sigma, lam=lam)
    want = _fsam_hand(a, bs, rho, sigma, lam)
    for t in range(3):
        np.testing.assert_allclose(ours[t], want[t], rtol=1e-10, atol=1e-12, err_msg=f"step {t}")
    assert opt.count == 3
    # sigma acts: plain SAM (sigma = 0) differs at step 2 by far more than the tolerance
    sam_like = _fsam_hand(a, bs, rho, 0.0, lam)
    assert np.abs(sam_like[2] - want[2]).max() > 1e-2


def _optax_run(a, bs, tx):
    unravel = ravel_pytree([jnp.zeros(s) for s in SHAPES])[1]
    params = unravel(jnp.asarray(W0, jnp.float32))
    a32 = jnp.asarray(a, jnp.float32)
    state, out = tx.init(params), []
    for b in bs:
        b32 = jnp.asarray(b, jnp.float32)

        def grad(p, _=0, b32=b32):
            return unravel(a32 @ ravel_pytree(p)[0] - b32)

        u, state = tx.update(grad(params), state, params, grad_fn=grad)
        params = optax.apply_updates(params, u)
        out.append(np.asarray(ravel_pytree(params)[0], np.float64))
    return out


@pytest.mark.parametrize("mode", ["sam", "asam", "fsam"])
def test_equals_heads_optax_version(mode):
    """Same problem, same names: heads.sam.wrap(sgd) and torch SAM(SGD) agree step for step.

    The optax ASAM scales leaves named ``kernel``; here the matrices are lists, so the optax
    run gets a dict with kernel/bias names and the same flattening order.
    """
    a, bs = _problem()
    kw = {"rho": 0.3, "sigma": 0.7, "lam": 0.5}
    ours, _ = _run_torch(a, bs, mode, **kw)
    tx = jsam.wrap(optax.sgd(LR), mode, rho=kw["rho"], sigma=kw["sigma"], lam=kw["lam"])
    if mode == "asam":
        want = _optax_asam(a, bs, tx)
    else:
        want = _optax_run(a, bs, tx)
    for t in range(3):
        np.testing.assert_allclose(ours[t], want[t], rtol=2e-5, atol=2e-6, err_msg=f"step {t}")


def _optax_asam(a, bs, tx):
    """The optax run with Flax-style names (``kernel``/``bias``) so ASAM finds the matrices."""
    tree = {
        "l0": {"bias": jnp.zeros(2), "kernel": jnp.zeros((2, 2))},
        "l1": {"bias": jnp.zeros(1), "kernel": jnp.zeros((2, 1))},
    }
    flat0, unravel = ravel_pytree(tree)
    # ravel order is sorted keys: l0.bias, l0.kernel, l1.bias, l1.kernel; map our order to it
    order = np.r_[4:6, 0:4, 8:9, 6:8]
    params = unravel(jnp.asarray(W0[order], jnp.float32))
    inv = np.argsort(order)
    a_p = a[np.ix_(order, order)]
    out, state = [], tx.init(params)
    for b in bs:
        b_p = jnp.asarray(b[order], jnp.float32)

        def grad(p, _=0, b_p=b_p):
            return unravel(jnp.asarray(a_p, jnp.float32) @ ravel_pytree(p)[0] - b_p)

        u, state = tx.update(grad(params), state, params, grad_fn=grad)
        params = optax.apply_updates(params, u)
        out.append(np.asarray(ravel_pytree(params)[0], np.float64)[inv])
    return out


@pytest.mark.parametrize("mode", ["none", "sam", "asam", "fsam"])
def test_rho_zero_equals_base_optimizer(mode):
    a, bs = _problem()

    def adamw(p):
        return torch.optim.AdamW(p, lr=0.05, weight_decay=0.1)

    ours, _ = _run_torch(a, bs, mode, make_base=adamw, rho=0.0)
    plain, _ = _run_torch(a, bs, "none", make_base=adamw)
    ref = _torch_params()
    base = adamw(ref)
    at = torch.tensor(a)
    for b in bs:
        base.zero_grad()
        w = torch.cat([p.reshape(-1) for p in ref])
        (0.5 * w @ at @ w - torch.tensor(b) @ w).backward()
        base.step()
    np.testing.assert_array_equal(ours[-1], _flat(ref))
    np.testing.assert_array_equal(plain[-1], _flat(ref))
    moved, _ = _run_torch(a, bs, "sam" if mode == "none" else mode, make_base=adamw, rho=0.2)
    assert np.abs(moved[-1] - ours[-1]).max() > 1e-3  # rho does act


def test_state_dict_round_trip_resumes_fsam_exactly():
    """Save after 2 steps, load into a fresh wrapper, take step 3: same as 3 uninterrupted."""
    a, bs = _problem()
    kw = {"rho": 0.5, "sigma": 0.8, "lam": 0.6}
    full, _ = _run_torch(a, bs, "fsam", **kw)
    two, opt = _run_torch(a, bs, "fsam", steps=2, **kw)
    state = opt.state_dict()

    def third_step(load: bool) -> np.ndarray:
        params = _torch_params()
        with torch.no_grad():
            w2, k = torch.tensor(two[-1]), 0
            for p in params:
                p.copy_(w2[k : k + p.numel()].reshape(p.shape))
                k += p.numel()
        fresh = SAM(torch.optim.SGD(params, lr=LR), "fsam", **kw)
        if load:
            fresh.load_state_dict(state)
        at, bt = torch.tensor(a), torch.tensor(bs[2])

        def loss():
            w = torch.cat([p.reshape(-1) for p in params])
            return 0.5 * w @ at @ w - bt @ w

        loss().backward()
        fresh.step(lambda: loss().backward())
        return _flat(params)

    np.testing.assert_allclose(third_step(True), full[2], rtol=1e-12, atol=1e-12)
    # a test of the test: without the saved EMA, step 3 is a plain SAM step and differs
    assert np.abs(third_step(False) - full[2]).max() > 1e-3


def test_clipping_and_bad_arguments():
    a, bs = _problem(n_b=1)
    clipped, _ = _run_torch(a, bs, "none", max_grad_norm=1e-3)
    step = np.linalg.norm(clipped[0] - W0)
    assert step == pytest.approx(LR * 1e-3, rel=1e-6)  # SGD moved by lr * clipped norm
    with pytest.raises(ValueError, match="valid modes"):
        SAM(torch.optim.SGD(_torch_params(), lr=LR), "gsam")
    with pytest.raises(ValueError, match="closure"):
        SAM(torch.optim.SGD(_torch_params(), lr=LR), "sam").step()


def test_zero_gradient_moves_nothing_and_stays_finite():
    params = _torch_params()
    opt = SAM(torch.optim.SGD(params, lr=LR), "fsam", rho=0.1)
    for _ in range(2):
        for p in params:
            p.grad = torch.zeros_like(p)
        opt.step(lambda: [setattr(p, "grad", torch.zeros_like(p)) for p in params])
    np.testing.assert_array_equal(_flat(params), W0)
    assert all(torch.isfinite(m).all() for m in opt._m.values())
