"""`make demo`'s pipeline on an even smaller budget (slow: several minutes on 2 cores): the artifacts a user
gets, and that a rerun reuses every stage."""

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

pytestmark = pytest.mark.slow
DEMO = Path(__file__).parents[2] / "recipes" / "styletts2_demo" / "demo.py"
SMALL = ["voices.pretrain=2", "voices.unseen=1", "voices.pretrain_utterances=4", "voices.target_utterances=5",
         "voices.unseen_utterances=2", "pretrain.steps=1", "curvature.utterances=1", "finetune.steps=2",
         "finetune.priors=[none,kfac]", "evaluate.target_sentences=1", "evaluate.max_token_frames=4"]


def run_demo(out: Path) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, str(DEMO), f"out_dir={out}", *SMALL], capture_output=True, text=True,
                          timeout=3000, cwd=out.parent)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return done


def test_demo_writes_the_table_plots_and_wavs_then_reuses_its_caches(tmp_path):
    out = tmp_path / "demo"
    first = run_demo(out)
    assert "== results ==" in first.stdout and "lora+kfac" in first.stdout
    with open(out / "demo_results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["system"] for r in rows] == ["pretrained", "lora+none", "lora+kfac"]
    assert {"system", "prior", "lam", "target_loss", "heldout_loss", "forgetting", "target_SIM", "unseen_SIM",
            "finetune_seconds"} <= set(rows[0])
    assert float(rows[0]["forgetting"]) == 0.0 and float(rows[2]["lam"]) > 0
    assert (out / "forgetting.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a one-step model may synthesize nothing the speaker encoder calls speech: then no SIM and no SIM plots
    has_sim = any(r["target_SIM"] not in ("", "nan") for r in rows)
    if has_sim:
        assert (out / "evaluation" / "tradeoff.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert "similarity plots skipped" in first.stdout
    wavs = sorted((out / "evaluation" / "wavs").rglob("*.wav"))
    assert len(wavs) == 3 * 2  # 3 systems x (1 target + 1 unseen sentence)
    for wav in wavs:
        wave, rate = sf.read(wav)
        assert rate == 24000 and wave.size > 0
    second = run_demo(out)
    assert second.stdout.count("cached:") >= 4  # pre-training, 1 curvature, 2 fine-tuning runs
    assert "already synthesized" in second.stdout
