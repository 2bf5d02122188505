"""Run folders are whole, carry the cache's provenance, and refuse what cannot be certified.

Issue 17, items 1, 2, 3 (fast refusal), 5 and the umask of item 10: a second run into the same
``--out`` is refused or, with ``--overwrite``, leaves only its own files; a run killed mid-way
leaves nothing at ``--out``; ``config.json`` / ``metrics.json`` / the report state the backbone,
weights and image size of the cache; a calib split too small for the guarantee is refused with
the numbers, or ships ``defer_all`` with ``--allow-uncertified``.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from stage1.artifacts import read_json
from stage1.cache import synthetic_metadata, write_cache
from stage1.config import Config, HeadConfig, OptimConfig
from stage1.rundir import OutputExistsError, check_out, staged

ROOT = Path(__file__).resolve().parents[1]
SHA = "ab" * 32
RUN_FILES = {"config.json", "metrics.json", "thresholds.json", "head.safetensors"}
RUN_FILES |= {"predictions.npz"}


def _cache(path, *, n_calib=60, n_test=50, test_pos=None, **meta):
    """Separable toy features (d = 6); 40 % positives unless ``test_pos`` fixes the test ones."""
    rng = np.random.default_rng(5)
    sizes = {"train": 200, "val": 50, "calib": n_calib, "test": n_test}
    split = np.concatenate([[s] * n for s, n in sizes.items()])
    y = (rng.random(len(split)) < 0.4).astype(np.int64)
    if test_pos is not None:
        t = np.flatnonzero(split == "test")
        y[t] = 0
        y[t[:test_pos]] = 1
    x = rng.normal(size=(len(y), 6)) + np.outer(2 * y - 1, rng.normal(size=6))
    write_cache(
        path,
        {"cls": x.astype(np.float32)},
        ids=[f"img{i:04d}" for i in range(len(y))],
        labels=y,
        split=list(split),
        metadata=synthetic_metadata(**meta),
    )
    return path


def _cfg(**risk):
    cfg = Config(
        head=HeadConfig(kind="linear", feature="cls"),
        optim=OptimConfig(lr=0.05, epochs=5, batch_size=64, ema_decay=0.0),
    )
    r = {"method": "crc", "alpha": 0.1} | risk
    return dataclasses.replace(cfg, risk=dataclasses.replace(cfg.risk, **r)).validate()


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return _cache(tmp_path_factory.mktemp("rundir") / "c.h5")


def _siblings(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}"))


# ---------------------------------------------------------------------------------------------
# item 1: whole folders


def test_second_run_is_refused_and_overwrite_leaves_only_its_own_files(cache, tmp_path):
    from stage1.run import run_training

    out = tmp_path / "run"
    run_training(_cfg(), cache, out)
    assert {p.name for p in out.iterdir()} == RUN_FILES
    (out / "scrcparams.json").write_text("{}")  # what an earlier phase-2 run would leave
    before = (out / "metrics.json").read_bytes()
    with pytest.raises(OutputExistsError, match=r"already holds files .*--overwrite"):
        run_training(_cfg(alpha=0.2), cache, out)
    assert (out / "metrics.json").read_bytes() == before  # untouched
    s = run_training(_cfg(alpha=0.2), cache, out, overwrite=True)
    assert {p.name for p in out.iterdir()} == RUN_FILES  # the stray file went with the old run
    assert read_json(out / "thresholds.json")["exit_negative"]["alpha"] == 0.2
    assert s.out == out and _siblings(out) == []


def test_an_exception_while_writing_leaves_nothing_at_out(cache, tmp_path, monkeypatch):
    from stage1.run import driver, run_training

    def boom(path, *a, **k):  # after config/metrics/thresholds/head are written
        assert {p.name for p in Path(path).parent.iterdir()} >= {"metrics.json"}
        raise RuntimeError("disk full")

    monkeypatch.setattr(driver, "save_predictions", boom)
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="disk full"):
        run_training(_cfg(), cache, out)
    assert not out.exists() and _siblings(out) == []
    # an empty folder the user made is fine, and stays a plain empty folder after a failure
    out.mkdir()
    with pytest.raises(RuntimeError):
        run_training(_cfg(), cache, out)
    assert out.is_dir() and not any(out.iterdir())


_SLOW_WRITER = textwrap.dedent(
    """
    import sys, time
    from stage1.run import driver
    real = driver.save_predictions
    def slow(path, *a, **k):  # the run is half written when this sleeps
        real(path, *a, **k)
        print("WRITING", flush=True)
        time.sleep(60)
    driver.save_predictions = slow
    from stage1.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_run_killed_while_writing_leaves_no_folder_at_out(cache, tmp_path, sig):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    args = ["train", "--cache", str(cache), "--out", str(out), "--set", "optim.epochs=5"]
    args += ["--set", "head.kind=linear", "--set", "risk.method=crc", "--set", "risk.alpha=0.1"]
    args += ["--compile-cache", "none"]
    proc = subprocess.Popen(
        [sys.executable, "-c", _SLOW_WRITER, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for line in proc.stdout:
            if line.startswith("WRITING"):
                break
        (partial,) = _siblings(out)  # every artifact is written, beside --out
        assert {p.name for p in (tmp_path / partial).iterdir()} == RUN_FILES
        assert not out.exists()
        proc.send_signal(sig)
        rc = proc.wait(timeout=60)
    finally:
        proc.kill()
    assert not out.exists()
    if sig == signal.SIGTERM:  # unwinds: the partial folder is removed too
        assert rc == 143 and _siblings(out) == []
        assert "terminated" in proc.stderr.read()
    else:  # only a hidden folder can remain; the next run into the target removes it
        assert rc == -signal.SIGKILL and _siblings(out) == [partial]
        from stage1.run import run_training

        run_training(_cfg(), cache, out)
        assert _siblings(out) == [] and {p.name for p in out.iterdir()} == RUN_FILES


def test_check_out_refuses_what_it_must(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputExistsError, match="not a folder"):
        check_out(tmp_path / "file")
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "notes.txt").write_text("precious")
    with pytest.raises(OutputExistsError, match="no stage1 run or sweep"):
        check_out(tmp_path / "home", overwrite=True)  # --overwrite never deletes a non-run
    (tmp_path / "empty").mkdir()
    assert check_out(tmp_path / "empty") == tmp_path / "empty"
    assert check_out(tmp_path / "new") == tmp_path / "new"
    assert not (tmp_path / "new").exists()  # a pure check


def test_run_folders_and_files_follow_the_umask(cache, tmp_path):
    from stage1.run import run_training

    for umask in (0o022, 0o027):
        old = os.umask(umask)
        try:
            out = tmp_path / f"run{umask:o}"
            run_training(_cfg(), cache, out)
        finally:
            os.umask(old)
        assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask
        for f in out.iterdir():
            assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~umask, f.name


def test_staged_replaces_an_earlier_run_whole(tmp_path):
    out = tmp_path / "r"
    with staged(out) as d:
        (d / "config.json").write_text("1")
        (d / "old.txt").write_text("1")
    with staged(out, overwrite=True) as d:
        assert not (d / "old.txt").exists()
        (d / "config.json").write_text("2")
    assert [p.name for p in out.iterdir()] == ["config.json"]
    assert (out / "config.json").read_text() == "2" and _siblings(out) == []


# ---------------------------------------------------------------------------------------------
# item 3 (and 1): refusals before any work, from the command line


def _cli(*args, cwd):
    t = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-m", "stage1", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=60,
    )
    return r, time.perf_counter() - t


@pytest.mark.parametrize("cmd", ["train", "sweep"])
def test_a_bad_value_fails_in_under_a_second_and_creates_nothing(tmp_path, cmd):
    r, wall = _cli(cmd, "--cache", "c.h5", "--out", "runs/x", "--set", "optim.lr=-1", cwd=tmp_path)
    assert r.returncode == 2 and wall < 1.0, (r.returncode, wall, r.stderr)
    assert r.stderr.strip() == f"stage1 {cmd}: error: optim.lr must be in (0, inf), got -1.0"
    assert list(tmp_path.iterdir()) == []  # no folder, no file
    if cmd == "sweep":
        r, wall = _cli(cmd, "--cache", "c.h5", "--grid", "lr=1e-3,-1", cwd=tmp_path)
        assert r.returncode == 2 and wall < 1.0 and "optim.lr must be in (0, inf)" in r.stderr
        assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("cmd", ["train", "sweep"])
def test_an_existing_out_is_refused_before_the_cache_is_opened(tmp_path, cmd):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "metrics.json").write_text("{}")
    r, wall = _cli(cmd, "--cache", "missing.h5", "--out", "r", cwd=tmp_path)
    assert r.returncode == 2 and wall < 1.0
    assert "already holds files" in r.stderr and "--overwrite" in r.stderr
    assert "missing.h5" not in r.stderr  # refused before the cache was looked at
    assert (tmp_path / "r" / "metrics.json").read_text() == "{}"


# ---------------------------------------------------------------------------------------------
# item 2: provenance from the cache


def test_provenance_comes_from_the_cache_and_the_cache_wins(tmp_path, capsys):
    from stage1.report import build_report
    from stage1.run import print_summary, run_training

    rand = _cache(
        tmp_path / "rand.h5",
        backbone="vit_small_patch16_dinov3",
        weights_sha256="random-init",
        random_init=True,
        image_size=64,
    )
    s = run_training(_cfg(), rand, tmp_path / "a")  # the config says 224 px (default)
    cfg = read_json(tmp_path / "a" / "config.json", schema="config")
    assert cfg["backbone"]["image_size"] == 64 and cfg["backbone"]["weights"] == "none"
    assert cfg["backbone"]["weights_sha256"] == "random-init"
    prov = read_json(tmp_path / "a" / "metrics.json", schema="metrics")["provenance"]
    assert prov["weights"] == "random init" and prov["random_init"] is True
    assert prov["image_size"] == 64 and prov["backbone"] == "vit_small_patch16_dinov3"
    assert prov["config_disagreed"] == [{"key": "backbone.image_size", "config": 224, "cache": 64}]
    print_summary(s)
    assert "the cache's backbone wins" in capsys.readouterr().out
    html = build_report(tmp_path / "a", n_bootstrap=100)["html"].read_text()
    assert "weights random init · 64 px" in html
    assert "Backbone facts come from the feature cache, which wins" in html

    weights = tmp_path / "w" / "dinov3_vits16.pth"
    real = _cache(
        tmp_path / "real.h5",
        backbone="vit_base_patch16_dinov3",
        weights_sha256=SHA,
        weights_path=str(weights),
        random_init=False,
        image_size=224,
    )
    c = dataclasses.replace(_cfg(), backbone=Config().backbone)
    c = dataclasses.replace(c, backbone=dataclasses.replace(c.backbone, weights=str(weights)))
    run_training(c, real, tmp_path / "b")
    bb = read_json(tmp_path / "b" / "config.json")["backbone"]
    assert (bb["name"], bb["weights"], bb["weights_sha256"]) == (
        "vit_base_patch16_dinov3",
        str(weights),
        SHA,
    )
    prov = read_json(tmp_path / "b" / "metrics.json")["provenance"]
    assert prov["weights"] == "dinov3_vits16.pth" and prov["random_init"] is False
    # weights and size agree; only the architecture differs from the config
    assert [d["key"] for d in prov["config_disagreed"]] == ["backbone.name"]
    from stage1.report.common import run_subtitle  # the report's first line (built above)

    b = tmp_path / "b"
    sub = run_subtitle(read_json(b / "config.json"), read_json(b / "metrics.json"), None)
    assert f"weights dinov3_vits16.pth (sha256 {SHA[:12]}…) · 224 px" in sub


# ---------------------------------------------------------------------------------------------
# item 5: split sizes against the guarantee, small-sample warnings


def test_a_calib_split_too_small_for_the_guarantee_is_refused_with_the_numbers(cache, tmp_path):
    from calibrate.thresholds import min_calibration_size
    from stage1.run import run_training

    need = min_calibration_size(0.02, "pac", 0.05)  # 149 positives (METHODS.md §3.3)
    n_pos = int(read_n_calib_positives(cache))
    t = time.perf_counter()
    with pytest.raises(ValueError) as e:
        run_training(_cfg(alpha=0.02, method="pac", delta=0.05), cache, tmp_path / "r")
    assert time.perf_counter() - t < 5  # refused before training
    msg = str(e.value)
    assert f"the calib split has {n_pos} positives (needs >= {need})" in msg
    assert "FNR <= 0.02 (pac, delta=0.05)" in msg and "--allow-uncertified" in msg
    assert not (tmp_path / "r").exists()


def read_n_calib_positives(cache_path) -> int:
    from stage1.cache import open_cache

    c = open_cache(cache_path)
    return int(c.labels[c.mask("calib")].sum())


def test_allow_uncertified_trains_and_ships_defer_all_loudly(cache, tmp_path, capsys):
    from stage1.report import build_report
    from stage1.run import print_summary, run_training

    cfg = _cfg(alpha=0.02, method="pac", delta=0.05)
    s = run_training(cfg, cache, tmp_path / "r", allow_uncertified=True)
    out = capsys.readouterr().out
    assert "warning: UNCERTIFIED: the calib split has" in out  # before training starts
    assert out.index("warning: UNCERTIFIED") < out.index("training linear head")
    m = read_json(tmp_path / "r" / "metrics.json", schema="metrics")
    th = read_json(tmp_path / "r" / "thresholds.json", schema="thresholds")
    assert m["policy"] == "defer_all" and not s.certified
    assert m["metrics"]["exit_rate"] == 0 and m["metrics"]["fnr"] == 0
    assert th["exit_negative"]["guarantee"].startswith("none: not certified")
    assert any(w.startswith("UNCERTIFIED") for w in m["warnings"])
    with np.load(tmp_path / "r" / "predictions.npz") as z:
        assert (z["test_decision"] == -1).all() and (z["calib_decision"] == -1).all()
    print_summary(s)
    assert "WARNING: UNCERTIFIED" in capsys.readouterr().out
    html = build_report(tmp_path / "r", n_bootstrap=100)["html"].read_text()
    assert "Warnings" in html and "UNCERTIFIED" in html


def test_metrics_from_fewer_than_ten_of_a_class_carry_a_warning(tmp_path):
    from stage1.report import build_report
    from stage1.run import run_training

    few = _cache(tmp_path / "few.h5", test_pos=3)
    run_training(_cfg(), few, tmp_path / "r")
    m = read_json(tmp_path / "r" / "metrics.json", schema="metrics")
    (w,) = m["warnings"]
    assert w.startswith("the test metrics") and "3 positives and 47 negatives (< 10" in w
    html = build_report(tmp_path / "r", n_bootstrap=100)["html"].read_text()
    assert "3 positives and 47 negatives" in html
    # 10 of each class is enough: no warning
    ok = _cache(tmp_path / "ok.h5", test_pos=10, n_test=20)
    run_training(_cfg(), ok, tmp_path / "r2")
    assert read_json(tmp_path / "r2" / "metrics.json")["warnings"] == []
