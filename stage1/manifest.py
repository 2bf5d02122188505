"""Manifests: the list of samples (image reference, label, domain, group, split) to extract.

Sources: an image folder with one subfolder per class, a CSV/JSONL file with
``path,label[,domain,group]`` columns, or parquet files with an image-bytes column.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache


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


@lru_cache(maxsize=4)
def _parquet_column(path: str, column: str):
    import pyarrow.parquet as pq

    return pq.read_table(path, columns=[column]).column(column)


def read_bytes(sample: Sample) -> bytes:
    """Encoded image bytes of a sample (file on disk or parquet cell)."""
    if sample.row < 0:
        with open(sample.path, "rb") as f:
            return f.read()
    cell = _parquet_column(sample.path, sample.column)[sample.row].as_py()
    if isinstance(cell, dict):  # HF datasets store images as {"bytes": ..., "path": ...}
        cell = cell.get("bytes")
    if not isinstance(cell, bytes | bytearray):
        raise ValueError(f"{sample.path} row {sample.row}: column {sample.column!r} holds no bytes")
    return bytes(cell)
