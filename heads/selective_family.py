"""The ``selective`` family: SelectiveNet (classifier f, gate g, auxiliary h) over a shared trunk.

Objective per minibatch (METHODS.md §1.2, §2.1)::

    J(theta)        = alpha L_(f,g) + (1 - alpha) L_h          heads.selective.selective_loss
    lagrangian:  L  = J + mu (FNR~(theta) - alpha')            FNR~ = fnr_surrogate (smooth)
                 mu <- max(0, mu + eta_mu (FNR_01 - alpha'))   after each theta step (0/1 rate)
    weighted:    L  = J with positives weighted w+ = n_neg / n_pos inside every CE; mu = 0

The multiplier ``mu`` is the family's ``extra`` state (``heads.train.TrainState.extra``): the
model player descends ``L`` through the shared optimizer step, then ``after_step`` moves the
multiplier player on the batch's 0/1 rate. Under ``lagrangian`` the CEs are unweighted
(``pos_weight`` 1 unless set explicitly): the constraint, not a class weight, is what pushes the
FNR down; the two are alternatives (METHODS.md §2.1 "cheaper, weaker"). The coverage of the
penalty is a batch statistic, so batches are large (phase-2 preset: 1024; the run driver caps the
batch at ``n_train``, i.e. full-batch on small sets).

Selection: the AUROC of f's margin on val, ties broken by the lower val CE of f, as for the
classifier families. Why not the val selective risk at the target coverage: with a few hundred
val images and error rates of a few percent that statistic moves in steps of single errors, and
the deployed thresholds are set afterwards on calib from f's and g's *ranking*; AUROC is the
threshold-free ranking criterion. The selective risk at coverage c, the val coverage and the val
FNR are recorded per epoch.

Post-hoc: Dirichlet calibration of f and Platt calibration of the gate's logit on val, then the
SCRC-I / two-sided exit policies on calib (``calibrate``: calibration "dirichlet_gate",
policy "selective").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from calibrate.metrics import auroc, selective_risk_at_coverage
from heads import selective
from heads.family import Family, chunked_apply, dense_op, op
from heads.spec import HeadSpec, TrainSpec

__all__ = ["RISK_LOSSES", "SELECTIVE", "SelectiveFamily", "SelectiveSpec"]

RISK_LOSSES: tuple[str, ...] = ("lagrangian", "weighted")


@dataclass(frozen=True)
class SelectiveSpec(HeadSpec):
    kind = "selective"
    trunk_hidden: int = 512  # width of the shared trainable trunk
    head_hidden: int = selective.GATE_HIDDEN  # width of the gate's hidden layer (official 512)
    trunk_layers: int = 1  # Dense -> GELU layers in the trunk (1 or 2)
    loss_form: str = "paper"  # paper (risk / empirical coverage) | code (official: no division)
    risk_loss: str = "lagrangian"  # lagrangian (FNR constraint) | weighted (class-weighted CE)

    def check(self) -> None:
        if min(self.trunk_hidden, self.head_hidden) < 1:
            raise ValueError("selective trunk_hidden and head_hidden must be >= 1")
        if self.trunk_layers not in (1, 2):
            raise ValueError(f"trunk_layers must be 1 or 2, got {self.trunk_layers}")
        if self.loss_form not in selective.FORMS:
            raise ValueError(f"loss_form must be one of {selective.FORMS}: {self.loss_form!r}")
        if self.risk_loss not in RISK_LOSSES:
            raise ValueError(f"risk_loss must be one of {RISK_LOSSES}: {self.risk_loss!r}")


class SelectiveFamily(Family):
    kind = "selective"
    spec_type = SelectiveSpec
    hparam_names = (
        "target_coverage",  # c of the coverage penalty
        "lam",  # lambda of the coverage penalty
        "alpha_mix",  # alpha: weight of L_(f,g) vs L_h
        "fnr_target",  # alpha' of the training-time FNR constraint
        "multiplier_lr",  # eta_mu
        "surrogate_temp",  # tau_s of the smooth FNR surrogate
    )
    output_names = ("logit", "gate_logit", "aux_logit")
    calibration = "dirichlet_gate"
    policy = "selective"
    step_logs = {"train_coverage": "mean", "train_fnr": "mean", "mu": "last", "mu_max": "max"}

    def module(self, head: SelectiveSpec, dtype: Any = jnp.float32) -> selective.SelectiveNet:
        return selective.SelectiveNet(
            trunk_hidden=head.trunk_hidden,
            head_hidden=head.head_hidden,
            trunk_layers=head.trunk_layers,
            dtype=dtype,
        )

    def serving_graph(self, head: SelectiveSpec) -> dict[str, Any]:
        """``selective.SelectiveNet`` as data: trunk, then f / g / h (module docstring there)."""
        ops, u = [], "x"
        for layer in range(head.trunk_layers):
            ops += [dense_op(u, "u", f"trunk{layer}"), op("gelu", "u", "u")]
            u = "u"
        ops += [
            dense_op(u, "zf", "f_out"),
            op("margin", "zf", "logit"),
            dense_op(u, "a", "g_hidden"),
            op("relu", "a", "a"),
            op("scale", "a", "a", scale="g_scale/scale"),
            dense_op("a", "zg", "g_out"),
            op("take0", "zg", "gate_logit"),
            dense_op(u, "zh", "h_out"),
            op("margin", "zh", "aux_logit"),
        ]
        return {"ops": ops, "outputs": {k: k for k in self.output_names}}

    def head_spec_from_params(self, params: dict) -> SelectiveSpec:
        trunk = sorted(k for k in params if k.startswith("trunk"))
        rest = {"f_out", "g_hidden", "g_scale", "g_out", "h_out"}
        if not trunk or set(params) - set(trunk) != rest:
            raise ValueError(f"not a selective-net parameter tree: top-level keys {sorted(params)}")
        return SelectiveSpec(
            trunk_hidden=int(params["trunk0"]["kernel"].shape[-1]),
            head_hidden=int(params["g_hidden"]["kernel"].shape[-1]),
            trunk_layers=len(trunk),
        )

    def resolve_pos_weight(self, head: SelectiveSpec, pos_weight: float, labels) -> float:
        """An explicit ``pos_weight > 0`` wins; -1 means ``n_neg / n_pos`` for
        ``risk_loss="weighted"`` and 1 for ``"lagrangian"`` (module docstring); anything else
        (0 included) is a ValueError (``heads.losses.resolve_pos_weight``)."""
        if pos_weight == -1 and head.risk_loss == "lagrangian":
            return 1.0
        return super().resolve_pos_weight(head, pos_weight, np.asarray(labels))

    def init_extra(self, spec: TrainSpec):
        return jnp.zeros((), jnp.float32)  # the Lagrange multiplier mu

    def loss(self, spec: TrainSpec, hp, params, xb, yb, mb, key, extra):
        """``J`` plus, for the lagrangian, ``mu * (smooth_fnr - alpha')`` (module docstring)."""
        head: SelectiveSpec = spec.head
        h = hp.head
        f_logits, gate_logit, h_logits = self.module(head, spec.compute_dtype).apply(
            {"params": params}, xb
        )
        g = jax.nn.sigmoid(gate_logit)
        loss, parts = selective.selective_loss(
            f_logits,
            g,
            h_logits,
            yb,
            target_coverage=h["target_coverage"],
            lam=h["lam"],
            alpha_mix=h["alpha_mix"],
            form=head.loss_form,
            pos_weight=hp.pos_weight,
            label_smoothing=hp.label_smoothing,
            mask=mb,
        )
        smooth, hard, n_pos = selective.fnr_surrogate(
            f_logits, g, yb, temperature=h["surrogate_temp"], mask=mb
        )
        if head.risk_loss == "lagrangian":
            loss = loss + extra * (smooth - h["fnr_target"])
        return loss, {"coverage": parts["coverage"], "hard_fnr": hard, "n_pos": n_pos}

    def after_step(self, spec: TrainSpec, hp, extra, aux):
        mu = extra
        if spec.head.risk_loss == "lagrangian":  # the multiplier player moves after the model's
            h = hp.head
            mu = selective.multiplier_step(
                mu, aux["hard_fnr"], h["fnr_target"], h["multiplier_lr"], aux["n_pos"]
            )
        logs = {"train_coverage": aux["coverage"], "train_fnr": aux["hard_fnr"], "mu": mu}
        return mu, logs | {"mu_max": mu}

    def evaluate(self, spec: TrainSpec, hp, params, x_chunks, y) -> dict:
        module = self.module(spec.head)
        f_logits, gate_logit, _ = chunked_apply(
            lambda xc: module.apply({"params": params}, xc), x_chunks, len(y)
        )
        g = jax.nn.sigmoid(gate_logit)
        z = selective.margin(f_logits)
        errors = (z >= 0).astype(jnp.int32) != y
        _, hard, _ = selective.fnr_surrogate(f_logits, g, y)
        return {
            "val_auroc": auroc(z, y),
            "val_loss": jnp.mean(selective.per_row_ce(f_logits, y)),
            "val_coverage": jnp.mean(g),
            "val_selective_risk": selective_risk_at_coverage(g, errors, hp.head["target_coverage"]),
            "val_fnr": hard,
        }

    def val_curves(self, spec: TrainSpec) -> tuple[str, ...]:
        return ("val_auroc", "val_loss", "val_coverage", "val_selective_risk", "val_fnr")

    def outputs(self, head: SelectiveSpec, params: dict, x) -> dict[str, Any]:
        f_logits, gate_logit, h_logits = self.module(head).apply({"params": params}, x)
        return {
            "logit": selective.margin(f_logits),
            "gate_logit": gate_logit,
            "aux_logit": selective.margin(h_logits),
        }


SELECTIVE = SelectiveFamily()
