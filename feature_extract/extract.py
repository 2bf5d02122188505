"""Batched, resumable DINOv3 feature extraction into the HDF5 cache (``stage1.cache``).

Pipeline: a ``DataLoader`` decodes and resizes images in ``num_workers`` processes while the
main process runs the frozen backbone (bf16 autocast on CUDA, fp32 on CPU) and writes every
batch with ``write_rows``, which also sets the ``done`` mask — so an interrupted run resumes
from the rows still pending. Unreadable images are skipped, never fatal: their rows get
label -1 (unknown, ignored by trainers), zero features and ``done = True``, and are listed
with a short reason (``skip_reason``) in ``metadata["skipped"]``. Every later run retries
them (the user may have fixed or replaced the file): a row read this time gets its features and
its manifest label back and leaves the list; either way the attempt is recorded in
``metadata["retried"]`` (``store.record_retries``).

Feature variants (all from one forward pass):
    cls         final-norm CLS token, ``feats[:, 0]`` = ``model(x)`` with ``global_pool='token'``
    patch_mean  mean of the patch tokens, ``feats[:, num_prefix_tokens:]`` (CLS + 4 registers
                are excluded), after the final norm
    cls_last4   CLS tokens of the last 4 blocks, each after the final norm, concatenated in
                block order (4 * D); its last D entries equal ``cls``

Views (``BackboneConfig.views``): ``clean`` writes one row per sample (view 0, row i = sample
i). ``validator`` appends, for every sample of the splits in ``VIEW_SPLITS``, one row per
StreetVision augmentation level 0-3 (view = level + 1; same id, label, split and domain),
rendered by ``feature_extract.validator_views`` (224 px, JPEG q75, then resized to
``image_size`` like any image) and deterministic per (id, level, ``view_seed``). ``calib`` and
``test`` get them: test views measure the challenge score and the certificates under validator
conditions, calib views let the exit policy be certified on what validators send
(``risk.calib_views``, ``stage1.run.data``); train/val stay clean, so the fitted head and the
epoch choice are exactly those of a clean cache, and no augmented copy of a calib or test image
can reach training (views share their sample's split).

Groups: each row also gets its sample's ``group`` (street, drive, site; "" when none), written
as the cache's optional ``group`` column, for group-level certificates downstream.
"""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from feature_extract.augment import AUGMENT_SPLITS, AugmentSpec
from feature_extract.backbone import build_backbone
from feature_extract.fast_forward import fast_forward
from feature_extract.loader import batch_input, choose, cpu_decoder, make_loader, warm_batches
from feature_extract.prefetch import prefetched
from feature_extract.preprocess import CorruptImageError, plain_message
from feature_extract.validator_views import LEVELS

log = logging.getLogger(__name__)
VARIANTS: dict[str, int] = {"cls": 1, "patch_mean": 1, "cls_last4": 4}  # name -> dim / D
_RESUME_KEYS = (
    "backbone",
    "weights_sha256",
    "image_size",
    "mean",
    "std",
    "variants",
    "dtype",
    "views",
    "view_seed",
    "view_splits",
    "augment",
)
# Splits that get validator views: calibration on validator views, evaluation on test.
VIEW_SPLITS: tuple[str, ...] = ("calib", "test")
# A row's view kind follows from its split: views > 0 of train rows are augmented views
# (feature_extract.augment), of calib/test rows validator views; the two never share a split.
assert not set(VIEW_SPLITS) & set(AUGMENT_SPLITS)
VIEW_NAMES = {
    0: "clean image",
    1: "validator level 0: centre square crop, resize 224, JPEG q75",
    2: "validator level 1: rotation +-20 deg, random square crop (20-100 % area), JPEG q75",
    3: "validator level 2: level 1 + saturation, contrast, down/up-sampling at 0-1, JPEG q75",
    4: "validator level 3: level 1 + saturation, contrast, down/up-sampling, colour noise, "
    "blur at 0-2, JPEG q75",
}


@dataclass
class ExtractReport:
    """What one ``extract`` call did (counts refer to this call, not earlier resumed runs)."""

    n_total: int  # rows in the cache (one per sample and view)
    n_done: int  # rows extracted by this call
    n_skipped: int  # images skipped by this call (unreadable; all their rows)
    skipped: list[dict[str, Any]] = field(default_factory=list)  # {id, label, reason}
    seconds: float = 0.0
    images_per_s: float = 0.0
    n_already_done: int = 0  # rows found done on entry (resume)
    path: str = ""
    n_images: int = 0  # images (samples) of the manifest
    n_retried: int = 0  # images skipped by an earlier run and retried by this call
    n_recovered: int = 0  # of those, images extracted this time
    chosen: str = ""  # decode path, workers, batch size and why (feature_extract.loader.choose)
    # rows/s once every worker's first batch is in (start-up and, on CUDA, compiling excluded)
    steady_images_per_s: float = 0.0
    skipped_total: list[dict[str, Any]] = field(default_factory=list)  # cache's list after the call

    @property
    def skip_fraction(self) -> float:
        """Images listed as skipped in the cache after this call / images of the manifest."""
        return len(self.skipped_total) / self.n_images if self.n_images else 0.0


def skip_reason(e: BaseException) -> str:
    """Short ``"<kind>: <detail>"`` text for an image that could not be read (never a repr).

    The kind (before the first ``": "``) groups the summary ``stage1 features`` prints.
    """
    path = getattr(e, "filename", None)
    if isinstance(e, FileNotFoundError):
        return f"file not found: {path}" if path else "file not found"
    if isinstance(e, IsADirectoryError):
        return f"not a file: {path} is a directory" if path else "not a file"
    if isinstance(e, PermissionError):
        return f"permission denied: {path}" if path else "permission denied"
    if isinstance(e, CorruptImageError):
        return plain_message(e, limit=160)
    if isinstance(e, OSError):
        return f"read error: {e.strerror or plain_message(e)}" + (f" ({path})" if path else "")
    return f"unreadable: {plain_message(e) or type(e).__name__}"


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` -> cuda when available else cpu; ``cpu``/``cuda``/``cuda:N`` as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    return dev


def embed(
    model: torch.nn.Module, x: torch.Tensor, variants: Sequence[str]
) -> dict[str, torch.Tensor]:
    """Feature variants of a preprocessed batch ``x`` (B, 3, S, S), as float32 tensors.

    One forward pass: ``forward_intermediates`` when ``cls_last4`` is asked for (its final
    output is exactly ``forward_features``: blocks then the final norm), else
    ``forward_features``.
    """
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        raise ValueError(f"unknown feature variant(s) {bad}; supported: {', '.join(VARIANTS)}")
    out: dict[str, torch.Tensor] = {}
    if "cls_last4" in variants:
        if len(model.blocks) < 4:
            raise ValueError(
                f"cls_last4 needs a backbone with >= 4 blocks, got {len(model.blocks)}"
            )
        feats, inter = model.forward_intermediates(
            x, indices=4, norm=True, output_fmt="NLC", return_prefix_tokens=True
        )
        # inter: [(patch_tokens, prefix_tokens)] for blocks L-4..L-1; prefix[:, 0] is CLS.
        out["cls_last4"] = torch.cat([prefix[:, 0] for _, prefix in inter], dim=-1).float()
    else:
        feats = model.forward_features(x)
    if "cls" in variants:
        out["cls"] = feats[:, 0].float()
    if "patch_mean" in variants:
        out["patch_mean"] = feats[:, model.num_prefix_tokens :].float().mean(1)
    return {v: out[v] for v in variants}


def view_rows(
    samples: Sequence[Any], views: str = "clean", augment_views: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """The cache's row table: ``(sample index, view code)`` per row.

    Rows ``0..N-1`` are the clean images in sample order; with ``views="validator"`` each
    sample of a split in ``VIEW_SPLITS`` then gets rows with views ``1..4`` (levels 0-3); with
    ``augment_views = K > 0`` each sample of ``AUGMENT_SPLITS`` (train) then gets rows with views
    ``1..K`` (augmented, ``feature_extract.augment``). Without augmentation the table is exactly
    the one earlier caches were written with.
    """
    if views not in ("clean", "validator"):
        raise ValueError(f"backbone.views must be clean or validator, got {views!r}")
    n = len(samples)
    extra = (
        [k for k, s in enumerate(samples) if s.split in VIEW_SPLITS] if views == "validator" else []
    )
    aug = [k for k, s in enumerate(samples) if s.split in AUGMENT_SPLITS] if augment_views else []
    idx = np.concatenate(
        [
            np.arange(n),
            np.repeat(np.asarray(extra, np.int64), len(LEVELS)),
            np.repeat(np.asarray(aug, np.int64), augment_views),
        ]
    )
    view = np.concatenate(
        [
            np.zeros(n),
            np.tile(np.arange(1, len(LEVELS) + 1), len(extra)),
            np.tile(np.arange(1, augment_views + 1), len(aug)),
        ]
    )
    return idx.astype(np.int64), view.astype(np.int16)


class StrictError(RuntimeError):
    """``strict=True`` met an unreadable file; the message starts with its path."""


def _where(sample: Any) -> str:
    path = getattr(sample, "path", "") or sample.id
    row = getattr(sample, "row", -1)
    return f"{path} row {row}" if row is not None and row >= 0 else str(path)


def local_world_size() -> int:
    """Processes on this node (torchrun's ``LOCAL_WORLD_SIZE``; 1 outside torchrun)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


class _Writer:
    """Writes a batch's features one batch late: the device->host copy of batch i is waited
    for only after batch i+1 is queued, so the GPU never idles on the HDF5 write."""

    def __init__(self, store, path, row_labels, written):
        self.store, self.path, self.row_labels, self.written = store, path, row_labels, written
        self._pending = None

    def submit(self, rows: np.ndarray, feats: dict[str, torch.Tensor]) -> None:
        host = {k: v.to("cpu", non_blocking=True) for k, v in feats.items()}
        event = None
        if next(iter(feats.values())).device.type == "cuda":
            event = torch.cuda.Event()
            event.record()
        self.flush()
        self._pending = (rows, host, event)

    def flush(self) -> None:
        if self._pending is None:
            return
        rows, host, event = self._pending
        self._pending = None
        if event is not None:
            event.synchronize()
        # labels too: a retried row that was skipped (label -1) gets its label back
        self.store.write_rows(
            self.path, rows, {k: v.numpy() for k, v in host.items()}, labels=self.row_labels[rows]
        )
        self.written[rows] = True


def extract(
    samples: Sequence[Any],
    out_path: str | os.PathLike,
    cfg: Any,
    *,
    store: Any,
    read: Callable[[Any], bytes],
    progress: bool = True,
    limit_batches: int | None = None,
    view_seed: int = 0,
    strict: bool = False,
    augment: AugmentSpec | None = None,
    sources: Sequence[str] | None = None,
) -> ExtractReport:
    """Extract (or resume) the feature cache ``out_path`` for ``samples`` with backbone ``cfg``.

    This room imports nothing from the orchestration room: the owner of the cache format and
    the image reader are passed in (``stage1.features`` passes ``stage1.cache`` and
    ``stage1.manifest.read_bytes``), so the HDF5 layout is written by one module only.

    Args:
        samples: one image each (objects with ``id``, ``label``, ``split``, ``domain``); ids
            must be unique.
        out_path: HDF5 cache; created if absent, else resumed after a compatibility check.
        cfg: the backbone section of the config (name/weights/kwargs, image size, batch size,
            workers, variants, views, dtype, device).
        store: the cache format's owner: ``create_cache``, ``open_cache``, ``write_rows``,
            ``mark_skipped``, ``split_codes`` and ``CacheError`` (``stage1.cache``).
        read: ``read(sample) -> bytes`` of the encoded image (``stage1.manifest.read_bytes``).
        progress: show a tqdm bar and print a one-line summary.
        limit_batches: stop after this many batches (tests, smoke runs); resume later.
        view_seed: seed of the validator views (``views="validator"``); recorded in the
            metadata and checked on resume.
        strict: raise ``StrictError`` naming the first unreadable file instead of skipping it
            (rows written so far stay, so a rerun resumes).
        augment: K augmented views per train image (``feature_extract.augment``); None or
            ``views == 0``: none (recorded in the metadata and checked on resume).
        sources: the data sources the samples came from, recorded as ``metadata["sources"]``.

    Returns:
        An ``ExtractReport`` of this call.
    """
    out_path = Path(out_path)
    if not samples:
        raise ValueError("no samples to extract")
    ids = [s.id for s in samples]
    if len(set(ids)) != len(ids):
        raise ValueError(f"sample ids are not unique ({len(ids) - len(set(ids))} duplicates)")
    variants = tuple(cfg.variants)
    bad = [v for v in variants if v not in VARIANTS]
    if bad or not variants:
        raise ValueError(f"unknown feature variant(s) {bad}; supported: {', '.join(VARIANTS)}")
    try:
        model_kwargs = json.loads(cfg.model_kwargs or "{}")
    except json.JSONDecodeError as e:
        raise ValueError(f"backbone.model_kwargs is not JSON: {e}") from None
    device = pick_device(cfg.device)
    model, info = build_backbone(cfg.name, cfg.weights, model_kwargs)
    if "cls_last4" in variants and info["depth"] < 4:
        raise ValueError(f"cls_last4 needs a backbone with >= 4 blocks, got {info['depth']}")
    model.to(device)
    info = {**info, "n_params": sum(p.numel() for p in model.parameters())}
    dims = {v: VARIANTS[v] * info["embed_dim"] for v in variants}
    if augment is not None and augment.views == 0:
        augment = None
    row_sample, row_view = view_rows(samples, cfg.views, augment.views if augment else 0)
    meta = _metadata(cfg, info, dims, view_seed)
    if augment is not None:
        meta["augment"] = augment.record()
    if sources:
        meta["sources"] = [str(s) for s in sources]
    row_ids = np.asarray([samples[k].id for k in row_sample], dtype=object)
    row_labels = np.asarray([samples[k].label for k in row_sample], dtype=np.int8)
    retry_entries: dict[str, dict[str, Any]] = {}
    if out_path.exists():
        done, old_skipped = _check_resume(
            store, out_path, samples, meta, model_kwargs, row_sample, row_view
        )
        # Retry every image an earlier run skipped: its rows stay done (and skipped) on disk
        # until they are read, so an interrupted retry is simply retried again.
        retry_entries = {e["id"]: e for e in old_skipped}
        done = done & ~np.isin(row_ids, list(retry_entries))
    else:
        store.create_cache(
            out_path,
            ids=[samples[k].id for k in row_sample],
            labels=[samples[k].label for k in row_sample],
            split=[samples[k].split for k in row_sample],
            domain=[samples[k].domain for k in row_sample],
            view=row_view,
            dims=dims,
            metadata=meta,
            dtype=cfg.dtype,
            group=[str(getattr(samples[k], "group", "") or "") for k in row_sample],
        )
        done = np.zeros(len(row_sample), dtype=bool)

    pending = np.flatnonzero(~done)
    retry_ids = {str(i) for i in row_ids[pending]} & set(retry_entries)
    # Group each sample's rows (clean + views) so one decode serves them all.
    pending = pending[np.lexsort((row_view[pending], row_sample[pending]))]
    choice = choose(cfg, device, info.get("n_params", 0), local_world_size())
    loader = make_loader(
        samples,
        read,
        pending,
        cfg,
        choice,
        row_sample,
        row_view,
        view_seed,
        skip_reason,
        device,
        augment,
    )
    forward = fast_forward(model, device, variants, getattr(cfg, "compile", "auto"))
    cpu_decode = cpu_decoder(cfg.image_size)
    from tqdm.auto import tqdm

    report = ExtractReport(
        n_total=len(row_sample),
        n_done=0,
        n_skipped=0,
        n_already_done=int(done.sum()),
        path=str(out_path),
        n_images=len(samples),
        n_retried=len(retry_ids),
        chosen=choice.describe(),
    )
    failed: set[str] = set()
    written = np.zeros(len(row_sample), dtype=bool)
    writer = _Writer(store, out_path, row_labels, written)

    def prepare(batch):  # on the prefetch thread: decode, resize, normalise (feature_extract.
        # prefetch says why a thread); the main thread runs the model and writes
        return batch_input(
            batch[1], device, cfg.image_size, info["mean"], info["std"], cpu_decode, skip_reason
        )

    t0 = time.perf_counter()
    if device.type == "cuda" and len(pending):
        # Compile (or load the cached kernels) before the loader starts: a compile that runs
        # while the workers decode hides their first minute and makes the speed after it a
        # figure of the forward pass alone.
        forward(
            torch.zeros(
                (min(choice.batch_size, len(pending)), 3, cfg.image_size, cfg.image_size),
                device=device,
            )
        )
    # the steady-state clock starts after loader.warm_batches (why: there)
    n_batches = -(-len(pending) // choice.batch_size)
    n_batches = min(n_batches, limit_batches) if limit_batches else n_batches
    warm = warm_batches(n_batches, choice.num_workers)
    t_first, n_first = None, 0
    batches = itertools.islice(loader, limit_batches)
    with tqdm(total=len(pending), unit="img", disable=not progress, desc="extract") as bar:
        for k, ((rows, _), (x, good, bad_items)) in enumerate(prefetched(batches, prepare, device)):
            bad_rows = [(int(rows[i]), why) for i, why in bad_items]
            if strict and bad_rows:
                r, why = min(bad_rows)
                writer.flush()
                raise StrictError(f"{_where(samples[row_sample[r]])}: {why}")
            if x is not None:
                writer.submit(rows[good], forward(x))  # written after the next batch is queued
                report.n_done += len(good)
            if bad_rows:
                writer.flush()  # keep the file's writes in row-batch order
                entries = _mark_skipped(store, out_path, bad_rows, samples, row_sample, dims)
                entries = [e for e in entries if e["id"] not in failed]  # views of one image
                failed.update(e["id"] for e in entries)
                report.skipped += entries
                report.n_skipped += len(entries)
            bar.update(len(rows))
            if k + 1 == warm:
                writer.flush()
                t_first, n_first = time.perf_counter(), report.n_done
        writer.flush()
    if t_first is not None and report.n_done > n_first:
        report.steady_images_per_s = (report.n_done - n_first) / (time.perf_counter() - t_first)
    if retry_ids:
        report.n_recovered = _record_retries(
            store, out_path, retry_entries, retry_ids, failed, row_ids, written
        )
    report.skipped_total = list(
        store.open_cache(out_path, require_complete=False).metadata["skipped"]
    )
    report.seconds = time.perf_counter() - t0
    report.images_per_s = report.n_done / report.seconds if report.seconds > 0 else 0.0
    line = (
        f"extracted {report.n_done} rows ({report.n_skipped} images skipped, "
        f"{report.n_already_done} already done) of {report.n_total} in {report.seconds:.1f}s, "
        f"{report.images_per_s:.1f} img/s ({report.steady_images_per_s:.1f} in steady state) "
        f"on {device} [{report.chosen}] -> {out_path}"
    )
    if progress:
        print(line)
    log.info(line)
    return report


def _metadata(cfg: Any, info: dict[str, Any], dims: dict[str, int], view_seed: int) -> dict:
    import importlib.metadata

    import timm

    try:
        version = importlib.metadata.version("stage1")
    except importlib.metadata.PackageNotFoundError:  # a source checkout that is not installed
        version = "unknown"

    meta: dict[str, Any] = {
        "format_version": 1,
        "backbone": cfg.name,
        "weights_sha256": info["weights_sha256"],
        "weights_path": info["weights_path"],
        "random_init": info["random_init"],
        "pooling": info["pooling"],
        "image_size": int(cfg.image_size),
        "mean": info["mean"],
        "std": info["std"],
        "library_version": (
            f"stage1 {version}; torch {torch.__version__}; timm {timm.__version__}"
        ),
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "extraction_config": json.loads(json.dumps(dataclasses.asdict(cfg))),
        "views": cfg.views,
        "view_codes": {
            str(k): VIEW_NAMES[k] for k in range(len(VIEW_NAMES) if cfg.views == "validator" else 1)
        },
        "skipped": [],
        # create_cache fills these too; set here so the resume check compares like with like
        "variants": dims,
        "dtype": cfg.dtype,
    }
    if cfg.views == "validator":
        meta["view_seed"] = int(view_seed)
        meta["view_splits"] = list(VIEW_SPLITS)
    if info["random_init"]:
        meta["warning"] = info["warning"]
    return meta


def _check_resume(
    store: Any,
    path: Path,
    samples: Sequence[Any],
    meta: dict[str, Any],
    model_kwargs,
    row_sample: np.ndarray,
    row_view: np.ndarray,
) -> np.ndarray:
    """Refuse a cache made by another backbone/preprocessing/views/sample list; return its done
    mask."""
    cache = store.open_cache(path, require_complete=False)
    old = dict(cache.metadata)
    if old.get("views") == "0 = clean image":  # caches written before views were configurable
        old["views"] = "clean"
    diff = [k for k in _RESUME_KEYS if old.get(k) != meta.get(k)]
    old_kwargs = json.loads(old.get("extraction_config", {}).get("model_kwargs", "{}") or "{}")
    if old_kwargs != model_kwargs:
        diff.append("model_kwargs")
    if diff:
        was = ", ".join(f"{k}={old.get(k)!r}" for k in diff if k != "model_kwargs")
        raise store.CacheError(
            f"cache {path} was made with {was or 'other model_kwargs'} (differs in "
            f"{', '.join(diff)}); delete it or choose another --out"
        )
    same_rows = len(cache) == len(row_sample)
    if same_rows:
        skipped = {e.get("id") for e in old.get("skipped", [])}
        ids = np.asarray([samples[k].id for k in row_sample], dtype=object)
        split = store.split_codes([samples[k].split for k in row_sample])
        labels = np.asarray([samples[k].label for k in row_sample])
        # domains too: `--data A` then `--data night=A` keeps every id, and resuming would leave
        # the old domain names (and the old domain's augmentation of the rows already written)
        domains = np.asarray([str(samples[k].domain) for k in row_sample], dtype=object)
        was_skipped = np.asarray([i in skipped for i in ids], dtype=bool)
        same_rows = bool(
            (cache.ids == ids).all()
            and (cache.split == split).all()
            and (cache.view == row_view).all()
            and (np.asarray(cache.domain, dtype=object) == domains).all()
            and ((cache.labels == labels) | was_skipped).all()
        )
    if not same_rows:
        raise store.CacheError(
            f"cache {path} was made with another sample list (ids, splits, domains or labels "
            "differ); delete it or choose another --out"
        )
    return cache.done, list(old.get("skipped", []))


def _mark_skipped(store, path: Path, bad_rows, samples, row_sample, dims) -> list[dict]:
    """Rows of unreadable images (``store.mark_skipped``: label -1, zero features, done); each
    image listed once in the metadata (a retried one with its new reason). Returns this batch's
    entries, one per image."""
    rows = np.asarray(sorted(r for r, _ in bad_rows), dtype=np.int64)
    entries: dict[str, dict[str, Any]] = {}
    for r, why in sorted(bad_rows):
        s = samples[row_sample[r]]
        entries.setdefault(s.id, {"id": s.id, "label": s.label, "reason": why})
    store.mark_skipped(path, rows, list(entries.values()), dims)
    return list(entries.values())


def _record_retries(store, path, before, retry_ids, failed, row_ids, written) -> int:
    """Record this call's retries of earlier skips; returns how many images were recovered.

    An image counts as recovered when every one of its rows was written by this call (with
    ``limit_batches`` some may not have been reached: those stay skipped and are retried again).
    """
    when = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    outcomes = []
    for i in sorted(retry_ids):
        if i in failed:
            outcome = "skipped again"
        elif written[row_ids == i].all():
            outcome = "extracted"
        else:
            continue
        e = before[i]
        outcomes.append(
            {"id": i, "label": e.get("label"), "reason": e.get("reason", ""), "outcome": outcome,
             "retried_at": when}
        )  # fmt: skip
    store.record_retries(path, outcomes)
    return sum(o["outcome"] == "extracted" for o in outcomes)
