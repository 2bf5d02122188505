"""The import rules between the rooms (ARCHITECTURE.md), checked on the source with ``ast``.

- ``heads``, ``calibrate`` and ``feature_extract`` import nothing from ``stage1`` (anywhere in a
  file, function bodies included): the orchestration room builds their inputs and calls them.
- ``heads`` and ``calibrate`` never import torch; ``feature_extract`` never imports jax, flax or
  optax; ``stage1`` imports no framework at module level (its CLI imports lazily).
- Serving (``stage1/serve``) imports torch, never JAX: its modules may import torch at module level
  (they are loaded lazily by ``stage1.__getattr__``), and none but the exporter, which runs in
  the training process, imports jax, flax, optax, heads or calibrate.
- The HDF5 cache format has one owner: ``stage1/cache.py`` is the only module importing h5py.
- Nothing outside a head family compares a ``kind`` with a family's name.

Each rule is a function over a folder, so ``test_the_checker_catches_each_violation`` can prove on
a throwaway tree that it would fail.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from stage1.config import HEAD_KINDS

ROOT = Path(__file__).resolve().parents[1]
LIBRARY_ROOMS = ("heads", "calibrate", "feature_extract")
FAMILY_MODULES = ("heads/classifier.py", "heads/selective_family.py", "heads/families.py")
SERVE = "stage1/serve"
SERVE_EXPORTER = "stage1/serve/export.py"  # runs in the training process, reads heads/calibrate


def _modules(tree: ast.AST, top_level_only: bool = False) -> list[str]:
    """Module names imported by ``tree``: ``import a.b`` -> "a.b", ``from a import b`` -> "a"."""
    nodes = ast.iter_child_nodes(tree) if top_level_only else ast.walk(tree)
    out = []
    for node in nodes:
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append(node.module)
    return out


def _files(root: Path, room: str):
    for path in sorted((root / room).rglob("*.py")):
        yield path, ast.parse(path.read_text(), filename=str(path))


def _roots(mods: list[str]) -> set[str]:
    return {m.split(".")[0] for m in mods}


def violations(root: Path) -> list[str]:
    bad = []
    for room in LIBRARY_ROOMS:
        for path, tree in _files(root, room):
            roots = _roots(_modules(tree))
            if "stage1" in roots:
                bad.append(f"{path.relative_to(root)} imports stage1")
            if room in ("heads", "calibrate") and "torch" in roots:
                bad.append(f"{path.relative_to(root)} imports torch")
            if room == "feature_extract" and roots & {"jax", "flax", "optax"}:
                bad.append(f"{path.relative_to(root)} imports a JAX library")
    for path, tree in _files(root, "stage1"):
        rel = path.relative_to(root).as_posix()
        top = _roots(_modules(tree, top_level_only=True))
        allowed = {"torch"} if rel.startswith(SERVE + "/") else set()
        if top & {"torch", "jax", "flax", "optax", "timm"} - allowed:
            bad.append(f"{rel} imports a framework at module level")
        if rel.startswith(SERVE + "/") and rel != SERVE_EXPORTER:
            if _roots(_modules(tree)) & {"jax", "flax", "optax", "heads", "calibrate"}:
                bad.append(f"{rel}: serving imports JAX (or a JAX room)")
    for room in ("stage1", *LIBRARY_ROOMS):
        for path, tree in _files(root, room):
            rel = path.relative_to(root).as_posix()
            if rel != "stage1/cache.py" and "h5py" in _roots(_modules(tree)):
                bad.append(f"{rel} imports h5py (the cache format's owner is stage1/cache.py)")
            if rel in FAMILY_MODULES:
                continue
            for node in ast.walk(tree):
                if isinstance(node, ast.Compare):
                    names = [node.left, *node.comparators]
                    kinds = [
                        n for n in names if isinstance(n, ast.Constant) and n.value in HEAD_KINDS
                    ]
                    attrs = [n for n in names if isinstance(n, ast.Attribute) and n.attr == "kind"]
                    if kinds and attrs:
                        bad.append(f"{rel}:{node.lineno} branches on a head kind")
    return bad


def test_the_rooms_keep_their_import_rules():
    assert violations(ROOT) == []


@pytest.mark.parametrize(
    "room, source, what",
    [
        ("heads", "def f():\n    from stage1.config import Config\n", "imports stage1"),
        ("calibrate", "import stage1.cache as c\n", "imports stage1"),
        ("feature_extract", "from stage1 import cache\n", "imports stage1"),
        ("heads", "import torch\n", "imports torch"),
        ("feature_extract", "import jax.numpy as jnp\n", "imports a JAX library"),
        ("stage1", "import jax\n", "framework at module level"),
        ("feature_extract", "def f():\n    import h5py\n", "imports h5py"),
        ("stage1", "def f(spec):\n    return spec.kind == 'mlp'\n", "branches on a head kind"),
        ("stage1/serve", "def f():\n    import heads.predict\n", "serving imports JAX"),
        ("stage1/serve", "import timm\n", "framework at module level"),
    ],
)
def test_the_checker_catches_each_violation(tmp_path, room, source, what):
    for r in ("stage1", *LIBRARY_ROOMS, "stage1/serve"):
        (tmp_path / r).mkdir()
        (tmp_path / r / "ok.py").write_text("import numpy as np\n")
    (tmp_path / "stage1/serve/torch_ok.py").write_text("import torch\n")
    (tmp_path / room / "bad.py").write_text(source)
    found = violations(tmp_path)
    assert len(found) == 1 and what in found[0], found
