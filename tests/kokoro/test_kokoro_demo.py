"""`make demo` (recipes/kokoro_demo) end to end on Kokoro-82M's offline weights at the smallest sizes: every
system trains and is measured, the table, plot, results and before/after wavs are written, and a rerun reuses
every cached stage. Slow: ~30 minutes on the busy 2-core machine, a few on idle cores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tts_bpeft.kokoro.comparison import DEFAULT_SYSTEMS as SYSTEMS

ROOT = Path(__file__).resolve().parents[2]
TINY = ["comparison.train=2", "comparison.heldout=1", "comparison.builtin_sentences=1",
        "comparison.replay_sentences=1", "comparison.steps=1", "comparison.strengths=[1.0]",
        "comparison.replay_fractions=[0.5]", "comparison.crop_frames=12"]


def _demo(out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(ROOT / "recipes/kokoro_demo/demo.py"), f"out_dir={out}",
                           f"hydra.run.dir={out / 'hydra'}", *TINY], capture_output=True, text=True, env=env,
                          timeout=7200)


@pytest.mark.slow
def test_demo_compares_every_system_then_reuses_its_caches(tmp_path):
    try:
        from tts_bpeft.kokoro.offline import offline_config
        from tts_bpeft.speech_data.synthesizers import piper_voice

        offline_config(), piper_voice()
    except (FileNotFoundError, RuntimeError) as err:
        pytest.skip(f"the kokoro extra (offline weights, piper voice) is not installed: {err}")
    out = tmp_path / "demo"
    first = _demo(out)
    assert first.returncode == 0, first.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert [r["system"] for r in results["analysis"]] == list(SYSTEMS)
    for run in results["runs"]:
        assert 0.0 < run["builtin_SIM"] <= 1.0 and -1.0 <= run["target_SIM"] <= 1.0
        assert run["system"] == "lora" or run["lam"] > 0 or run["system"] == "replay"
    table = (out / "table.md").read_text()
    assert all(f"| {system} |" in table for system in SYSTEMS)
    assert (out / "tradeoff.png").read_bytes()[:4] == b"\x89PNG"
    wavs = {p.name for p in (out / "before_after").glob("*.wav")}
    assert {"target_recording.wav", "target_before.wav", "jf_alpha_before.wav", "jm_kumo_before.wav"} <= wavs
    assert {f"target_after_{system}.wav" for system in SYSTEMS} <= wavs
    stamps = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/result.json")}
    assert len(stamps) == len(SYSTEMS)
    second = _demo(out)
    assert second.returncode == 0, second.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/result.json")} == stamps
    assert json.loads((out / "results.json").read_text())["runs"] == results["runs"]
