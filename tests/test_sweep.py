"""stage1 sweep / heads.sweep: grid parsing, grouping, sharded equivalence, leaderboard files."""

import argparse
import csv
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from heads import sweep as hs
from heads.train import HParams, TrainSpec, fit, predict_logit_margin
from schemas import SchemaError, validate
from stage1 import sweep as ss
from stage1.artifacts import read_json
from stage1.cache import CacheError, synthetic_metadata, write_cache
from stage1.config import ConfigError, override
from stage1.pipeline import load_splits
from stage1.presets import load_preset
from stage1.sweep_cli import add_sweep_parser

ROOT = Path(__file__).resolve().parents[1]
D = 8
# One TrainSpec shared by the CLI sweep, the 2-device subprocess and the lone fits below, so the
# file compiles each program once.
SETS = ["optim.epochs=2", "optim.batch_size=64", "head.hidden=16", "optim.ema_decay=0.9"]
GRID = ["lr=3e-3:3e-2:log3", "weight_decay=0,1e-2", "seed=0,1"]


@pytest.fixture(scope="module", autouse=True)
def _fast_compiles():
    """XLA compile time dominates these tiny runs; most optimisations are not worth it here."""
    before = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", before)


# ---------------------------------------------------------------------------------------------
# Grid parsing


def test_log_lin_and_list_specs():
    g = ss.parse_grid(
        [
            "lr=1e-4:1e-2:log3",
            "optim.warmup_frac=0:0.2:lin3",
            "weight_decay=0,1e-4,1e-2",
            "seed=0,1,2",
            "kind=mlp,linear",
            "feature=cls,cls+patch_mean",
            "hidden=256",
        ]
    )
    assert g["lr"] == [1e-4, 1e-3, 1e-2]
    assert g["warmup_frac"] == [0.0, 0.1, 0.2]
    assert g["weight_decay"] == [0.0, 1e-4, 1e-2]
    assert g["seed"] == [0, 1, 2] and all(type(s) is int for s in g["seed"])
    assert g["kind"] == ["mlp", "linear"] and g["feature"] == ["cls", "cls+patch_mean"]
    assert g["hidden"] == [256]
    assert list(g) == ["lr", "warmup_frac", "weight_decay", "seed", "kind", "feature", "hidden"]
    lr8 = np.asarray(ss.parse_values("lr", "1e-4:1e-2:log8"))
    assert len(lr8) == 8 and lr8[0] == 1e-4 and lr8[-1] == 1e-2
    np.testing.assert_allclose(lr8[1:] / lr8[:-1], 10 ** (2 / 7), rtol=1e-5)  # geometric


@pytest.mark.parametrize(
    "spec,match",
    [
        ("momentum=0.9", "unknown grid name 'momentum'"),
        ("lr", "not of the form name=values"),
        ("lr=1e-4:1e-2:log", "expected a:b:logN"),
        ("lr=1e-4:1e-2", "expected a:b:logN"),
        ("lr=0:1e-2:log4", "log ranges need a, b > 0"),
        ("lr=fast", "values must be numbers"),
        ("lr=1e-3,,1e-2", "empty value"),
        ("lr=-1e-3", "lr must be > 0"),
        ("seed=0.5,1", "seed must be an integer"),
        ("seed=-1", r"seed must be in \[0"),
        ("dropout=0,1", r"dropout must be in \[0, 1\)"),
        ("pos_weight=0", "pos_weight must be > 0, or -1"),
        ("kind=mlp,cnn", "kind must be mlp or linear"),
        ("feature=cls+", "empty feature variant"),
        ("kind=1:2:lin2", "a range needs a numeric name"),
        ("seed=1,1", "repeated values"),
    ],
)
def test_bad_specs_raise_one_line_value_errors(spec, match):
    with pytest.raises(ss.GridError, match=match) as e:
        ss.parse_grid([spec])
    assert isinstance(e.value, ValueError) and "\n" not in str(e.value)


def test_selective_presets_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="selective"):
        ss.run_sweep(load_preset("phase2"), tmp_path / "none.h5", tmp_path, {})


def test_duplicate_names_are_refused_even_through_aliases():
    with pytest.raises(ss.GridError, match="given twice"):
        ss.parse_grid(["lr=1e-3", "optim.lr=1e-2"])


# ---------------------------------------------------------------------------------------------
# Expansion and grouping


def test_expand_grid_order_groups_and_linear_dedup():
    base = ss.flat_config(load_preset("phase1"))
    grid = {
        "kind": ["mlp", "linear"],
        "hidden": [16, 32],
        "dropout": [0.0, 0.1],
        "lr": [1e-3, 1e-2],
    }
    cfgs = hs.expand_grid(base, grid)
    # mlp: 2 hidden x 2 dropout x 2 lr = 8; linear ignores hidden and dropout: 2 lr.
    assert len(cfgs) == 10
    assert [c["lr"] for c in cfgs[:2]] == [1e-3, 1e-2]  # the last axis varies fastest
    assert all(c["hidden"] is None and c["dropout"] == 0.0 for c in cfgs if c["kind"] == "linear")
    groups = hs.group_configs(cfgs)
    assert list(groups) == [("mlp", 16, "cls"), ("mlp", 32, "cls"), ("linear", None, "cls")]
    assert sorted(i for idx in groups.values() for i in idx) == list(range(10))
    spec = hs.group_spec(("linear", None, "cls"), in_dim=5, epochs=1, batch_size=4, n_train=9)
    assert spec.kind == "linear" and spec.in_dim == 5
    with pytest.raises(ValueError, match="unknown sweep axis"):
        hs.expand_grid(base, {"momentum": [0.9]})


def test_stack_hparams_resolves_the_auto_pos_weight_and_keeps_seeds_exact():
    base = ss.flat_config(load_preset("phase1"))  # pos_weight = -1 (n_neg / n_pos)
    cfgs = hs.expand_grid(base, {"pos_weight": [-1.0, 2.0], "seed": [2**31 - 1]})
    hp = hs.stack_hparams(cfgs, auto_pos_weight=3.5)
    np.testing.assert_allclose(hp.pos_weight, [3.5, 2.0])
    assert hp.seed.dtype == np.int32 and int(hp.seed[0]) == 2**31 - 1
    assert hp.lr.dtype == np.float32 and set(hp._fields) == set(hs.SWEEPABLE)


# ---------------------------------------------------------------------------------------------
# A tiny cache; the CLI sweep over it


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    rng = np.random.default_rng(0)
    n = 700
    y = (rng.random(n) < 0.3).astype(np.int64)
    cls = rng.normal(size=(n, D)) + np.outer(y, rng.normal(size=D))
    pm = rng.normal(size=(n, 3)) + np.outer(y, [0.5, 0.0, -0.5])
    split = np.asarray(["train", "val", "calib", "test"])[
        rng.choice(4, n, p=[0.5, 0.2, 0.15, 0.15])
    ]
    path = tmp_path_factory.mktemp("sweep") / "features.h5"
    write_cache(
        path,
        {"cls": cls.astype(np.float32), "patch_mean": pm.astype(np.float32)},
        ids=[f"img{i:04d}" for i in range(n)],
        labels=y,
        split=list(split),
        metadata=synthetic_metadata(),
    )
    return path


def test_feature_concatenation_aligns_rows(cache):
    memo = {}
    tr, va = ss.load_feature(cache, "cls+patch_mean", memo)
    splits, _ = load_splits(cache, "cls")
    pm, _ = load_splits(cache, "patch_mean")
    np.testing.assert_array_equal(tr.x, np.hstack([splits["train"].x, pm["train"].x]))
    np.testing.assert_array_equal(va.y, splits["val"].y)
    assert set(memo) == {"cls", "patch_mean"}  # each variant is read once
    with pytest.raises(CacheError, match="cls_last4"):
        ss.load_feature(cache, "cls+cls_last4", memo)


@pytest.fixture(scope="module")
def swept(cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep_out")
    parser = argparse.ArgumentParser()
    add_sweep_parser(parser.add_subparsers())
    argv = [
        "sweep",
        "--cache",
        str(cache),
        "--out",
        str(out),
        "--no-progress",
        "--ridge-lambdas",
        "1:1e4:log5",
        "--chunk",
        "5",  # 12 configs: 5 + 5 + 2 padded
        "--compile-cache",
        "none",
    ]
    argv += [a for g in GRID for a in ("--grid", g)] + [a for s in SETS for a in ("--set", s)]
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    return out


def test_leaderboard_files_validate_and_agree(swept):
    lb = read_json(swept / "leaderboard.json", schema="leaderboard")
    rows = lb["rows"]
    assert lb["n_configs"] == 12 and len(rows) == 13 and lb["metric"] == "val_auroc"
    assert rows[0]["kind"] == "ridge" and rows[0]["rank"] is None  # the closed-form rung first
    assert (
        rows[0]["l2"] in lb["ridge"]["cls"]["lambdas"] and len(lb["ridge"]["cls"]["lambdas"]) == 5
    )
    trained = rows[1:]
    assert [r["rank"] for r in trained] == list(range(1, 13))
    aucs = [r["val_auroc"] for r in trained]
    assert aucs == sorted(aucs, reverse=True)
    assert sorted(r["config_id"] for r in trained) == list(range(12))
    with open(swept / "leaderboard.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 13 and table[0]["kind"] == "ridge" and table[0]["rank"] == ""
    for r, t in zip(rows, table, strict=True):
        assert float(t["val_auroc"]) == pytest.approx(r["val_auroc"])
    bad = dict(lb, rows=[dict(rows[1], rank=None)])  # a trained row must carry its rank
    with pytest.raises(SchemaError):
        validate(bad, "leaderboard")


def test_best_config_loads_as_a_preset_and_reproduces_the_winner(swept, cache):
    lb = json.loads((swept / "leaderboard.json").read_text())
    win = lb["rows"][1]
    cfg = load_preset(str(swept / "best_config.json"))
    assert cfg.head.kind == "mlp" and cfg.head.hidden == 16 and cfg.head.feature == "cls"
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.seed) == (
        win["lr"],
        win["weight_decay"],
        win["seed"],
    )
    assert cfg.optim.pos_weight == -1.0 and cfg.optim.epochs == 2  # as configured, not resolved
    # Retraining alone (the stage1 train path) gives the sweep's numbers: the winner, and the
    # last config, which shared its chunked call with two padding copies.
    splits, _ = load_splits(cache, "cls")
    tr, va = splits["train"], splits["val"]
    pw = (len(tr.y) - tr.y.sum()) / tr.y.sum()
    assert lb["auto_pos_weight"] == pytest.approx(pw)
    last = next(r for r in lb["rows"] if r["config_id"] == 11)
    for row in (win, last):
        c = ss.config_from_flat(cfg, row)
        spec = TrainSpec.from_config(c.head, c.optim, in_dim=D, n_train=len(tr.y))
        one = fit(spec, HParams.from_config(c.optim, c.head, pw), tr.x, tr.y, va.x, va.y)
        assert int(one.best_epoch) == row["best_epoch"]
        assert float(one.val_auroc[row["best_epoch"]]) == pytest.approx(row["val_auroc"], abs=1e-6)


_SHARDED = """
import sys, numpy as np, jax
from heads import sweep as hs
from stage1 import sweep as ss
from stage1.config import ConfigError, override
from stage1.pipeline import load_splits
from stage1.presets import load_preset
from stage1.sweep_cli import add_sweep_parser
assert len(jax.devices()) == 2, jax.devices()
cfg = override(load_preset("phase1"), sys.argv[3:])
cfgs = hs.expand_grid(ss.flat_config(cfg), ss.parse_grid(["lr=3e-3:3e-2:log5"]))  # 5 -> pad 6
splits, _ = load_splits(sys.argv[1], "cls")
tr, va = splits["train"], splits["val"]
spec = hs.group_spec(("mlp", 16, "cls"), in_dim=tr.x.shape[1], epochs=cfg.optim.epochs,
                     batch_size=cfg.optim.batch_size, n_train=len(tr.y),
                     ema_every=cfg.optim.ema_every)
mesh = hs.config_mesh()
r = hs.run_group(spec, hs.stack_hparams(cfgs, 2.0), tr.x, tr.y, va.x, va.y, alpha=0.1,
                 mesh=mesh, keep_params=True)
np.savez(sys.argv[2], devices=mesh.size, best_epoch=r.best_epoch, curve=r.val_auroc_curve,
         train_loss=r.train_loss_curve, exit=r.val_exit_rate,
         kernel=r.params["hidden"]["kernel"], out=r.params["out"]["kernel"],
         lr=[c["lr"] for c in cfgs])
"""


def test_sharded_sweep_over_two_devices_equals_lone_fits(cache, tmp_path):
    dump = tmp_path / "sharded.npz"
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
        JAX_PLATFORMS="cpu",
        JAX_DISABLE_MOST_OPTIMIZATIONS="1",
        PYTHONPATH=str(ROOT),
    )
    proc = subprocess.run(
        [sys.executable, "-c", _SHARDED, str(cache), str(dump), *SETS],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = np.load(dump)
    assert int(got["devices"]) == 2 and got["curve"].shape == (5, 2)  # padding dropped
    cfg = override(load_preset("phase1"), SETS)
    splits, _ = load_splits(cache, "cls")
    tr, va = splits["train"], splits["val"]
    spec = TrainSpec.from_config(cfg.head, cfg.optim, in_dim=D, n_train=len(tr.y))
    k = hs.exit_rank(va.y, 0.1)
    for i in (0, 2, 4):  # first device, second device, the config next to the padding
        optim = dataclasses.replace(cfg.optim, lr=float(got["lr"][i]))
        one = fit(spec, HParams.from_config(optim, cfg.head, 2.0), tr.x, tr.y, va.x, va.y)
        np.testing.assert_allclose(got["curve"][i], one.val_auroc, rtol=1e-5)
        np.testing.assert_allclose(got["train_loss"][i], one.train_loss, rtol=1e-5)
        for name, layer in (("kernel", "hidden"), ("out", "out")):
            np.testing.assert_allclose(
                got[name][i], one.params[layer]["kernel"], rtol=1e-5, atol=1e-6
            )
        assert int(got["best_epoch"][i]) == int(one.best_epoch)
        s = predict_logit_margin(one.params, va.x)  # exit rate of the lone fit's weights
        rate = np.asarray(hs.exit_rates(jnp.asarray(s[None]), jnp.asarray(va.y), k))[0]
        assert float(got["exit"][i]) == pytest.approx(float(rate), abs=1e-6)
    assert not np.allclose(got["kernel"][0], got["kernel"][1])  # configs really differ


def test_auto_chunk_fits_the_budget():
    mesh = hs.config_mesh()
    mlp = TrainSpec(kind="mlp", hidden=768, in_dim=768, epochs=1, batch_size=512, n_train=10)
    lin = TrainSpec(kind="linear", in_dim=768, epochs=1, batch_size=512, n_train=10)
    # Tens of MB per MLP config of the phase-1 shape, about 2 MB per linear one.
    assert 100 * mesh.size <= hs.auto_chunk(mlp, 32768, mesh, budget_bytes=8 * 2**30) <= 400
    assert hs.auto_chunk(lin, 32768, mesh, budget_bytes=8 * 2**30) > 4000 * mesh.size
    assert hs.auto_chunk(mlp, 32768, mesh, 2**30) < hs.auto_chunk(mlp, 32768, mesh, 2**31)
    assert hs.auto_chunk(mlp, 32768, mesh, budget_bytes=1) == mesh.size


def test_rank_rows_by_exit_rate_with_tie_breaks_and_missing_last():
    def row(i, auc, rate, loss):
        return {"config_id": i, "val_auroc": auc, "val_exit_rate": rate, "val_loss": loss}

    rows = [
        row(0, 0.90, 0.30, 0.5),
        row(1, 0.95, 0.30, 0.5),  # same exit rate, higher AUROC: ahead of 0
        row(2, None, None, None),  # diverged run: last
        row(3, 0.95, 0.30, 0.4),  # same rate and AUROC, lower loss: ahead of 1
        row(4, 0.80, 0.45, 0.9),
    ]
    ranked = ss.rank_rows(rows, "val_exit_rate")
    assert [r["config_id"] for r in ranked] == [4, 3, 1, 0, 2]
    assert [r["rank"] for r in ranked] == [1, 2, 3, 4, 5]
    by_auc = ss.rank_rows(rows, "val_auroc")
    assert [r["config_id"] for r in by_auc] == [3, 1, 0, 4, 2]
