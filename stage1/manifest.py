"""Manifests: the list of samples (image reference, label, domain, group, split) to extract.

Sources (``load_manifest``):

* an image folder with one subfolder per class (``roadwork/`` and ``none/`` or an alias, any
  case), images found recursively; a ``manifest.csv``/``manifest.jsonl`` side-car at the folder
  root, when present, supplies ``domain`` and ``group`` per relative path (the embedded demo set
  ships one, so its street groups reach the split);
* a CSV or JSONL file with ``path,label[,domain,group]`` columns, paths relative to the file;
* a parquet file, or a folder of them, with an image-bytes column (raw bytes or Hugging Face
  ``{"bytes", "path"}`` structs) and a label column: how HF image datasets such as
  ``natix-network-org/roadwork`` are distributed.

Splits are the deterministic hash splits of ``stage1.splits`` keyed by the group when there is
one, so near-duplicates (same street, same drive) never straddle train and test.
"""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from stage1.config import SPLITS, DataConfig
from stage1.splits import assign_splits


@dataclass(frozen=True)
class Sample:
    """One image. ``row >= 0`` means the bytes live in row ``row`` of parquet file ``path``."""

    id: str
    label: int  # 1 = roadwork, 0 = none, -1 = unknown
    split: str  # train | val | calib | test
    path: str
    domain: str = "default"
    group: str = ""
    row: int = -1
    column: str = "image"


@lru_cache(maxsize=8)
def _parquet_file(path: str):
    """An open parquet file and the first row of each row group (``np.searchsorted`` table)."""
    import pyarrow.parquet as pq

    f = pq.ParquetFile(path)
    sizes = [f.metadata.row_group(g).num_rows for g in range(f.num_row_groups)]
    return f, np.cumsum([0, *sizes])


@lru_cache(maxsize=2)
def _row_group(path: str, column: str, group: int):
    """One row group's image column: a shard is streamed one row group at a time (Hugging Face
    writes ~100-1000 images per group), never read whole. The extraction reads rows in order, so
    two cached groups per process serve every row of a group with one read."""
    f, _ = _parquet_file(path)
    return f.read_row_group(group, columns=[column]).column(column)


def read_bytes(sample: Sample) -> bytes:
    """Encoded image bytes of a sample (file on disk or parquet cell)."""
    if sample.row < 0:
        with open(sample.path, "rb") as f:
            return f.read()
    _, starts = _parquet_file(sample.path)
    group = int(np.searchsorted(starts, sample.row, side="right")) - 1
    col = _row_group(sample.path, sample.column, group)
    cell = col[sample.row - int(starts[group])].as_py()
    if isinstance(cell, dict):  # HF datasets store images as {"bytes": ..., "path": ...}
        cell = cell.get("bytes")
    if not isinstance(cell, bytes | bytearray):
        raise ValueError(f"{sample.path} row {sample.row}: column {sample.column!r} holds no bytes")
    return bytes(cell)


# ---------------------------------------------------------------------------------------------
# Labels

_POS = "roadwork road_work road-work construction positive pos 1 yes true"
_NEG = "none no_roadwork no-roadwork negative neg background 0 no false normal"
POSITIVE_NAMES: tuple[str, ...] = tuple(_POS.split())  # folder names / label values, any case
NEGATIVE_NAMES: tuple[str, ...] = tuple(_NEG.split())
UNKNOWN_NAMES = ("-1", "unknown")  # unlabelled rows (kept with label -1, e.g. for SSL)
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
SIDECARS = ("manifest.csv", "manifest.jsonl")


class ManifestError(ValueError):
    """A data source is missing, empty or malformed (one-line message; CLI exit code 2)."""


def _positive_names(positive_class: str) -> tuple[str, ...]:
    return (positive_class.strip().lower(), *POSITIVE_NAMES)


def parse_label(value: object, positive_class: str = "roadwork") -> int | None:
    """1 / 0 / -1 for a label cell or folder name (ints, bools, numeric strings, class names and
    their aliases, any case); None when the value is not a label."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float) and value in (0, 1, -1):
        return int(value)
    if not isinstance(value, str):
        return None
    text = value.strip().lower()
    if text.endswith(".0") and text[:-2] in ("0", "1", "-1"):  # "1.0" from pandas round-trips
        text = text[:-2]
    if text in _positive_names(positive_class):
        return 1
    if text in NEGATIVE_NAMES:
        return 0
    if text in UNKNOWN_NAMES:
        return -1
    return None


def _accepted(positive_class: str) -> str:
    pos = "|".join(dict.fromkeys(_positive_names(positive_class)))
    return f"positive: {pos}; negative: {'|'.join(NEGATIVE_NAMES)}"


# ---------------------------------------------------------------------------------------------
# Entry point


def load_manifest(source: str | os.PathLike, cfg: DataConfig) -> list[Sample]:
    """Samples of a data source, with deterministic group-aware hash splits.

    Args:
        source: image folder, CSV/JSONL manifest, parquet file or folder of parquet files.
        cfg: ``DataConfig`` (positive class name, label/image/group columns, split salt and
            fractions).

    Returns:
        Samples in a stable order (folder: sorted paths; tables: file order, then row order).

    Raises:
        ManifestError: missing or empty source, unknown class folders, unreadable manifest,
            missing columns, bad label values, duplicate ids, or a class with no examples.
    """
    path = Path(source)
    if not str(source) or not path.exists():
        raise ManifestError(f"data source not found: {source}")
    if path.is_dir():
        parquets = sorted(path.rglob("*.parquet"))
        labelled = any(v is not None for v in _class_folders(path, cfg.positive_class).values())
        if parquets and not labelled:
            rows = _parquet_rows(parquets, cfg)
        else:
            rows = _folder_rows(path, cfg.positive_class)
    elif path.suffix.lower() == ".parquet":
        rows = _parquet_rows([path], cfg)
    elif path.suffix.lower() in (".csv", ".jsonl", ".ndjson"):
        rows = _table_rows(path, cfg)
    else:
        raise ManifestError(
            f"unsupported data source {source}: expected a folder, .csv, .jsonl or .parquet"
        )
    if not rows:
        raise ManifestError(f"no images found under {source}")
    _check_rows(rows, source)
    ids = [r[0] for r in rows]
    splits = assign_splits(ids, [r[4] for r in rows], salt=cfg.salt, fractions=cfg.fractions)
    return [
        Sample(id=i, label=lab, split=s, path=p, domain=d, group=g, row=row, column=col)
        for (i, lab, p, d, g, row, col), s in zip(rows, splits, strict=True)
    ]


# A row is (id, label, path, domain, group, parquet row, image column).
_Row = tuple[str, int, str, str, str, int, str]


def _check_rows(rows: list[_Row], source: object) -> None:
    dup = [k for k, c in Counter(r[0] for r in rows).items() if c > 1]
    if dup:
        raise ManifestError(f"{len(dup)} duplicate sample id(s) in {source}, e.g. {dup[0]!r}")
    labels = Counter(r[1] for r in rows)
    for value, name in ((1, "positive (roadwork)"), (0, "negative (none)")):
        if labels[value] == 0:
            raise ManifestError(f"no {name} images in {source} ({len(rows)} image(s) in all)")


# ---------------------------------------------------------------------------------------------
# (a) class folders


def _iter_images(folder: Path) -> Iterable[Path]:
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                yield Path(dirpath) / name


def _class_folders(root: Path, positive_class: str) -> dict[Path, int | None]:
    """Visible subfolders of ``root`` mapped to their label (None = not a class name)."""
    out = {}
    for child in sorted(root.iterdir()):
        if child.is_dir() and not child.name.startswith((".", "_")):
            lab = parse_label(child.name, positive_class)
            out[child] = lab if lab in (0, 1) else None
    return out


def _folder_rows(root: Path, positive_class: str) -> list[_Row]:
    folders = _class_folders(root, positive_class)
    unknown = [p.name for p, lab in folders.items() if lab is None and next(_iter_images(p), 0)]
    if unknown:
        raise ManifestError(
            f"unknown class folder(s) {', '.join(unknown)} under {root}; accepted names are "
            f"{_accepted(positive_class)} (any case)"
        )
    meta = _sidecar(root, positive_class)
    rows: list[_Row] = []
    for folder, lab in folders.items():
        if lab is None:
            continue
        for img in sorted(_iter_images(folder)):
            rel = img.relative_to(root).as_posix()
            side_label, domain, group = meta.get(rel, (lab, "default", ""))
            if side_label not in (lab, -1):
                raise ManifestError(
                    f"{rel}: folder says label {lab} but the side-car manifest says {side_label}"
                )
            rows.append((rel, lab, str(img.absolute()), domain, group, -1, "image"))
    if not rows:
        loose = any(p.parent == root for p in _iter_images(root))
        hint = " (images must sit in class subfolders such as roadwork/ and none/)" if loose else ""
        raise ManifestError(f"no images found under {root}{hint}")
    return rows


def _sidecar(root: Path, positive_class: str) -> dict[str, tuple[int, str, str]]:
    """(label or -1, domain, group) per relative path from a manifest next to the class folders."""
    for name in SIDECARS:
        path = root / name
        if path.is_file():
            columns, records = _read_records(path)
            _require(columns, ["path"], path)
            out = {}
            for line, rec in records:
                lab = -1
                if str(rec.get("label", "")).strip() != "":
                    lab = _label_or_raise(rec["label"], positive_class, path, f"line {line}")
                key = Path(str(rec["path"])).as_posix()
                out[key] = (lab, _text(rec.get("domain")) or "default", _text(rec.get("group")))
            return out
    return {}


# ---------------------------------------------------------------------------------------------
# (b) CSV / JSONL


def _text(value: object) -> str:
    return "" if value is None else str(value).strip()


def _read_records(path: Path) -> tuple[list[str], list[tuple[int, dict]]]:
    """Column names and (line number, record) pairs of a CSV or JSONL file."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            if path.suffix.lower() == ".csv":
                reader = csv.DictReader(f, skipinitialspace=True)
                if reader.fieldnames is None:
                    raise ManifestError(f"manifest {path} is empty")
                columns = [c.strip() for c in reader.fieldnames]
                reader.fieldnames = columns
                records = [(reader.line_num, rec) for rec in reader]
                return columns, records
            records, columns = [], {}
            for line, text in enumerate(f, start=1):
                if text.strip():
                    try:
                        rec = json.loads(text)
                    except json.JSONDecodeError as e:
                        msg = f"bad JSON, {e.msg} at column {e.colno}"
                        raise ManifestError(f"manifest {path} line {line}: {msg}") from None
                    if not isinstance(rec, dict):
                        raise ManifestError(f"manifest {path} line {line}: not a JSON object")
                    records.append((line, rec))
                    columns.update(dict.fromkeys(rec))
            return list(columns), records
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ManifestError(f"cannot read manifest {path}: {type(e).__name__}: {e}") from None


def _require(columns: Iterable[str], needed: Iterable[str], where: object) -> None:
    have = list(columns)
    for col in needed:
        if col not in have:
            raise ManifestError(f"{where} lacks column {col!r} (has: {', '.join(map(str, have))})")


def _label_or_raise(value: object, positive_class: str, where: object, row: str) -> int:
    lab = parse_label(value, positive_class)
    if lab is None:
        raise ManifestError(
            f"{where} {row}: bad label {value!r} (accepted: 0/1, true/false, "
            f"{_accepted(positive_class)})"
        )
    return lab


def _table_rows(path: Path, cfg: DataConfig) -> list[_Row]:
    columns, records = _read_records(path)
    _require(columns, ["path", cfg.label_column], path)
    base = path.parent.absolute()
    rows: list[_Row] = []
    missing = []
    for line, rec in records:
        written = _text(rec.get("path"))
        if not written:
            raise ManifestError(f"{path} line {line}: empty path")
        where = f"line {line}"
        lab = _label_or_raise(rec.get(cfg.label_column), cfg.positive_class, path, where)
        full = Path(written) if Path(written).is_absolute() else base / written
        if not full.is_file():
            missing.append(written)
        domain = _text(rec.get("domain")) or "default"
        group = _text(rec.get(cfg.group_column))
        rows.append((written, lab, os.path.normpath(full), domain, group, -1, "image"))
    if missing:
        raise ManifestError(
            f"{len(missing)} image(s) listed in {path} do not exist, e.g. {missing[0]!r}"
        )
    return rows


# ---------------------------------------------------------------------------------------------
# (c) parquet


def _parquet_rows(files: list[Path], cfg: DataConfig) -> list[_Row]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows: list[_Row] = []
    for file in files:
        try:
            schema = pq.read_schema(file)
        except (OSError, pa.ArrowException) as e:
            raise ManifestError(f"cannot read parquet {file}: {e}") from None
        _require(schema.names, [cfg.image_column, cfg.label_column], file)
        itype = schema.field(cfg.image_column).type
        is_struct = pa.types.is_struct(itype) and itype.get_field_index("bytes") >= 0
        if not (pa.types.is_binary(itype) or pa.types.is_large_binary(itype) or is_struct):
            raise ManifestError(
                f"{file}: column {cfg.image_column!r} is {itype}, expected image bytes "
                "(binary or a struct with a 'bytes' field)"
            )
        optional = [c for c in ("domain", cfg.group_column, "id") if c in schema.names]
        table = pq.read_table(file, columns=[cfg.label_column, *dict.fromkeys(optional)])
        col = {name: table.column(name).to_pylist() for name in table.column_names}
        full = os.path.normpath(file.absolute())
        for i, value in enumerate(col[cfg.label_column]):
            lab = _label_or_raise(value, cfg.positive_class, file, f"row {i}")
            sid = _text(col["id"][i]) if "id" in col else ""
            domain = _text(col["domain"][i]) if "domain" in col else ""
            group = _text(col[cfg.group_column][i]) if cfg.group_column in col else ""
            sid = sid or f"{file.stem}:{i}"
            rows.append((sid, lab, full, domain or "default", group, i, cfg.image_column))
    return rows


# ---------------------------------------------------------------------------------------------
# Summary


def summarize(samples: Iterable[Sample]) -> dict:
    """Counts for printing: per split and per domain, positives / negatives / total.

    Returns:
        ``{"n", "groups", "splits": {split: {"pos", "neg", "total"[, "unknown"]}},
        "domains": {domain: {...}}}``; every split of ``SPLITS`` is present, domains sorted.
    """
    samples = list(samples)
    has_unknown = any(s.label == -1 for s in samples)

    def counts(sel: list[Sample]) -> dict[str, int]:
        c = Counter(s.label for s in sel)
        out = {"pos": c[1], "neg": c[0], "total": len(sel)}
        if has_unknown:
            out["unknown"] = c[-1]
        return out

    domains = sorted({s.domain for s in samples})
    return {
        "n": len(samples),
        "groups": len({s.group for s in samples if s.group}),
        "splits": {sp: counts([s for s in samples if s.split == sp]) for sp in SPLITS},
        "domains": {d: counts([s for s in samples if s.domain == d]) for d in domains},
    }
