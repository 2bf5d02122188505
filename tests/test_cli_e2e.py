"""The CLI's success paths, in-process (so coverage sees them): demo-data -> features -> train
(phase 1 and phase 2) -> sweep -> report on a tiny synthetic set and a tiny random-init ViT, and
every flag's mapping to the config tree (``--image-size``, ``--views``, ``--variants``,
``--alpha``, ``--phase``/``--preset``, ``--set``).

One chain per module: the images, the cache and the runs are built once and shared."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stage1.artifacts import read_json
from stage1.cache import open_cache
from stage1.cli import main
from stage1.config import SPLITS, DataConfig
from stage1.manifest import load_manifest

TINY_VIT = json.dumps({"depth": 1, "embed_dim": 32, "num_heads": 2})
N_IMAGES = 96
EPOCHS = 3


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    base = tmp_path_factory.mktemp("cli")
    data, cache = base / "data", base / "features.h5"
    assert main(["demo-data", "--out", str(data), "--n", str(N_IMAGES), "--workers", "1"]) == 0
    rc = main(
        [
            "features",
            "--data",
            str(data),
            "--out",
            str(cache),
            "--weights",
            "none",
            "--image-size",
            "32",
            "--views",
            "validator",
            "--variants",
            "cls,patch_mean",
            "--batch-size",
            "16",
            "--device",
            "cpu",
            "--set",
            f"backbone.model_kwargs={TINY_VIT}",
            "--set",
            "backbone.num_workers=0",
            "--set",
            "data.fractions=0.4,0.2,0.2,0.2",
        ]
    )
    assert rc == 0
    # phase 1 by number, a non-default alpha and method through --alpha / --set
    common = ["--cache", str(cache), "--set", f"optim.epochs={EPOCHS}", "--compile-cache", "none"]
    p1 = base / "p1"
    rc = main(
        ["train", "--phase", "1", "--out", str(p1), "--alpha", "0.4", *common]
        + ["--set", "risk.method=crc", "--set", "head.feature=patch_mean"]
        + ["--set", "head.hidden=16"]
    )
    assert rc == 0
    p2 = base / "p2"
    rc = main(
        ["train", "--preset", "phase2", "--out", str(p2), *common]
        + ["--set", "selective.trunk_hidden=16", "--set", "head.feature=patch_mean"]
        + ["--allow-uncertified"]  # a tiny calib split certifies no SCRC-I policy
    )
    assert rc == 0
    return base, data, cache, p1, p2


def test_demo_data_writes_n_images(chain):
    _, data, *_ = chain
    rows = (data / "manifest.csv").read_text().strip().splitlines()
    assert len(rows) == N_IMAGES + 1  # header + one row per image
    n = sum(1 for _ in data.rglob("*.jpg")) + sum(1 for _ in data.rglob("*.png"))
    assert n == N_IMAGES


def test_features_flags_reach_the_cache(chain):
    _, data, cache, *_ = chain
    c = open_cache(cache)
    md = c.metadata
    assert md["image_size"] == 32  # --image-size
    assert md["views"] == "validator"  # --views
    assert sorted(c.variants) == ["cls", "patch_mean"]  # --variants
    assert md["random_init"] is True  # --weights none
    assert c.features("cls").shape[1] == 32  # --set backbone.model_kwargs (embed_dim)
    # --views validator: 4 extra views of every test and calib image (the policy is certified
    # on one validator view per calib image), none of any train or val image
    viewed = c.mask("test", view=None) | c.mask("calib", view=None)
    assert set(np.unique(c.view[viewed]).tolist()) == {0, 1, 2, 3, 4}
    assert not np.any(c.view[~viewed] > 0)
    # --set data.fractions: each image's split is the one the configured fractions give
    n0 = c.view == 0
    cached = dict(zip(c.ids[n0].tolist(), (SPLITS[k] for k in c.split[n0]), strict=True))

    def splits_with(fractions):
        samples = load_manifest(data, DataConfig(fractions=fractions))
        return {smp.id: smp.split for smp in samples}

    assert cached == splits_with((0.4, 0.2, 0.2, 0.2))
    assert cached != splits_with(DataConfig().fractions)  # the default would differ


def test_train_flags_reach_the_run_config(chain):
    _, _, _, p1, p2 = chain
    c1 = read_json(p1 / "config.json", schema="config")
    assert c1["preset"] == "phase1" and c1["head"]["kind"] == "mlp"  # --phase 1
    assert c1["risk"]["alpha"] == 0.4  # --alpha
    assert c1["risk"]["method"] == "crc" and c1["head"]["hidden"] == 16  # --set
    assert c1["optim"]["epochs"] == EPOCHS
    th = read_json(p1 / "thresholds.json", schema="thresholds")
    assert th["exit_negative"]["alpha"] == 0.4 and th["exit_negative"]["method"] == "crc"
    m1 = read_json(p1 / "metrics.json", schema="metrics")
    assert m1["family"] == "mlp" and m1["policy"] == "fnr_threshold"
    assert len(m1["training"]["val_auroc_curve"]) == EPOCHS
    assert "validator_mix" in m1["challenge"]  # the cache's validator views were scored

    c2 = read_json(p2 / "config.json", schema="config")
    assert c2["preset"] == "phase2" and c2["head"]["kind"] == "selective"  # --preset phase2
    assert c2["selective"]["trunk_hidden"] == 16
    assert c2["risk"]["alpha"] == 0.02  # phase 2's own alpha: no --alpha given
    assert (p2 / "scrcparams.json").is_file() and not (p2 / "thresholds.json").exists()
    assert read_json(p2 / "metrics.json")["family"] == "selective"


def test_phase_numbers_select_their_preset():
    """--phase N and --preset phaseN load the same preset (a swapped table fails here)."""
    from stage1.cli import build_parser
    from stage1.cli_config import config_from_args

    parser = build_parser()
    for n, want in (("1", "mlp"), ("2", "selective"), ("4", "selective")):
        by_phase = config_from_args(
            parser.parse_args(["train", "--cache", "c", "--out", "o", "--phase", n])
        )
        by_name = config_from_args(
            parser.parse_args(["train", "--cache", "c", "--out", "o", "--preset", f"phase{n}"])
        )
        assert by_phase == by_name and by_phase.preset == f"phase{n}"
        assert by_phase.head.kind == want
    assert by_phase.optim.sam == "fsam"  # phase 4 = phase 2 + F-SAM


def test_preset_file_and_sets_compose(chain, tmp_path):
    """--preset FILE.json (a sweep's best_config) then --set on top, in order."""
    from stage1.cli import build_parser
    from stage1.cli_config import config_from_args

    f = tmp_path / "best.json"
    f.write_text(json.dumps({"preset": "phase1", "optim": {"lr": 0.0123}, "head": {"hidden": 8}}))
    args = build_parser().parse_args(
        ["train", "--cache", "c", "--out", "o", "--preset", str(f)]
        + ["--set", "head.hidden=12", "--set", "optim.seed=3", "--set", "head.hidden=24"]
    )
    cfg = config_from_args(args)
    assert cfg.optim.lr == 0.0123 and cfg.head.hidden == 24 and cfg.optim.seed == 3


def test_sweep_and_train_the_winner(chain):
    base, _, cache, *_ = chain
    out = base / "sweep"
    rc = main(
        ["sweep", "--cache", str(cache), "--out", str(out), "--phase", "1"]
        + ["--grid", "lr=1e-3,1e-2", "--grid", "seed=0,1", "--no-ridge", "--no-progress"]
        + ["--set", f"optim.epochs={EPOCHS}", "--set", "head.hidden=16"]
        + ["--set", "head.feature=patch_mean", "--compile-cache", "none"]
    )
    assert rc == 0
    board = read_json(out / "leaderboard.json")
    rows = board["rows"] if isinstance(board, dict) else board
    assert len(rows) == 4
    assert {(r["lr"], r["seed"]) for r in rows} == {(a, b) for a in (1e-3, 1e-2) for b in (0, 1)}
    best = read_json(out / "best_config.json")
    assert best["optim"]["epochs"] == EPOCHS and best["head"]["hidden"] == 16
    run = base / "winner"
    rc = main(
        ["train", "--cache", str(cache), "--preset", str(out / "best_config.json")]
        + [
            "--out",
            str(run),
            "--alpha",
            "0.4",
            "--set",
            "risk.method=crc",
            "--compile-cache",
            "none",
        ]
    )
    assert rc == 0
    cfg = read_json(run / "config.json")
    assert cfg["optim"]["lr"] == rows[0]["lr"] and cfg["optim"]["seed"] == rows[0]["seed"]


def test_report_on_both_runs(chain, capsys):
    _, _, _, p1, p2 = chain
    for run in (p1, p2):
        assert main(["report", "--run", str(run), "--bootstrap", "100", "--seed", "3"]) == 0
        assert (run / "report" / "report.html").is_file()
        m = read_json(run / "metrics.json", schema="metrics")
        e = m["metrics"]["fnr"]
        assert e["confidence"] == 0.95 and "100 resamples" in e["method"]
    assert "report:" in capsys.readouterr().out
