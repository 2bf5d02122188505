"""What a new user meets first (issue 17, items 6-7): the demo certifies a non-zero exit rate and
says under which guarantee; a constant CLS feature is called out; the make targets follow the
demo (parsed from ``make -n``, which prints the recipes without running them)."""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from calibrate.policies import fit_policy
from calibrate.thresholds import min_calibration_size
from stage1.cache import synthetic_metadata, write_cache
from stage1.config import SPLITS, Config, DataConfig, HeadConfig, OptimConfig, RiskConfig
from stage1.run.data import constant_feature_warning

ROOT = Path(__file__).resolve().parents[1]
needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")


def make(cwd: Path, *args: str) -> str:
    """``make -n`` output of the repository's Makefile, run in ``cwd`` (its data/, runs/)."""
    venv = Path(sys.executable).parent.parent  # setup is never remade (-o): recipes only
    cmd = ["make", "-s", "-f", str(ROOT / "Makefile"), f"VENV={venv}",
           "-o", f"{venv}/.installed", *args]  # fmt: skip
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def stage1_lines(out: str, sub: str) -> list[list[str]]:
    """argv (after ``-m stage1``) of every ``stage1 <sub>`` command in make -n output."""
    lines = []
    for line in out.splitlines():
        words = shlex.split(line)
        if "stage1" in words and words[words.index("stage1") + 1 : words.index("stage1") + 2] == [
            sub
        ]:
            lines.append(words[words.index("stage1") + 1 :])
    return lines


def opt(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def sets(argv: list[str]) -> dict[str, str]:
    return dict(argv[i + 1].split("=", 1) for i, a in enumerate(argv) if a == "--set")


def run_records(out: str, cwd: Path) -> None:
    """Execute the recipe lines that record the defaults (mkdir + printf > last.mk)."""
    for line in out.splitlines():
        if line.startswith(("mkdir -p", "printf ")):
            subprocess.run(line, shell=True, cwd=cwd, check=True)


# ---------------------------------------------------------------------------------------------
# item 7: make targets follow the demo


@needs_make
def test_train_sweep_report_follow_the_demo(tmp_path):
    demo = make(tmp_path, "-n", "demo")
    (feat,) = stage1_lines(demo, "features")
    (train,) = stage1_lines(demo, "train")
    cache = opt(feat, "--out")
    assert opt(train, "--cache") == cache and "--overwrite" in train  # a rerun is the point
    demo_sets = sets(train)
    assert demo_sets["head.feature"] == "patch_mean"
    run_records(demo, tmp_path)

    (p2,) = stage1_lines(make(tmp_path, "-n", "train", "PHASE=2"), "train")
    assert opt(p2, "--cache") == cache and sets(p2) == demo_sets and opt(p2, "--phase") == "2"
    assert opt(p2, "--out") == "runs/phase2" and "--overwrite" in p2
    (sw,) = stage1_lines(make(tmp_path, "-n", "sweep"), "sweep")
    assert opt(sw, "--cache") == cache and sets(sw) == demo_sets and "--overwrite" in sw
    (rep,) = stage1_lines(make(tmp_path, "-n", "report"), "report")
    assert opt(rep, "--run") == "runs/demo"  # the last run trained
    out = make(tmp_path, "-n", "train", "PHASE=2")
    run_records(out, tmp_path)  # as if `make train PHASE=2` ran
    (rep,) = stage1_lines(make(tmp_path, "-n", "report"), "report")
    assert opt(rep, "--run") == "runs/phase2"
    (rep,) = stage1_lines(make(tmp_path, "-n", "report", "RUN=runs/x"), "report")
    assert opt(rep, "--run") == "runs/x"

    # the demo's settings belong to the demo cache only
    (other,) = stage1_lines(make(tmp_path, "-n", "train", "CACHE=mine.h5"), "train")
    assert opt(other, "--cache") == "mine.h5" and sets(other) == {}
    # make features writes its own cache, never the demo's, and then becomes the default
    out = make(tmp_path, "-n", "features", "DATA=/images")
    (feat2,) = stage1_lines(out, "features")
    assert opt(feat2, "--out") == "data/features.h5"
    run_records(out, tmp_path)
    (t,) = stage1_lines(make(tmp_path, "-n", "train"), "train")
    assert opt(t, "--cache") == "data/features.h5" and sets(t) == {}


@needs_make
def test_help_lists_every_target_with_its_variables(tmp_path):
    text = (ROOT / "Makefile").read_text()
    targets = re.search(r"^\.PHONY:(.*)$", text, re.M).group(1).split()
    variables = re.findall(r"^([A-Z_]+)\s*\?=", text, re.M)
    assert {"CACHE", "RUN", "PHASE", "SET", "GRID", "DATA", "WEIGHTS"} <= set(variables)
    out = make(tmp_path, "help")
    for t in targets:
        assert re.search(rf"^make {t}\b", out, re.M), f"make help misses target {t}"
    for v in variables:
        assert f"{v}=" in out, f"make help misses variable {v}"


# ---------------------------------------------------------------------------------------------
# item 6: the demo certifies exits, with the guarantee next to the exit rate


@needs_make
def test_demo_alpha_fits_its_calibration_split(tmp_path):
    """The demo's alpha must be certifiable with the demo's calib split: PAC needs
    ``min_calibration_size`` calib positives before the first exit; the demo's calib split
    holds about demo_images * calib fraction * prevalence (0.5) of them. alpha = 0.02 needs 149
    of ~150 (exit rate 0), so require at most half."""
    (train,) = stage1_lines(make(tmp_path, "-n", "demo"), "train")
    risk = dataclasses.replace(RiskConfig(), **{
        k.split(".")[1]: float(v) for k, v in sets(train).items() if k.startswith("risk.")
    })  # fmt: skip
    d = DataConfig()
    expected_pos = d.demo_images * d.fractions[SPLITS.index("calib")] * 0.5
    need = min_calibration_size(risk.alpha, risk.method, risk.delta)
    assert need <= expected_pos / 2, (risk.alpha, need, expected_pos)


def _scores(rng, n, sep=2.5):
    y = (rng.random(n) < 0.5).astype(np.int32)
    p = 1 / (1 + np.exp(-(rng.normal(size=n) + sep * (2 * y - 1))))
    return p, y


@pytest.mark.parametrize(
    ("method", "want"), [("pac", "P(FNR <= 0.1) >= 0.95"), ("crc", "E[FNR] <= 0.1")]
)
def test_phase1_summary_prints_the_guarantee_next_to_the_exit_rate(method, want):
    rng = np.random.default_rng(0)
    p, y = _scores(rng, 600)
    risk = RiskConfig(alpha=0.1, method=method, delta=0.05)
    pol = fit_policy("fnr_threshold", {"p": p}, y, risk)
    m = pol.metrics({"test": {"p": p}}, {"test": y})
    rows = pol.summary(m)
    i = [k for k, _ in rows].index("test exit rate (p < t)")
    assert float(rows[i][1]) > 0 and rows[i + 1][1] == want


def test_phase2_summary_prints_the_certificate_or_none():
    rng = np.random.default_rng(1)
    p, y = _scores(rng, 2000, sep=3.0)
    gate = np.abs(p - 0.5) * 2
    risk = RiskConfig(alpha=0.1, delta=0.05, target_coverage=0.5)
    pol = fit_policy("selective", {"p": p, "gate_calibrated": gate}, y, risk)
    rows = dict(pol.summary(pol.metrics(
        {s: {"p": p, "gate_calibrated": gate} for s in ("test", "calib")},
        {"test": y, "calib": y},
    )))  # fmt: skip
    assert pol.shipped != "defer_all"
    assert rows["  certified on calib"] == "P(FNR <= 0.1, FPR <= 0.05, coverage >= 0.5) >= 0.95"
    fnr = fit_policy("selective", {"p": p, "gate_calibrated": gate}, y,
                     dataclasses.replace(risk, scrc_risk="fnr"))  # fmt: skip
    assert fnr._guarantee() == "P(FNR <= 0.1, coverage >= 0.5) >= 0.95"
    small = fit_policy("selective", {"p": p[:40], "gate_calibrated": gate[:40]}, y[:40],
                       dataclasses.replace(risk, alpha=0.01))  # fmt: skip
    assert small.shipped == "defer_all" and small._guarantee() == "none (defers every image)"


# ---------------------------------------------------------------------------------------------
# item 6: a constant CLS feature is called out, naming patch_mean


def test_constant_feature_warning_names_patch_mean():
    rng = np.random.default_rng(0)
    token = rng.normal(size=64)
    cls = token + 4e-5 * rng.normal(size=(300, 64))  # a random-init DINOv3 CLS: ~5e-5 spread
    w = constant_feature_warning(cls, "cls")
    assert w is not None and "head.feature=cls" in w and "head.feature=patch_mean" in w
    assert constant_feature_warning(cls + 0.05 * rng.normal(size=cls.shape), "cls") is None
    assert constant_feature_warning(rng.normal(size=(300, 64)), "patch_mean") is None


def test_training_on_a_constant_cls_warns(tmp_path, capsys):
    from stage1.run import run_training

    rng = np.random.default_rng(0)
    n = 400
    y = (rng.random(n) < 0.5).astype(np.int8)
    cls = np.tile(rng.normal(size=16), (n, 1)) + 1e-6 * rng.normal(size=(n, 16))
    patch = rng.normal(size=(n, 16)) + y[:, None]
    write_cache(
        tmp_path / "c.h5",
        {"cls": cls.astype(np.float32), "patch_mean": patch.astype(np.float32)},
        ids=[f"i{i}" for i in range(n)],
        labels=y,
        split=[SPLITS[i % 4] for i in range(n)],
        metadata=synthetic_metadata(),
    )
    cfg = Config(
        head=HeadConfig(kind="linear", feature="cls"),
        optim=OptimConfig(epochs=2, batch_size=64, ema_decay=0.0),
        risk=RiskConfig(method="empirical", alpha=0.1),
    )
    s = run_training(cfg, tmp_path / "c.h5", tmp_path / "run")
    assert any("patch_mean" in n for n in s.notes)
    assert "warning: head.feature=cls is (nearly) constant" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# the whole demo as `make demo` runs it (minutes on 2 cores)


@pytest.mark.slow
@needs_make
def test_demo_ends_with_a_certified_exit_rate_above_zero(tmp_path):
    demo = make(tmp_path, "-n", "demo")
    argv = stage1_lines(demo, "features") + stage1_lines(demo, "train")
    outs = []
    for a in argv:
        a = [x for x in a if x != "--overwrite"]  # a fresh folder: nothing to replace
        r = subprocess.run([sys.executable, "-m", "stage1", *a], cwd=tmp_path,
                           capture_output=True, text=True, timeout=1800)  # fmt: skip
        assert r.returncode == 0, r.stderr
        outs.append(r.stdout)
    m = json.loads((tmp_path / "runs/demo/metrics.json").read_text())
    assert m["metrics"]["exit_rate"] > 0
    assert re.search(r"test exit rate \(p < t\)\s+0\.\d+\n\s+certified on calib\s+P\(FNR", outs[1])
