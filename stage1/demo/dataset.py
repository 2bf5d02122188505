"""The synthetic set on disk: ``generate(out_dir)`` renders ``plan(n, seed)`` (one scene per
image, ``stage1.demo.synthetic.render``; shifted domains from ``stage1.demo.domains``) in worker
processes and writes ``roadwork/*.jpg``, ``none/*.jpg``, ``manifest.csv`` (path,label,domain,group)
and a ``DONE`` stamp last (a second call with the same n/seed/domains is a no-op). Determinism:
see ``stage1.demo.synthetic``.
"""

from __future__ import annotations

import io
import json
import re
import sys
from pathlib import Path

import numpy as np

from stage1.demo.synthetic import GENERATOR_VERSION, _rng, render

_NAME = re.compile(r"^\d{6,}\.jpg$")


def plan(n: int, seed: int = 0) -> list[tuple[int, int, int]]:
    """(index, street, label) per image: exactly ceil(n/2) positives in a seeded random order,
    consecutive indices grouped into streets of 2-3 images."""
    r = _rng(seed, "plan")
    labels = r.permutation(np.arange(n) < (n + 1) // 2)
    streets: list[int] = []
    while len(streets) < n:
        streets += [streets[-1] + 1 if streets else 0] * int(r.integers(2, 4))
    return [(i, streets[i], int(labels[i])) for i in range(n)]


def _render_task(task: tuple) -> tuple[int, str, int, str, str]:
    out_dir, seed, index, street, label, *domains = task
    img, domain = render(seed, index, street, label)
    if domains:  # shifted domains (stage1.demo.domains): one per street, a shift per image
        from stage1.demo.domains import shift, street_domain

        domain = street_domain(tuple(domains), _rng(seed, "domain", street))
        img = shift(img, domain, _rng(seed, "shift", index))
    rel = f"{'roadwork' if label == 1 else 'none'}/{index:06d}.jpg"
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    (Path(out_dir) / rel).write_bytes(buf.getvalue())
    return index, rel, label, domain, f"street-{street:05d}"


def _spawn_safe() -> bool:
    """Spawned workers re-import ``__main__`` from its file; a script read from stdin has none
    (the pool would respawn failing workers forever), so render in-process there."""
    main_file = getattr(sys.modules["__main__"], "__file__", None)
    return main_file is None or Path(main_file).is_file()


def generate(
    out_dir: str | Path,
    n: int = 2000,
    seed: int = 0,
    workers: int = 2,
    progress: bool = True,
    domains: tuple[str, ...] = (),
) -> Path:
    """Write the synthetic set (roadwork/, none/, manifest.csv, DONE) to ``out_dir``.

    Args:
        out_dir: target folder (created).
        n: number of images (>= 2; exactly ceil(n/2) positives).
        seed: generator seed; (n, seed) fixes every byte.
        workers: render processes (<= 1 renders in this process).
        progress: show a tqdm progress bar.
        domains: shifted domains to draw from, one per street (``stage1.demo.domains``: street,
            night, fog, camera2); each row's domain is its name. Empty (default): today's set,
            byte for byte (domains day/dusk).

    Returns:
        ``out_dir`` as a Path, loadable with ``stage1.manifest.load_manifest`` (the folder reader
        picks up ``manifest.csv`` for domains and street groups).
    """
    if n < 2:
        raise ValueError(f"demo data needs n >= 2 images, got {n}")
    out = Path(out_dir)
    stamp = {
        "generator": "stage1.demo_data",  # the module's first name: keeps old DONE stamps valid
        "version": GENERATOR_VERSION,
        "n": n,
        "seed": seed,
    }
    if domains:
        from stage1.demo.domains import parse_domains

        domains = parse_domains(",".join(domains))
        stamp["domains"] = list(domains)
    done = out / "DONE"
    if done.is_file():
        try:
            if json.loads(done.read_text()) == stamp:
                return out
        except (ValueError, OSError):
            pass
        done.unlink()
    for name in ("roadwork", "none"):  # drop images of an earlier, different generation
        (out / name).mkdir(parents=True, exist_ok=True)
        for old in (out / name).iterdir():
            if _NAME.match(old.name):
                old.unlink()
    tasks = [(str(out), seed, i, s, lab, *domains) for i, s, lab in plan(n, seed)]
    from tqdm import tqdm

    bar = tqdm(total=n, desc="demo images", unit="img", disable=not progress)
    rows: list = [None] * n
    if workers <= 1 or not _spawn_safe():
        for task in tasks:
            row = _render_task(task)
            rows[row[0]] = row
            bar.update()
    else:
        import multiprocessing as mp

        # spawn, not fork: the caller may hold JAX/torch threads that fork would copy
        with mp.get_context("spawn").Pool(workers) as pool:
            chunk = max(1, min(16, n // (4 * workers)))
            for row in pool.imap_unordered(_render_task, tasks, chunksize=chunk):
                rows[row[0]] = row
                bar.update()
    bar.close()
    from stage1.artifacts import atomic_write_bytes

    lines = ["path,label,domain,group"] + [f"{r[1]},{r[2]},{r[3]},{r[4]}" for r in rows]
    atomic_write_bytes(out / "manifest.csv", ("\n".join(lines) + "\n").encode())
    atomic_write_bytes(done, (json.dumps(stamp) + "\n").encode())
    return out
