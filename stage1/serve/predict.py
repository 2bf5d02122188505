"""`stage1 predict`: a bundle over image files, folders or manifests -> one JSON line per image.

Inputs (any mix): image files; folders (searched recursively; a class-folder layout such as
``roadwork/`` + ``none/`` supplies labels); CSV / JSONL manifests with a ``path`` column (paths
relative to the manifest; optional ``id`` and ``label`` are passed through); parquet files of
image bytes (through ``stage1.manifest``, labelled). Each output line::

    {"id", "path", "p", "answer", "decision", "gate", ["label"]}     or {"id", "path", "error"}

``p`` is the calibrated P(roadwork), ``answer`` the validator-scale float (> 0.5 = roadwork),
``decision`` exit_negative | exit_positive | defer and ``gate`` the policy's selection score
(null when the policy has none). An unreadable image gets an ``error`` line and is counted in
the summary; it never stops the run. Images are decoded and resized in ``workers`` processes
and embedded in batches on the bundle's device.
"""

from __future__ import annotations

import io
import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Item", "collect_inputs", "predict_files"]


@dataclass(frozen=True)
class Item:
    id: str
    path: str
    label: int | None = None
    row: int = -1  # parquet row (-1: a file on disk)
    column: str = "image"


def collect_inputs(inputs: list[str]) -> list[Item]:
    """The images named by ``inputs`` (module docstring), in a stable order."""
    from stage1.manifest import IMAGE_EXTENSIONS, ManifestError, parse_label

    items: list[Item] = []
    for raw in inputs:
        path = Path(raw)
        if not path.exists():
            raise FileNotFoundError(f"input not found: {raw}")
        if path.is_dir():
            for f in sorted(path.rglob("*")):
                if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS:
                    if any(p.startswith(".") for p in f.relative_to(path).parts):
                        continue
                    lab = parse_label(f.parent.name) if f.parent != path else None
                    rel = f.relative_to(path).as_posix()
                    items.append(Item(rel, str(f), lab if lab in (0, 1) else None))
        elif path.suffix.lower() in (".csv", ".jsonl", ".ndjson"):
            items += _table_items(path)
        elif path.suffix.lower() == ".parquet":
            from stage1.config import DataConfig
            from stage1.manifest import load_manifest

            for s in load_manifest(path, DataConfig()):
                items.append(Item(s.id, s.path, s.label, s.row, s.column))
        else:
            items.append(Item(path.name, str(path)))
    if not items:
        raise ManifestError(f"no images found in {', '.join(inputs)}")
    return items


def _table_items(path: Path) -> list[Item]:
    from stage1.manifest import ManifestError, _read_records, parse_label

    columns, records = _read_records(path)
    if "path" not in columns:
        raise ManifestError(f"{path} lacks column 'path' (has: {', '.join(columns)})")
    out = []
    for line, rec in records:
        written = str(rec.get("path") or "").strip()
        if not written:
            raise ManifestError(f"{path} line {line}: empty path")
        full = Path(written) if Path(written).is_absolute() else path.parent / written
        lab = parse_label(rec["label"]) if rec.get("label") not in (None, "") else None
        out.append(Item(str(rec.get("id") or written), str(full), lab if lab in (0, 1) else None))
    return out


class _Images:
    """item index -> (index, uint8 (3, S, S) tensor | None, reason); picklable for workers."""

    def __init__(self, items: list[Item], size: int):
        self.items, self.size = items, size

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        from feature_extract.preprocess import CorruptImageError, decode, to_uint8
        from stage1.manifest import Sample, read_bytes

        it = self.items[i]
        try:
            s = Sample(it.id, -1, "", it.path, row=it.row, column=it.column)
            return i, to_uint8(decode(read_bytes(s)), self.size), ""
        except (CorruptImageError, OSError, ValueError) as e:
            return i, None, (str(e).splitlines()[0] if str(e) else type(e).__name__)


def _collate(batch):
    import torch

    good = [(i, t) for i, t, _ in batch if t is not None]
    bad = [(i, why) for i, t, why in batch if t is None]
    x = torch.stack([t for _, t in good]) if good else None
    return [i for i, _ in good], x, bad


def predict_files(
    bundle: str | os.PathLike,
    inputs: list[str],
    out: str | os.PathLike,
    *,
    device: str = "auto",
    batch_size: int = 32,
    workers: int = 2,
    backbone_weights: str | None = None,
    limit: int | None = None,
    progress: bool = True,
    domain: str | None = None,
) -> dict[str, Any]:
    """Predict every input image, write ``out`` (JSON lines, atomically); returns the summary."""
    import torch
    from tqdm.auto import tqdm

    from stage1.artifacts import atomic_write_bytes
    from stage1.serve.model import Stage1Model

    items = collect_inputs(inputs)[:limit]
    m = Stage1Model.from_bundle(bundle, device=device, backbone_weights=backbone_weights)
    loader = torch.utils.data.DataLoader(
        _Images(items, m.image_size),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=m.device.type == "cuda",
    )
    lines: dict[int, dict[str, Any]] = {}
    with tqdm(total=len(items), unit="img", disable=not progress, desc="predict") as bar:
        for idx, x, bad in loader:
            for i, why in bad:
                lines[i] = {"id": items[i].id, "path": items[i].path, "error": why}
            if x is not None:
                pred = m.finish(m.with_domains(m.scores_from_uint8(x), domain))
                for k, i in enumerate(idx):
                    lines[i] = _line(items[i], pred, k)
            bar.update(len(idx) + len(bad))
    buf = io.StringIO()
    for i in range(len(items)):
        buf.write(json.dumps(lines[i]) + "\n")
    atomic_write_bytes(out, buf.getvalue().encode())
    return _summary(items, lines, m, out)


def _line(item: Item, pred, k: int) -> dict[str, Any]:
    line = {
        "id": item.id,
        "path": item.path,
        "p": float(pred.p[k]),
        "answer": float(pred.answer[k]),
        "decision": pred.decision[k],
        "gate": None if pred.gate is None else float(pred.gate[k]),
    }
    if item.label is not None:
        line["label"] = item.label
    return line


def _summary(items, lines, m, out) -> dict[str, Any]:
    ok = [ln for ln in lines.values() if "error" not in ln]
    decisions = Counter(ln["decision"] for ln in ok)
    s: dict[str, Any] = {
        "n": len(items),
        "n_unreadable": len(items) - len(ok),
        "decisions": {d: decisions.get(d, 0) for d in ("exit_negative", "exit_positive", "defer")},
        "out": str(out),
        "device": str(m.device),
        "unreadable": [
            {"id": ln["id"], "error": ln["error"]} for ln in lines.values() if "error" in ln
        ],
    }
    labelled = [ln for ln in ok if "label" in ln]
    if labelled:
        y = np.array([ln["label"] for ln in labelled])
        yes = np.array([ln["answer"] > 0.5 for ln in labelled])
        s["n_labelled"] = len(labelled)
        s["accuracy_at_0_5"] = float(np.mean(yes == (y == 1)))
    return s


def format_summary(s: dict[str, Any]) -> str:
    """The summary as the few lines the CLI prints."""
    d = s["decisions"]
    text = (
        f"predicted {s['n'] - s['n_unreadable']} of {s['n']} images on {s['device']} -> "
        f"{s['out']}: exit_negative {d['exit_negative']}, exit_positive {d['exit_positive']}, "
        f"defer {d['defer']}; unreadable {s['n_unreadable']}"
    )
    if "accuracy_at_0_5" in s:
        text += (
            f"\naccuracy of answer > 0.5 on the {s['n_labelled']} labelled images: "
            f"{s['accuracy_at_0_5']:.3f}"
        )
    for u in s["unreadable"][:5]:
        text += f"\nunreadable: {u['id']}: {u['error']}"
    return text
