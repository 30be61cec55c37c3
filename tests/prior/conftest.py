"""The prior tests share the independent reference computations of tests/curvature/curv_helpers.py and one
model with every adapted layer type (prior_helpers.py)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "curvature"))


import pytest  # noqa: E402


@pytest.fixture(scope="module")
def setup_with_batches():
    from prior_helpers import build_setup
    return build_setup()


@pytest.fixture(scope="module")
def setup(setup_with_batches):
    """(model, KFAC estimate, EWC estimate, input batch)."""
    return setup_with_batches[:4]
