"""PyTorch baselines of the head-sweep benchmark (bench/sweep.py; issue 3).

- ``torch_loop`` (a): one config at a time, ``nn.Sequential`` + fused ``torch.optim.AdamW`` +
  ``LambdaLR``, EMA by ``torch._foreach_lerp_``; a host sync once per epoch (val selection).
- ``torch_vmap`` (b): stacked parameters, ``torch.func.vmap(grad_and_value(loss))`` and a
  hand-written stacked AdamW/EMA step, ``torch.compile``d; one shared minibatch sequence for all
  heads (one pass over the data, DINOv2-style). ``recipe="tf32"`` is the issue's form (float32
  weights and moments, TF32 matmuls, EMA every step); ``recipe="mixed"`` is the recipe
  ``stage1`` uses on GPUs (bfloat16 features and GEMM inputs, bfloat16 first moment, EMA every
  ``ema_every`` steps with the decay raised to the block length), so the JAX sweep is also
  compared against the same arithmetic in PyTorch.
- ``torch_modulelist`` (b, reference): the DINOv3 linear-eval form, a ``ModuleList`` of heads,
  one AdamW with one parameter group per head, summed loss, one backward.

All follow heads.train's maths: LeCun truncated-normal init, class-weighted smoothed CE,
AdamW (optax defaults) with warm-up cosine, weight EMA with (1 + t) / (10 + t) warm-up.
"""

from __future__ import annotations

import math
import time

B1, B2, EPS = 0.9, 0.999, 1e-8  # optax.adamw defaults, used by every torch baseline


def warmup_cosine(t, peak, warm, total):
    """heads.optim.warmup_cosine in numpy/torch-neutral arithmetic (t may be a tensor)."""
    return (
        peak * t / max(warm, 1.0)
        if t < warm
        else (
            0.5
            * peak
            * (1 + math.cos(math.pi * min(max(t - warm, 0.0) / max(total - warm, 1.0), 1.0)))
        )
    )


# ---------------------------------------------------------------------------------------------
# PyTorch baselines


def _torch_setup():
    import torch

    torch.set_float32_matmul_precision("high")  # TF32, as JAX's default GPU matmul
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch, dev


def _t_init(torch, gen, fan_in, fan_out, dev, c=None):
    """LeCun truncated normal (heads.model's init), optionally stacked over c configs."""
    std = math.sqrt(1.0 / fan_in) / 0.87962566103423978
    shape = (fan_in, fan_out) if c is None else (c, fan_in, fan_out)
    w = torch.empty(shape, device=dev)
    torch.nn.init.trunc_normal_(w, std=std, a=-2 * std, b=2 * std, generator=gen)
    return w


def _t_wce(torch, logits, y, pw, ls):
    """heads.losses.weighted_ce (mean over a full batch; no padding rows here)."""
    logp = torch.log_softmax(logits, -1)
    onehot = torch.nn.functional.one_hot(y.long(), 2).to(logp.dtype)
    t = (1 - ls) * onehot + ls / 2
    ce = -(t * logp).sum(-1)
    w = torch.where(y == 1, pw, torch.ones_like(ce))
    return (w * ce).sum(-1) / w.sum(-1)


def _t_auroc(torch, scores, y):
    """Rank AUROC per row of scores (C, n) (continuous scores: ties ignored)."""
    ranks = scores.argsort(-1).argsort(-1).to(torch.float64) + 1
    pos = (y == 1).to(torch.float64)
    n_pos = pos.sum()
    n_neg = pos.numel() - n_pos
    return ((ranks * pos).sum(-1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def _sync(torch):
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def torch_loop(cfgs, data, a, pw):
    """(a) one config at a time."""
    torch, dev = _torch_setup()
    x, y, xv, yv = (torch.as_tensor(v, device=dev) for v in data)
    n, d = x.shape
    steps = n // a.batch
    total = steps * a.epochs
    aucs = []
    _sync(torch)
    t0 = time.perf_counter()
    for c in cfgs:
        gen = torch.Generator(device=dev).manual_seed(c["seed"])
        w1, w2 = _t_init(torch, gen, d, a.hidden, dev), _t_init(torch, gen, a.hidden, 2, dev)
        lin1, lin2 = (
            torch.nn.Linear(d, a.hidden, device=dev),
            torch.nn.Linear(a.hidden, 2, device=dev),
        )
        with torch.no_grad():
            lin1.weight.copy_(w1.T), lin2.weight.copy_(w2.T)
            lin1.bias.zero_(), lin2.bias.zero_()
        net = torch.nn.Sequential(lin1, torch.nn.GELU(), lin2)
        params = list(net.parameters())
        opt = torch.optim.AdamW(
            [
                {"params": [lin1.weight, lin2.weight], "weight_decay": c["weight_decay"]},
                {"params": [lin1.bias, lin2.bias], "weight_decay": 0.0},
            ],
            lr=c["lr"],
            betas=(B1, B2),
            eps=EPS,
            fused=dev.type == "cuda",
        )
        warm = round(c["warmup_frac"] * total)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda t, warm=warm: warmup_cosine(t, 1.0, warm, total)
        )
        ema = [p.detach().clone() for p in params]
        pwt = torch.tensor(pw, device=dev)
        best, t = -1.0, 0
        for _ in range(a.epochs):
            perm = torch.randperm(n, device=dev, generator=gen)
            for s in range(steps):
                idx = perm[s * a.batch : (s + 1) * a.batch]
                loss = _t_wce(torch, net(x[idx]), y[idx], pwt, c["label_smoothing"])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                dec = min(c["ema_decay"], (1 + t) / (10 + t))
                with torch.no_grad():
                    torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - dec)
                t += 1
            with torch.no_grad():
                h = torch.nn.functional.gelu(xv @ ema[0].T + ema[1])
                z = h @ ema[2].T + ema[3]
                auc = float(_t_auroc(torch, (z[:, 1] - z[:, 0])[None], yv)[0])  # per-epoch sync
            best = max(best, auc)
        aucs.append(best)
    _sync(torch)
    return {"wall": time.perf_counter() - t0, "val_auroc": aucs}


def torch_vmap(cfgs, data, a, pw, compile_step=True, recipe="tf32", ema_every=1):
    """(b) stacked parameters under torch.func.vmap, one pass over the data for all heads.

    ``recipe="tf32"``: float32 everywhere (TF32 matmuls), EMA fused into every step.
    ``recipe="mixed"``: bfloat16 features and GEMM inputs (float32 accumulation, float32 master
    weights), bfloat16 first moment, EMA after every ``ema_every`` steps and at each epoch's
    end with the decay raised to the block length (heads.optim.ema_block_update).
    """
    torch, dev = _torch_setup()
    from torch.func import grad_and_value, vmap

    if recipe not in ("tf32", "mixed"):
        raise ValueError(f"recipe must be tf32|mixed, got {recipe!r}")
    mixed = recipe == "mixed"
    cdt = torch.bfloat16 if mixed else torch.float32
    every = ema_every if mixed else 1
    x, y, xv, yv = (torch.as_tensor(v, device=dev) for v in data)
    x = x.to(cdt)
    n, d = x.shape
    c_n, h = len(cfgs), a.hidden
    steps = n // a.batch
    total = steps * a.epochs
    gens = [torch.Generator(device=dev).manual_seed(c["seed"]) for c in cfgs]
    params = {
        "w1": torch.stack([_t_init(torch, g, d, h, dev) for g in gens]),
        "b1": torch.zeros(c_n, h, device=dev),
        "w2": torch.stack([_t_init(torch, g, h, 2, dev) for g in gens]),
        "b2": torch.zeros(c_n, 2, device=dev),
    }
    m = {k: torch.zeros_like(p, dtype=cdt) for k, p in params.items()}
    v = {k: torch.zeros_like(p) for k, p in params.items()}
    ema = {k: p.clone() for k, p in params.items()}

    def col(key):
        return torch.tensor([c[key] for c in cfgs], device=dev, dtype=torch.float32)

    lr, wd, ls, dec = col("lr"), col("weight_decay"), col("label_smoothing"), col("ema_decay")
    warm = torch.round(col("warmup_frac") * total)
    pwt = torch.full((c_n,), pw, device=dev)

    def loss_one(p, xb, yb, pw_c, ls_c):
        hid = torch.nn.functional.gelu(xb @ p["w1"].to(cdt) + p["b1"].to(cdt))
        z = (hid @ p["w2"].to(cdt) + p["b2"].to(cdt)).float()
        return _t_wce(torch, z, yb, pw_c, ls_c)

    grads_fn = vmap(grad_and_value(loss_one), in_dims=(0, None, None, 0, 0))

    def step(params, m, v, ema, xb, yb, t, ema_block: int):
        """One AdamW step; with ema_block > 0 also the EMA of a block of that many steps."""
        grads, loss = grads_fn(params, xb, yb, pwt, ls)
        tf = t.to(torch.float32)
        frac = torch.clamp((tf - warm) / torch.clamp(total - warm, min=1.0), 0.0, 1.0)
        lr_t = torch.where(
            tf < warm,
            lr * tf / torch.clamp(warm, min=1.0),
            0.5 * lr * (1 + torch.cos(math.pi * frac)),
        )
        bc1, bc2 = 1 - B1 ** (tf + 1), 1 - B2 ** (tf + 1)
        d_t = 1 - torch.minimum(dec, (1 + tf) / (10 + tf)) ** max(ema_block, 1)
        for k, p in params.items():
            shape = (c_n,) + (1,) * (p.dim() - 1)
            g = grads[k]
            m_f = m[k].float() * B1 + (1 - B1) * g
            m[k].copy_(m_f)
            v[k].mul_(B2).addcmul_(g, g, value=1 - B2)
            upd = (m_f / bc1) / ((v[k] / bc2).sqrt() + EPS)
            if k.startswith("w"):
                upd = upd + wd.view(shape) * p
            p.sub_(lr_t.view(shape) * upd)
            if ema_block:
                ema[k].lerp_(p, d_t.view(shape))
        return loss

    run_step = torch.compile(step) if compile_step else step
    gen = torch.Generator(device=dev).manual_seed(0)
    best = torch.full((c_n,), -1.0, device=dev, dtype=torch.float64)
    t_dev = torch.zeros((), device=dev, dtype=torch.int64)  # step counter, never leaves the GPU
    compiled, first_steps = set(), 0.0  # each block length compiles on its first step
    _sync(torch)
    t0 = time.perf_counter()
    for _ in range(a.epochs):
        perm = torch.randperm(n, device=dev, generator=gen)
        since = 0
        for s in range(steps):
            idx = perm[s * a.batch : (s + 1) * a.batch]
            since += 1
            block = since if (since == every or s == steps - 1) else 0
            new = block not in compiled
            if new:
                _sync(torch)
                ts = time.perf_counter()
            run_step(params, m, v, ema, x[idx], y[idx], t_dev, block)
            if new:
                _sync(torch)
                first_steps += time.perf_counter() - ts
                compiled.add(block)
            since = 0 if block else since
            t_dev.add_(1)
        with torch.no_grad():
            margins = []
            for i in range(0, c_n, 8):  # bound the (configs, n_val, hidden) activations
                hid = torch.nn.functional.gelu(
                    xv @ ema["w1"][i : i + 8] + ema["b1"][i : i + 8, None]
                )
                z = hid @ ema["w2"][i : i + 8] + ema["b2"][i : i + 8, None]
                margins.append(z[..., 1] - z[..., 0])
            best = torch.maximum(best, _t_auroc(torch, torch.cat(margins), yv))
    _sync(torch)
    wall = time.perf_counter() - t0
    # The first step of each block length includes its torch.compile; excl. = the other steps
    # scaled to all steps.
    excl = (wall - first_steps) * total / max(total - len(compiled), 1)
    return {"wall": wall, "wall_excl": excl, "val_auroc": best.cpu().tolist(), "recipe": recipe}


def torch_modulelist(cfgs, data, a, pw):
    """(b, reference) DINOv3 linear-eval form: ModuleList of heads, one param group each."""
    torch, dev = _torch_setup()
    x, y, xv, yv = (torch.as_tensor(v, device=dev) for v in data)
    n, d = x.shape
    steps = n // a.batch
    total = steps * a.epochs
    heads = torch.nn.ModuleList(
        torch.nn.Sequential(
            torch.nn.Linear(d, a.hidden), torch.nn.GELU(), torch.nn.Linear(a.hidden, 2)
        )
        for _ in cfgs
    ).to(dev)
    groups = []
    for hd, c in zip(heads, cfgs, strict=True):
        groups.append(
            {
                "params": [hd[0].weight, hd[2].weight],
                "lr": c["lr"],
                "weight_decay": c["weight_decay"],
            }
        )
        groups.append({"params": [hd[0].bias, hd[2].bias], "lr": c["lr"], "weight_decay": 0.0})
    opt = torch.optim.AdamW(groups, betas=(B1, B2), eps=EPS)
    warm = round(cfgs[0]["warmup_frac"] * total)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: warmup_cosine(t, 1.0, warm, total))
    params = [p for p in heads.parameters()]
    ema = [p.detach().clone() for p in params]
    pwt = torch.tensor(pw, device=dev)
    gen = torch.Generator(device=dev).manual_seed(0)
    _sync(torch)
    t0 = time.perf_counter()
    t = 0
    for _ in range(a.modulelist_epochs):
        perm = torch.randperm(n, device=dev, generator=gen)
        for s in range(steps):
            idx = perm[s * a.batch : (s + 1) * a.batch]
            xb, yb = x[idx], y[idx]
            loss = sum(
                _t_wce(torch, hd(xb), yb, pwt, c["label_smoothing"])
                for hd, c in zip(heads, cfgs, strict=True)
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                torch._foreach_lerp_(
                    ema, [p.detach() for p in params], 1 - min(0.99, (1 + t) / (10 + t))
                )
            t += 1
    _sync(torch)
    return {"wall": time.perf_counter() - t0, "epochs": a.modulelist_epochs}
