"""The answer a StreetVision validator reads: a float whose 0.5 crossing is the bundle's cut.

Validators score ``np.round(answer)``: roadwork iff answer > 0.5, and exactly 0.5 counts as "no
roadwork" (shared/reference/DOMAIN.md §1.4). The calibrated probability ``p`` is an internal
routing score whose decision cut ``c`` is rarely 0.5, so the answer is the monotone prior-shift
recalibration

    answer = sigmoid(logit(p) - logit(c))          (= p when c = 0.5)

i.e. the posterior under the class prior that puts the Bayes cut at ``c``: it keeps the ranking
(AUROC) and equals 0.5 exactly at ``p = c``. Two guards make the contract exact in floating
point: images with ``p >= c`` get at least ``0.5 + margin`` and those with ``p < c`` at most
``0.5 - margin`` (margin 1e-6, far above float32's spacing at 0.5, so the side survives any
serialisation), and the answer is clipped to ``[1e-6, 1 - 1e-6]``, strictly inside [0, 1] as
DOMAIN.md asks. Both guards are non-decreasing in ``p``, so the map stays monotone.

``c`` is chosen at export (``stage1.serve.export``): the policy's exit-positive threshold when
it has one, so that exit_positive answers land above 0.5 and exit_negative ones below; otherwise
the cut that maximises the balanced challenge score on val, raised to the exit-negative
threshold when below it (so exit_negative answers still land below 0.5).
"""

from __future__ import annotations

import numpy as np

__all__ = ["CLIP", "MAP", "MARGIN", "answer"]

MARGIN = 1e-6
CLIP = (1e-6, 1.0 - 1e-6)
MAP = "sigmoid(logit(p) - logit(threshold)), pushed >= 0.5 + margin where p >= threshold and "
MAP += "<= 0.5 - margin below, clipped to clip"
_EPS = 1e-15  # logit of 0 and 1 stay finite; p beyond these is already saturated


def answer(p, threshold: float, margin: float = MARGIN, clip=CLIP) -> np.ndarray:
    """The validator-scale answers (float64) of calibrated probabilities ``p``."""
    p = np.asarray(p, np.float64)
    q = np.clip(p, _EPS, 1.0 - _EPS)
    c = np.clip(np.asarray(threshold, np.float64), _EPS, 1.0 - _EPS)  # one cut, or one per image
    z = np.log(q) - np.log1p(-q) - (np.log(c) - np.log1p(-c))
    v = 1.0 / (1.0 + np.exp(-z))
    pos = p >= threshold
    v = np.where(pos, np.maximum(v, 0.5 + margin), np.minimum(v, 0.5 - margin))
    return np.clip(v, clip[0], clip[1])
