"""Manifests: class folders, CSV/JSONL, parquet (raw and HF struct cells), splits, errors."""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from stage1.config import SPLITS, DataConfig
from stage1.manifest import (
    ManifestError,
    Sample,
    load_manifest,
    parse_label,
    read_bytes,
    summarize,
)
from stage1.splits import assign_splits

CFG = DataConfig()


def _image_bytes(seed: int, fmt: str = "PNG") -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def _decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _write(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP", ".webp": "WEBP"}
    path.write_bytes(_image_bytes(seed, fmt.get(path.suffix.lower(), "PNG")))
    return path


def _folder(root: Path, pos: str = "roadwork", neg: str = "none", n: int = 3) -> Path:
    for i in range(n):
        _write(root / pos / f"p{i}.png", i)
        _write(root / neg / f"n{i}.jpg", 100 + i)
    return root


def _one_line_error(fn, match: str) -> str:
    with pytest.raises(ManifestError, match=match) as info:
        fn()
    msg = str(info.value)
    assert "\n" not in msg and isinstance(info.value, ValueError)
    return msg


# ---------------------------------------------------------------------------------------------
# (a) folders


def test_folder_basic(tmp_path):
    root = _folder(tmp_path / "data")
    _write(root / "roadwork" / "night" / "deep.JPEG", 7)  # third level: not a domain
    (root / "roadwork" / "notes.txt").write_text("not an image")
    _write(root / "none" / ".hidden.png", 9)
    samples = load_manifest(str(root), CFG)
    ids = [s.id for s in samples]
    assert sorted(ids) == ids and len(ids) == 7
    assert "roadwork/night/deep.JPEG" in ids and "none/n0.jpg" in ids
    assert Counter(s.label for s in samples) == {1: 4, 0: 3}
    assert all(s.label == (1 if s.id.startswith("roadwork/") else 0) for s in samples)
    assert {s.domain for s in samples} == {"default"} and {s.group for s in samples} == {""}
    assert [s.split for s in samples] == assign_splits(ids, [""] * 7, CFG.salt, CFG.fractions)
    for s in samples:
        assert Path(s.path).is_absolute() and s.row == -1
        assert _decode(read_bytes(s)).shape[2] == 3


@pytest.mark.parametrize(
    "pos,neg",
    [
        ("Construction", "Normal"),
        ("POS", "neg"),
        ("1", "0"),
        ("road-work", "no_roadwork"),
        ("yes", "false"),
        ("positive", "Background"),
        ("road_work", "no-roadwork"),
        ("true", "no"),
    ],
)
def test_folder_aliases(tmp_path, pos, neg):
    samples = load_manifest(_folder(tmp_path, pos, neg), CFG)
    assert {(s.id.split("/")[0], s.label) for s in samples} == {(pos, 1), (neg, 0)}


def test_folder_custom_positive_class_and_image_extensions(tmp_path):
    for ext in ("jpg", "jpeg", "png", "bmp", "webp", "tif", "tiff"):
        _write(tmp_path / "cones" / f"a.{ext}")
    _write(tmp_path / "none" / "b.PNG")
    samples = load_manifest(tmp_path, DataConfig(positive_class="Cones"))
    assert Counter(s.label for s in samples) == {1: 7, 0: 1}


def test_folder_unknown_class(tmp_path):
    _folder(tmp_path)
    _write(tmp_path / "cats" / "x.png")
    (tmp_path / "empty_extra").mkdir()  # no images: ignored
    msg = _one_line_error(lambda: load_manifest(tmp_path, CFG), "unknown class folder")
    assert "cats" in msg and "roadwork" in msg and "none" in msg and "empty_extra" not in msg


def test_folder_sidecar_supplies_domain_and_group(tmp_path):
    _folder(tmp_path, n=2)
    (tmp_path / "manifest.csv").write_text(
        "path,label,domain,group\nroadwork/p0.png,1,dusk,s1\n./none/n0.jpg,0,day,s1\n"
    )
    by_id = {s.id: s for s in load_manifest(tmp_path, CFG)}
    assert (by_id["roadwork/p0.png"].domain, by_id["roadwork/p0.png"].group) == ("dusk", "s1")
    assert (by_id["none/n0.jpg"].domain, by_id["none/n0.jpg"].group) == ("day", "s1")
    assert by_id["none/n0.jpg"].split == by_id["roadwork/p0.png"].split
    assert (by_id["none/n1.jpg"].domain, by_id["none/n1.jpg"].group) == ("default", "")
    (tmp_path / "manifest.csv").write_text("path,label\nroadwork/p1.png,0\n")
    _one_line_error(lambda: load_manifest(tmp_path, CFG), "side-car")


# ---------------------------------------------------------------------------------------------
# (b) CSV / JSONL


def _table_dataset(tmp_path: Path) -> list[dict]:
    _write(tmp_path / "imgs" / "a.png", 1)
    _write(tmp_path / "imgs" / "b.jpg", 2)
    _write(tmp_path / "other" / "c.png", 3)
    absolute = str((tmp_path / "other" / "c.png").resolve())
    return [
        {"path": "imgs/a.png", "label": "roadwork", "domain": "dusk", "group": "g1"},
        {"path": "imgs/b.jpg", "label": "0", "domain": "", "group": "g1"},
        {"path": absolute, "label": "True", "domain": "day", "group": ""},
    ]


def _check_table(samples: list[Sample], rows: list[dict], base: Path) -> None:
    assert [s.id for s in samples] == [r["path"] for r in rows]  # id = path as written
    assert [s.label for s in samples] == [1, 0, 1]
    assert [s.domain for s in samples] == ["dusk", "default", "day"]
    assert [s.group for s in samples] == ["g1", "g1", ""]
    assert samples[0].split == samples[1].split  # same group
    assert Path(samples[0].path) == (base / "imgs" / "a.png").absolute()
    assert samples[0].split == assign_splits(["imgs/a.png"], ["g1"])[0]
    assert _decode(read_bytes(samples[1])).shape == (12, 16, 3)


def test_csv_relative_and_absolute_paths(tmp_path):
    rows = _table_dataset(tmp_path)
    lines = ["path,label,domain,group"] + [",".join(r.values()) for r in rows]
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    _check_table(load_manifest(str(tmp_path / "m.csv"), CFG), rows, tmp_path)


def test_jsonl_relative_and_absolute_paths(tmp_path):
    rows = _table_dataset(tmp_path)
    text = "\n".join(json.dumps(r) for r in rows) + "\n\n"  # trailing blank lines are fine
    (tmp_path / "m.jsonl").write_text(text)
    _check_table(load_manifest(tmp_path / "m.jsonl", CFG), rows, tmp_path)


def test_csv_custom_label_and_group_columns(tmp_path):
    _write(tmp_path / "a.png")
    _write(tmp_path / "b.png")
    (tmp_path / "m.csv").write_text("path,y,street\na.png,1,s\nb.png,no,s\n")
    cfg = DataConfig(label_column="y", group_column="street")
    samples = load_manifest(tmp_path / "m.csv", cfg)
    assert [(s.label, s.group) for s in samples] == [(1, "s"), (0, "s")]


def test_parse_label():
    for v in (1, True, "1", "1.0", "yes", "TRUE", "Roadwork", "construction", " pos "):
        assert parse_label(v) == 1, v
    for v in (0, False, "0", "false", "None", "no_roadwork", "background", "normal"):
        assert parse_label(v) == 0, v
    assert parse_label("-1") == parse_label("unknown") == -1
    for v in ("maybe", 2, 0.5, None, "", b"1"):
        assert parse_label(v) is None, v
    assert parse_label("cone", positive_class="Cone") == 1


# ---------------------------------------------------------------------------------------------
# (c) parquet


def _parquet(path: Path, n: int, struct: bool, extra: dict | None = None, labels=None) -> list:
    blobs = [_image_bytes(10 + i, "PNG" if i % 2 else "JPEG") for i in range(n)]
    if struct:  # Hugging Face datasets Image feature
        cells = [{"bytes": b, "path": f"img{i}.png"} for i, b in enumerate(blobs)]
        image = pa.array(cells, pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    else:
        image = pa.array(blobs, pa.binary())
    cols = {"image": image, "label": pa.array(labels or [i % 2 for i in range(n)], pa.int64())}
    cols.update(extra or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(cols), path)
    return blobs


@pytest.mark.parametrize("struct", [False, True])
def test_parquet_cells_decode(tmp_path, struct):
    blobs = _parquet(tmp_path / "train-00000.parquet", 6, struct)
    samples = load_manifest(tmp_path / "train-00000.parquet", CFG)
    assert [s.id for s in samples] == [f"train-00000:{i}" for i in range(6)]
    assert [s.label for s in samples] == [0, 1, 0, 1, 0, 1]
    assert [s.row for s in samples] == list(range(6))
    assert {s.column for s in samples} == {"image"} and {s.domain for s in samples} == {"default"}
    for s, blob in zip(samples, blobs, strict=True):
        assert read_bytes(s) == blob
        np.testing.assert_array_equal(_decode(read_bytes(s)), _decode(blob))


def test_parquet_directory_with_optional_columns(tmp_path):
    extra = {
        "id": pa.array(["x0", "x1", "x2", "x3"]),
        "domain": pa.array(["dusk", None, "day", "day"]),
        "drive": pa.array(["d1", "d1", None, "d2"]),
    }
    _parquet(tmp_path / "data" / "a.parquet", 4, True, extra)
    _parquet(tmp_path / "data" / "sub" / "b.parquet", 2, False)
    (tmp_path / "README.md").write_text("a HF dataset snapshot")
    samples = load_manifest(tmp_path, DataConfig(group_column="drive"))
    assert [s.id for s in samples] == ["x0", "x1", "x2", "x3", "b:0", "b:1"]
    assert [s.domain for s in samples[:4]] == ["dusk", "default", "day", "day"]
    assert [s.group for s in samples[:4]] == ["d1", "d1", "", "d2"]
    assert samples[0].split == samples[1].split
    assert Path(samples[5].path).name == "b.parquet" and samples[5].row == 1
    assert _decode(read_bytes(samples[5])).shape == (12, 16, 3)


def test_parquet_custom_columns_and_string_labels(tmp_path):
    blobs = [_image_bytes(i) for i in range(3)]
    table = pa.table({"jpg": pa.array(blobs), "is_roadwork": ["roadwork", "none", "1"]})
    pq.write_table(table, tmp_path / "x.parquet")
    cfg = DataConfig(image_column="jpg", label_column="is_roadwork")
    samples = load_manifest(tmp_path / "x.parquet", cfg)
    assert [s.label for s in samples] == [1, 0, 1] and samples[2].column == "jpg"
    assert read_bytes(samples[2]) == blobs[2]


# ---------------------------------------------------------------------------------------------
# errors


def test_missing_source(tmp_path):
    msg = _one_line_error(lambda: load_manifest(tmp_path / "nope", CFG), "data source not found")
    assert str(tmp_path / "nope") in msg
    _one_line_error(lambda: load_manifest("", CFG), "data source not found")


def test_empty_folder_and_folder_without_images(tmp_path):
    _one_line_error(lambda: load_manifest(tmp_path, CFG), "no images found under")
    (tmp_path / "roadwork").mkdir()
    (tmp_path / "none").mkdir()
    (tmp_path / "roadwork" / "a.txt").write_text("x")
    _one_line_error(lambda: load_manifest(tmp_path, CFG), "no images found under")
    _write(tmp_path / "loose.png")
    _one_line_error(lambda: load_manifest(tmp_path, CFG), "class subfolders")


def test_one_class_only(tmp_path):
    _write(tmp_path / "roadwork" / "a.png")
    _one_line_error(lambda: load_manifest(tmp_path, CFG), "no negative")
    _write(tmp_path / "p.png")
    (tmp_path / "m.csv").write_text("path,label\np.png,0\n")
    _one_line_error(lambda: load_manifest(tmp_path / "m.csv", CFG), "no positive")


def test_csv_errors(tmp_path):
    _write(tmp_path / "a.png")
    _write(tmp_path / "b.png")
    m = tmp_path / "m.csv"
    m.write_bytes(b"\xff\xfe\x00garbage\x00\xff")
    _one_line_error(lambda: load_manifest(m, CFG), "cannot read manifest")
    m.write_text("")
    _one_line_error(lambda: load_manifest(m, CFG), "empty")
    m.write_text("file,label\na.png,1\n")
    _one_line_error(lambda: load_manifest(m, CFG), "lacks column 'path'")
    m.write_text("path,domain\na.png,day\n")
    _one_line_error(lambda: load_manifest(m, CFG), "lacks column 'label'")
    m.write_text("path,label\na.png,1\nb.png,maybe\n")
    msg = _one_line_error(lambda: load_manifest(m, CFG), "bad label 'maybe'")
    assert "line 3" in msg  # the header is line 1
    m.write_text("path,label\na.png,1\nb.png,0\na.png,1\n")
    _one_line_error(lambda: load_manifest(m, CFG), "duplicate sample id")
    m.write_text("path,label\na.png,1\nmissing.png,0\n")
    _one_line_error(lambda: load_manifest(m, CFG), "do not exist.*missing.png")
    m.write_text("path,label\na.png,1\n,0\n")
    _one_line_error(lambda: load_manifest(m, CFG), "line 3: empty path")


def test_jsonl_errors(tmp_path):
    _write(tmp_path / "a.png")
    m = tmp_path / "m.jsonl"
    m.write_text('{"path": "a.png", "label": 1}\n{"path": oops}\n')
    _one_line_error(lambda: load_manifest(m, CFG), "line 2: bad JSON")
    m.write_text('{"path": "a.png", "label": 1}\n[1, 2]\n')
    _one_line_error(lambda: load_manifest(m, CFG), "line 2: not a JSON object")
    m.write_text('{"path": "a.png"}\n')
    _one_line_error(lambda: load_manifest(m, CFG), "lacks column 'label'")
    m.write_text('{"path": "a.png", "label": "perhaps"}\n')
    _one_line_error(lambda: load_manifest(m, CFG), "line 1: bad label")


def test_parquet_errors(tmp_path):
    p = tmp_path / "x.parquet"
    pq.write_table(pa.table({"img": pa.array([b"x"]), "label": [1]}), p)
    _one_line_error(lambda: load_manifest(p, CFG), "lacks column 'image'")
    pq.write_table(pa.table({"image": pa.array([1, 2]), "label": [1, 0]}), p)
    _one_line_error(lambda: load_manifest(p, CFG), "expected image bytes")
    _parquet(p, 3, False, labels=[1, 0, 7])
    _one_line_error(lambda: load_manifest(p, CFG), "row 2: bad label 7")
    _parquet(p, 2, False, extra={"id": pa.array(["same", "same"])})
    _one_line_error(lambda: load_manifest(p, CFG), "duplicate sample id")
    p.write_bytes(b"not a parquet file")
    _one_line_error(lambda: load_manifest(p, CFG), "cannot read parquet")


def test_unsupported_source(tmp_path):
    (tmp_path / "list.txt").write_text("a.png 1\n")
    _one_line_error(lambda: load_manifest(tmp_path / "list.txt", CFG), "unsupported data source")


# ---------------------------------------------------------------------------------------------
# summary


def test_summarize_counts(tmp_path):
    _folder(tmp_path, n=20)
    (tmp_path / "manifest.csv").write_text(
        "path,domain\n" + "".join(f"roadwork/p{i}.png,dusk\n" for i in range(5))
    )
    samples = load_manifest(tmp_path, CFG)
    info = summarize(samples)
    assert info["n"] == 40 and info["groups"] == 0
    assert list(info["splits"]) == list(SPLITS)
    for sp in SPLITS:
        sel = [s for s in samples if s.split == sp]
        want = {"pos": sum(s.label == 1 for s in sel), "neg": sum(s.label == 0 for s in sel)}
        assert info["splits"][sp] == {**want, "total": len(sel)}
    assert info["domains"] == {
        "default": {"pos": 15, "neg": 20, "total": 35},
        "dusk": {"pos": 5, "neg": 0, "total": 5},
    }
    unl = [Sample(id="u", label=-1, split="test", path="x")]
    assert summarize(samples + unl)["splits"]["test"]["unknown"] == 1
