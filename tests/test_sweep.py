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
from heads.classifier import LinearSpec, MLPSpec
from heads.predict import predict
from heads.spec import TrainSpec, stack
from heads.train import fit
from schemas import SchemaError, validate
from stage1 import sweep as ss
from stage1.artifacts import read_json
from stage1.cache import CacheError, synthetic_metadata, write_cache
from stage1.config import override
from stage1.presets import load_preset
from stage1.run import load_splits, specs
from stage1.sweep.cli import add_sweep_parser

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
        ("lr=-1e-3", r"optim\.lr must be in \(0, inf\), got -0\.001"),
        ("seed=0.5,1", "seed must be an integer"),
        ("seed=-1", r"seed must be in \[0"),
        ("dropout=0,1", r"dropout must be in \[0, 1\)"),
        ("pos_weight=0", "pos_weight must be > 0 or -1"),
        ("kind=mlp,cnn", "head.kind must be one of linear\\|mlp\\|selective"),
        ("sam=none,gsam", r"optim\.sam must be one of none\|sam\|asam\|fsam"),
        ("sam_rho=-0.1", r"optim\.sam_rho must be in \[0, inf\)"),
        ("selective.alpha_mix=2", r"alpha_mix must be in \[0, 1\]"),
        ("precision=bfloat16", "unknown grid name 'precision'"),
        ("feature=cls+", "empty feature variant"),
        ("kind=1:2:lin2", "a range needs a numeric name"),
        ("seed=1,1", "repeated values"),
    ],
)
def test_bad_specs_raise_one_line_value_errors(spec, match):
    with pytest.raises(ss.GridError, match=match) as e:
        ss.parse_grid([spec])
    assert isinstance(e.value, ValueError) and "\n" not in str(e.value)


def test_duplicate_names_are_refused_even_through_aliases():
    with pytest.raises(ss.GridError, match="given twice"):
        ss.parse_grid(["lr=1e-3", "optim.lr=1e-2"])


# ---------------------------------------------------------------------------------------------
# Expansion


def test_every_swept_field_is_a_grid_name_by_short_name_and_path():
    from stage1.config import sweep_fields

    assert set(ss.FIELDS) == set(sweep_fields()) and len(ss.FIELDS) == len(set(ss.FIELDS))
    for name, (section, field) in ss.FIELDS.items():
        assert ss.parse_grid([f"{section}.{field}={ss.flat_config(load_preset('phase2'))[name]}"])
    assert set(ss.TRACED) >= {"lr", "sam_rho", "fsam_sigma", "lam", "target_coverage", "dropout"}
    assert set(ss.STATIC) >= {"kind", "hidden", "feature", "sam", "trunk_hidden"}


def test_expand_grid_order_and_validation():
    base = load_preset("phase1")
    grid = {"kind": ["mlp", "linear"], "hidden": [16, 32], "lr": [1e-3, 1e-2]}
    cfgs = ss.expand_grid(base, grid)
    assert len(cfgs) == 8  # duplicates (a linear head over two widths) are dropped later
    assert [c.optim.lr for c in cfgs[:2]] == [1e-3, 1e-2]  # the last axis varies fastest
    assert [c.head.kind for c in cfgs] == ["mlp"] * 4 + ["linear"] * 4
    # A linear head's spec and hyperparameters ignore hidden: the sweep sees one config per lr.
    lin = [c for c in cfgs if c.head.kind == "linear"]
    assert specs.train_spec(lin[0], in_dim=4, n_train=8) == specs.train_spec(
        lin[2], in_dim=4, n_train=8
    )
    assert isinstance(specs.head_spec(lin[0]), LinearSpec)
    assert specs.head_spec(cfgs[0]) == MLPSpec(hidden=16)


def test_hparams_resolve_the_auto_pos_weight_and_keep_seeds_exact():
    base = load_preset("phase1")  # pos_weight = -1 (n_neg / n_pos)
    y = np.array([0] * 7 + [1] * 2)
    cfgs = ss.expand_grid(base, {"pos_weight": [-1.0, 2.0], "seed": [2**31 - 1]})
    hp = stack([specs.hparams(c, specs.resolve_pos_weight(c, y)) for c in cfgs])
    np.testing.assert_allclose(hp.pos_weight, [3.5, 2.0])
    assert hp.seed.dtype == np.int32 and int(hp.seed[0]) == 2**31 - 1
    assert hp.lr.dtype == np.float32 and set(hp.head) == {"dropout"}
    sel = specs.hparams(load_preset("phase2"), 1.0)
    assert set(sel.head) == {
        "target_coverage",
        "lam",
        "alpha_mix",
        "fnr_target",
        "multiplier_lr",
        "surrogate_temp",
    }


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
    # The backbone facts are the cache's (issue 17, item 2), not the config defaults'.
    assert (cfg.backbone.name, cfg.backbone.weights_sha256) == ("synthetic", "synthetic")
    assert lb["provenance"]["backbone"] == "synthetic" and lb["provenance"]["image_size"] == 224
    # Retraining alone (the stage1 train path) gives the sweep's numbers: the winner, and the
    # last config, which shared its chunked call with two padding copies.
    splits, _ = load_splits(cache, "cls")
    tr, va = splits["train"], splits["val"]
    pw = (len(tr.y) - tr.y.sum()) / tr.y.sum()
    last = next(r for r in lb["rows"] if r["config_id"] == 11)
    for row in (win, last):
        c = ss.config_from_flat(cfg, row)
        spec = specs.train_spec(c, in_dim=D, n_train=len(tr.y))
        one = fit(spec, specs.hparams(c, pw), tr.x, tr.y, va.x, va.y)
        assert int(one.best_epoch) == row["best_epoch"]
        assert float(one.val_auroc[row["best_epoch"]]) == pytest.approx(row["val_auroc"], abs=1e-6)


_SHARDED = """
import sys, numpy as np, jax
from heads import sweep as hs
from heads.spec import stack
from stage1 import sweep as ss
from stage1.config import override
from stage1.run import load_splits, specs
from stage1.presets import load_preset
assert len(jax.devices()) == 2, jax.devices()
cfg = override(load_preset("phase1"), sys.argv[3:])
cfgs = ss.expand_grid(cfg, ss.parse_grid(["lr=3e-3:3e-2:log5"]))  # 5 -> pad 6
splits, _ = load_splits(sys.argv[1], "cls")
tr, va = splits["train"], splits["val"]
spec = specs.train_spec(cfg, in_dim=tr.x.shape[1], n_train=len(tr.y))
mesh = hs.config_mesh()
r = hs.run_group(spec, stack([specs.hparams(c, 2.0) for c in cfgs]), tr.x, tr.y, va.x, va.y,
                 alpha=0.1, mesh=mesh, keep_params=True)
np.savez(sys.argv[2], devices=mesh.size, best_epoch=r.best_epoch, curve=r.curves["val_auroc"],
         train_loss=r.curves["train_loss"], exit=r.val_exit_rate,
         kernel=r.params["hidden"]["kernel"], out=r.params["out"]["kernel"],
         lr=[c.optim.lr for c in cfgs])
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
    spec = specs.train_spec(cfg, in_dim=D, n_train=len(tr.y))
    k = hs.exit_rank(va.y, 0.1)
    for i in (0, 2, 4):  # first device, second device, the config next to the padding
        c = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, lr=float(got["lr"][i])))
        one = fit(spec, specs.hparams(c, 2.0), tr.x, tr.y, va.x, va.y)
        np.testing.assert_allclose(got["curve"][i], one.val_auroc, rtol=1e-5)
        np.testing.assert_allclose(got["train_loss"][i], one.train_loss, rtol=1e-5)
        for name, layer in (("kernel", "hidden"), ("out", "out")):
            np.testing.assert_allclose(
                got[name][i], one.params[layer]["kernel"], rtol=1e-5, atol=1e-6
            )
        assert int(got["best_epoch"][i]) == int(one.best_epoch)
        s = predict(one.params, va.x)["logit"]  # exit rate of the lone fit's weights
        rate = np.asarray(hs.exit_rates(jnp.asarray(s[None]), jnp.asarray(va.y), k))[0]
        assert float(got["exit"][i]) == pytest.approx(float(rate), abs=1e-6)
    assert not np.allclose(got["kernel"][0], got["kernel"][1])  # configs really differ


def test_auto_chunk_fits_the_budget():
    mesh = hs.config_mesh()
    shape = dict(in_dim=768, epochs=1, batch_size=512, n_train=10)
    mlp = TrainSpec(head=MLPSpec(hidden=768), **shape)
    lin = TrainSpec(head=LinearSpec(), **shape)
    # Tens of MB per MLP config of the phase-1 shape, about 2 MB per linear one.
    assert 100 * mesh.size <= hs.auto_chunk(mlp, 32768, mesh, budget_bytes=8 * 2**30) <= 400
    assert hs.auto_chunk(lin, 32768, mesh, budget_bytes=8 * 2**30) > 4000 * mesh.size
    assert hs.auto_chunk(mlp, 32768, mesh, 2**30) < hs.auto_chunk(mlp, 32768, mesh, 2**31)
    assert hs.auto_chunk(mlp, 32768, mesh, budget_bytes=1) == mesh.size
    # augmented views: each config gathers its epoch's (n_train, D + 1) rows (heads.train)
    big = dict(shape, n_train=50_000)
    lin1 = hs.auto_chunk(TrainSpec(head=LinearSpec(), **big), 32768, mesh, 8 * 2**30)
    lin2 = hs.auto_chunk(TrainSpec(head=LinearSpec(), views=2, **big), 32768, mesh, 8 * 2**30)
    per_cfg_views = 4 * 50_000 * (768 + 1)  # ~154 MB: at most ~56 configs per 8 GiB and device
    assert lin2 <= (8 * 2**30 // per_cfg_views) * mesh.size < lin1


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


# ---------------------------------------------------------------------------------------------
# Every family and the SAM updates sweep through the same path


def test_selective_net_sweeps_over_its_loss_hyperparameters(cache, tmp_path):
    """`stage1 sweep --preset phase2 --grid selective.lam=8,32 --grid target_coverage=...`: one
    vmapped group; each row equals a lone fit of its config (the stage1 train path)."""
    cfg = override(load_preset("phase2"), SETS + ["selective.trunk_hidden=16"])
    grid = ss.parse_grid(["selective.lam=8,32", "target_coverage=0.6,0.8"], cfg)
    res = ss.run_sweep(cfg, cache, tmp_path, grid, ridge=False, progress=False)
    lb = read_json(tmp_path / "leaderboard.json", schema="leaderboard")
    assert lb["n_configs"] == 4 and len(lb["groups"]) == 1
    assert lb["groups"][0]["kind"] == "selective" and lb["columns"][3:5] == [
        "lam",
        "target_coverage",
    ]
    splits, _ = load_splits(cache, "cls")
    tr, va = splits["train"], splits["val"]
    for row in res.rows:
        c = ss.config_from_flat(cfg, row)
        assert (c.selective.lam, c.selective.target_coverage) == (
            row["lam"],
            row["target_coverage"],
        )
        one = fit(specs.train_spec(c, in_dim=D, n_train=len(tr.y)), specs.hparams(c, 1.0), tr.x,
                  tr.y, va.x, va.y)  # fmt: skip
        assert float(one.val_auroc[row["best_epoch"]]) == pytest.approx(row["val_auroc"], abs=1e-5)
    assert load_preset(str(tmp_path / "best_config.json")).head.kind == "selective"


def test_a_sam_rho_sweep_at_rho_zero_is_plain_adamw(cache, tmp_path):
    cfg = override(load_preset("phase1"), SETS + ["optim.sam=sam"])
    grid = ss.parse_grid(["sam_rho=0,0.05,0.5"], cfg)
    res = ss.run_sweep(cfg, cache, tmp_path, grid, ridge=False, progress=False)
    by_rho = {r["sam_rho"]: r for r in res.rows}
    splits, _ = load_splits(cache, "cls")
    tr, va = splits["train"], splits["val"]
    plain = override(load_preset("phase1"), SETS)
    pw = specs.resolve_pos_weight(plain, tr.y)
    one = fit(specs.train_spec(plain, in_dim=D, n_train=len(tr.y)), specs.hparams(plain, pw),
              tr.x, tr.y, va.x, va.y)  # fmt: skip
    row = by_rho[0.0]
    assert float(one.val_auroc[row["best_epoch"]]) == pytest.approx(row["val_auroc"], abs=1e-6)
    assert float(one.val_loss[row["best_epoch"]]) == pytest.approx(row["val_loss"], rel=1e-5)
    assert by_rho[0.5]["val_loss"] != pytest.approx(row["val_loss"], rel=1e-4)  # rho acts


def test_a_sweep_folder_is_refused_or_replaced_whole(cache, swept, tmp_path):
    import shutil

    from stage1.rundir import OutputExistsError

    cfg = override(load_preset("phase1"), SETS)
    grid = ss.parse_grid(["seed=0,1"], cfg)
    before = (swept / "leaderboard.json").read_bytes()
    with pytest.raises(OutputExistsError, match="--overwrite"):
        ss.run_sweep(cfg, cache, swept, grid, ridge=False, progress=False)
    assert (swept / "leaderboard.json").read_bytes() == before
    out = tmp_path / "s"
    shutil.copytree(swept, out)
    (out / "stray.txt").write_text("from an earlier sweep")
    ss.run_sweep(cfg, cache, out, grid, ridge=False, progress=False, overwrite=True)
    assert {p.name for p in out.iterdir()} == {
        "leaderboard.json",
        "leaderboard.csv",
        "best_config.json",
    }
    assert read_json(out / "leaderboard.json")["n_configs"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["s"]  # no partial folder left beside it
