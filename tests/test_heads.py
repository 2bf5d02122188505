"""Heads building blocks against independent oracles: numpy/scipy forward pass, optax losses and
schedules, optax.adamw, optax.incremental_update, safetensors."""

import os

import heads_helpers as hh
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from safetensors.numpy import load_file
from scipy.special import erf
from sklearn.metrics import log_loss

from heads import checkpoint, families, losses, model, optim
from heads.classifier import LinearSpec, MLPSpec
from heads.spec import TrainSpec


def _np(tree):
    return jax.tree.map(np.asarray, tree)


# ---------------------------------------------------------------------------------------------
# model


def _init(kind, in_dim, hidden=768, seed=0):
    """Initial params of a classifier head through its family (Flax ``module.init``)."""
    fam = families.get(kind)
    head = MLPSpec(hidden=hidden) if kind == "mlp" else LinearSpec()
    spec = TrainSpec(head=head, in_dim=in_dim, epochs=1, batch_size=1, n_train=1)
    return fam.init(spec, jax.random.key(seed)), head


def _apply(p, x, head, **kw):
    return families.of(head).module(head).apply({"params": p}, x, **kw)


def test_init_shapes_dtypes_and_scale():
    p, mlp = _init("mlp", 1024, hidden=512)
    assert jax.tree.map(jnp.shape, p) == {
        "hidden": {"kernel": (1024, 512), "bias": (512,)},
        "out": {"kernel": (512, 2), "bias": (2,)},
    }
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(p))
    assert not np.any(p["hidden"]["bias"]) and not np.any(p["out"]["bias"])
    # LeCun normal: kernel variance 1 / fan_in (truncation is compensated by optax/jax's rescale).
    assert np.std(p["hidden"]["kernel"]) == pytest.approx(1 / np.sqrt(1024), rel=0.02)
    assert np.abs(p["hidden"]["kernel"]).max() <= 2 / np.sqrt(1024) / 0.8796 + 1e-6

    lin, _ = _init("linear", 384)
    assert jax.tree.map(jnp.shape, lin) == {"out": {"kernel": (384, 2), "bias": (2,)}}
    assert families.of_params(p)[0].kind == "mlp" and families.of_params(lin)[0].kind == "linear"
    assert families.of_params(p)[1] == mlp
    with pytest.raises(ValueError, match="unknown head kind"):
        families.get("transformer")
    with pytest.raises(ValueError, match="no head family"):
        families.of_params({"w": {"kernel": np.zeros((2, 2))}})


def test_apply_matches_numpy_forward_and_is_deterministic():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(7, 16)).astype(np.float32)
    p, head = _init("mlp", 16, hidden=32, seed=1)
    p = _np(p)
    h = x @ p["hidden"]["kernel"] + p["hidden"]["bias"]
    h = 0.5 * h * (1 + erf(h / np.sqrt(2)))  # exact GELU
    want = h @ p["out"]["kernel"] + p["out"]["bias"]
    got = _apply(p, x, head)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got, _apply(p, x, head))

    lin, lhead = _init("linear", 16, seed=1)
    lin = _np(lin)
    np.testing.assert_allclose(
        _apply(lin, x, lhead), x @ lin["out"]["kernel"] + lin["out"]["bias"], rtol=1e-5, atol=1e-6
    )
    margin = model.logit_margin(got)
    np.testing.assert_allclose(
        model.positive_proba(got), jax.nn.softmax(got)[:, 1], rtol=1e-6, atol=1e-7
    )
    np.testing.assert_allclose(margin, want[:, 1] - want[:, 0], rtol=1e-5, atol=1e-6)


def test_dropout_only_with_key():
    x = np.random.default_rng(1).normal(size=(64, 16)).astype(np.float32)
    p, head = _init("mlp", 16, hidden=256, seed=2)
    clean = _apply(p, x, head)
    np.testing.assert_array_equal(_apply(p, x, head, dropout_rate=0.5), clean)
    k3 = jax.random.key(3)
    np.testing.assert_array_equal(_apply(p, x, head, dropout_rate=0.0, dropout_key=k3), clean)
    noisy = _apply(p, x, head, dropout_rate=0.5, dropout_key=k3)
    assert not np.allclose(noisy, clean)
    np.testing.assert_array_equal(noisy, _apply(p, x, head, dropout_rate=0.5, dropout_key=k3))
    # A linear head has no hidden layer: dropout has nothing to act on.
    lin, lhead = _init("linear", 16, seed=2)
    np.testing.assert_array_equal(
        _apply(lin, x, lhead, dropout_rate=0.5, dropout_key=k3), _apply(lin, x, lhead)
    )


def test_dropout_statistics_with_traced_rate():
    ones = jnp.ones((200_000,))
    out = jax.jit(model.dropout)(ones, jnp.float32(0.3), jax.random.key(0))
    dropped = np.mean(np.asarray(out) == 0)
    assert dropped == pytest.approx(0.3, abs=0.005)  # 5 sigma of Binomial(2e5, 0.3) is 0.005
    np.testing.assert_allclose(np.unique(np.asarray(out)), [0.0, 1 / 0.7], rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# losses


def _logits_labels(n=50, seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=2.0, size=(n, 2)).astype(np.float32)
    labels = rng.integers(0, 2, size=n)
    return logits, labels


@pytest.mark.parametrize("pos_weight, ls", [(1.0, 0.0), (3.5, 0.0), (0.4, 0.1), (2.0, 0.3)])
def test_weighted_ce_matches_optax_oracle(pos_weight, ls):
    logits, labels = _logits_labels()
    mask = (np.arange(len(labels)) % 7 != 0).astype(np.float32)
    targets = optax.smooth_labels(jax.nn.one_hot(labels, 2), ls)
    per_row = np.asarray(optax.softmax_cross_entropy(logits, targets))
    w = np.where(labels == 1, pos_weight, 1.0) * mask
    want = np.sum(w * per_row) / np.sum(w)
    got = losses.weighted_ce(logits, labels, pos_weight=pos_weight, label_smoothing=ls, mask=mask)
    assert float(got) == pytest.approx(want, rel=1e-5)


def test_weighted_ce_unsmoothed_equals_sklearn_log_loss():
    logits, labels = _logits_labels(seed=1)
    p1 = np.asarray(jax.nn.softmax(jnp.asarray(logits))[:, 1], np.float64)
    w = np.where(labels == 1, 2.5, 1.0)
    want = log_loss(labels, p1, sample_weight=w)
    got = losses.weighted_ce(logits, labels, pos_weight=2.5, label_smoothing=0.0)
    assert float(got) == pytest.approx(want, rel=1e-5)
    assert float(losses.mean_ce(logits, labels)) == pytest.approx(log_loss(labels, p1), rel=1e-5)


def test_weighted_ce_all_masked_is_zero_with_zero_grad():
    logits, labels = _logits_labels(n=4)
    mask = np.zeros(4, np.float32)

    def f(z):
        return losses.weighted_ce(z, labels, pos_weight=2.0, label_smoothing=0.1, mask=mask)

    assert float(f(logits)) == 0.0
    np.testing.assert_array_equal(jax.grad(f)(jnp.asarray(logits)), 0.0)


def test_resolve_pos_weight():
    y = np.array([0, 0, 0, 1, 0, 1, 0, 0])
    assert losses.resolve_pos_weight(-1.0, y) == pytest.approx(6 / 2)
    assert losses.resolve_pos_weight(1.5, y) == 1.5
    with pytest.raises(ValueError, match="both classes"):
        losses.resolve_pos_weight(-1.0, np.zeros(5))


# ---------------------------------------------------------------------------------------------
# schedule and optimizer


@pytest.mark.parametrize("peak, warmup, total", [(1e-3, 10, 100), (3e-2, 0, 57), (0.5, 25, 26)])
def test_warmup_cosine_matches_optax(peak, warmup, total):
    ref = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=peak, warmup_steps=warmup, decay_steps=total, end_value=0.0
    )
    steps = np.arange(total + 5)
    got = jax.vmap(optim.warmup_cosine, in_axes=(0, None, None, None))(steps, peak, warmup, total)
    want = np.array([ref(int(s)) for s in steps])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-9 * peak)


def test_schedule_traced_over_peak_and_warmup_frac():
    """vmap over (peak, warmup_frac): each row equals optax's schedule with W = round(frac * T)."""
    total = 40
    peaks = jnp.array([1e-3, 5e-3, 2e-2])
    fracs = jnp.array([0.0, 0.1, 0.33])

    def curve(peak, frac):
        return optim.warmup_cosine(jnp.arange(total), peak, optim.warmup_steps(frac, total), total)

    got = jax.jit(jax.vmap(curve))(peaks, fracs)
    for row, peak, frac in zip(got, peaks, fracs, strict=True):
        ref = optax.warmup_cosine_decay_schedule(
            0.0, float(peak), round(float(frac) * total), total
        )
        np.testing.assert_allclose(row, [ref(s) for s in range(total)], rtol=1e-5, atol=1e-10)


def test_inject_hyperparams_adamw_equals_optax_adamw():
    params = hh.init(jax.random.key(0), "mlp", 12, hidden=8)
    mask = optim.decay_mask(params)
    peak, wd, frac, total = 3e-3, 0.05, 0.2, 10
    ref_tx = optax.adamw(
        optax.warmup_cosine_decay_schedule(0.0, peak, round(frac * total), total, 0.0),
        weight_decay=wd,
        mask=mask,
    )
    # Same, through inject_hyperparams with optax's own schedule: must agree bit for bit.
    inj_tx = optax.inject_hyperparams(optax.adamw)(
        learning_rate=optax.warmup_cosine_decay_schedule(0.0, peak, round(frac * total), total),
        weight_decay=wd,
        mask=mask,
    )
    tx = optim.make_optimizer(
        jnp.float32(peak), jnp.float32(wd), jnp.float32(frac), total, mask=mask
    )
    p_ref, s_ref = params, ref_tx.init(params)
    p_inj, s_inj = params, inj_tx.init(params)
    p_got, s_got = params, tx.init(params)
    rng = np.random.default_rng(0)
    for _ in range(5):
        g = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape), jnp.float32), params)
        u_ref, s_ref = ref_tx.update(g, s_ref, p_ref)
        u_inj, s_inj = inj_tx.update(g, s_inj, p_inj)
        u_got, s_got = tx.update(g, s_got, p_got)
        p_ref = optax.apply_updates(p_ref, u_ref)
        p_inj = optax.apply_updates(p_inj, u_inj)
        p_got = optax.apply_updates(p_got, u_got)
        jax.tree.map(np.testing.assert_array_equal, p_got, p_inj)
        # Not bit-exact: inject_hyperparams casts b1/b2/eps to float32 arrays, plain adamw keeps
        # them weakly typed, so the bias corrections round differently (~1e-6 relative).
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-7), p_got, p_ref
        )
    # The hyperparameters are arrays in the optimizer state, not constants in the graph.
    assert isinstance(s_got.hyperparams["weight_decay"], jax.Array)
    assert float(s_got.hyperparams["learning_rate"]) == pytest.approx(
        float(optim.warmup_cosine(4, peak, 2, total)), rel=1e-6
    )
    # Biases are not decayed: with zero gradients only the kernels move (pure weight decay).
    zero = jax.tree.map(jnp.zeros_like, params)
    tx2 = optim.make_optimizer(1.0, 0.1, 0.0, 4, mask=mask)
    u, _ = tx2.update(zero, tx2.init(params), params)
    np.testing.assert_array_equal(u["hidden"]["bias"], 0.0)
    np.testing.assert_allclose(u["hidden"]["kernel"], -0.1 * params["hidden"]["kernel"], rtol=1e-6)


def test_optimizer_hyperparams_do_not_recompile():
    params = hh.init(jax.random.key(0), "linear", 4)
    g = jax.tree.map(jnp.ones_like, params)

    @jax.jit
    def one_step(lr, wd, frac):
        tx = optim.make_optimizer(lr, wd, frac, 20)
        state = tx.init(params)
        for _ in range(3):
            u, state = tx.update(g, state, params)
        return u

    outs = [one_step(jnp.float32(lr), jnp.float32(0.01), jnp.float32(0.1)) for lr in (1e-3, 1e-2)]
    assert one_step._cache_size() == 1
    ratio = np.asarray(outs[1]["out"]["kernel"]) / np.asarray(outs[0]["out"]["kernel"])
    np.testing.assert_allclose(ratio, 10.0, rtol=1e-5)  # the update scales with the traced lr


# ---------------------------------------------------------------------------------------------
# EMA


@pytest.mark.parametrize("decay", [0.0, 0.5, 0.99])
def test_ema_matches_incremental_update_sequence(decay):
    rng = np.random.default_rng(0)
    params = {"out": {"kernel": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32)}}
    ema_got = ema_ref = params
    for t in range(30):
        params = jax.tree.map(
            lambda a: a + jnp.asarray(rng.normal(size=a.shape), jnp.float32), params
        )
        d_t = min(decay, (1 + t) / (10 + t))
        ema_ref = optax.incremental_update(params, ema_ref, step_size=1 - d_t)
        ema_got = jax.jit(optim.ema_update)(ema_got, params, t, jnp.float32(decay))
        np.testing.assert_allclose(ema_got["out"]["kernel"], ema_ref["out"]["kernel"], rtol=1e-5)
        if decay == 0.0:
            np.testing.assert_array_equal(ema_got["out"]["kernel"], params["out"]["kernel"])
    assert float(optim.ema_decay_at(0, 0.99)) == pytest.approx(0.1)
    assert float(optim.ema_decay_at(80, 0.99)) == pytest.approx(0.9)
    assert float(optim.ema_decay_at(10_000, 0.99)) == pytest.approx(0.99)


# ---------------------------------------------------------------------------------------------
# checkpoint


def test_safetensors_round_trip_exact(tmp_path):
    params = hh.init(jax.random.key(5), "mlp", 24, hidden=16)
    meta = {"kind": "mlp", "feature": "cls", "best_epoch": "3"}
    path = checkpoint.save_params(tmp_path / "head.safetensors", params, meta)
    loaded, got_meta = checkpoint.load_params(path)
    assert got_meta == meta
    assert jax.tree.structure(loaded) == jax.tree.structure(params)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), loaded, params)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(loaded))
    assert sorted(load_file(str(path))) == [
        "hidden/bias",
        "hidden/kernel",
        "out/bias",
        "out/kernel",
    ]
    assert os.listdir(tmp_path) == ["head.safetensors"]  # no temporary file left behind
    # Overwrite in place (os.replace) and reject non-string metadata and bad keys.
    checkpoint.save_params(path, hh.init(jax.random.key(6), "linear", 24), {})
    assert hh.kind_of(checkpoint.load_params(path)[0]) == "linear"
    with pytest.raises(ValueError, match="str to str"):
        checkpoint.save_params(tmp_path / "x.safetensors", params, {"epoch": 3})
    with pytest.raises(ValueError, match="without"):
        checkpoint.save_params(tmp_path / "x.safetensors", {"a/b": np.zeros(2)})
    assert sorted(os.listdir(tmp_path)) == ["head.safetensors"]
