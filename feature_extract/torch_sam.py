"""SAM, ASAM and F-SAM around any ``torch.optim`` optimizer: the PyTorch twin of ``heads.sam``.

Same modes, names and maths as the heads' optax version, so switching frameworks changes
nothing a user has to relearn:

    g      = grad L(w)                       (the caller's first backward pass)
    eps    = rho * d                         d from the mode, with GLOBAL L2 norms
    g_adv  = grad L(w + eps)                 (the closure's second backward pass)
    w     <- Base(w, clip(g_adv))            the base optimizer steps from w, not w + eps

    sam   d = g / ||g||                                   Foret et al., ICLR 2021, 2010.01412
    asam  d = T^2 g / ||T g||, T = |w| + eta on weight    Kwon et al., ICML 2021, 2102.11600
          matrices (ndim >= 2, the heads' "kernel"), T = 1 on biases and other vectors
    fsam  d = u / ||u||, u_t = g_t - sigma m_{t-1},       Li et al., CVPR 2024, 2403.12350
          m_t = lam m_{t-1} + (1 - lam) g_t; u_1 = m_1 = g_1 (official nblt/F-SAM
          ``FriendlySAM``: the first step is plain SAM and seeds the gradient EMA)

``u_t`` uses the EMA from BEFORE this step's gradient. Norms have a 1e-12 floor, so a zero
gradient moves nothing instead of giving NaN (``heads.sam.safe_normalize``). ``mode="none"`` or
``rho = 0`` is exactly the base optimizer (the second pass is then skipped).

Written by hand because no packaged torch SAM offers F-SAM (nblt/F-SAM is a script) nor the
heads' exact semantics (global norm, ASAM on matrices only, clipping of the adversarial
gradient). Mixed precision: the perturbation and the EMA are kept in float32 whatever the
parameter dtype; under bf16 autocast gradients are float32 already (no loss scaler needed);
with an fp16 ``GradScaler`` call ``scaler.unscale_(sam.base)`` is not needed for the direction
(it is normalised) but a non-finite first gradient skips the perturbation and leaves ``m``
untouched, so an overflow step cannot poison the EMA.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

MODES: tuple[str, ...] = ("none", "sam", "asam", "fsam")
_EPS = 1e-12


class SAM:
    """Sharpness-aware wrapper of ``base`` (a ``torch.optim.Optimizer``).

    Use::

        loss = loss_fn(model(x), y); loss.backward()          # g at w
        sam.step(lambda: loss_fn(model(x), y).backward())      # g_adv at w + eps, then step
        sam.zero_grad()

    or ``first_step()`` / a backward / ``second_step()`` when the closure does not fit (AMP).

    Args:
        base: the optimizer that takes the step (its param groups define the parameters).
        mode: ``none`` | ``sam`` | ``asam`` | ``fsam``.
        rho: perturbation radius; ``0`` reproduces ``base``.
        sigma, lam: F-SAM's subtraction weight and EMA decay (``heads.sam``: same names as
            ``optim.fsam_sigma`` / ``optim.fsam_lambda``).
        eta: ASAM's offset in ``T = |w| + eta``.
        max_grad_norm: clip the gradient fed to ``base`` to this global norm (0 = off).
    """

    def __init__(
        self,
        base: torch.optim.Optimizer,
        mode: str = "sam",
        *,
        rho: float = 0.05,
        sigma: float = 1.0,
        lam: float = 0.9,
        eta: float = 0.01,
        max_grad_norm: float = 0.0,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown SAM mode {mode!r}; valid modes are {MODES}")
        if rho < 0 or sigma < 0 or not 0.0 <= lam < 1.0 or eta < 0 or max_grad_norm < 0:
            raise ValueError("SAM needs rho, sigma, eta, max_grad_norm >= 0 and 0 <= lam < 1")
        self.base, self.mode = base, mode
        self.rho, self.sigma, self.lam, self.eta = float(rho), float(sigma), float(lam), eta
        self.max_grad_norm = float(max_grad_norm)
        self.count = 0  # F-SAM steps taken (the first one is plain SAM)
        self._m: dict[int, torch.Tensor] = {}  # F-SAM gradient EMA per parameter index
        self._eps: dict[int, torch.Tensor] = {}  # the perturbation in place during a step

    # -- torch.optim look-alike --------------------------------------------------------------

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.base.param_groups

    def _params(self) -> list[torch.Tensor]:
        return [p for g in self.base.param_groups for p in g["params"]]

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base.zero_grad(set_to_none=set_to_none)

    @property
    def active(self) -> bool:
        """Whether steps take the second (adversarial) gradient evaluation."""
        return self.mode != "none" and self.rho > 0

    # -- the two halves of a step -----------------------------------------------------------

    @torch.no_grad()
    def first_step(self) -> None:
        """Move every parameter to ``w + eps`` (from the gradients in ``.grad``) and zero them."""
        params = self._params()
        # a parameter without a gradient (unused this step) counts as a zero gradient
        grads = [_wide(torch.zeros_like(p) if p.grad is None else p.grad) for p in params]
        if not all(bool(torch.isfinite(g).all()) for g in grads):
            self._eps = {}  # overflow (fp16 scaler): no move, no EMA update
            self.zero_grad()
            return
        if self.mode == "fsam":
            first = self.count == 0
            u = []
            for i, g in enumerate(grads):
                m = self._m.get(i)
                u.append(g.clone() if first or m is None else g - self.sigma * m)
                self._m[i] = g.clone() if first or m is None else self.lam * m + (1 - self.lam) * g
            self.count += 1
            d = _scale(u, _inv_norm(u))
        elif self.mode == "asam":
            t = [(_wide(p).abs() + self.eta) if p.ndim >= 2 else None for p in params]
            tg = [g if ti is None else ti * g for ti, g in zip(t, grads, strict=True)]
            s = _inv_norm(tg)
            d = [x * s if ti is None else ti * x * s for ti, x in zip(t, tg, strict=True)]
        else:
            d = _scale(grads, _inv_norm(grads))
        self._eps = {}
        for i, (p, di) in enumerate(zip(params, d, strict=True)):
            e = self.rho * di
            p.add_(e.to(p.dtype))
            self._eps[i] = e
        self.zero_grad()

    @torch.no_grad()
    def second_step(self) -> None:
        """Return to ``w``, clip the adversarial gradient and let the base optimizer step."""
        for i, p in enumerate(self._params()):
            e = self._eps.get(i)
            if e is not None:
                p.sub_(e.to(p.dtype))
        self._eps = {}
        self._clip_and_step()

    def _clip_and_step(self) -> None:
        if self.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self._params(), self.max_grad_norm)
        self.base.step()

    def step(self, closure: Callable[[], Any] | None = None) -> None:
        """One sharpness-aware step; ``.grad`` must hold ``grad L(w)`` already.

        ``closure`` recomputes the SAME minibatch loss and calls ``backward`` (no zero_grad
        needed); it runs at ``w + eps``. Not needed (and not called) when ``active`` is False.
        """
        if not self.active:
            self._clip_and_step()
            return
        if closure is None:
            raise ValueError("SAM.step needs a closure that re-evaluates the loss and backward")
        self.first_step()
        with torch.enable_grad():
            closure()
        self.second_step()

    # -- checkpointing ----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "base": self.base.state_dict(),
            "mode": self.mode,
            "count": self.count,
            "m": {i: m.clone() for i, m in self._m.items()},
            "hyper": {"rho": self.rho, "sigma": self.sigma, "lam": self.lam, "eta": self.eta},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("mode") != self.mode:
            raise ValueError(f"SAM state of mode {state.get('mode')!r} loaded into {self.mode!r}")
        self.base.load_state_dict(state["base"])
        self.count = int(state["count"])
        dev = {i: p.device for i, p in enumerate(self._params())}
        self._m = {int(i): m.to(dev[int(i)]) for i, m in state["m"].items()}


def _wide(t: torch.Tensor) -> torch.Tensor:
    """``t`` detached, in at least float32 (bf16/fp16 widened; may share ``t``'s storage)."""
    return t.detach().to(torch.promote_types(t.dtype, torch.float32))


def _inv_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    """``1 / max(||t||_2, 1e-12)`` over all tensors, in float32, as a tensor (no host sync)."""
    norms = torch.stack([torch.linalg.vector_norm(_wide(t)) for t in tensors])
    return 1.0 / torch.linalg.vector_norm(norms).clamp_min(_EPS)


def _scale(tensors: list[torch.Tensor], s: torch.Tensor) -> list[torch.Tensor]:
    return [t * s.to(t.device) for t in tensors]
