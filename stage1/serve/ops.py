"""The bundle's data-described programs, evaluated in PyTorch (no JAX, no scipy).

Three programs, each written by the room that owns the maths and interpreted here op by op:

- the head's forward pass (``heads.family.Family.serving_graph``): dense / gelu / relu / scale /
  margin / take0 over named float32 tensors, parameters from the bundle's safetensors file;
- the calibration (``calibrate.calibration.serving_program``) and the policy's extra scores
  (``calibrate.policies.serving_rule``): elementwise ops over per-image vectors in the dtype the
  program names (float32 for "none", whose exit threshold is a float32 order statistic; float64
  otherwise, as scipy computes it in training);
- the exit rule: selection threshold, then the exit-negative / exit-positive thresholds.

Interpreting data instead of re-implementing each family keeps serving free of any branch on a
head kind, and ``tests/test_serve_ops.py`` holds each program to the training-time JAX / numpy
functions within 1e-5 (probabilities) and exactly (decisions).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["DECISIONS", "HeadProgram", "apply_rule", "rule_ops", "run_scores", "threshold_value"]

DECISIONS = ("exit_negative", "exit_positive", "defer")  # codes 0, 1, -1 (index -1 = "defer")


def threshold_value(t: Any) -> float:
    """A JSON threshold: a number, or the strings "inf" / "-inf"."""
    return float(t)  # float("inf") / float("-inf") parse the strings


class HeadProgram:
    """A head's ``serving_graph`` bound to its parameter tensors (float32, on ``device``)."""

    def __init__(self, graph: Mapping[str, Any], tensors: Mapping[str, torch.Tensor], device):
        self.ops = list(graph["ops"])
        self.outputs = dict(graph["outputs"])
        needed = {key for op in self.ops for key in op["params"].values()}
        missing = sorted(needed - set(tensors))
        if missing:
            raise ValueError(f"head parameters lack {missing[0]!r} (needed by the head graph)")
        self.tensors = {k: tensors[k].to(device=device, dtype=torch.float32) for k in needed}
        for op in self.ops:
            if op["op"] not in _HEAD_OPS:
                raise ValueError(f"unknown head op {op['op']!r}; known: {', '.join(_HEAD_OPS)}")

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        env = {"x": x.to(torch.float32)}
        for op in self.ops:
            args = [env[name] for name in op["in"]]
            params = {role: self.tensors[key] for role, key in op["params"].items()}
            env[op["out"]] = _HEAD_OPS[op["op"]](*args, **params)
        return {name: env[src] for name, src in self.outputs.items()}


# Flax Dense stores kernel as (fan_in, fan_out): y = x @ kernel + bias.
_HEAD_OPS = {
    "dense": lambda x, kernel, bias: torch.addmm(bias, x, kernel),
    "gelu": lambda x: torch.nn.functional.gelu(x, approximate="none"),  # exact erf, as Flax heads
    "relu": torch.relu,
    "scale": lambda x, scale: x * scale,
    "margin": lambda z: z[..., 1] - z[..., 0],
    "take0": lambda z: z[..., 0],
}


def _linear(*xs, weights, bias):
    out = torch.full_like(xs[0], float(bias))
    for w, x in zip(weights, xs, strict=True):
        out = out + float(w) * x
    return out


_SCORE_OPS = {
    "sigmoid": lambda x: torch.sigmoid(x),
    "affine": lambda x, a, b: float(a) * x + float(b),
    "one_minus": lambda x: 1.0 - x,
    "clip": lambda x, lo, hi: torch.clamp(x, float(lo), float(hi)),
    "log": torch.log,
    "linear": _linear,
    "max_complement": lambda x: torch.maximum(x, 1.0 - x),
}
_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def run_scores(
    program: Mapping[str, Any], outputs: Mapping[str, torch.Tensor], extra_ops=()
) -> dict[str, torch.Tensor]:
    """Scores of a calibration program (plus a policy's ``extra_ops``) from head outputs."""
    dtype = _DTYPES[program["dtype"]]
    env = {k: v.to(dtype) for k, v in outputs.items()}
    for op in [*program["ops"], *extra_ops]:
        fn = _SCORE_OPS.get(op["op"])
        if fn is None:
            raise ValueError(f"unknown score op {op['op']!r}; known: {', '.join(_SCORE_OPS)}")
        env[op["out"]] = fn(*(env[name] for name in op["in"]), **op["args"])
    names = {**program["scores"], **{op["out"]: op["out"] for op in extra_ops}}
    return {k: env[v] for k, v in names.items()}


def rule_ops(rule: Mapping[str, Any]) -> list:
    """The extra score ops of a rule and of its per-domain rules (each output once)."""
    out = {op["out"]: op for r in [rule, *(rule.get("domains") or {}).values()] for op in r["ops"]}
    return list(out.values())


def apply_rule(
    rule: Mapping[str, Any], scores: Mapping[str, torch.Tensor], domains=None
) -> torch.Tensor:
    """int8 decision codes (-1 defer, 0 exit negative, 1 exit positive) of the shipped rule,
    compared in float64 (a float32 score and its float32 threshold compare exactly).

    A per-domain rule (``rule["domains"]``: domain name -> rule, ``calibrate.domain_policy``)
    decides each image by its domain's rule given ``domains`` (one name per image); an image of
    a domain without a rule (deferred or unknown) is deferred. Without ``domains`` the top-level
    rule applies (for a per-domain bundle: defer every image)."""
    per = rule.get("domains")
    if per is not None and domains is not None:
        dom = [str(d) for d in domains]
        code = torch.full((len(dom),), -1, dtype=torch.int8, device=scores["p"].device)
        for name, r in per.items():
            m = torch.tensor([d == name for d in dom], device=code.device)
            if bool(m.any()):
                code[m] = apply_rule(r, {k: v[m] for k, v in scores.items()})
        return code
    p = scores["p"].to(torch.float64)
    selected = torch.ones_like(p, dtype=torch.bool)
    sel = rule.get("selection")
    if sel is not None:
        selected = scores[sel["score"]].to(torch.float64) >= threshold_value(sel["threshold"])
    code = torch.full(p.shape, -1, dtype=torch.int8, device=p.device)
    neg, pos = rule.get("exit_negative_below"), rule.get("exit_positive_at_or_above")
    if pos is not None:
        code[selected & (p >= threshold_value(pos))] = 1
    if neg is not None:
        code[selected & (p < threshold_value(neg))] = 0
    return code
