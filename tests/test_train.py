"""heads.train: learning, determinism, vmap equivalence, selection, padding, loop oracle."""

import dataclasses

import heads_helpers as hh
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn.metrics import roc_auc_score

from heads import families, losses, model, optim, selection, train
from heads.checkpoint import load_params, save_params
from heads.classifier import LinearSpec, MLPSpec
from heads.predict import predict, predict_proba
from heads.spec import OPTIM_HPARAMS, HParams, TrainSpec, epoch_batches, split_seed, stack
from heads.train import fit, fit_many
from stage1.config import Config, ConfigError, HeadConfig, OptimConfig
from stage1.run import specs

D = 32


def _blobs(n, sep, rng, flip=0.0):
    """Two Gaussian blobs in R^D whose means differ by ``sep`` along a random unit direction."""
    y = rng.integers(0, 2, size=n)
    u = np.random.default_rng(123).normal(size=D)
    u /= np.linalg.norm(u)
    x = rng.normal(size=(n, D)) + np.outer((y - 0.5) * sep, u)
    if flip:
        y = np.where(rng.random(n) < flip, 1 - y, y)
    return x.astype(np.float32), y.astype(np.int32)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x, y = _blobs(2000, 3.0, rng)
    xv, yv = _blobs(500, 3.0, rng)
    return jnp.asarray(x), jnp.asarray(y), jnp.asarray(xv), jnp.asarray(yv)


SPEC = TrainSpec(
    head=MLPSpec(hidden=64, dropout=True), in_dim=D, epochs=5, batch_size=128, n_train=2000
)


def _mlp(hidden, dropout=False, **kw):
    return TrainSpec(head=MLPSpec(hidden=hidden, dropout=dropout), in_dim=D, **kw)


def _hp(pos_weight=1.0, dropout=0.0, **optim_kw):
    """Scalar HParams from OptimConfig defaults overridden by ``optim_kw``."""
    o = dataclasses.replace(OptimConfig(), **optim_kw)
    values = {f: getattr(o, f) for f in OPTIM_HPARAMS} | {"pos_weight": pos_weight}
    return HParams.create(head={"dropout": dropout}, **values)


def _assert_tree_close(a, b, rtol=1e-5, atol=1e-6):
    jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=rtol, atol=atol), a, b)


def test_learns_separable_blobs_and_reports_its_own_auroc(data):
    x, y, xv, yv = data
    r = fit(SPEC, _hp(), x, y, xv, yv)
    assert r.val_auroc.shape == r.train_loss.shape == r.val_loss.shape == (SPEC.epochs,)
    best = int(r.best_epoch)
    assert r.val_auroc[best] > 0.95
    assert r.train_loss[-1] < r.train_loss[0]
    # The recorded AUROC is that of the returned weights (sklearn oracle on our predictions).
    p = predict_proba(r.params, np.asarray(xv), SPEC.head)
    assert roc_auc_score(np.asarray(yv), p) == pytest.approx(float(r.val_auroc[best]), abs=1e-6)
    # Chunked inference (padded last chunk) and the margin agree with the one-shot forward pass.
    np.testing.assert_allclose(predict_proba(r.params, np.asarray(xv), batch_size=37), p, rtol=1e-6)
    margin = predict(r.params, np.asarray(xv).astype(np.float16))["logit"]
    np.testing.assert_allclose(
        margin,
        model.logit_margin(hh.apply(r.params, np.asarray(xv).astype(np.float16))),
        rtol=1e-5,
        atol=1e-5,
    )
    with pytest.raises(ValueError, match="not a linear head"):
        predict_proba(
            r.params, np.asarray(xv), families.get("linear").head_spec_from_params(r.params)
        )


def test_determinism_seeds_and_no_recompile(data):
    x, y, xv, yv = data
    r1 = fit(SPEC, _hp(seed=7), x, y, xv, yv)
    n_compiled = fit._cache_size()
    r2 = fit(SPEC, _hp(seed=7), x, y, xv, yv)
    jax.tree.map(np.testing.assert_array_equal, r1, r2)
    r3 = fit(SPEC, _hp(seed=8, lr=3e-3, weight_decay=0.1, ema_decay=0.5), x, y, xv, yv)
    assert not np.allclose(r1.params["hidden"]["kernel"], r3.params["hidden"]["kernel"])
    assert fit._cache_size() == n_compiled  # new hyperparameter values reuse the compiled program


def test_fit_many_equals_separate_fits(data):
    x, y, xv, yv = data
    hps = [
        _hp(seed=0, lr=1e-3, weight_decay=1e-4),
        _hp(seed=1, lr=5e-3, weight_decay=1e-2, label_smoothing=0.1, ema_decay=0.0, dropout=0.2),
        _hp(seed=2, lr=2e-4, weight_decay=0.0, warmup_frac=0.3, pos_weight=3.0, ema_decay=0.9),
    ]
    many = fit_many(SPEC, stack(hps), x, y, xv, yv)
    assert many.val_auroc.shape == (3, SPEC.epochs)
    assert many.params["out"]["kernel"].shape == (3, 64, 2)
    for i, hp in enumerate(hps):
        one = fit(SPEC, hp, x, y, xv, yv)
        _assert_tree_close(jax.tree.map(lambda a, i=i: a[i], many.params), one.params)
        np.testing.assert_allclose(many.val_auroc[i], one.val_auroc, rtol=1e-5)
        np.testing.assert_allclose(many.train_loss[i], one.train_loss, rtol=1e-5)
        np.testing.assert_allclose(many.val_loss[i], one.val_loss, rtol=1e-5)
        assert int(many.best_epoch[i]) == int(one.best_epoch)
    assert not np.allclose(many.params["out"]["kernel"][0], many.params["out"]["kernel"][1])


def _lexicographic_best(auc, loss):
    """Reference rule: highest AUROC, then lowest val loss, then earliest epoch."""
    best = 0
    for e in range(1, len(auc)):
        if auc[e] > auc[best] or (auc[e] == auc[best] and loss[e] < loss[best]):
            best = e
    return best


def test_best_epoch_selection_on_an_overfitting_run():
    rng = np.random.default_rng(1)
    x, y = _blobs(200, 1.0, rng, flip=0.2)  # noisy labels, tiny train set: val AUROC peaks early
    xv, yv = _blobs(400, 1.0, rng)
    spec = _mlp(64, epochs=12, batch_size=32, n_train=200)
    hps = stack(
        [
            _hp(lr=lr, seed=s, ema_decay=0.0, warmup_frac=0.0, weight_decay=0.0)
            for lr, s in ((1e-2, 0), (3e-2, 1), (3e-3, 2))
        ]
    )
    # Through a plain vmap of the jitted ``fit`` (the way a sweep module may call it).
    r = jax.vmap(fit, in_axes=(None, 0, None, None, None, None))(spec, hps, x, y, xv, yv)
    auc, vloss = np.asarray(r.val_auroc), np.asarray(r.val_loss)
    for i in range(3):
        best = int(r.best_epoch[i])
        assert best == _lexicographic_best(auc[i], vloss[i])
        params_i = jax.tree.map(lambda a, i=i: a[i], r.params)
        assert roc_auc_score(yv, predict_proba(params_i, xv)) == pytest.approx(
            auc[i, best], abs=1e-6
        )
    assert np.any(np.asarray(r.best_epoch) < spec.epochs - 1)  # selection actually went back


def test_single_class_val_selects_by_val_loss(data):
    x, y, xv, _ = data
    r = fit(SPEC, _hp(), x, y, xv, jnp.zeros(xv.shape[0], jnp.int32))
    assert np.all(np.isnan(r.val_auroc))
    assert int(r.best_epoch) == int(np.argmin(r.val_loss))


@pytest.mark.parametrize("n, bsz", [(10, 4), (3, 8), (12, 4)])
def test_epoch_batches_cover_every_example_once(n, bsz):
    _, k_shuffle, _ = split_seed(0)
    orders = []
    for e in range(3):
        idx, mask = epoch_batches(k_shuffle, e, n, bsz)
        steps = -(-n // bsz)
        assert idx.shape == mask.shape == (steps, bsz)
        assert int(mask.sum()) == n
        valid = np.asarray(idx)[np.asarray(mask) == 1]
        np.testing.assert_array_equal(np.sort(valid), np.arange(n))
        orders.append(valid)
    assert n < 4 or not all(np.array_equal(orders[0], o) for o in orders[1:])  # reshuffled


@pytest.mark.parametrize("ema_every", [1, 3])
def test_fit_equals_python_loop_oracle_with_padding_dropout_and_ema(monkeypatch, ema_every):
    """n=30 with batch 8 (last batch 6 valid + 2 wrapped), dropout, EMA: fit == unrolled loop.

    Validation runs in chunks of 16 rows here (40 val rows: 3 chunks, 8 zero-padded rows).
    With ``ema_every=3`` the 4 steps of an epoch form a block of 3 and a tail of 1: the oracle
    refreshes the EMA after step 3 with ``d_t ** 3`` and after step 4 with ``d_t``.
    """
    monkeypatch.setattr(train, "VAL_CHUNK", 16)  # read at trace time; this spec is traced here
    rng = np.random.default_rng(2)
    x, y = _blobs(30, 2.0, rng)
    xv, yv = _blobs(40, 2.0, rng)
    spec = _mlp(8, dropout=True, epochs=3, batch_size=8, n_train=30, ema_every=ema_every)
    hp = _hp(
        seed=3,
        lr=1e-2,
        weight_decay=0.05,
        warmup_frac=0.2,
        label_smoothing=0.1,
        pos_weight=2.0,
        ema_decay=0.9,
        dropout=0.25,
    )
    r = fit(spec, hp, x, y, xv, yv)

    k_init, k_shuffle, k_drop = split_seed(3)
    params = hh.init(k_init, "mlp", D, 8)
    tx = optim.make_optimizer(
        hp.lr, hp.weight_decay, hp.warmup_frac, spec.total_steps, mask=optim.decay_mask(params)
    )
    opt_state, ema, t = tx.init(params), params, 0
    best = (-np.inf, np.inf, None, -1)
    train_loss, unmasked_loss = [], []

    def batch_loss(p, xb, yb, mb, key):
        z = hh.apply(p, xb, dropout_rate=0.25, key=key)
        return losses.weighted_ce(z, yb, pos_weight=2.0, label_smoothing=0.1, mask=mb)

    @jax.jit  # one step of the loop, jitted only to keep the test fast; the loop stays in Python
    def step(params, opt_state, t, xb, yb, mb):
        key = jax.random.fold_in(k_drop, t)
        loss, g = jax.value_and_grad(batch_loss)(params, xb, yb, mb, key)
        unmasked = batch_loss(params, xb, yb, jnp.ones_like(mb), key)
        updates, opt_state = tx.update(g, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, opt_state, loss, unmasked

    def ema_step(ema, params, t, block):  # t: 0-based index of the block's last step
        d = min(0.9, (1 + t) / (10 + t)) ** block
        return jax.tree.map(lambda e, p: d * e + (1 - d) * p, ema, params)

    batches = jax.jit(epoch_batches, static_argnums=(2, 3))
    val_logits = jax.jit(lambda p: hh.apply(p, xv))
    for e in range(spec.epochs):
        idx, mask = batches(k_shuffle, e, 30, 8)
        batch_losses, since_ema = [], 0
        for b in range(spec.steps_per_epoch):
            params, opt_state, loss, unmasked = step(
                params, opt_state, t, x[idx[b]], y[idx[b]], mask[b]
            )
            since_ema += 1
            if since_ema == ema_every or b == spec.steps_per_epoch - 1:
                ema, since_ema = ema_step(ema, params, t, since_ema), 0
            t += 1
            batch_losses.append(float(loss))
            unmasked_loss.append(float(unmasked))
        train_loss.append(np.mean(batch_losses))
        z = val_logits(ema)
        auc = roc_auc_score(yv, np.asarray(model.logit_margin(z)))
        vloss = float(losses.mean_ce(z, yv))
        if auc > best[0] or (auc == best[0] and vloss < best[1]):
            best = (auc, vloss, ema, e)
        np.testing.assert_allclose(r.val_auroc[e], auc, atol=1e-6)
        np.testing.assert_allclose(r.val_loss[e], vloss, rtol=1e-5)

    np.testing.assert_allclose(r.train_loss, train_loss, rtol=1e-5)
    # Masking matters: counting the 2 wrapped rows would change the epoch losses.
    assert not np.allclose(np.mean(np.reshape(unmasked_loss, (3, 4)), axis=1), train_loss)
    assert int(r.best_epoch) == best[3]
    _assert_tree_close(r.params, best[2])


def test_linear_kind_and_checkpoint_round_trip(data, tmp_path):
    x, y, xv, yv = data
    spec = dataclasses.replace(SPEC, head=LinearSpec(), epochs=3)
    r = fit(spec, _hp(lr=1e-2), x, y, xv, yv)
    assert r.val_auroc[int(r.best_epoch)] > 0.95
    path = save_params(tmp_path / "head.safetensors", r.params, {"kind": "linear"})
    loaded, meta = load_params(path)
    assert meta == {"kind": "linear"}
    np.testing.assert_array_equal(
        predict_proba(loaded, xv, LinearSpec()), predict_proba(r.params, xv)
    )


def test_config_plumbing_and_input_errors(data):
    x, y, xv, yv = data
    cfg = Config(optim=OptimConfig(seed=5, ema_decay=0.0), head=HeadConfig(dropout=0.1))
    hp = specs.hparams(cfg, 2.5)
    assert hp.seed.dtype == np.int32 and int(hp.seed) == 5
    assert all(v.dtype == np.float32 and v.shape == () for v in hp[:-2])
    assert float(hp.pos_weight) == 2.5 and float(hp.head["dropout"]) == pytest.approx(0.1)
    assert set(hp.head) == {"dropout"}
    assert stack([hp, hp]).lr.shape == (2,)
    cfg = Config(optim=OptimConfig(epochs=3, batch_size=256))
    spec = specs.train_spec(cfg, in_dim=384, n_train=1000)
    assert (spec.steps_per_epoch, spec.total_steps, spec.head.hidden) == (4, 12, 768)
    assert hash(spec) == hash(dataclasses.replace(spec))
    assert specs.train_spec(cfg, in_dim=4, n_train=100).batch_size == 100  # capped at n_train

    with pytest.raises(ValueError, match="resolved"):
        HParams.create(**{f: 0.0 for f in OPTIM_HPARAMS} | {"pos_weight": -1.0})
    with pytest.raises(ConfigError, match="head.kind"):
        Config(head=HeadConfig(kind="cnn")).validate()
    with pytest.raises(ValueError, match="batch_size"):
        _mlp(8, epochs=1, batch_size=0, n_train=1)
    with pytest.raises(ValueError, match="do not match"):
        fit(SPEC, _hp(), x[:100], y[:100], xv, yv)
    with pytest.raises(ValueError, match="fit_many"):
        fit(SPEC, stack([_hp(), _hp()]), x, y, xv, yv)
    with pytest.raises(ValueError, match="lacks"):
        fit(SPEC, _hp()._replace(head={}), x, y, xv, yv)


def test_static_dropout_flag_compiles_dropout_out():
    """spec.dropout=False ignores HParams.dropout (no RNG per step); True applies it."""
    rng = np.random.default_rng(7)
    x, y = _blobs(300, 2.0, rng)
    xv, yv = _blobs(100, 2.0, rng)
    off = _mlp(16, epochs=2, batch_size=64, n_train=300)
    on = dataclasses.replace(off, head=MLPSpec(hidden=16, dropout=True))
    r0 = fit(off, _hp(dropout=0.0), x, y, xv, yv)
    r_ignored = fit(off, _hp(dropout=0.5), x, y, xv, yv)
    r_on = fit(on, _hp(dropout=0.5), x, y, xv, yv)
    np.testing.assert_array_equal(r0.train_loss, r_ignored.train_loss)
    assert not np.allclose(r0.train_loss, r_on.train_loss)
    assert specs.train_spec(Config(head=HeadConfig(dropout=0.1)), in_dim=4, n_train=8).head.dropout


# ---------------------------------------------------------------------------------------------
# Mixed precision


def test_bfloat16_training_matches_float32_and_vmaps(data):
    """precision="bfloat16": float32 master weights, bf16 first moment; same quality as float32.

    Oracle: the float32 run of the same config (bfloat16 rounding perturbs the trajectory, so
    the AUROC curves agree to ~1e-2, not bit for bit), and the lone bfloat16 fit for the vmapped
    one (same program, batched).
    """
    x, y, xv, yv = data
    f32 = dataclasses.replace(SPEC, head=MLPSpec(hidden=64), epochs=3)
    bf16 = dataclasses.replace(f32, precision="bfloat16")
    hps = [_hp(seed=0, lr=3e-3), _hp(seed=1, lr=1e-3, weight_decay=1e-2)]
    r32 = fit(f32, hps[0], x, y, xv, yv)
    r16 = fit(bf16, hps[0], x, y, xv, yv)
    assert r16.params["hidden"]["kernel"].dtype == jnp.float32  # master weights stay float32
    assert float(r16.val_auroc[-1]) > 0.95
    np.testing.assert_allclose(r16.val_auroc, r32.val_auroc, atol=1e-2)
    assert not np.array_equal(r16.train_loss, r32.train_loss)  # it did run in bfloat16
    many = fit_many(bf16, stack(hps), x, y, xv, yv)
    for i, hp in enumerate(hps):
        one = r16 if i == 0 else fit(bf16, hp, x, y, xv, yv)
        np.testing.assert_allclose(many.val_auroc[i], one.val_auroc, atol=2e-3)
        np.testing.assert_allclose(many.train_loss[i], one.train_loss, rtol=1e-2)


def test_bfloat16_apply_and_first_moment():
    rng = np.random.default_rng(0)
    params = hh.init(jax.random.key(1), "mlp", D, 16)
    x = jnp.asarray(rng.normal(size=(64, D)), jnp.float32)
    z32 = hh.apply(params, x)
    z16 = hh.apply(params, x, dtype=jnp.bfloat16)
    assert z16.dtype == jnp.float32
    np.testing.assert_allclose(z16, z32, rtol=0.05, atol=0.05)  # bf16 has 8 significant bits
    assert not np.array_equal(z16, z32)
    g = jax.grad(lambda p: jnp.sum(hh.apply(p, x, dtype=jnp.bfloat16) ** 2))(params)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(g))
    # The first moment in bfloat16 is optax.adamw(mu_dtype=bfloat16), update for update.
    tx = optim.make_optimizer(1e-2, 0.01, 0.0, 10, mu_dtype=jnp.bfloat16)
    ref = optax.adamw(1e-2, weight_decay=0.01, mu_dtype=jnp.bfloat16)
    s_got, s_ref = tx.init(params), ref.init(params)
    assert s_got.inner_state[0].mu["hidden"]["kernel"].dtype == jnp.bfloat16
    u_got, _ = tx.update(g, s_got, params)
    u_ref, _ = ref.update(g, s_ref, params)
    # Step 0 of the cosine schedule has lr == peak (no warm-up); rounding of the float32 hyper-
    # parameter arrays vs weak Python floats differs in the last bits only.
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-9), u_got, u_ref)


def test_precision_resolution_and_spec_checks():
    assert optim.resolve_precision("auto", "cpu") == "float32"
    assert optim.resolve_precision("auto", "gpu") == "bfloat16"
    assert optim.resolve_precision("float32", "gpu") == "float32"
    with pytest.raises(ValueError, match="precision"):
        optim.resolve_precision("fp8")
    with pytest.raises(ValueError, match="resolve 'auto'"):
        _mlp(8, epochs=1, batch_size=1, n_train=1, precision="auto")
    with pytest.raises(ValueError, match="ema_every"):
        _mlp(8, epochs=1, batch_size=1, n_train=1, ema_every=0)
    with pytest.raises(ValueError, match="sam"):
        _mlp(8, epochs=1, batch_size=1, n_train=1, sam="gsam")
    cfg = Config(optim=OptimConfig(ema_every=5, precision="bfloat16"))
    spec = specs.train_spec(cfg, in_dim=4, n_train=8)
    assert (spec.ema_every, spec.precision) == (5, "bfloat16")
    on_cpu = specs.train_spec(Config(), in_dim=4, n_train=8)
    assert on_cpu.precision == optim.resolve_precision("auto")


def test_selection_rule_on_a_scripted_sequence_of_epochs():
    """heads.selection against the rule by hand: AUROC, then the lower loss, then earlier."""
    scores = [  # (auroc, loss) per epoch
        (float("nan"), 0.9),  # NaN ranks below every number, but beats the empty start on loss
        (0.70, 0.8),  # a finite AUROC wins
        (0.70, 0.8),  # a full tie keeps the earlier epoch
        (0.70, 0.7),  # same AUROC, lower loss wins
        (0.69, 0.1),  # lower AUROC loses whatever the loss
        (0.75, 2.0),  # higher AUROC wins whatever the loss
    ]
    expected_epochs = [0, 1, 1, 3, 3, 5]
    best = selection.init_best({"w": jnp.zeros(2)})
    for e, (auc, loss) in enumerate(scores):
        best = selection.update_best(best, {"w": jnp.full(2, e)}, jnp.float32(auc), loss, e)
        assert int(best.epoch) == expected_epochs[e]
        assert np.all(np.asarray(best.params["w"]) == expected_epochs[e])
    ema, raw = {"w": jnp.ones(2)}, {"w": jnp.zeros(2)}
    assert np.all(selection.evaluated_weights(raw, ema, jnp.float32(0.99))["w"] == 1)
    assert np.all(selection.evaluated_weights(raw, ema, jnp.float32(0.0))["w"] == 0)
