"""The forgetting benchmark's front: the lowest forgetting reachable on a lam path within a budget."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from forgetting_opt import front  # noqa: E402

# (news ratio, wiki ppl) ordered by lam, starting at plain LoRA
PATH = [(1.0, 120.0), (1.02, 114.0), (1.10, 110.0), (1.30, 105.0)]


def test_front_interpolates_the_segment_that_crosses_the_budget():
    assert front(PATH, 1.0) == 120.0
    assert front(PATH, 1.01) == pytest.approx(117.0)  # halfway along the first segment
    assert front(PATH, 1.06) == pytest.approx(112.0)
    assert front(PATH, 1.30) == 105.0 and front(PATH, 2.0) == 105.0


def test_front_takes_the_best_point_within_budget_on_a_non_monotone_path():
    # noise: the strongest lam came out cheaper on news than a weaker one
    path = [(1.0, 120.0), (1.05, 112.0), (1.03, 111.0)]
    assert front(path, 1.04) == 111.0
    assert front(path, 1.02) == pytest.approx(120.0 - 8.0 * 0.02 / 0.05)  # first segment only
    assert front([(1.0, 118.0), (0.99, 117.5)], 1.0) == 117.5  # a run better than plain on both axes
