"""Benchmark: the hidden kernel's gradient GEMM with AdamW fused into its epilogue (issue 3).

    python bench/fused_adamw.py              # GPU: 64 heads, batch 512, 768 x 768 hidden kernels
    python bench/fused_adamw.py --quick      # CPU: tiny shapes, Pallas interpret mode (parity only)

Question: on a 64-head sweep the AdamW pass over the hidden kernels is the largest item of a
training step (docs/benchmarks.md), and it re-reads the weight gradient that the GEMM
``dW1 = x^T @ dpre`` has just written. A kernel that computes each ``dW1`` tile and applies AdamW
to it before it leaves registers never writes the gradient to memory (2 of ~24 bytes a parameter
a step in bfloat16), so it could beat XLA's cuBLAS GEMM + fused elementwise AdamW.

Compared, per training step of ``--configs`` heads (vmapped, state donated, timed in a device-side
``fori_loop`` whose gradient input alternates so that nothing is loop-invariant):

- ``xla``: ``jnp.dot(x.T, dpre)`` (cuBLAS, bfloat16 out, float32 accumulation) then
  ``optax.adamw(mu_dtype=bfloat16)`` and the bfloat16 weight copy, as ``heads.step`` runs them;
- ``xla_gemm``: the GEMM alone (the floor of what fusion could save is the AdamW pass beside it);
- ``fused``: one Pallas Triton kernel per ``(bm x bn)`` tile: the K loop of ``pl.dot``, then the
  AdamW update of that tile (weights, both moments, bfloat16 copy), at several tilings.

The parity check compares the fused update with optax's on the same inputs (float tolerance: the
kernel's K-blocked accumulation rounds the bfloat16 gradient differently in a few elements).
Result (docs/benchmarks.md, 2026-11-28, H100): the fused kernel is slower than XLA at every
tiling tried, so the library keeps the XLA step; this script is the reproducible record.
"""

from __future__ import annotations

import argparse
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

B1, B2, EPS = 0.9, 0.999, 1e-8  # optax.adamw defaults, as heads.optim uses them


def _kernel(x_ref, d_ref, w_ref, mu_ref, nu_ref, hp_ref, w_out, mu_out, nu_out, c_out, *, bk):
    bm, bn = w_ref.shape

    def k_step(k, acc):  # acc += x[k-block, i-block]^T @ dpre[k-block, j-block]
        xs = x_ref[pl.ds(k * bk, bk), :]
        ds = d_ref[pl.ds(k * bk, bk), :]
        return acc + pltriton.dot(xs, ds, trans_a=True)

    acc = jax.lax.fori_loop(0, x_ref.shape[0] // bk, k_step, jnp.zeros((bm, bn), jnp.float32))
    g = acc.astype(d_ref.dtype).astype(jnp.float32)  # the bfloat16 gradient the XLA step sees
    lr, wd, c1, c2 = hp_ref[0], hp_ref[1], hp_ref[2], hp_ref[3]
    # optax.scale_by_adam (update the moments, bias-correct, mu stored in bfloat16), then
    # add_decayed_weights and scale_by_learning_rate; apply_updates adds the result.
    mu = (1 - B1) * g + B1 * mu_ref[...].astype(jnp.float32)
    nu = (1 - B2) * (g * g) + B2 * nu_ref[...]
    p = w_ref[...]
    p = p + (-lr) * ((mu / c1) / (jnp.sqrt(nu / c2) + EPS) + wd * p)
    w_out[...] = p
    mu_out[...] = mu.astype(mu_out.dtype)
    nu_out[...] = nu
    c_out[...] = p.astype(c_out.dtype)


@functools.partial(jax.jit, static_argnames=("bm", "bn", "bk", "warps", "stages", "interpret"))
def fused_step(x, d, w, mu, nu, hp, *, bm, bn, bk, warps, stages, interpret=False):
    """One config: ``(w, mu, nu, bf16 copy)`` after AdamW on ``x^T @ d``; hp = (lr, wd, c1, c2)."""
    n, din = x.shape
    tile = pl.BlockSpec((bm, bn), lambda i, j: (i, j))
    return pl.pallas_call(
        functools.partial(_kernel, bk=bk),
        out_shape=(
            jax.ShapeDtypeStruct(w.shape, jnp.float32),
            jax.ShapeDtypeStruct(w.shape, mu.dtype),
            jax.ShapeDtypeStruct(w.shape, jnp.float32),
            jax.ShapeDtypeStruct(w.shape, x.dtype),
        ),
        grid=(din // bm, d.shape[1] // bn),
        in_specs=[
            pl.BlockSpec((n, bm), lambda i, j: (0, i)),
            pl.BlockSpec((n, bn), lambda i, j: (0, j)),
            tile,
            tile,
            tile,
            pl.BlockSpec((4,), lambda i, j: (0,)),
        ],
        out_specs=(tile, tile, tile, tile),
        input_output_aliases={2: 0, 3: 1, 4: 2},
        interpret=interpret,
        compiler_params=pltriton.CompilerParams(num_warps=warps, num_stages=stages),
    )(x, d, w, mu, nu, hp)


def xla_step(x, d, w, mu, nu, lr, wd, count):
    """One config the way heads.step runs it: cuBLAS GEMM, then optax.adamw (mu bfloat16)."""
    g = jnp.dot(x.T, d).astype(jnp.float32)
    tx = optax.inject_hyperparams(optax.adamw, static_args=("mu_dtype",))(
        learning_rate=lr, weight_decay=wd, mu_dtype=jnp.bfloat16
    )
    st = tx.init(w)
    adam = st.inner_state[0]._replace(count=count, mu=mu, nu=nu)
    st = st._replace(inner_state=(adam, *st.inner_state[1:]), count=count)
    upd, st = tx.update(g, st, w)
    w = optax.apply_updates(w, upd)
    return w, st.inner_state[0].mu, st.inner_state[0].nu, w.astype(x.dtype)


def make_inputs(c, n, din, h, seed=0):
    k = jax.random.split(jax.random.key(seed), 5)
    x = jax.random.normal(k[0], (c, n, din)).astype(jnp.bfloat16)
    d = (1e-3 * jax.random.normal(k[1], (c, n, h))).astype(jnp.bfloat16)
    w = 0.05 * jax.random.normal(k[2], (c, din, h))
    mu = (1e-2 * jax.random.normal(k[3], (c, din, h))).astype(jnp.bfloat16)
    nu = 1e-4 * jax.random.uniform(k[4], (c, din, h))
    lr = jnp.geomspace(1e-4, 1e-2, c).astype(jnp.float32)
    wd = jnp.where(jnp.arange(c) % 2 == 0, 0.0, 1e-2).astype(jnp.float32)
    return x, d, w, mu, nu, lr, wd


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", type=int, default=64)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--d", type=int, default=768)
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--iters", type=int, default=200)
    p.add_argument("--quick", action="store_true", help="CPU: tiny shapes, interpret mode")
    a = p.parse_args()
    if a.quick:
        a.configs, a.batch, a.d, a.hidden, a.iters = 2, 64, 64, 128, 2
    tilings = [(32, 128, 4, 4), (64, 64, 4, 4), (64, 128, 4, 4), (128, 64, 4, 4), (64, 128, 8, 4)]
    if a.quick:
        tilings = [(32, 64, 4, 2)]
    count = 7  # steps taken before this one: bias corrections 1 - beta**8
    x, d, w, mu, nu, lr, wd = make_inputs(a.configs, a.batch, a.d, a.hidden)
    hp = jnp.stack(
        [
            lr,
            wd,
            jnp.full_like(lr, 1 - B1 ** (count + 1)),
            jnp.full_like(lr, 1 - B2 ** (count + 1)),
        ],
        axis=1,
    )
    xla = jax.vmap(xla_step, in_axes=(0,) * 7 + (None,))
    cnt = jnp.int32(count)

    def fused(bm, bn, warps, stages):
        f = functools.partial(
            fused_step,
            bm=bm,
            bn=bn,
            bk=min(64, a.batch),
            warps=warps,
            stages=stages,
            interpret=a.quick,
        )
        return jax.vmap(f)

    ref = jax.jit(xla)(x, d, w, mu, nu, lr, wd, cnt)
    d_alt = jnp.stack([d, -d])  # step i reads d_alt[i % 2]
    # bytes of optimizer state a step must move: read g, w, mu, nu; write w, mu, nu, copy
    state_bytes = w.size * (2 + 4 + 2 + 4 + 4 + 2 + 4 + 2)

    def time_it(step):
        @functools.partial(jax.jit, donate_argnums=(0,))
        def loop(st):
            return jax.lax.fori_loop(0, a.iters, lambda i, s: step(s, d_alt[i % 2]), st)

        st = (w, mu, nu, w.astype(jnp.bfloat16))
        jax.block_until_ready(loop(jax.tree.map(jnp.copy, st)))
        st = jax.tree.map(jnp.copy, st)
        t0 = time.perf_counter()
        jax.block_until_ready(loop(st))
        return (time.perf_counter() - t0) / a.iters * 1e3

    rows = [
        (
            "xla (cuBLAS GEMM + XLA AdamW)",
            time_it(lambda s, dd: xla(x, dd, *s[:3], lr, wd, cnt)),
            0.0,
        ),
        (
            "xla_gemm (GEMM alone)",
            time_it(lambda s, dd: (*s[:3], jnp.einsum("cnd,cnh->cdh", x, dd))),
            None,
        ),
    ]
    for bm, bn, warps, stages in tilings:
        f = fused(bm, bn, warps, stages)
        out = f(x, d, w, mu, nu, hp)
        err = max(
            float(
                np.max(np.abs(np.asarray(o, np.float32) - np.asarray(r, np.float32)))
                / np.max(np.abs(np.asarray(r, np.float32)))
            )
            for o, r in zip(out[:3], ref[:3], strict=True)
        )
        if err > 1e-2:
            raise SystemExit(f"fused kernel disagrees with optax: max rel err {err:.2e}")
        ms = time_it(lambda s, dd, f=f: f(x, dd, *s[:3], hp))
        rows.append((f"fused bm={bm} bn={bn} warps={warps} stages={stages}", ms, err))
    print(
        f"device: {jax.devices()[0].device_kind}; {a.configs} heads, batch {a.batch}, "
        f"{a.d} x {a.hidden} hidden kernels; jax {jax.__version__}"
    )
    print(f"{'method':44s} {'ms/step':>8s} {'state GB/s':>11s} {'max rel err':>12s}")
    for name, ms, err in rows:
        rate = "-" if err is None else f"{state_bytes / ms / 1e6:.0f}"
        print(f"{name:44s} {ms:8.4f} {rate:>11s} {'-' if err is None else f'{err:.1e}':>12s}")


if __name__ == "__main__":
    main()
