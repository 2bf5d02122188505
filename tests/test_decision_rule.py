"""One 0.5 convention: every hard decision is ``calibrate.decision.is_roadwork`` (p > 0.5).

The validator scores ``np.round(p)`` (exactly 0.5 = "no roadwork"); a ``p >= 0.5`` anywhere
would count a probability of exactly 0.5 the other way. This test parses every source file of
the rooms and fails on any ``>= 0.5`` / ``<= 0.5`` comparison (either operand order), so a
metric cannot quietly switch conventions; and it checks that the figures built on the rule
count p = 0.5 as "no roadwork" through the real metric functions.
"""

import ast
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
ROOMS = ("calibrate", "heads", "stage1", "feature_extract", "bench", "schemas")


def _half(node) -> bool:
    return isinstance(node, ast.Constant) and node.value == 0.5


def offending_comparisons(source: str) -> list[int]:
    """Line numbers of ``x >= 0.5``, ``x <= 0.5``, ``0.5 <= x``, ``0.5 >= x`` in ``source``."""
    bad = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Compare):
            continue
        operands = [node.left, *node.comparators]
        for i, op in enumerate(node.ops):
            if isinstance(op, ast.GtE | ast.LtE) and (_half(operands[i]) or _half(operands[i + 1])):
                bad.append(node.lineno)
    return bad


def test_the_scanner_finds_each_form():
    src = "a = p >= 0.5\nb = 0.5 <= p\nc = p > 0.5\nd = 0 < p <= 0.5\ne = x >= 0.25\n"
    assert offending_comparisons(src) == [1, 2, 4]


def test_no_inclusive_half_comparison_in_any_room():
    found = []
    for room in ROOMS:
        for path in sorted((ROOT / room).rglob("*.py")):
            for line in offending_comparisons(path.read_text()):
                found.append(f"{path.relative_to(ROOT)}:{line}")
    assert not found, "use calibrate.decision.is_roadwork (p > 0.5), not >= 0.5: " + ", ".join(
        found
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_exactly_half_is_no_roadwork_in_every_figure(dtype):
    from calibrate import metrics as M
    from calibrate.challenge import challenge_metrics, decisions
    from calibrate.decision import is_roadwork

    p = np.array([0.5, 0.5, 0.9, 0.1], dtype)
    y = np.array([0, 0, 1, 0])
    assert is_roadwork(p).tolist() == [False, False, True, False]
    assert decisions(p).tolist() == [False, False, True, False]
    # All four right under p > 0.5; two wrong under p >= 0.5.
    assert float(M.accuracy(p, y)) == 1.0 and float(M.mcc(p, y)) == pytest.approx(1.0)
    s = M.evaluate(p, y)
    assert s["accuracy"] == 1.0 and s["fpr"] == 0.0
    assert float(M.top_label_ece(p, y, n_bins=2)) == pytest.approx(
        np.mean(np.abs(np.maximum(p, 1 - p) - 1.0)), abs=1e-6
    )
    assert challenge_metrics(p, y)["accuracy"] == 1.0
