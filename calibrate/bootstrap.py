"""Vectorised bootstrap confidence intervals for jittable statistics (percentile and BCa).

Design:

- A resample is drawn as ``n`` row indices with ``jax.random`` (rows stay paired across all
  arrays). Resample ``b`` uses ``split(key(seed), n_resamples)[b]``, so the draws do not depend
  on the chunking.
- Resamples are ``vmap``-ped in chunks of ``chunk_size`` (a Python loop over one compiled chunk
  function, the last chunk padded), so memory stays near ``chunk_size * n`` elements whatever
  ``n_resamples`` is. The default chunk keeps ``chunk_size * n`` near 2**24 elements on an
  accelerator and 2**20 on CPU.
- Two ways to evaluate a resample. Generic (``weighted=False``): ``stat_fn(*[a[idx] ...])`` on
  the gathered rows. Count-weighted (``weighted=True``): ``stat_fn(*arrays, weights=counts)``
  with ``counts = bincount(idx)``, the multinomial count vector of the same resample. Every
  metric in ``calibrate.metrics`` takes such frequency weights and returns the same value as
  on the gathered rows; and because ``vmap`` batches only the counts, whatever depends on the
  data alone (sorting the scores, tie groups, fixed bin edges) is traced once per chunk, so a
  resample costs O(n) instead of O(n log n). Both ways give the same distribution for a seed.
- Stratification (``stratify``: one integer code per row, e.g. class, domain, or class*K +
  domain) resamples within each stratum, keeping every stratum's size.
- Intervals: percentile (``np.percentile``, linear interpolation, as scipy) and BCa (Efron
  1987, the construction of ``scipy.stats.bootstrap``): bias correction
  ``z0 = Phi^-1((#{t* < t} + #{t* <= t}) / 2B)`` (a resample within 8 float32 ulps of ``t``
  counts as a tie) and acceleration
  ``a = sum(d^3) / (6 (sum d^2)^1.5)`` with ``d_i = mean(t_(.)) - t_(i)`` from the jackknife.
  The jackknife is exact (delete-1, n evaluations) for ``n <= jackknife_max``; above that it is
  a grouped (delete-d) jackknife: rows are randomly split into ``jackknife_max`` groups of
  ``d = n // jackknife_max`` (the remaining ``n mod jackknife_max`` rows are never deleted) and
  each group is deleted in turn. ``a`` is scale-free and the influence of a group is the sum
  of its rows' influences, whose second and third cumulants add, so the grouped estimate
  targets the same acceleration (with more Monte Carlo noise). The jackknife ignores strata.
- Cluster bootstrap (``groups``: one id per row, e.g. the street or drive of an image): rows of
  one group are correlated, so resampling rows understates the variance (95 % AUROC intervals
  covered the truth 69 % of the time with groups of 5 at correlation 0.5). Each resample draws
  the *groups* with replacement — as many as there are — and weights every row by its group's
  count (Davison & Hinkley, "Bootstrap Methods and their Application", 1997, §3.8; Field &
  Welsh, "Bootstrapping clustered data", JRSS B 69, 2007: resampling clusters is consistent when
  clusters are i.i.d., whatever the within-cluster dependence). Stratified where it can be:
  a group whose rows share one ``stratify`` code is resampled within that stratum, groups
  mixing strata form one more stratum, so the number of all-positive, all-negative and mixed
  groups stays fixed. Resamples are evaluated as count weights (``weighted=True`` is required),
  and the BCa jackknife deletes whole groups. ``BootstrapResult.scheme`` says what was done.
- NaN-safe: resamples whose statistic is NaN (e.g. AUROC of a one-class resample) are
  dropped from the quantiles, z0 and the standard error, and counted in ``n_nan``.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import ndtr, ndtri

_METHODS = ("percentile", "bca")
_TIE_ULPS = 8  # float32 ulps within which a resample ties with the point estimate (BCa z0)


class BootstrapResult(NamedTuple):
    """Each field has the pytree structure of ``stat_fn``'s output (floats for scalar leaves).

    ``point``: the statistic on the data; ``low``/``high``: the interval; ``se``: standard
    deviation (ddof=1) of the finite resampled values; ``n_nan``: resamples giving NaN;
    ``distribution``: (n_resamples, ...) resampled values.
    """

    point: Any
    low: Any
    high: Any
    se: Any
    n_nan: Any
    distribution: Any
    scheme: str = "rows"  # what was resampled (rows, stratified rows, groups, ...)


def _validate(stat_fn, arrays, n_resamples, confidence, method, chunk_size, jackknife_max):
    if not callable(stat_fn):
        raise ValueError("stat_fn must be callable")
    if not arrays:
        raise ValueError("bootstrap_ci needs at least one data array")
    lengths = {np.shape(a)[0] if np.ndim(a) else None for a in arrays}
    if len(lengths) != 1 or None in lengths:
        raise ValueError(f"all arrays must share their first dimension, got lengths {lengths}")
    if not isinstance(n_resamples, int) or n_resamples < 2:
        raise ValueError(f"n_resamples must be an int >= 2, got {n_resamples!r}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    if not isinstance(jackknife_max, int) or jackknife_max < 2:
        raise ValueError(f"jackknife_max must be an int >= 2, got {jackknife_max!r}")
    return lengths.pop()


def _strata_plan(stratify, n):
    """(perm, lo, span): resampled position j draws uniformly from perm[lo[j] : lo[j]+span[j]]."""
    if stratify is None:
        return None
    codes = np.asarray(stratify)
    if codes.shape != (n,):
        raise ValueError(f"stratify must have shape ({n},), got {codes.shape}")
    codes = np.unique(codes, return_inverse=True)[1].reshape(-1)
    perm = np.argsort(codes, kind="stable")
    sizes = np.bincount(codes)
    starts = np.cumsum(sizes) - sizes
    c = codes[perm]
    return tuple(jnp.asarray(v, jnp.int32) for v in (perm, starts[c], sizes[c]))


def _cluster_plan(groups, stratify, n):
    """(gcode, gplan, n_groups, scheme): row -> group code, and the stratum plan over groups."""
    from calibrate.groups import group_codes

    gcode = group_codes(groups, n)
    n_groups = int(gcode.max()) + 1 if n else 0
    scheme = f"cluster bootstrap over {n_groups} groups"
    gplan = None
    if stratify is not None:
        codes = np.asarray(stratify)
        if codes.shape != (n,):
            raise ValueError(f"stratify must have shape ({n},), got {codes.shape}")
        codes = np.unique(codes, return_inverse=True)[1].reshape(-1)
        lo = np.full(n_groups, np.iinfo(np.int64).max)
        hi = np.full(n_groups, -1)
        np.minimum.at(lo, gcode, codes)
        np.maximum.at(hi, gcode, codes)
        gstrat = np.where(lo == hi, lo, codes.max() + 1)  # mixed groups: one more stratum
        gplan = _strata_plan(gstrat, n_groups)
        n_mixed = int(np.sum(lo != hi))
        mixed = f" ({n_mixed} groups mixing strata form one more stratum)" if n_mixed else ""
        scheme += ", stratified" + mixed
    return jnp.asarray(gcode, jnp.int32), gplan, n_groups, scheme


@functools.partial(jax.jit, static_argnames=("stat_fn", "n_groups"))
def _cluster_chunk(stat_fn, n_groups, keys, arrays, gcode, gplan):
    def one(key):
        if gplan is None:
            pick = jax.random.randint(key, (n_groups,), 0, n_groups)
        else:
            perm, lo, span = gplan
            pick = perm[lo + jax.random.randint(key, (n_groups,), 0, span)]
        counts = jnp.zeros(n_groups, jnp.float32).at[pick].add(1.0)
        return stat_fn(*arrays, weights=counts[gcode])

    return jax.vmap(one)(keys)


@functools.partial(jax.jit, static_argnames=("stat_fn", "n_groups", "d"))
def _cluster_jackknife_chunk(stat_fn, n_groups, d, idx, perm, arrays, gcode):
    def one(i):
        drop = jax.lax.dynamic_slice(perm, (i * d,), (d,))
        keep = jnp.ones(n_groups, jnp.float32).at[drop].set(0.0)
        return stat_fn(*arrays, weights=keep[gcode])

    return jax.vmap(one)(idx)


def _evaluate(stat_fn, weighted, arrays, idx=None, w=None):
    if weighted:
        return stat_fn(*arrays, weights=w)
    return stat_fn(*(a[idx] for a in arrays))


@functools.partial(jax.jit, static_argnames=("stat_fn", "weighted"))
def _resample_chunk(stat_fn, weighted, keys, arrays, plan):
    n = arrays[0].shape[0]

    def one(key):
        if plan is None:
            idx = jax.random.randint(key, (n,), 0, n)
        else:
            perm, lo, span = plan
            idx = perm[lo + jax.random.randint(key, (n,), 0, span)]
        counts = jnp.zeros(n, jnp.float32).at[idx].add(1.0) if weighted else None
        return _evaluate(stat_fn, weighted, arrays, idx, counts)

    return jax.vmap(one)(keys)


@functools.partial(jax.jit, static_argnames=("stat_fn", "weighted", "d"))
def _jackknife_chunk(stat_fn, weighted, d, groups, perm, arrays):
    n = perm.shape[0]

    def one(g):
        if weighted:
            drop = jax.lax.dynamic_slice(perm, (g * d,), (d,))
            return _evaluate(stat_fn, True, arrays, w=jnp.ones(n, jnp.float32).at[drop].set(0))
        j = jnp.arange(n - d)
        return _evaluate(stat_fn, False, arrays, idx=perm[j + d * (j >= g * d)])

    return jax.vmap(one)(groups)


def _map_chunks(fn, xs, chunk):
    """fn over xs in fixed-size chunks (last one padded, so one compilation), concatenated."""
    m = xs.shape[0]
    outs = []
    for start in range(0, m, chunk):
        k = min(chunk, m - start)
        part = xs[(start + jnp.arange(chunk)) % m] if k < chunk else xs[start : start + chunk]
        outs.append(jax.tree.map(lambda a, k=k: a[:k], fn(part)))
    return jax.device_get(jax.tree.map(lambda *a: jnp.concatenate(a), *outs))


def _default_chunk(n):
    budget = 2**20 if jax.default_backend() == "cpu" else 2**24
    return max(1, budget // max(n, 1))


def _bca_levels(dist, point, jack, alpha):
    """BCa percentile levels (per column of dist) from z0 and the jackknife acceleration."""
    lo_q = np.full(dist.shape[1], np.nan)
    hi_q = np.full(dist.shape[1], np.nan)
    for j in range(dist.shape[1]):
        t = dist[:, j][~np.isnan(dist[:, j])]
        jk = jack[:, j][~np.isnan(jack[:, j])]
        if t.size == 0 or jk.size == 0 or np.isnan(point[j]):
            continue
        # Ties count half (scipy's BCa does the same). A resample within a few float32 ulps of
        # the point is a tie: the statistic runs in float32 on two code paths (weighted and
        # gathered resamples) whose round-off differs by ~1e-7, and without the tolerance that
        # round-off alone moves z0 by 1/(2B) and the interval's ends with it.
        tol = _TIE_ULPS * np.finfo(np.float32).eps * abs(float(point[j]))
        z0 = ndtri((np.sum(t < point[j] - tol) + np.sum(t <= point[j] + tol)) / (2 * t.size))
        d = jk.mean() - jk
        den = 6 * np.sum(d**2) ** 1.5
        a = np.sum(d**3) / den if den > 0 else 0.0
        with np.errstate(all="ignore"):
            z = ndtri([alpha, 1 - alpha])
            levels = ndtr(z0 + (z0 + z) / (1 - a * (z0 + z)))
        if np.all(np.isfinite(levels)):
            lo_q[j], hi_q[j] = np.percentile(t, 100 * levels)
    return lo_q, hi_q


def bootstrap_ci(
    stat_fn: Callable[..., Any],
    *arrays,
    n_resamples: int = 10000,
    confidence: float = 0.95,
    stratify=None,
    seed: int = 0,
    method: str = "percentile",
    chunk_size: int | None = None,
    weighted: bool = False,
    jackknife_max: int = 5000,
    groups=None,
) -> BootstrapResult:
    """Paired bootstrap confidence interval of ``stat_fn(*arrays)`` (a scalar or pytree of them).

    Args:
        stat_fn: jittable function of the arrays (rows paired), returning a scalar or a pytree
            (e.g. dict) of scalars or small arrays; with ``weighted=True`` it is called as
            ``stat_fn(*arrays, weights=counts)`` (all ``calibrate.metrics`` functions and
            ``metrics.summary`` accept that). Pass the same function object across calls to
            reuse its compilation.
        *arrays: arrays sharing their first dimension n.
        n_resamples: number of bootstrap resamples B.
        confidence: two-sided confidence level.
        stratify: optional (n,) stratum codes; resampling keeps each stratum's size.
        seed: seed of ``jax.random.key``.
        method: ``"percentile"`` or ``"bca"``.
        chunk_size: resamples per vmapped chunk (default from n; see module docstring).
        weighted: evaluate resamples as count weights instead of gathered rows (O(n) each).
        jackknife_max: BCa only; exact jackknife up to this n, grouped jackknife above.
        groups: optional (n,) group id per row: cluster bootstrap (module docstring); needs
            ``weighted=True``.

    Returns:
        BootstrapResult(point, low, high, se, n_nan, distribution).
    """
    method = method.lower() if isinstance(method, str) else method
    n = _validate(stat_fn, arrays, n_resamples, confidence, method, chunk_size, jackknife_max)
    arrays = tuple(jnp.asarray(a) for a in arrays)
    if groups is not None and not weighted:
        raise ValueError(
            "a cluster bootstrap (groups=) evaluates resamples as count weights: pass "
            "weighted=True and a stat_fn accepting weights="
        )
    chunk = chunk_size or _default_chunk(n)
    key = jax.random.key(seed)

    point = stat_fn(*arrays, weights=jnp.ones(n, jnp.float32)) if weighted else stat_fn(*arrays)
    point = jax.device_get(point)
    leaves, treedef = jax.tree.flatten(point)
    keys = jax.random.split(key, n_resamples)
    if groups is None:
        plan = _strata_plan(stratify, n)
        scheme = "rows" if stratify is None else "rows, stratified"
        resample = functools.partial(_resample_chunk, stat_fn, weighted, arrays=arrays, plan=plan)
    else:
        gcode, gplan, n_groups, scheme = _cluster_plan(groups, stratify, n)
        resample = functools.partial(
            _cluster_chunk, stat_fn, n_groups, arrays=arrays, gcode=gcode, gplan=gplan
        )
    dist = _map_chunks(resample, keys, min(chunk, n_resamples))
    dist_leaves = jax.tree.leaves(dist)

    if method == "bca" and groups is not None:
        # Delete-one-group jackknife (grouped above jackknife_max groups, as for rows).
        d, n_jack = max(1, n_groups // jackknife_max), min(n_groups, jackknife_max)
        perm = jax.random.permutation(jax.random.fold_in(key, 1), n_groups).astype(jnp.int32)
        jack = _map_chunks(
            functools.partial(
                _cluster_jackknife_chunk,
                stat_fn,
                n_groups,
                d,
                perm=perm,
                arrays=arrays,
                gcode=gcode,
            ),
            jnp.arange(n_jack, dtype=jnp.int32),
            min(chunk, n_jack),
        )
        jack_leaves, n_groups_jk = jax.tree.leaves(jack), n_jack
    elif method == "bca":
        if n <= jackknife_max:
            d, n_groups, perm = 1, n, jnp.arange(n, dtype=jnp.int32)
        else:
            d, n_groups = n // jackknife_max, jackknife_max
            perm = jax.random.permutation(jax.random.fold_in(key, 1), n).astype(jnp.int32)
        jack = _map_chunks(
            functools.partial(_jackknife_chunk, stat_fn, weighted, d, perm=perm, arrays=arrays),
            jnp.arange(n_groups, dtype=jnp.int32),
            min(chunk, n_groups),
        )
        jack_leaves, n_groups_jk = jax.tree.leaves(jack), n_groups

    alpha = (1 - confidence) / 2
    out = {f: [] for f in ("point", "low", "high", "se", "n_nan", "distribution")}
    for i, (pt, dl) in enumerate(zip(leaves, dist_leaves, strict=True)):
        shape = np.shape(pt)
        flat = np.asarray(dl, np.float64).reshape(n_resamples, -1)
        p_flat = np.asarray(pt, np.float64).reshape(-1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns give NaN
            if method == "bca":
                jk = np.asarray(jack_leaves[i], np.float64).reshape(n_groups_jk, -1)
                low, high = _bca_levels(flat, p_flat, jk, alpha)
            else:
                low = np.nanpercentile(flat, 100 * alpha, axis=0)
                high = np.nanpercentile(flat, 100 * (1 - alpha), axis=0)
            se = np.nanstd(flat, axis=0, ddof=1)
        n_nan = np.isnan(flat).sum(axis=0)

        def shaped(v, shape=shape):
            v = np.asarray(v).reshape(shape)
            return v.item() if v.ndim == 0 else v

        for field, value in (("point", p_flat), ("low", low), ("high", high), ("se", se)):
            out[field].append(shaped(value))
        out["n_nan"].append(shaped(n_nan))
        out["distribution"].append(flat.reshape((n_resamples, *shape)))
    return BootstrapResult(
        **{f: jax.tree.unflatten(treedef, v) for f, v in out.items()}, scheme=scheme
    )
