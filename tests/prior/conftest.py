"""The prior tests share the independent reference computations of tests/curvature/curv_helpers.py."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "curvature"))
