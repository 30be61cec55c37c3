"""Helpers of the fault tests: the recipe and test-script paths, and the fine-tuning recipe run as a
subprocess (optionally SIGKILLed while it writes a checkpoint)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import tts_bpeft

TESTS = Path(__file__).parents[1]
RECIPES = Path(tts_bpeft.__file__).resolve().parents[1] / "recipes" / "styletts2_vctk"
"""The recipes of the tree whose package is imported (PYTHONPATH), so the tests can be run against another."""
KILL_ON_SAVE = TESTS / "core" / "kill_on_save.py"
FAST = ["optim.batch_size=1", "loss.max_frames=84", "checkpoint_every=1", "progress=false",
        "data.val_utterances=1", "data.test_utterances=1", "optim.eps=1.0", "prior=l2sp"]
"""Tiny-build fine-tuning overrides (see tests/styletts2/test_recipes_e2e.py)."""


def finetune(*overrides: str, cwd: Path, kill_at: int | None = None, mid_write: bool = False,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run the fine-tuning recipe (with `env` added to the environment); with `kill_at`, SIGKILLed while
    writing that step's checkpoint."""
    command = [sys.executable, str(RECIPES / "finetune.py"), *overrides]
    if kill_at is not None:
        command = [sys.executable, str(KILL_ON_SAVE), str(kill_at), *(["--mid-write"] if mid_write else []),
                   *command[1:]]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=1800,
                          env={**os.environ, **(env or {})})
