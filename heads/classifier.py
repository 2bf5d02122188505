"""The two plain classifier families: ``linear`` (a probe) and ``mlp`` (the phase-1 head).

Both train the class-weighted, label-smoothed softmax CE (``heads.losses.weighted_ce``), pick the
best epoch by val AUROC of the margin ``z1 - z0`` (ties: the lower plain val CE), output that
margin as ``"logit"``, need no post-hoc calibrator (P(roadwork) = sigmoid(logit)) and ship the
FNR-certified exit-as-negative threshold (``calibrate.exit_policies``, policy "fnr_threshold").

The MLP family's training step is its own detail: it differentiates the fused-VJP logits of
``heads.fused_mlp`` (Pallas kernels on GPUs) instead of autodiff of the Flax module, and under
mixed precision carries a bfloat16 copy of its big hidden kernel that the optimizer step writes
(``weight_copy``): XLA fuses that cast into the AdamW kernel that already streams the weights,
instead of a separate pass re-reading the float32 master weights at the next step (~0.05 ms of a
0.88 ms H100 step, docs/benchmarks.md). Both routes give the gradients of the same function
(``tests/test_fused_mlp.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax.numpy as jnp
import numpy as np

from calibrate.metrics import auroc
from heads import fused_mlp, losses
from heads.family import Family, chunked_apply, dense_op, op
from heads.model import LinearHead, MLPHead, dropout_multiplier, logit_margin
from heads.spec import HeadSpec, TrainSpec

__all__ = ["LINEAR", "MLP", "LinearFamily", "LinearSpec", "MLPFamily", "MLPSpec"]


@dataclass(frozen=True)
class LinearSpec(HeadSpec):
    kind = "linear"


@dataclass(frozen=True)
class MLPSpec(HeadSpec):
    kind = "mlp"
    hidden: int = 768  # hidden width
    # Whether any config of the program uses dropout. Static so that runs without dropout do
    # not draw a (B, hidden) Bernoulli mask every step: on a 64-head GPU sweep that RNG work was
    # ~13% of the step, on CPU more than half of it. With False, hp.head["dropout"] is ignored.
    dropout: bool = False

    def check(self) -> None:
        if self.hidden < 1:
            raise ValueError(f"mlp hidden width must be >= 1, got {self.hidden}")


class _Classifier(Family):
    """What the linear and MLP heads share: CE loss, val AUROC selection, margin output."""

    def loss(self, spec: TrainSpec, hp, params, xb, yb, mb, key, extra):
        logits = self.train_logits(spec, hp, params, xb, key)
        loss = losses.weighted_ce(
            logits, yb, pos_weight=hp.pos_weight, label_smoothing=hp.label_smoothing, mask=mb
        )
        return loss, {}

    def train_logits(self, spec: TrainSpec, hp, params, xb, key):
        return self.module(spec.head, spec.compute_dtype).apply({"params": params}, xb)

    def evaluate(self, spec: TrainSpec, hp, params, x_chunks, y) -> dict:
        module = self.module(spec.head)
        logits = chunked_apply(lambda xc: module.apply({"params": params}, xc), x_chunks, len(y))
        return {
            "val_auroc": auroc(logit_margin(logits), y),
            "val_loss": losses.mean_ce(logits, y),
        }

    def outputs(self, head: HeadSpec, params: dict, x) -> dict[str, Any]:
        return {"logit": logit_margin(self.module(head).apply({"params": params}, x))}


class LinearFamily(_Classifier):
    kind = "linear"
    spec_type = LinearSpec

    def module(self, head: HeadSpec, dtype: Any = jnp.float32) -> LinearHead:
        return LinearHead(dtype=dtype)

    def serving_graph(self, head: HeadSpec) -> dict[str, Any]:
        return {
            "ops": [dense_op("x", "z", "out"), op("margin", "z", "logit")],
            "outputs": {"logit": "logit"},
        }

    def head_spec_from_params(self, params: dict) -> LinearSpec:
        if set(params) != {"out"}:
            raise ValueError(f"not a linear head: top-level keys {sorted(params)}")
        return LinearSpec()


class MLPFamily(_Classifier):
    kind = "mlp"
    spec_type = MLPSpec
    hparam_names = ("dropout",)

    def module(self, head: MLPSpec, dtype: Any = jnp.float32) -> MLPHead:
        return MLPHead(hidden=head.hidden, dtype=dtype)

    def serving_graph(self, head: HeadSpec) -> dict[str, Any]:
        # Dropout is training-only: the module without a key is the deployed function.
        ops = [dense_op("x", "h", "hidden"), op("gelu", "h", "h"), dense_op("h", "z", "out")]
        return {"ops": [*ops, op("margin", "z", "logit")], "outputs": {"logit": "logit"}}

    def head_spec_from_params(self, params: dict) -> MLPSpec:
        if set(params) != {"hidden", "out"}:
            raise ValueError(f"not an mlp head: top-level keys {sorted(params)}")
        return MLPSpec(hidden=int(params["hidden"]["kernel"].shape[-1]))

    def check_hparams(self, head: MLPSpec, values) -> None:
        if not head.dropout and bool(np.any(np.asarray(values["dropout"]) > 0)):
            raise ValueError("configs with dropout > 0 need MLPSpec(dropout=True)")

    def weight_copy(self, spec: TrainSpec, params: dict):
        if spec.precision == "float32":
            return None
        return params["hidden"]["kernel"].astype(spec.compute_dtype)

    def differentiable(self, spec: TrainSpec, params: dict, copy):
        if copy is None:
            return params
        return {**params, "hidden": {**params["hidden"], "kernel": copy}}

    def train_logits(self, spec: TrainSpec, hp, params, xb, key):
        head: MLPSpec = spec.head
        keep = None
        if head.dropout:
            keep = dropout_multiplier(hp.head["dropout"], key, (xb.shape[0], head.hidden))
        hid, out = params["hidden"], params["out"]
        w1 = hid["kernel"].astype(spec.compute_dtype)  # a no-op on the carried copy
        impl = fused_mlp.default_impl(spec.batch_size, head.hidden)
        return fused_mlp.mlp_logits(w1, hid["bias"], out["kernel"], out["bias"], xb, keep, impl)


LINEAR = LinearFamily()
MLP = MLPFamily()
