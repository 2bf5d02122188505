"""Test shorthands for the classifier heads: init/apply by kind through their Flax families."""

import jax
import jax.numpy as jnp

from heads import families
from heads.classifier import LinearSpec, MLPSpec
from heads.spec import TrainSpec


def head_spec(kind: str, hidden: int = 768):
    return MLPSpec(hidden=hidden) if kind == "mlp" else LinearSpec()


def init(key, kind: str, in_dim: int, hidden: int = 768) -> dict:
    """``module.init`` params of a linear or MLP head (the family's own init)."""
    spec = TrainSpec(head=head_spec(kind, hidden), in_dim=in_dim, epochs=1, batch_size=1, n_train=1)
    return families.get(kind).init(spec, key)


def apply(params, x, *, dropout_rate=0.0, key=None, dtype=jnp.float32):
    """Logits ``(n, 2)`` of the head ``params`` (its kind read off the tree)."""
    fam, head = families.of_params(params)
    return fam.module(head, dtype).apply(
        {"params": params}, x, dropout_rate=dropout_rate, dropout_key=key
    )


def kind_of(params) -> str:
    return families.of_params(params)[0].kind


def margin(params, x):
    from heads.model import logit_margin

    return logit_margin(apply(params, jax.numpy.asarray(x, jnp.float32)))
