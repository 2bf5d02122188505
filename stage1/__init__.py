"""stage1: fast first-stage roadwork classifier on cached DINOv3 features.

This package is orchestration only and imports neither torch nor jax at import time;
``stage1.Stage1Model`` (serving, PyTorch only) is loaded on first use.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy: `from stage1 import Stage1Model` imports torch, a bare `import stage1` does not.
    if name == "Stage1Model":
        from stage1.serve.model import Stage1Model

        return Stage1Model
    raise AttributeError(f"module 'stage1' has no attribute {name!r}")
