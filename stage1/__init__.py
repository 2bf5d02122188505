"""stage1: fast first-stage roadwork classifier on cached DINOv3 features.

This package is orchestration only and imports neither torch nor jax at import time.
"""

__version__ = "0.1.0"
