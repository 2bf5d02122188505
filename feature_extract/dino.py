"""The DINO self-distillation objective, written by hand: projection head, loss with teacher
centring and temperature warm-up, and the teacher-momentum / temperature schedules.

References: Caron et al. 2021, "Emerging Properties in Self-Supervised Vision Transformers"
(DINO, arXiv 2104.14294, facebookresearch/dino ``main_dino.py``); Oquab et al. 2023, DINOv2
(arXiv 2304.07193, facebookresearch/dinov2 ``dinov2/loss/dino_clstoken_loss.py``,
``dinov2/layers/dino_head.py``); Khanna et al. 2024/2025, ExPLoRA (arXiv 2406.10973), which
continues this objective on target-domain images with LoRA + unfrozen blocks.

Why by hand: Meta's dino/dinov2 repositories are not pip packages (their heads and losses live
inside their own trainers), and timm ships no SSL objective. The one maintained pip library that
has these pieces, lightly (``lightly.loss.DINOLoss``, ``DINOProjectionHead``), hard-requires
pytorch_lightning and hydra-core for what is ~60 lines here; tests/test_adapt.py checks this loss
against numbers produced by lightly 1.6.0's ``DINOLoss`` (a committed fixture) and against a
hand oracle. The teacher EMA itself is timm's ``ModelEmaV3`` (``feature_extract.adapt``).

The maths (per batch of B images, views v = 0..V-1, the first two are the global views):

    p_t^i = softmax((g_t(x_i) - c) / tau_t)          teacher, global views i in {0, 1}, no grad
    log p_s^v = log_softmax(g_s(x_v) / tau_s)        student, every view
    L = 1/|P| sum_{(i, v) in P} mean_b  - sum_k p_t^i[b, k] log p_s^v[b, k],
        P = {(i, v): i in {0, 1}, v != i}            (2 (V - 1) terms)
    c <- m_c c + (1 - m_c) mean_{i, b} g_t(x_i)[b]   centre, after the loss (DINO eq. 4)

Centring (subtracting ``c``) stops one prototype from dominating; the low teacher temperature
(sharpening) stops the uniform collapse; tau_t warms up linearly from 0.04 to 0.07 (DINOv2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F


class DINOHead(torch.nn.Module):
    """MLP (in -> hidden -> hidden -> bottleneck, GELU) -> L2-normalise -> weight-normalised
    linear onto K prototypes with the norm fixed at 1 (DINO's ``norm_last_layer=True``:
    ``weight_norm`` with ``g = 1`` frozen is exactly ``v / ||v||`` per output row)."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 2048, bottleneck: int = 256):
        super().__init__()
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(in_dim, hidden),
            torch.nn.GELU(),
            torch.nn.Linear(hidden, hidden),
            torch.nn.GELU(),
            torch.nn.Linear(hidden, bottleneck),
        )
        self.prototypes = torch.nn.Linear(bottleneck, out_dim, bias=False)
        for m in self.modules():  # DINO's init: truncated normal std 0.02, zero bias
            if isinstance(m, torch.nn.Linear):
                torch.nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    torch.nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = F.normalize(self.mlp(x), dim=-1)
        return F.linear(z, F.normalize(self.prototypes.weight, dim=1))


class DINOLoss(torch.nn.Module):
    """Cross-entropy of centred, sharpened teacher global views against every other student
    view; holds the EMA centre ``c`` (a buffer: it goes into checkpoints)."""

    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9):
        super().__init__()
        self.student_temp = float(student_temp)
        self.center_momentum = float(center_momentum)
        self.register_buffer("center", torch.zeros(1, out_dim))

    def forward(
        self,
        student: Sequence[torch.Tensor],
        teacher: Sequence[torch.Tensor],
        teacher_temp: float,
    ) -> torch.Tensor:
        """``student``: V tensors (B, K), global views first; ``teacher``: the global views'
        teacher outputs (B, K). Computed in float32 whatever the autocast dtype."""
        if len(student) < 2 or not teacher:
            raise ValueError("the DINO loss needs at least two student views and a teacher view")
        t = [F.softmax((x.float() - self.center) / teacher_temp, dim=-1).detach() for x in teacher]
        s = [F.log_softmax(x.float() / self.student_temp, dim=-1) for x in student]
        total, terms = torch.zeros((), device=s[0].device), 0
        for i, ti in enumerate(t):
            for v, sv in enumerate(s):
                if v == i:  # a view never predicts itself
                    continue
                total = total + (-(ti * sv).sum(-1)).mean()
                terms += 1
        return total / terms

    @torch.no_grad()
    def update_center(self, teacher: Sequence[torch.Tensor]) -> None:
        """``c <- m c + (1 - m) * batch mean of the raw teacher outputs`` (all global views)."""
        batch = torch.cat([x.float() for x in teacher]).mean(0, keepdim=True)
        self.center.mul_(self.center_momentum).add_(batch, alpha=1.0 - self.center_momentum)


def teacher_momentum(step: int, total: int, base: float) -> float:
    """DINO's cosine schedule from ``base`` at step 0 to 1 at ``total``:
    ``1 - (1 - base) (cos(pi s / S) + 1) / 2``."""
    frac = min(step, total) / max(total, 1)
    return 1.0 - (1.0 - base) * (math.cos(math.pi * frac) + 1.0) / 2.0


def teacher_temperature(step: int, total: int, warm_frac: float, start: float, end: float):
    """Linear warm-up of the teacher temperature from ``start`` to ``end`` over
    ``round(warm_frac * total)`` steps, then ``end`` (DINOv2: 0.04 -> 0.07 over 30 % of
    training)."""
    warm = int(round(warm_frac * total))
    if step >= warm:
        return float(end)
    return float(start + (end - start) * step / warm)
