"""The CLI's contract: complete help, one-line errors with exit code 2, no tracebacks."""

import subprocess
import sys

import pytest

from stage1.cli import build_parser, main

SUBCOMMANDS = ["demo-data", "features", "train", "report", "sweep"]


def run(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "stage1", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )


def test_top_level_help_lists_every_subcommand():
    r = run("--help")
    assert r.returncode == 0
    for cmd in SUBCOMMANDS:
        assert cmd in r.stdout


@pytest.mark.parametrize("cmd", SUBCOMMANDS)
def test_subcommand_help_is_complete(cmd):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[cmd]
    assert sub.description, f"{cmd} has no description"
    for action in sub._actions:
        if action.dest != "help":
            assert action.help, f"{cmd} {action.option_strings} has no help text"
    r = run(cmd, "--help")
    assert r.returncode == 0 and "usage: stage1 " + cmd in r.stdout


def _one_line_error(r):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    err = [line for line in r.stderr.strip().splitlines() if line.strip()]
    assert len(err) == 1, r.stderr
    assert "Traceback" not in r.stderr
    return err[0]


def test_unknown_subcommand_and_missing_args():
    assert "invalid choice" in _one_line_error(run("fly"))
    assert "required" in _one_line_error(run("train"))


def test_missing_data_dir(tmp_path):
    line = _one_line_error(
        run("features", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "c.h5"))
    )
    assert "not found" in line


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    line = _one_line_error(
        run("features", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "c.h5"))
    )
    assert "no images" in line


@pytest.mark.parametrize("alpha", ["0", "1", "-0.1", "1.5"])
def test_alpha_outside_unit_interval(tmp_path, alpha):
    line = _one_line_error(
        run(
            "train",
            "--cache",
            str(tmp_path / "c.h5"),
            "--out",
            str(tmp_path / "r"),
            "--alpha",
            alpha,
        )
    )
    assert "alpha" in line


def test_unknown_preset(tmp_path):
    line = _one_line_error(
        run(
            "train",
            "--cache",
            str(tmp_path / "c.h5"),
            "--out",
            str(tmp_path / "r"),
            "--preset",
            "phase42",
        )
    )
    assert "unknown preset" in line


def test_unreadable_weights_file(tmp_path):
    img = tmp_path / "data"
    for cls in ("roadwork", "none"):
        (img / cls).mkdir(parents=True)
    from PIL import Image

    for i in range(2):
        Image.new("RGB", (32, 32), (i * 100, 50, 50)).save(img / "roadwork" / f"{i}.png")
        Image.new("RGB", (32, 32), (50, i * 100, 50)).save(img / "none" / f"{i}.png")
    w = tmp_path / "weights.pth"
    w.write_bytes(b"definitely not a checkpoint")
    line = _one_line_error(
        run("features", "--data", str(img), "--out", str(tmp_path / "c.h5"), "--weights", str(w))
    )
    assert "weights" in line
    line = _one_line_error(
        run(
            "features",
            "--data",
            str(img),
            "--out",
            str(tmp_path / "c.h5"),
            "--weights",
            str(tmp_path / "missing.pth"),
        )
    )
    assert "weights" in line


def test_missing_cache_in_process(tmp_path, capsys):
    assert main(["train", "--cache", str(tmp_path / "none.h5"), "--out", str(tmp_path)]) == 2
    assert "not found" in capsys.readouterr().err


def test_bad_override(tmp_path):
    line = _one_line_error(
        run("train", "--cache", "x.h5", "--out", str(tmp_path), "--set", "optim.epochs=many")
    )
    assert "optim.epochs" in line


def test_xla_default_flags_respect_the_user():
    from stage1 import xla_flags

    env = {}
    flags = xla_flags.apply_defaults(env)
    assert "--xla_gpu_enable_triton_gemm=false" in flags.split()
    assert "--xla_gpu_autotune_level=0" in flags.split()
    assert env["XLA_FLAGS"] == flags
    assert env["JAX_THREEFRY_GPU_KERNEL_LOWERING"] == "1"
    # A flag the user set keeps its value; the other default is still added, once.
    env = {
        "XLA_FLAGS": "--xla_gpu_autotune_level=4 --xla_dump_to=/tmp/d",
        "JAX_THREEFRY_GPU_KERNEL_LOWERING": "0",
    }
    flags = xla_flags.apply_defaults(env).split()
    assert "--xla_gpu_autotune_level=4" in flags and "--xla_gpu_autotune_level=0" not in flags
    assert flags.count("--xla_gpu_enable_triton_gemm=false") == 1
    assert env["JAX_THREEFRY_GPU_KERNEL_LOWERING"] == "0"
    assert xla_flags.apply_defaults(env).split() == flags  # idempotent
    env = {"STAGE1_XLA_DEFAULTS": "0"}
    assert xla_flags.apply_defaults(env) == "" and env == {"STAGE1_XLA_DEFAULTS": "0"}


def test_features_exits_3_when_most_images_are_unreadable_and_retries_them(tmp_path):
    """99 % unreadable images: the skips are counted and explained on stdout (no object reprs),
    stderr has one line and the exit code is 3; after the user fixes the files a rerun retries
    them and ends with 0."""
    import io
    import json

    from PIL import Image

    Image.new("RGB", (40, 40), (200, 30, 30)).save(tmp_path / "good.png")
    buf = io.BytesIO()
    Image.effect_noise((64, 64), 50).convert("RGB").save(buf, "PNG")
    rows = ["path,label", "good.png,1"]
    for i in range(99):  # odd: not an image at all; even: a PNG cut short
        data = b"garbage bytes, not an image" if i % 2 else buf.getvalue()[:400]
        (tmp_path / f"x{i}.png").write_bytes(data)
        rows.append(f"x{i}.png,{i % 2}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    kw = json.dumps({"depth": 1, "embed_dim": 32, "num_heads": 2})
    args = ("features", "--data", str(tmp_path / "m.csv"), "--out", str(tmp_path / "c.h5"),
            "--image-size", "32", "--weights", "none", "--set", f"backbone.model_kwargs={kw}",
            "--set", "backbone.num_workers=0")  # fmt: skip
    r = run(*args)
    assert r.returncode == 3, (r.stdout, r.stderr)
    err = [line for line in r.stderr.splitlines() if "error" in line]
    assert len(err) == 1 and "99 of 100 images (99.0 %)" in err[0] and "--max-skip-frac" in err[0]
    assert "skipped 99 of 100 images (99.0 %)" in r.stdout
    assert "50 x truncated image" in r.stdout and "49 x unknown image format" in r.stdout
    assert "0x" not in r.stdout + r.stderr and "Traceback" not in r.stderr
    r = run(*args, "--max-skip-frac", "1")  # allowed; the rerun retries all 99 again
    assert r.returncode == 0 and "retried 99 image(s)" in r.stdout and "0 extracted now" in r.stdout
    for i in range(99):
        Image.new("RGB", (40, 40), (i, 90, 30)).save(tmp_path / f"x{i}.png", format="PNG")
    r = run(*args)
    assert r.returncode == 0, r.stderr
    assert "retried 99 image(s) skipped by an earlier run: 99 extracted now" in r.stdout
    assert "(0 images skipped" in r.stdout and "skipped 0" not in r.stdout
