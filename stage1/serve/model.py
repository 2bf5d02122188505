"""``Stage1Model``: a bundle loaded for inference, in PyTorch only.

    m = Stage1Model.from_bundle("runs/p1/bundle", device="auto")
    m(image)               # float in (0, 1) on the validator scale: > 0.5 means roadwork
    m.predict_proba(imgs)  # calibrated P(roadwork), np.ndarray
    m.decide(imgs)         # ["exit_negative" | "exit_positive" | "defer", ...]

An image goes through exactly the path its training features took: decode (EXIF-upright RGB) ->
``feature_extract.preprocess.to_uint8`` (bicubic antialiased resize, no crop) -> normalise ->
the timm backbone (bf16 autocast on CUDA, float32 on CPU, as ``feature_extract.extract``) ->
``feature_extract.extract.embed``'s variant(s) -> rounded to the cache's on-disk dtype (the head,
its calibrators and the certified thresholds were all fitted on float16 features by default,
so serving feeds the head those same numbers) -> the head, calibration and exit rule
interpreted from the bundle (``stage1.serve.ops``) -> the validator-scale answer
(``stage1.serve.validator_scale``). Nothing here imports JAX.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from stage1.serve import ops
from stage1.serve.bundle import BundleError, check_weights, read_bundle
from stage1.serve.validator_scale import answer

__all__ = ["Prediction", "Stage1Model"]

ImageLike = Image.Image | np.ndarray | str | os.PathLike | bytes


@dataclass
class Prediction:
    """Per-image results of ``Stage1Model.predict`` (arrays of equal length)."""

    p: np.ndarray  # calibrated P(roadwork), float64
    decision: list[str]  # exit_negative | exit_positive | defer
    code: np.ndarray  # int8: 0 / 1 / -1
    gate: np.ndarray | None  # the policy's selection score (None: the policy has none)
    answer: np.ndarray  # validator scale, float64 (stage 2's answer where it was asked)
    scores: dict[str, np.ndarray]  # every calibrated score by name


class Stage1Model:
    """A loaded bundle (see the module docstring). Build it with ``from_bundle``."""

    def __init__(self, root: Path, doc: dict[str, Any], backbone, device, *, stage2=None):
        from safetensors.torch import load_file

        self.root, self.doc, self.device = root, doc, device
        self.backbone = backbone
        bb, feat = doc["backbone"], doc["features"]
        self.image_size = int(bb["image_size"])
        self.mean, self.std = bb["mean"], bb["std"]
        self.parts = list(feat["parts"])
        self.feature_dtype = getattr(torch, feat["dtype"])
        tensors = load_file(str(root / doc["head"]["params_file"]), device="cpu")
        self.head = ops.HeadProgram(doc["head"]["graph"], tensors, device)
        self.calibration = doc["calibration"]["program"]
        self.rule = doc["policy"]
        self.threshold = float(doc["validator"]["threshold"])
        self.margin = float(doc["validator"]["margin"])
        self.clip = tuple(doc["validator"]["clip"])
        self.stage2 = stage2
        self.batch_size = 32
        # normalisation constants made once on the device: building them per call from Python
        # lists is two host->device copies, each a synchronisation, on every single-image call
        self._mean = torch.tensor(self.mean, dtype=torch.float32, device=device)[:, None, None]
        self._std = torch.tensor(self.std, dtype=torch.float32, device=device)[:, None, None]
        self._outputs = list(self.head.outputs)
        # uint8 batch on the device -> (n, outputs) head outputs; torch.compile'd by
        # ``from_bundle(compile=...)`` as one graph (backbone, feature variant, head)
        self._device_fn: Callable[[torch.Tensor], torch.Tensor] = self._head_outputs

    # -- loading -------------------------------------------------------------------------------

    @classmethod
    def from_bundle(
        cls,
        path: str | os.PathLike,
        device: str = "auto",
        *,
        backbone_weights: str | os.PathLike | None = None,
        stage2: Callable[[Image.Image], float] | None = None,
        compile: bool | str = False,
    ) -> Stage1Model:
        """Load and verify a bundle (``stage1.serve.bundle.read_bundle``), build its backbone.

        Args:
            path: the bundle folder (or its bundle.json).
            device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
            backbone_weights: the backbone weights file, for a bundle exported without
                ``--include-backbone``; its sha256 must be the bundle's.
            stage2: optional ``stage2(image) -> float`` asked for the answer of every deferred
                image (validator scale, in [0, 1]).
            compile: ``torch.compile`` the backbone (worth it on GPU for many calls); a string
                is the compile mode, e.g. ``"reduce-overhead"`` (CUDA graphs).

        Raises:
            BundleError: any integrity failure (one line; see ``stage1.serve.bundle``).
        """
        from feature_extract.backbone import BackboneError, RandomInitWarning, build_backbone
        from feature_extract.extract import pick_device

        root, doc = read_bundle(path)
        bb = doc["backbone"]
        if bb["weights_sha256"] == "random-init":
            weights = "none"
        elif backbone_weights is not None:
            weights = str(check_weights(backbone_weights, bb["weights_sha256"]))
        elif bb["weights_file"]:
            weights = str(check_weights(root / bb["weights_file"], bb["weights_sha256"]))
        else:
            raise BundleError(
                f"the bundle references backbone weights sha256 {bb['weights_sha256'][:12]}... "
                "but does not hold them: pass backbone_weights=PATH (--backbone-weights) or "
                "re-export with --include-backbone"
            )
        try:
            with warnings.catch_warnings():
                # Random init is recorded in bundle.json ("random-init"); say it once, not per load.
                warnings.simplefilter("ignore", RandomInitWarning)
                model, _ = build_backbone(bb["name"], weights, bb["model_kwargs"])
        except BackboneError as e:
            raise BundleError(f"cannot build the bundle's backbone: {e}") from None
        dev = pick_device(device)
        m = cls(root, doc, model.to(dev), dev, stage2=stage2)
        if compile:
            # One graph from the normalised uint8 batch to the head's outputs (backbone,
            # feature variant, on-disk dtype round trip, head): the head's small kernels fuse
            # into the backbone's tail and a call ends in one device->host copy. A string is a
            # torch.compile mode ("reduce-overhead", ...). dynamic=False: one static graph per
            # batch size (1 for m(image), the batch size and the last partial batch for
            # predict), never a slower shape-generic one.
            mode = compile if isinstance(compile, str) else None
            m._device_fn = torch.compile(m._head_outputs, mode=mode, dynamic=False)
        return m

    # -- the public API ------------------------------------------------------------------------

    def __call__(self, image: ImageLike) -> float:
        """The validator-scale answer for one image: a float in (0, 1), > 0.5 = roadwork."""
        return float(self.predict([image]).answer[0])

    def predict_proba(self, images: ImageLike | Sequence[ImageLike]) -> np.ndarray:
        """Calibrated P(roadwork) per image (float64)."""
        return self.predict(images).p

    def decide(self, images: ImageLike | Sequence[ImageLike], domains=None) -> list[str]:
        """``exit_negative`` / ``exit_positive`` / ``defer`` per image (the shipped policy).

        ``domains``: one domain name per image (or one name for all), required by a bundle of
        a per-domain run (``per_domain``): each image is decided by its domain's certified
        rule, and an image of a deferred or unknown domain is deferred."""
        return self.predict(images, domains).decision

    @property
    def per_domain(self) -> bool:
        """True when the policy was certified per domain (``risk.per_domain``)."""
        return self.rule.get("domains") is not None

    def with_domains(self, scores: dict[str, np.ndarray], domains) -> dict[str, np.ndarray]:
        """``scores`` (``scores_from_uint8``) with each image's code decided by its domain."""
        if not self.per_domain:
            return scores
        n = len(scores["p"])
        if domains is None:
            raise ValueError(
                "this bundle's policy is certified per domain: pass domains= (one name per "
                f"image; known: {', '.join(self.rule['domains'])}; others are deferred)"
            )
        domains = [domains] * n if isinstance(domains, str) else list(domains)
        if len(domains) != n:
            raise ValueError(f"{len(domains)} domain names for {n} images")
        t = {k: torch.as_tensor(v) for k, v in scores.items() if k != "code"}
        cuts = self.doc["validator"].get("domains", {})
        cut = np.asarray([cuts.get(d, self.threshold) for d in domains], np.float64)
        code = ops.apply_rule(self.rule, t, domains).numpy()
        return {**scores, "code": code, "validator_cut": cut}

    def predict(self, images: ImageLike | Sequence[ImageLike], domains=None) -> Prediction:
        """Everything about a list of images (one image is a list of one); ``domains`` as in
        ``decide``."""
        images = _as_list(images)
        if not images:
            raise ValueError("no images given")
        pil = [to_image(im) for im in images]
        x = torch.stack([self.to_uint8(im) for im in pil])
        parts = []
        for lo in range(0, len(x), self.batch_size):
            parts.append(self.scores_from_uint8(x[lo : lo + self.batch_size]))
        scores = {k: np.concatenate([s[k] for s in parts]) for k in parts[0]}
        return self.finish(self.with_domains(scores, domains), pil)

    # -- pieces (the CLI and the benchmark call them on batches) -------------------------------

    def to_uint8(self, image: Image.Image) -> torch.Tensor:
        from feature_extract.preprocess import to_uint8

        return to_uint8(image, self.image_size)

    @torch.inference_mode()
    def features(self, x_uint8: torch.Tensor) -> torch.Tensor:
        """(n, D) float32 head inputs of a uint8 (n, 3, S, S) batch (module docstring)."""
        from feature_extract.extract import embed
        from feature_extract.preprocess import normalize

        x = normalize(x_uint8.to(self.device, non_blocking=True), self.mean, self.std)
        autocast = (
            torch.autocast("cuda", dtype=torch.bfloat16)
            if self.device.type == "cuda"
            else contextlib.nullcontext()
        )
        with autocast:
            feats = embed(self.backbone, x, self.parts)
        f = torch.cat([feats[v] for v in self.parts], dim=1)
        return f.to(self.feature_dtype).to(torch.float32)

    @torch.inference_mode()
    def scores_from_features(self, f: torch.Tensor) -> dict[str, np.ndarray]:
        """Head outputs -> calibrated scores and decision codes, as numpy arrays."""
        return self._scores({k: v.cpu() for k, v in self.head(f).items()})

    def _head_outputs(self, x: torch.Tensor) -> torch.Tensor:
        """(n, outputs) float32 head outputs of a uint8 batch already on the device: the same
        ops, in the same order, as ``features`` then ``head``."""
        from feature_extract.extract import embed

        x = (x.to(torch.float32) / 255.0 - self._mean) / self._std  # preprocess.normalize
        if self.device.type == "cuda":
            with torch.autocast("cuda", dtype=torch.bfloat16):
                feats = embed(self.backbone, x, self.parts)
        else:
            feats = embed(self.backbone, x, self.parts)
        f = torch.cat([feats[v] for v in self.parts], dim=1)
        outputs = self.head(f.to(self.feature_dtype).to(torch.float32))
        return torch.stack([outputs[k] for k in self._outputs], dim=1)

    def _scores(self, outputs: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        """Calibration and exit rule on host tensors (n x a few floats: cheaper on the CPU
        than as a dozen more kernel launches)."""
        scores = ops.run_scores(self.calibration, outputs, ops.rule_ops(self.rule))
        code = ops.apply_rule(self.rule, scores)
        out = {k: v.numpy() for k, v in scores.items()}
        out["code"] = code.numpy()
        return out

    @torch.inference_mode()
    def scores_from_uint8(self, x_uint8: torch.Tensor) -> dict[str, np.ndarray]:
        """Calibrated scores and decision codes of a uint8 (n, 3, S, S) batch: one fused
        device program (``_head_outputs``), one device->host copy, then ``_scores``."""
        out = self._device_fn(x_uint8.to(self.device, non_blocking=True)).cpu()
        return self._scores({k: out[:, i] for i, k in enumerate(self._outputs)})

    def finish(self, scores: dict[str, np.ndarray], pil: list | None = None) -> Prediction:
        """``Prediction`` of ``scores_from_uint8``'s output; stage 2 is asked only given the
        images (``pil``)."""
        scores = dict(scores)
        code = scores.pop("code").astype(np.int8)
        cut = scores.pop("validator_cut", self.threshold)  # per image for per-domain bundles
        p = scores["p"].astype(np.float64)
        ans = answer(p, cut, self.margin, self.clip)
        if self.stage2 is not None and pil is not None:
            for i in np.flatnonzero(code == -1):
                ans[i] = float(self.stage2(pil[i]))
        sel = self.rule.get("selection")
        return Prediction(
            p=p,
            decision=[ops.DECISIONS[c] for c in code],
            code=code,
            gate=None if sel is None else scores[sel["score"]].astype(np.float64),
            answer=ans,
            scores=scores,
        )

    def __repr__(self) -> str:
        d = self.doc
        return (
            f"Stage1Model({self.root}, backbone={d['backbone']['name']}, "
            f"head={d['head']['family']}, policy={d['policy']['shipped']}, device={self.device})"
        )


def to_image(image: ImageLike) -> Image.Image:
    """One input as an RGB PIL image: a PIL image, an (H, W[, 3|4]) uint8 array, encoded
    bytes or a path (decoded like the training images: EXIF-upright RGB)."""
    from feature_extract.preprocess import decode

    if isinstance(image, Image.Image):
        return image
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise ValueError(
                f"image arrays must be (H, W[, C]) uint8, got {image.dtype} {image.shape}"
            )
        return Image.fromarray(image).convert("RGB")
    if isinstance(image, bytes | bytearray):
        return decode(bytes(image))
    if isinstance(image, str | os.PathLike):
        with open(image, "rb") as f:
            return decode(f.read())
    raise TypeError(f"unsupported image type {type(image).__name__}")


def _as_list(images) -> list:
    if isinstance(images, Image.Image | np.ndarray | str | os.PathLike | bytes | bytearray):
        return [images]
    if isinstance(images, Iterable):
        return list(images)
    raise TypeError(f"unsupported images type {type(images).__name__}")
