"""End-to-end DoRA/LoRA fine-tuning of the DINOv3 backbone (phases 3 and 4), resumable.

    timm DINOv3 (``build_backbone``) + peft adapters (``peft_adapters.attach``) + a linear or MLP
    head on the CLS token (or the patch mean)  ->  class-weighted CE, warm-up cosine, AdamW or
    SGD, optionally inside SAM/ASAM/F-SAM (``torch_sam.SAM``), gradient accumulation and
    clipping, bf16 autocast + channels-last + ``torch.compile`` on CUDA  ->  validation AUROC
    every epoch, the best epoch kept  ->  ``adapter.safetensors``, ``head.safetensors`` and the
    merged backbone ``backbone_merged.safetensors`` (timm keys: ``stage1 features --weights``
    loads it like any timm checkpoint).

Checkpoints (``checkpoint.pt``, every ``checkpoint_every`` optimizer steps and after every epoch,
written atomically) hold only the trainable tensors (adapters + head), the optimizer, scheduler
and RNG states and the position in the epoch; the frozen backbone is rebuilt from its weights
file. The epoch's sample order and flips are a pure function of (seed, epoch), so a run killed
mid-epoch resumes at the next unseen micro-batch and ends bit-identical to an uninterrupted run
(CPU; tested).

Like ``extract``, this room imports nothing from ``stage1``: the samples and the image reader are
passed in, and the caller writes the JSON record of the returned report.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from feature_extract import peft_adapters
from feature_extract.backbone import build_backbone
from feature_extract.extract import pick_device
from feature_extract.preprocess import CorruptImageError, decode, normalize, to_uint8
from feature_extract.torch_sam import SAM

CHECKPOINT = "checkpoint.pt"
BEST = "best.safetensors"
ADAPTER = "adapter.safetensors"
HEAD = "head.safetensors"
MERGED = "backbone_merged.safetensors"
_FINGERPRINT_SKIP = ("enabled", "compile", "checkpoint_every")  # may change between resumes


@dataclass
class FinetuneReport:
    """What a fine-tune produced (``finetune.json`` via the caller)."""

    out: str
    method: str
    epochs: int
    best_epoch: int  # -1: no epoch ran (epochs = 0), the adapters are the identity
    best_val_auroc: float | None
    history: list[dict[str, Any]] = field(default_factory=list)
    trainable_params: int = 0
    adapter_layers: int = 0
    fused_dora_layers: int = 0
    target_regex: str = ""
    steps: int = 0
    resumed_at_step: int = 0
    device: str = "cpu"
    seconds: float = 0.0
    files: dict[str, str] = field(default_factory=dict)


class Net(torch.nn.Module):
    """Adapted backbone + training head on one token of the final-norm features."""

    def __init__(self, backbone: torch.nn.Module, head: torch.nn.Module, feature: str):
        super().__init__()
        self.backbone, self.head, self.feature = backbone, head, feature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.backbone.forward_features(x)
        if self.feature == "cls":
            z = feats[:, 0]
        else:
            z = feats[:, self.backbone.num_prefix_tokens :].mean(1)
        return self.head(z.float())


def make_head(kind: str, dim: int, hidden: int) -> torch.nn.Module:
    if kind == "linear":
        return torch.nn.Linear(dim, 2)
    if kind == "mlp":
        return torch.nn.Sequential(
            torch.nn.Linear(dim, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, 2)
        )
    raise ValueError(f"finetune.head must be linear|mlp, got {kind!r}")


class _Images(torch.utils.data.Dataset):
    """(sample position, flip) items -> (uint8 image or None, label, position)."""

    def __init__(self, samples, read, items, size):
        self.samples, self.read, self.items, self.size = samples, read, items, size

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        k, flip = self.items[i]
        s = self.samples[k]
        try:
            x = to_uint8(decode(self.read(s)), self.size)
        except (CorruptImageError, OSError, ValueError):
            return None, int(s.label), k  # unreadable: dropped by the collate, never fatal
        return (x.flip(-1) if flip else x), int(s.label), k


def _collate(items):
    good = [(x, y) for x, y, _ in items if x is not None]
    if not good:
        return None, None
    return torch.stack([x for x, _ in good]), torch.tensor([y for _, y in good])


def epoch_items(n: int, seed: int, epoch: int, shuffle: bool = True) -> list[tuple[int, bool]]:
    """The epoch's (sample position, horizontal flip) list: a pure function of (seed, epoch)."""
    if not shuffle:
        return [(k, False) for k in range(n)]
    rng = np.random.default_rng([seed, epoch, 7])
    order = rng.permutation(n)
    flips = rng.random(n) < 0.5
    return [(int(k), bool(f)) for k, f in zip(order, flips, strict=True)]


def warmup_cosine(total: int, warmup_frac: float) -> Callable[[int], float]:
    """LR factor at optimizer step s: linear warm-up to 1, then cosine to 0 at ``total``."""
    warm = int(round(warmup_frac * total))

    def factor(s: int) -> float:
        if s < warm:
            return (s + 1) / warm
        rest = max(total - warm, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(s - warm, rest) / rest))

    return factor


def finetune(
    train: Sequence[Any],
    val: Sequence[Any],
    out_dir: str | os.PathLike,
    ft: Any,
    bb: Any,
    *,
    read: Callable[[Any], bytes],
    progress: bool = True,
    on_step: Callable[[int], None] | None = None,
) -> FinetuneReport:
    """Fine-tune (or resume) into ``out_dir``; returns the report.

    Args:
        train, val: labelled samples (``id``, ``label`` in {0, 1}); val picks the best epoch.
        out_dir: checkpoint and outputs folder (created).
        ft: the ``finetune`` config section; bb: the ``backbone`` section (name, weights,
            image size, model_kwargs, device, num_workers).
        read: ``read(sample) -> bytes`` (``stage1.manifest.read_bytes``).
        on_step: called with the global optimizer step after each step (and its checkpoint).
    """
    t_start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train = [s for s in train if s.label in (0, 1)]
    val = [s for s in val if s.label in (0, 1)]
    if ft.epochs > 0 and (len({s.label for s in train}) < 2 or not val):
        raise ValueError("fine-tuning needs both classes in the train split and a val split")
    device = pick_device(bb.device)
    kwargs = json.loads(bb.model_kwargs or "{}")
    torch.manual_seed(ft.seed)
    backbone, info = build_backbone(bb.name, bb.weights, kwargs)
    peft_model = peft_adapters.attach(
        backbone,
        method=ft.method,
        rank=ft.rank,
        alpha=ft.alpha,
        dropout=ft.dropout,
        targets=tuple(ft.targets),
        blocks=ft.blocks,
    )
    inner = peft_model.base_model.model  # the timm Eva, adapters injected in place
    head = make_head(ft.head, info["embed_dim"], ft.head_hidden)
    net = Net(inner, head, ft.feature).to(device)
    net.backbone.train()
    layers = peft_adapters.lora_layers(inner)
    report = FinetuneReport(
        out=str(out),
        method=ft.method,
        epochs=int(ft.epochs),
        best_epoch=-1,
        best_val_auroc=None,
        trainable_params=sum(p.numel() for p in net.parameters() if p.requires_grad),
        adapter_layers=len(layers),
        fused_dora_layers=sum(1 for _, m in layers if "forward" in m.__dict__),
        target_regex=peft_adapters.target_regex(tuple(ft.targets), ft.blocks),
        device=str(device),
    )

    labels = np.asarray([s.label for s in train])
    counts = np.bincount(labels, minlength=2).astype(np.float64) if len(labels) else np.ones(2)
    class_w = torch.tensor(len(labels) / (2.0 * np.maximum(counts, 1.0)), dtype=torch.float32)
    class_w = class_w.to(device)
    micro_per_epoch = math.ceil(len(train) / ft.batch_size)
    steps_per_epoch = math.ceil(micro_per_epoch / ft.grad_accum)
    total_steps = max(steps_per_epoch * ft.epochs, 1)

    opt = SAM(
        _base_optimizer(net, ft),
        ft.sam,
        rho=ft.sam_rho,
        sigma=ft.fsam_sigma,
        lam=ft.fsam_lambda,
        max_grad_norm=ft.max_grad_norm,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt.base, warmup_cosine(total_steps, ft.warmup_frac))
    fingerprint = _fingerprint(ft, bb, info, train, val)
    # position (epoch, micro-batch, step) and the epoch's running loss: all a resume needs
    state = {"epoch": 0, "micro": 0, "step": 0, "best": None, "history": [], "loss": [0.0, 0]}
    ckpt = out / CHECKPOINT
    if ckpt.exists():
        state = _load_checkpoint(ckpt, net, opt, sched, fingerprint)
        report.resumed_at_step = state["step"]
        if progress:
            print(f"finetune: resuming {ckpt} at epoch {state['epoch']}, step {state['step']}")

    cuda = device.type == "cuda"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
    model = net
    if ft.compile == "on" or (ft.compile == "auto" and cuda):
        model = torch.compile(net)
    mean, std = info["mean"], info["std"]

    def prep(x: torch.Tensor) -> torch.Tensor:
        x = normalize(x.to(device, non_blocking=True), mean, std)
        return x.contiguous(memory_format=torch.channels_last) if cuda else x

    from tqdm.auto import tqdm

    while state["epoch"] < ft.epochs:
        epoch = state["epoch"]
        items = epoch_items(len(train), ft.seed, epoch)[state["micro"] * ft.batch_size :]
        loader = _loader(train, read, items, bb, ft.batch_size, shuffle_seed=ft.seed + epoch)
        net.train()
        t0, seen0 = time.perf_counter(), state["loss"][1]
        group: list[tuple[torch.Tensor, torch.Tensor]] = []
        bar = tqdm(total=len(items), unit="img", disable=not progress, desc=f"finetune {epoch}")
        for x, y in loader:
            state["micro"] += 1
            if x is not None:
                group.append((prep(x), y.to(device)))
                bar.update(len(y))
            if len(group) < ft.grad_accum and state["micro"] < micro_per_epoch:
                continue
            if group:

                def accumulate(group=group):
                    # the group's class-weighted mean CE: sum_i w_yi ce_i / sum_i w_yi over all
                    # its micro-batches, so grad_accum = k equals one k-times larger batch
                    denom = sum(class_w[yb].sum() for _, yb in group)
                    total = torch.zeros((), device=device)
                    for xb, yb in group:
                        with autocast:
                            logits = model(xb)
                        ce = F.cross_entropy(logits.float(), yb, weight=class_w, reduction="sum")
                        loss = ce / denom
                        loss.backward()
                        total += loss.detach()
                    return total  # a tensor: no host sync per micro-batch

                opt.zero_grad()
                n_group = sum(len(yb) for _, yb in group)
                group_loss = accumulate()
                opt.step(accumulate if opt.active else None)
                state["loss"] = [
                    state["loss"][0] + float(group_loss) * n_group,  # one sync per step
                    state["loss"][1] + n_group,
                ]
                sched.step()
                state["step"] += 1
                group = []
                if state["step"] % ft.checkpoint_every == 0:
                    _save_checkpoint(ckpt, net, opt, sched, state, fingerprint)
                if on_step is not None:
                    on_step(state["step"])
        bar.close()
        secs = time.perf_counter() - t0
        loss_sum, seen = state["loss"]
        val_loss, val_auroc = evaluate(model, val, read, bb, ft.batch_size, prep, class_w, autocast)
        row = {
            "epoch": epoch,
            "train_loss": loss_sum / max(seen, 1),
            "val_loss": val_loss,
            "val_auroc": val_auroc,
            "seconds": secs,
            "images_per_s": (seen - seen0) / secs if secs > 0 else 0.0,
        }
        state["history"].append(row)
        if _better(row, state["best"]):
            state["best"] = {"epoch": epoch, "val_auroc": val_auroc, "val_loss": val_loss}
            _atomic_save_tensors(out / BEST, _trainable(net))
        if progress:
            print(
                f"finetune epoch {epoch}: train loss {row['train_loss']:.4f}, val loss "
                f"{val_loss:.4f}, val AUROC {val_auroc:.4f}, {row['images_per_s']:.1f} img/s"
            )
        state["epoch"], state["micro"], state["loss"] = epoch + 1, 0, [0.0, 0]
        _save_checkpoint(ckpt, net, opt, sched, state, fingerprint)

    if state["best"] is not None:  # the best epoch's adapters and head, not the last
        _load_trainable(net, _load_tensors(out / BEST))
        report.best_epoch = int(state["best"]["epoch"])
        report.best_val_auroc = state["best"]["val_auroc"]
    report.history, report.steps = state["history"], state["step"]
    report.files = _finalise(out, peft_model, net, ft, info)
    report.seconds = time.perf_counter() - t_start
    return report


def _base_optimizer(net: Net, ft: Any) -> torch.optim.Optimizer:
    """Adapters at ``lr``, head at ``head_lr``; decay on matrices only (never on DoRA's
    magnitudes, which decay would pull towards 0 instead of towards ``||W0||``, nor biases)."""
    groups = []
    for params, lr in (
        ([p for p in net.backbone.parameters() if p.requires_grad], ft.lr),
        (list(net.head.parameters()), ft.head_lr),
    ):
        decay = [p for p in params if p.ndim >= 2]
        rest = [p for p in params if p.ndim < 2]
        groups += [
            {"params": decay, "lr": lr, "weight_decay": ft.weight_decay},
            {"params": rest, "lr": lr, "weight_decay": 0.0},
        ]
    groups = [g for g in groups if g["params"]]
    if ft.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=ft.lr, momentum=0.9)
    return torch.optim.AdamW(groups, lr=ft.lr)


def _loader(samples, read, items, bb, batch_size, shuffle_seed):
    workers = int(getattr(bb, "num_workers", 0))
    if workers < 0:  # auto: the extraction loader's rule (feature_extract.loader.choose)
        from feature_extract.loader import usable_cores

        workers = 0 if usable_cores() <= 2 else min(usable_cores() - 1, 32)
    return torch.utils.data.DataLoader(
        _Images(samples, read, items, bb.image_size),
        batch_size=batch_size,
        shuffle=False,  # the order is epoch_items': resumable mid-epoch
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=torch.cuda.is_available(),
        # its own generator: iterating must not draw from the global RNG (dropout's)
        generator=torch.Generator().manual_seed(shuffle_seed),
        multiprocessing_context=("spawn" if workers > 0 and "jax" in sys.modules else None),
    )


@torch.no_grad()
def evaluate(model, samples, read, bb, batch_size, prep, class_w, autocast):
    """(class-weighted CE, AUROC) on ``samples`` in eval mode; AUROC is NaN with one class."""
    from sklearn.metrics import roc_auc_score

    was = model.training
    model.eval()
    logits, ys = [], []
    for x, y in _loader(samples, read, epoch_items(len(samples), 0, 0, False), bb, batch_size, 0):
        if x is None:
            continue
        with autocast:
            logits.append(model(prep(x)).float().cpu())
        ys.append(y)
    model.train(was)
    if not logits:
        return float("nan"), float("nan")
    z, y = torch.cat(logits), torch.cat(ys)
    w = class_w.cpu()
    loss = float(F.cross_entropy(z, y, weight=w))
    score = (z[:, 1] - z[:, 0]).numpy()
    auroc = float(roc_auc_score(y.numpy(), score)) if len(set(y.tolist())) == 2 else float("nan")
    return loss, auroc


def _better(row: dict, best: dict | None) -> bool:
    if best is None:
        return True
    a, b = row["val_auroc"], best["val_auroc"]
    if math.isnan(a) or math.isnan(b) or a == b:
        return row["val_loss"] < best["val_loss"]
    return a > b


# ---------------------------------------------------------------------------------------------
# State: trainable tensors only, atomic files


def _trainable(net: Net) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in net.named_parameters() if p.requires_grad}


def _load_trainable(net: Net, tensors: dict[str, torch.Tensor]) -> None:
    params = dict(net.named_parameters())
    with torch.no_grad():
        for n, t in tensors.items():
            params[n].copy_(t)


def _atomic(path: Path, write: Callable[[str], None]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    umask = os.umask(0)  # mkstemp makes 0600 files; give outputs the usual umask mode
    os.umask(umask)
    try:
        write(tmp)
        # after the write: safetensors' save_file recreates the file (0600 again)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _atomic_save_tensors(path: Path, tensors: dict[str, torch.Tensor], meta=None) -> None:
    from safetensors.torch import save_file

    flat = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    _atomic(path, lambda tmp: save_file(flat, tmp, metadata=meta))


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def _fingerprint(ft: Any, bb: Any, info: dict, train, val) -> str:
    keys = {k: v for k, v in asdict(ft).items() if k not in _FINGERPRINT_SKIP}
    keys["backbone"] = [bb.name, info["weights_sha256"], bb.image_size, bb.model_kwargs]
    keys["train"] = [s.id for s in train]
    keys["val"] = [s.id for s in val]
    return hashlib.sha256(json.dumps(keys, sort_keys=True, default=list).encode()).hexdigest()


def _save_checkpoint(path, net, opt, sched, state, fingerprint) -> None:
    blob = {
        "fingerprint": fingerprint,
        "trainable": _trainable(net),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "state": state,
        "rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }
    _atomic(path, lambda tmp: torch.save(blob, tmp))


def _load_checkpoint(path, net, opt, sched, fingerprint) -> dict:
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if blob.get("fingerprint") != fingerprint:
        raise ValueError(
            f"checkpoint {path} belongs to another fine-tune (config, backbone or splits "
            "differ); delete it or choose another output folder"
        )
    _load_trainable(net, blob["trainable"])
    opt.load_state_dict(blob["optimizer"])
    sched.load_state_dict(blob["scheduler"])
    torch.set_rng_state(blob["rng"])
    if blob.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(blob["cuda_rng"])
    return blob["state"]


def _finalise(out: Path, peft_model, net: Net, ft: Any, info: dict) -> dict[str, str]:
    """adapter + head tensors, then the merged backbone in timm keys (float32, CPU)."""
    meta = {
        "method": ft.method,
        "rank": str(ft.rank),
        "alpha": str(ft.alpha),
        "target_regex": peft_adapters.target_regex(tuple(ft.targets), ft.blocks),
        "backbone": info["name"],
        "weights_sha256": info["weights_sha256"],
    }
    _atomic_save_tensors(out / ADAPTER, peft_adapters.adapter_state(peft_model), meta)
    head_meta = {"kind": ft.head, "feature": ft.feature}
    _atomic_save_tensors(out / HEAD, net.head.state_dict(), head_meta)
    merged = peft_adapters.merge(peft_model).to("cpu").float()
    sd = {k: v for k, v in merged.state_dict().items() if "rope" not in k}
    _atomic_save_tensors(out / MERGED, sd, {"format": "timm", "backbone": info["name"]})
    return {k: str(out / v) for k, v in (("adapter", ADAPTER), ("head", HEAD), ("merged", MERGED))}
