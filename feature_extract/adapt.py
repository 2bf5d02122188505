"""ExPLoRA-style self-supervised adaptation of the DINOv3 backbone (``stage1 adapt``), resumable.

    unlabelled target images -> DINO multi-crop (``multicrop``) -> student = backbone with peft
    LoRA on the attention linears of every block but the last ``unfreeze_blocks`` (those fully
    trainable, + the final norm) + a re-initialised DINO head; teacher = EMA of the student
    (timm ``ModelEmaV3``, momentum cosine from ``adapt.momentum`` to 1) -> DINO loss with
    centring and teacher-temperature warm-up (``dino``) -> AdamW, warm-up cosine, clipping,
    bf16 autocast + optional ``torch.compile`` on CUDA -> ``adapter.safetensors`` and the merged
    backbone ``backbone_merged.safetensors`` (timm keys, ``stage1 features --weights``).

ExPLoRA (Khanna et al. 2024, arXiv 2406.10973; METHODS.md 10): extended pre-training with the
source model's own SSL objective, LoRA + 1-2 unfrozen blocks, on unlabelled target-domain
images, then re-extraction / probing. docs/adapt.md lists what is and is not reproduced.

The exported backbone is the teacher (``adapt.export=teacher``, as DINO/DINOv2 release their
teacher weights) or the student. The teacher's EMA runs over every tensor of the student
(frozen ones stay bit-identical: ``lerp(x, x, w) = x``), so its LoRA factors are EMAs of the
student's and it merges like the student does.

Checkpoints hold only what training changes (student trainables, their teacher twins, the
centre, optimizer, scheduler, position, RNG); the sample stream and every crop are pure
functions of (seed, stream position), so a resumed run ends bit-identical on the CPU (tested).
This room imports nothing from ``stage1``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from feature_extract import peft_adapters
from feature_extract.backbone import build_backbone
from feature_extract.dino import DINOHead, DINOLoss, teacher_momentum, teacher_temperature
from feature_extract.extract import pick_device
from feature_extract.finetune import _atomic, _atomic_save_tensors, warmup_cosine
from feature_extract.multicrop import MultiCrop, stream_index
from feature_extract.preprocess import CorruptImageError, decode

CHECKPOINT = "checkpoint.pt"
ADAPTER = "adapter.safetensors"
MERGED = "backbone_merged.safetensors"
_FINGERPRINT_SKIP = ("compile", "checkpoint_every", "precision")  # may change between resumes


@dataclass
class AdaptReport:
    """What an adaptation produced (``adapt.json`` via the caller)."""

    out: str
    steps: int
    resumed_at_step: int = 0
    losses: list[float] = field(default_factory=list)  # DINO loss per optimizer step
    trainable_params: int = 0
    lora_layers: int = 0
    unfrozen_blocks: list[int] = field(default_factory=list)
    target_regex: str = ""
    views_per_image: int = 0
    images_seen: int = 0
    images_per_s: float = 0.0
    device: str = "cpu"
    precision: str = "float32"
    export: str = "teacher"
    seconds: float = 0.0
    files: dict[str, str] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)  # source weights and versions


class Student(torch.nn.Module):
    """Backbone + DINO head on the final-norm CLS token; one forward per crop resolution."""

    def __init__(self, backbone: torch.nn.Module, head: torch.nn.Module):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone.forward_features(x)[:, 0])


def forward_views(net, views: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Outputs of ``net`` per view, the views of one size concatenated into one forward
    (DINO's multi-crop wrapper: 2 global + L local views = 2 forwards, not 2 + L)."""
    out: list[torch.Tensor] = []
    i = 0
    while i < len(views):
        j = i
        while j < len(views) and views[j].shape[-1] == views[i].shape[-1]:
            j += 1
        y = net(torch.cat(list(views[i:j])))
        out += list(y.chunk(j - i))
        i = j
    return out


def build_student(ad: Any, bb: Any):
    """(peft model, Student, info): LoRA on ``ad.targets`` of the first depth - N blocks, the
    last N blocks (and the final norm with ``train_norm``) fully trainable, a fresh DINO head."""
    torch.manual_seed(ad.seed)
    backbone, info = build_backbone(bb.name, bb.weights, json.loads(bb.model_kwargs or "{}"))
    depth = len(backbone.blocks)
    if not 0 <= ad.unfreeze_blocks < depth:
        raise ValueError(
            f"adapt.unfreeze_blocks must be below the backbone depth {depth} (LoRA goes on the "
            f"other blocks), got {ad.unfreeze_blocks}"
        )
    unfrozen = list(range(depth - ad.unfreeze_blocks, depth))
    lora_blocks = "|".join(str(i) for i in range(depth - ad.unfreeze_blocks))
    peft_model = peft_adapters.attach(
        backbone,
        method="lora",
        rank=ad.lora_rank,
        alpha=ad.lora_alpha,
        dropout=0.0,
        targets=tuple(ad.targets),
        blocks=lora_blocks,
    )
    inner = peft_model.base_model.model  # the timm Eva, adapters injected in place
    for i in unfrozen:
        inner.blocks[i].requires_grad_(True)
    if ad.train_norm:
        inner.norm.requires_grad_(True)
    head = DINOHead(info["embed_dim"], ad.out_dim, ad.head_hidden, ad.head_bottleneck)
    info = {
        **info,
        "unfrozen": unfrozen,
        "regex": peft_adapters.target_regex(ad.targets, lora_blocks),
    }
    return peft_model, Student(inner, head), info


def ema_teacher(net: torch.nn.Module, decay: float):
    """timm's ``ModelEmaV3`` of ``net`` (a deep copy updated as decay * t + (1 - decay) * s).

    timm >= 1.0.31 adds ``stochastic_rounding`` (random rounding of low-precision EMA weights);
    it is turned off so the float32 teacher is the exact EMA. Older timm (the H200 host has
    1.0.29) has no such argument and always rounds to nearest: do not pass it there.
    """
    import inspect

    from timm.utils import ModelEmaV3

    extra = {}
    if "stochastic_rounding" in inspect.signature(ModelEmaV3.__init__).parameters:
        extra["stochastic_rounding"] = False
    return ModelEmaV3(net, decay=decay, **extra)


def adapt(
    samples: Sequence[Any],
    out_dir: str | os.PathLike,
    ad: Any,
    bb: Any,
    *,
    read: Callable[[Any], bytes],
    progress: bool = True,
    on_step: Callable[[int], None] | None = None,
) -> AdaptReport:
    """Adapt (or resume) into ``out_dir``; returns the report.

    Args:
        samples: unlabelled images (``id`` and whatever ``read`` needs); labels are ignored.
        ad: the ``adapt`` config section; bb: the ``backbone`` section.
        read: ``read(sample) -> bytes`` (``stage1.manifest.read_bytes``).
        on_step: called with the optimizer step count after each step (and its checkpoint).
    """
    t_start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not samples:
        raise ValueError("adaptation needs at least one image")
    device = pick_device(bb.device)
    peft_model, net, info = build_student(ad, bb)
    net.to(device).train()
    teacher = ema_teacher(net, ad.momentum)  # a deepcopy
    teacher.module.requires_grad_(False)
    loss_fn = DINOLoss(ad.out_dim, ad.student_temp, ad.center_momentum).to(device)
    cuda = device.type == "cuda"
    precision = ad.precision if ad.precision != "auto" else ("bfloat16" if cuda else "float32")
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if precision == "bfloat16"
        else contextlib.nullcontext()
    )
    trainable = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
    report = AdaptReport(
        out=str(out),
        steps=int(ad.steps),
        trainable_params=sum(p.numel() for _, p in trainable),
        lora_layers=len(peft_adapters.lora_layers(net.backbone)),
        unfrozen_blocks=info["unfrozen"],
        target_regex=info["regex"],
        views_per_image=2 + ad.local_crops,
        device=str(device),
        precision=precision,
        export=ad.export,
        provenance=_provenance(info),
    )
    opt = _optimizer(net, ad)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(max(ad.steps, 1), ad.warmup_frac))
    fingerprint = _fingerprint(ad, bb, info, samples)
    state: dict[str, Any] = {"step": 0, "losses": [], "seen": 0}
    ckpt = out / CHECKPOINT
    if ckpt.exists():
        state = _load_checkpoint(ckpt, net, teacher.module, loss_fn, opt, sched, fingerprint)
        report.resumed_at_step = state["step"]
        if progress:
            print(f"adapt: resuming {ckpt} at step {state['step']}")
    model = net
    if ad.compile == "on" or (ad.compile == "auto" and cuda):
        model = torch.compile(net)
    crops = MultiCrop(
        bb.image_size, ad.local_size, ad.local_crops, ad.global_scale, ad.local_scale,
        info["mean"], info["std"],
    )  # fmt: skip
    loader = _loader(samples, read, crops, state["step"], ad, bb)

    from tqdm.auto import tqdm

    bar = tqdm(
        total=ad.steps, initial=state["step"], unit="step", disable=not progress, desc="adapt"
    )
    t0, seen0 = time.perf_counter(), state["seen"]
    for views in loader:
        if state["step"] >= ad.steps:
            break
        step = state["step"]
        if views is not None:  # a batch of only unreadable images: the step passes unused
            views = [v.to(device, non_blocking=True) for v in views]
            temp = teacher_temperature(
                step, ad.steps, ad.teacher_temp_warmup_frac, ad.warmup_teacher_temp, ad.teacher_temp
            )
            loss = dino_step(
                model, net, teacher, loss_fn, opt, views,
                temp=temp, momentum=teacher_momentum(step, ad.steps, ad.momentum),
                max_grad_norm=ad.max_grad_norm, autocast=autocast,
            )  # fmt: skip
            state["losses"].append(float(loss.detach()))
            state["seen"] += len(views[0])
            bar.set_postfix(loss=f"{state['losses'][-1]:.4f}")
        sched.step()
        state["step"] = step + 1
        bar.update(1)
        if state["step"] % ad.checkpoint_every == 0 and state["step"] < ad.steps:
            _save_checkpoint(ckpt, net, teacher.module, loss_fn, opt, sched, state, fingerprint)
        if on_step is not None:
            on_step(state["step"])
    bar.close()
    secs = time.perf_counter() - t0
    report.losses, report.steps = state["losses"], state["step"]
    report.images_seen = state["seen"]
    report.images_per_s = (state["seen"] - seen0) / secs if secs > 0 else 0.0
    src = teacher.module if report.export == "teacher" else net
    report.files = _finalise(out, peft_model, net, src, info)
    ckpt.unlink(missing_ok=True)
    report.seconds = time.perf_counter() - t_start
    return report


def dino_step(model, net, teacher, loss_fn, opt, views, *, temp, momentum, max_grad_norm, autocast):
    """One DINO step on a batch of views (global views first); returns the loss tensor.

    Teacher (no grad) on the global views, student (``model``: ``net`` or its compiled form) on
    every view, loss with the current centre, backward, clipping, optimizer step, then the
    centre update and the teacher EMA ``t <- m t + (1 - m) s`` with ``m = momentum`` (DINO's
    order: ``main_dino.py`` updates the teacher after the student step).
    """
    with torch.no_grad(), autocast:
        t_out = forward_views(teacher.module, views[:2])
    with autocast:
        s_out = forward_views(model, views)
    loss = loss_fn(s_out, t_out, temp)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if max_grad_norm > 0:
        params = [p for g in opt.param_groups for p in g["params"]]
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    opt.step()
    loss_fn.update_center(t_out)
    teacher.decay = momentum
    teacher.update(net)
    return loss.detach()


def _provenance(info: dict) -> dict[str, Any]:
    """The backbone adapted (weights path and sha256, or random init) and library versions."""
    import peft
    import timm
    import torchvision

    keep = ("name", "weights_path", "weights_sha256", "random_init", "checkpoint_format", "depth")
    return {
        "backbone": {k: info.get(k) for k in keep},
        "versions": {
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "timm": timm.__version__,
            "peft": peft.__version__,
        },
    }


def _optimizer(net: Student, ad: Any) -> torch.optim.Optimizer:
    """AdamW: backbone trainables at ``lr``, head at ``head_lr``; decay on matrices only."""
    groups = []
    for module, lr in ((net.backbone, ad.lr), (net.head, ad.head_lr)):
        params = [p for p in module.parameters() if p.requires_grad]
        groups += [
            {
                "params": [p for p in params if p.ndim >= 2],
                "lr": lr,
                "weight_decay": ad.weight_decay,
            },
            {"params": [p for p in params if p.ndim < 2], "lr": lr, "weight_decay": 0.0},
        ]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=ad.lr)


class _Crops(torch.utils.data.Dataset):
    """Stream position -> multi-crop views of the image at that position (None: unreadable)."""

    def __init__(self, samples, read, crops, start, total, seed):
        self.samples, self.read, self.crops = samples, read, crops
        self.start, self.total, self.seed = start, total, seed
        self._perm: dict = {}

    def __len__(self) -> int:
        return max(self.total - self.start, 0)

    def __getitem__(self, i: int):
        pos = self.start + i
        s = self.samples[stream_index(pos, len(self.samples), self.seed, self._perm)]
        try:
            img = decode(self.read(s))
        except (CorruptImageError, OSError, ValueError):
            return None
        return self.crops(img, self.seed, pos)


def _collate(items):
    good = [v for v in items if v is not None]
    if not good:
        return None
    return [torch.stack([views[k] for views in good]) for k in range(len(good[0]))]


def _loader(samples, read, crops, start_step, ad, bb):
    workers = int(getattr(bb, "num_workers", 0))
    if workers < 0:  # auto: the extraction loader's rule
        from feature_extract.loader import usable_cores

        workers = 0 if usable_cores() <= 2 else min(usable_cores() - 1, 32)
    b = ad.batch_size
    ds = _Crops(samples, read, crops, start_step * b, ad.steps * b, ad.seed)
    return torch.utils.data.DataLoader(
        ds,
        batch_size=b,
        shuffle=False,  # the order is the stream's: resumable at any step
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=torch.cuda.is_available(),
        # its own generator: iterating must not draw from the global RNG
        generator=torch.Generator().manual_seed(ad.seed),
    )


def _fingerprint(ad: Any, bb: Any, info: dict, samples) -> str:
    keys = {k: v for k, v in asdict(ad).items() if k not in _FINGERPRINT_SKIP}
    keys["backbone"] = [bb.name, info["weights_sha256"], bb.image_size, bb.model_kwargs]
    keys["samples"] = [s.id for s in samples]
    return hashlib.sha256(json.dumps(keys, sort_keys=True, default=list).encode()).hexdigest()


def _trainable(net: torch.nn.Module, names) -> dict[str, torch.Tensor]:
    params = dict(net.named_parameters())
    return {n: params[n].detach().cpu().clone() for n in names}


def _save_checkpoint(path, net, teacher, loss_fn, opt, sched, state, fingerprint) -> None:
    names = [n for n, p in net.named_parameters() if p.requires_grad]
    blob = {
        "fingerprint": fingerprint,
        "student": _trainable(net, names),
        "teacher": _trainable(teacher, names),
        "center": loss_fn.center.detach().cpu(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "state": state,
        "rng": torch.get_rng_state(),
    }
    _atomic(path, lambda tmp: torch.save(blob, tmp))


def _load_checkpoint(path, net, teacher, loss_fn, opt, sched, fingerprint) -> dict:
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if blob.get("fingerprint") != fingerprint:
        raise ValueError(
            f"checkpoint {path} belongs to another adaptation (config, backbone or images "
            "differ); delete it or choose another output folder"
        )
    with torch.no_grad():
        for model, key in ((net, "student"), (teacher, "teacher")):
            params = dict(model.named_parameters())
            for n, t in blob[key].items():
                params[n].copy_(t)
        loss_fn.center.copy_(blob["center"])
    opt.load_state_dict(blob["optimizer"])
    sched.load_state_dict(blob["scheduler"])
    torch.set_rng_state(blob["rng"])
    return blob["state"]


def _finalise(out: Path, peft_model, net: Student, src: Student, info: dict) -> dict[str, str]:
    """The exported model's trainable tensors (LoRA A/B, unfrozen blocks, norm) and its
    merged backbone in timm keys (float32, CPU). ``src`` is the teacher or the student."""
    names = [n for n, p in net.backbone.named_parameters() if p.requires_grad]
    params = dict(src.backbone.named_parameters())
    meta = {
        "method": "lora",
        "target_regex": info["regex"],
        "unfrozen_blocks": ",".join(map(str, info["unfrozen"])),
        "backbone": info["name"],
        "weights_sha256": info["weights_sha256"],
    }
    _atomic_save_tensors(out / ADAPTER, {n: params[n] for n in names}, meta)
    if src is not net:  # the teacher: its tensors into the peft model, then merge that
        with torch.no_grad():
            mine = dict(net.backbone.named_parameters())
            for n in names:
                mine[n].copy_(params[n])
    merged = peft_adapters.merge(peft_model).to("cpu").float()
    sd = {k: v for k, v in merged.state_dict().items() if "rope" not in k}
    _atomic_save_tensors(out / MERGED, sd, {"format": "timm", "backbone": info["name"]})
    return {k: str(out / v) for k, v in (("adapter", ADAPTER), ("merged", MERGED))}
