"""The evaluate recipe end to end with the real tiny StyleTTS 2 (random weights): a pre-trained model and a
one-step LoRA fine-tuning run, one sentence each for the target and one unseen speaker. Slow (minutes)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tts_bpeft.eval.report import RESULT_COLUMNS

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "recipes" / "styletts2_vctk"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _finetune_one_step(vctk_root: Path, out_dir: Path) -> Path:
    from hydra import compose, initialize_config_dir

    from tts_bpeft.styletts2.finetune import run_finetuning

    overrides = ["prior=l2sp", f"data.vctk_root={vctk_root}", "data.val_utterances=1", "data.test_utterances=2",
                 "optim.batch_size=1", "optim.epochs=1", "optim.max_steps=1", "progress=false"]
    with initialize_config_dir(config_dir=str(RECIPE / "conf"), version_base="1.3"):
        cfg = compose("finetune", overrides=overrides)
    run_finetuning(cfg, out_dir)
    return out_dir


def _evaluate(args: list[str], hub_cache: Path) -> subprocess.CompletedProcess:
    """The recipe with the hub switched off and an empty Hugging Face cache: the default scorers fall back."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hub_cache)}
    done = subprocess.run([sys.executable, str(RECIPE / "evaluate.py"), *args], capture_output=True, text=True,
                          env=env, timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.mark.slow
@pytest.mark.e2e
def test_evaluate_recipe_with_tiny_styletts2(tmp_path, monkeypatch) -> None:
    from tts_bpeft.speech_data.synthetic import make_vctk

    monkeypatch.setenv("TTS_BPEFT_CACHE", str(tmp_path / "cache"))  # phonemes and scorers: nothing shared

    vctk = make_vctk(tmp_path / "VCTK-Corpus-0.92", speakers=("p248", "p225"), utterances_per_speaker=5).root
    run = _finetune_one_step(vctk, tmp_path / "multirun" / "lora_l2sp_lam0.001")
    assert (run / "adapter").is_dir() and (run / "log.csv").is_file()
    out = tmp_path / "eval"
    args = [f"systems.runs=[{tmp_path / 'multirun'}]", "target_utterances=1", "unseen.speakers=[p225]",
            "unseen.utterances=1", "asr.backend=none", f"hydra.run.dir={out}", "progress=false",
            "cpu_threads=1", "+inference.max_token_frames=4"]
    first = _evaluate(args, tmp_path / "hf-cache")
    assert "speaker similarity backend: resemblyzer" in first.stdout
    assert first.stdout.count("SpeechBrain ECAPA unavailable") == 3  # the notice, the backend line, the table
    assert "ASR: skipped: ASR disabled" in first.stdout
    assert "synthesizing 2 of 2 utterances" in first.stdout

    with open(out / "results.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == RESULT_COLUMNS
        rows = list(reader)
    assert [(r["system"], r["speaker"], r["role"]) for r in rows] == [
        ("pretrained", "p248", "target"), ("pretrained", "p225", "unseen"),
        ("lora_l2sp_lam0.001", "p248", "target"), ("lora_l2sp_lam0.001", "p225", "unseen")]
    lam = json.loads((run / "summary.json").read_text())["lam"]  # the default (the scale-free lam=1 since 7f4d29b)
    assert rows[2]["prior"] == "l2sp" and float(rows[2]["lam"]) == pytest.approx(lam)
    assert all(r["n"] == "1" and r["WER"] == "" for r in rows)
    for r in rows:  # random weights may give no speech to embed (empty SIM); a value is a cosine
        assert r["SIM"] == "" or -1.0 <= float(r["SIM"]) <= 1.0
    data = json.loads((out / "results.json").read_text())
    assert data["speaker_encoder"]["backend"] == "resemblyzer"
    assert str(tmp_path / "hf-cache") in data["speaker_encoder"]["fallback"]
    assert {r["SIM_encoder"] for r in rows} == {f"resemblyzer ({data['speaker_encoder']['model']})"}
    wavs = sorted((out / "wavs").rglob("*.wav"))
    assert len(wavs) == 4
    for wav in wavs:
        wave, rate = sf.read(wav)
        assert rate == 24000 and wave.size > 2400 and np.all(np.isfinite(wave))
    # one LoRA step from the same base with the same sampling seeds: lengths and SIMs stay close to the base's
    # (random-weight speech is noise-like and shares a common component, so waveform correlation says nothing)
    base = sf.read(next(w for w in wavs if "pretrained" in w.parts and "p225" in w.parts))[0]
    tuned = sf.read(next(w for w in wavs if "lora_l2sp_lam0.001" in w.parts and "p225" in w.parts))[0]
    assert abs(base.size - tuned.size) <= 0.1 * base.size
    for pre, lora in ((rows[0], rows[2]), (rows[1], rows[3])):
        if pre["SIM"] and lora["SIM"]:
            assert abs(float(pre["SIM"]) - float(lora["SIM"])) < 0.05
    for name in ("tradeoff.png", "speaker_similarity.png", "training_curves.png", "summary.md"):
        assert (out / name).is_file(), name
    assert (out / "tradeoff.png").read_bytes()[:8] == PNG_SIGNATURE

    before = {w: w.stat().st_mtime_ns for w in wavs}
    second = _evaluate(args, tmp_path / "hf-cache")
    assert "pretrained: all 2 wavs already synthesized" in second.stdout
    assert "lora_l2sp_lam0.001: all 2 wavs already synthesized" in second.stdout
    assert {w: w.stat().st_mtime_ns for w in sorted((out / "wavs").rglob("*.wav"))} == before
