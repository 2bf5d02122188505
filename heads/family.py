"""The head family: the unit of extension of the trainer.

A family is a Flax module plus everything that differs between heads: its static options (a
``HeadSpec``), its traced hyperparameters, its training loss, what it scores on val to pick the
best epoch, what it outputs per image, and the names of the calibrators and exit policy that turn
those outputs into decisions (implemented in ``calibrate``). ``heads.train`` trains every family
through this interface and nothing outside a family branches on its kind; a new head is one new
``Family`` subclass registered in ``heads.families``.

The training step (``heads.step``) calls, per minibatch::

    diff = family.differentiable(spec, params, copy)       # what gradients are taken w.r.t.
    (loss, aux), grads = value_and_grad(family.loss)(spec, hp, diff, xb, yb, mb, key, extra)
    ... optimizer update (AdamW/SGD, optionally SAM-wrapped) ...
    extra, logs = family.after_step(spec, hp, extra, aux)   # e.g. a Lagrange multiplier step
    copy = family.weight_copy(spec, params)                 # e.g. a bfloat16 kernel copy

and after each epoch ``family.evaluate`` on val, whose ``selection`` entries rank the epochs
(``heads.selection``).
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from heads.spec import HeadSpec, HParams, TrainSpec

__all__ = ["SERVING_OPS", "Family", "chunked_apply", "dense_op", "op"]

# The vocabulary of ``Family.serving_graph`` (one line each; the torch interpreter is
# stage1.serve.ops): dense  x @ kernel + bias;  gelu  exact (erf) GELU;  relu;
# scale  x * scale (per unit);  margin  z[..., 1] - z[..., 0];  take0  z[..., 0].
SERVING_OPS: tuple[str, ...] = ("dense", "gelu", "relu", "scale", "margin", "take0")


def dense_op(src: str, out: str, layer: str) -> dict[str, Any]:
    """A ``dense`` op of ``serving_graph`` reading Flax layer ``layer``'s kernel and bias."""
    params = {"kernel": f"{layer}/kernel", "bias": f"{layer}/bias"}
    return {"op": "dense", "in": [src], "out": out, "params": params}


def op(name: str, src: str, out: str, **params: str) -> dict[str, Any]:
    """Any other op of ``serving_graph`` (``params``: role -> tensor key)."""
    return {"op": name, "in": [src], "out": out, "params": params}


class Family(abc.ABC):
    """Base class of the head families (see the module docstring); one instance per family."""

    kind: ClassVar[str]
    spec_type: ClassVar[type[HeadSpec]]
    # Names of the family's own traced (sweepable) hyperparameters, in HParams.head.
    hparam_names: ClassVar[tuple[str, ...]] = ()
    # Per-image outputs of ``outputs``; "logit" (the classifier's binary logit z1 - z0) always.
    output_names: ClassVar[tuple[str, ...]] = ("logit",)
    # Post-hoc calibration procedure and exit policy, by name (calibrate.outputs / exit_policies).
    calibration: ClassVar[str] = "none"
    policy: ClassVar[str] = "fnr_threshold"
    # Val statistics of ``evaluate`` that rank epochs: (higher is better, tie-break lower).
    selection: ClassVar[tuple[str, str]] = ("val_auroc", "val_loss")
    # Extra per-step logs of ``after_step`` and how an epoch reduces them: mean | last | max.
    step_logs: ClassVar[dict[str, str]] = {}

    # -- the module ----------------------------------------------------------------------------

    @abc.abstractmethod
    def module(self, head: HeadSpec, dtype: Any = jnp.float32) -> nn.Module:
        """The Flax module of a head with static options ``head`` and compute dtype ``dtype``."""

    def init(self, spec: TrainSpec, key: jax.Array) -> dict:
        """Initial float32 parameters (``module.init``'s "params" collection)."""
        x = jnp.zeros((1, spec.in_dim), jnp.float32)
        return self.module(spec.head).init(key, x)["params"]

    @abc.abstractmethod
    def head_spec_from_params(self, params: dict) -> HeadSpec:
        """The static options a saved parameter tree was trained with (read off its shapes)."""

    # -- training ------------------------------------------------------------------------------

    def resolve_pos_weight(self, head: HeadSpec, pos_weight: float, labels: np.ndarray) -> float:
        """The positive-class CE weight to train with: ``pos_weight > 0`` itself; -1 means
        "balance the classes" (``n_neg / n_pos``) unless the family decides otherwise; any other
        value (0 included: no weight on roadwork) raises ValueError, as ``stage1.config`` does."""
        from heads.losses import resolve_pos_weight

        return resolve_pos_weight(pos_weight, labels)

    def check_hparams(self, head: HeadSpec, values: dict[str, np.ndarray]) -> None:
        """Raise ValueError when concrete hyperparameter values need other static options."""
        return None

    def weight_copy(self, spec: TrainSpec, params: dict) -> Any:
        """A compute-dtype copy of some weights carried from step to step (None: nothing)."""
        return None

    def differentiable(self, spec: TrainSpec, params: dict, copy: Any) -> dict:
        """The tree the step differentiates (``params`` with the carried copy swapped in)."""
        return params

    def init_extra(self, spec: TrainSpec) -> Any:
        """Family state carried beside the optimizer (e.g. a Lagrange multiplier); () = none."""
        return ()

    @abc.abstractmethod
    def loss(self, spec: TrainSpec, hp: HParams, params, xb, yb, mb, key, extra):
        """``(loss, aux)`` of a minibatch (``mb``: 0/1 validity of each row)."""

    def after_step(self, spec: TrainSpec, hp: HParams, extra, aux) -> tuple[Any, dict]:
        """``(extra, logs)`` after an optimizer step; logs are keyed as ``step_logs``."""
        return extra, {}

    @abc.abstractmethod
    def evaluate(self, spec: TrainSpec, hp: HParams, params, x_chunks, y) -> dict:
        """Val statistics of the evaluated weights: at least the two ``selection`` names."""

    def val_curves(self, spec: TrainSpec) -> tuple[str, ...]:
        """Names of ``evaluate``'s statistics (per-epoch curves of the run)."""
        return self.selection

    # -- inference -----------------------------------------------------------------------------

    @abc.abstractmethod
    def outputs(self, head: HeadSpec, params: dict, x: jax.Array) -> dict[str, jax.Array]:
        """Per-image float32 outputs ``output_names`` -> ``(n,)`` (jittable, float32 compute)."""

    @abc.abstractmethod
    def serving_graph(self, head: HeadSpec) -> dict[str, Any]:
        """``outputs`` described as data, for runtimes that cannot import JAX (serving, torch).

        A straight-line program over named float32 tensors, starting from ``"x"`` (n, D)::

            {"ops": [{"op": OP, "in": [names], "out": name, "params": {role: tensor key}}, ...],
             "outputs": {output name: tensor name}}

        ``OP`` is one of ``SERVING_OPS``; ``params`` name tensors of the saved parameter file
        (``heads.checkpoint`` keys such as ``"hidden/kernel"``). ``tests/test_serve_ops.py``
        holds every family's graph, interpreted in torch, to ``outputs`` within 1e-5.
        """


def chunked_apply(fn: Callable, x_chunks: jax.Array, n: int):
    """``fn`` over ``(k, chunk, D)`` row chunks (``lax.map``), results re-joined to ``n`` rows.

    Bounds the activations of a per-epoch val pass to one chunk however large val gets.
    """
    out = jax.lax.map(fn, x_chunks)
    return jax.tree.map(lambda a: a.reshape(-1, *a.shape[2:])[:n], out)
