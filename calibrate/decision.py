"""The one 0.5 decision rule: an image is "roadwork" iff P(roadwork) > 0.5.

StreetVision validators score ``np.round(p)`` (DOMAIN.md §1.4); numpy rounds half to even, so
``p = 0.5`` exactly counts as "no roadwork": the rule is ``p > 0.5``, never ``p >= 0.5``. Every
accuracy, MCC, challenge and selective-error figure of the project takes its hard decisions
from ``is_roadwork`` (tests/test_decision_rule.py fails on any ``>= 0.5`` / ``<= 0.5``
comparison in the source rooms), so a float32 probability that lands on 0.5 is counted the way
a validator counts it, everywhere.
"""

from __future__ import annotations

from typing import Any

import numpy as np

BOUNDARY = 0.5
RULE = "roadwork iff p > 0.5 (np.round: exactly 0.5 counts as no roadwork)"


def is_roadwork(p: Any, boundary: float = BOUNDARY) -> Any:
    """Boolean hard decision ``p > boundary`` (default 0.5), elementwise.

    Works on numpy arrays, Python sequences and JAX arrays (including tracers under ``jit``):
    JAX inputs stay JAX (anything with ``shape`` and ``__gt__`` is compared as is).
    """
    x = p if hasattr(p, "shape") and hasattr(p, "__gt__") else np.asarray(p)
    return x > boundary
