"""recipes/kokoro_voice end to end on a small Kokoro-shaped checkpoint (slow: minutes on 2 cores): a folder of
recordings (one of them silent) -> prepare (nearest voice, targets) -> estimate_curvature (KFAC, data-free and
empirical) -> finetune (KFAC prior, self-replay) -> synthesize; rerunning finetune resumes the
finished run unchanged."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from tts_bpeft.curvature import Curvature
from tts_bpeft.family import family
from tts_bpeft.kokoro.checkpoint import save_kokoro_checkpoint
from tts_bpeft.kokoro.synthesis import synthesize
from tts_bpeft.kokoro.voices import load_voicepack

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")]
RECIPE = Path(__file__).parents[2] / "recipes" / "kokoro_voice"
TEXTS = ["The old farmer carried a heavy basket to the market.", "A young teacher painted the wooden fence today.",
         "My neighbour found a silver coin in the garden.", "The tired doctor opened the green door at night."]


def recipe(script: str, *overrides: str, cwd: Path) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2]),
                                                        os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(RECIPE / script), *overrides], cwd=cwd, capture_output=True,
                          text=True, timeout=1800, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def setup(small_kmodel, small_config, tmp_path_factory):
    root = tmp_path_factory.mktemp("kokoro_voice")
    (root / "config.json").write_text(json.dumps(small_config))
    state = dict(small_kmodel.state_dict())  # 1-3 frames per token: a fast decoder
    head = "predictor.duration_proj.linear_layer"
    g = torch.Generator().manual_seed(3)
    state[f"{head}.weight"] = torch.zeros_like(state[f"{head}.weight"])
    state[f"{head}.weight"][1:3] = torch.randn(state[f"{head}.weight"][1:3].shape, generator=g)
    state[f"{head}.bias"] = torch.tensor([20.0, 0.0, 0.0] + [-20.0] * 47)
    save_kokoro_checkpoint(state, root / "small.pth")
    packs = {"mine": 0.3 * torch.randn(510, 1, 256, generator=g), "other": 0.3 * torch.randn(510, 1, 256, generator=g)}
    for name, pack in packs.items():
        torch.save(pack, root / f"{name}.pt")
    built = family("kokoro").build({"source": "checkpoint", "config": str(root / "config.json"),
                          "checkpoint": str(root / "small.pth")}).net.eval()
    recordings = root / "recordings"
    recordings.mkdir()
    for i, wave in enumerate(synthesize(built, TEXTS, packs["mine"], seed=4, progress=False)):
        sf.write(recordings / f"u{i}.wav", wave, 24000, subtype="FLOAT")
        (recordings / f"u{i}.txt").write_text(TEXTS[i])
    sf.write(recordings / "silent.wav", np.zeros(24000, np.float32), 24000)
    (recordings / "silent.txt").write_text("Nothing to hear.")
    common = ["model.source=checkpoint", f"model.config={root / 'config.json'}",
              f"model.checkpoint={root / 'small.pth'}", f"+model.voicepacks.mine={root / 'mine.pt'}",
              f"+model.voicepacks.other={root / 'other.pt'}", f"work_dir={root / 'work'}",
              f"data.recordings={recordings}", "data.test_utterances=1", "candidate_voices=[mine,other]",
              "nearest_count=1", "objective.crop_frames=4", "lora.preset=paper", "lora.r=2", "progress=false"]
    other = root / "other_speaker"  # recordings of another speaker: the empirical Fisher's proxies
    other.mkdir()
    for i, wave in enumerate(synthesize(built, TEXTS[:2], packs["other"], seed=5, progress=False)):
        sf.write(other / f"o{i}.wav", wave, 24000, subtype="FLOAT")
        (other / f"o{i}.txt").write_text(TEXTS[i])
    return root, common, other


def test_recipe_end_to_end(setup):
    root, common, recordings_of_other = setup
    out = recipe("prepare.py", *common, cwd=root)
    prepared = json.loads((root / "work" / "prepared.json").read_text())
    scores = prepared["nearest_scores"]  # (random weights: the speaking voice need not be the nearest)
    assert set(scores) == {"mine", "other"} and prepared["initial_voice"] == min(scores, key=scores.get)
    assert len(prepared["train"]) == 3 and len(prepared["test"]) == 1 and prepared["skipped"] == 1
    assert "silent.wav" in out and "skipped 1 recording" in out

    curvature = root / "work" / "curvature_kfac.safetensors"
    recipe("estimate_curvature.py", *common, "prior=kfac", "curvature.fisher=data-free", "curvature.voices=[other]",
           "curvature.sentences=1", "curvature.max_frames=8", cwd=root)
    data_free = Curvature.load(curvature)
    recipe("estimate_curvature.py", *common, "prior=kfac", f"curvature.proxies=[{recordings_of_other}]",
           "curvature.proxy_sentences=2", "curvature.max_frames=8", cwd=root)  # the default: empirical
    empirical = Curvature.load(curvature)
    assert empirical.samples == 2 and data_free.samples == 1 and empirical.names == data_free.names
    assert (root / "work" / "targets" / "proxies").is_dir()  # the proxy recordings were aligned

    tuning = [*common, "prior=kfac", "train.steps=2", "train.batch_size=2", "replay.fraction=0.5",
              "replay.voices=[other]", "replay.sentences=1", "checkpoint_every=1"]
    recipe("finetune.py", *tuning, cwd=root)
    [run] = list((root / "work" / "runs").iterdir())
    assert {"adapter", "voice.pt", "kokoro-v1_0.pth", "config.json", "run.json", "log.csv", "summary.json"} <= {
        p.name for p in run.iterdir()}
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["replay_examples_per_epoch"] == 3
    assert summary["initial_voice"] == prepared["initial_voice"]
    assert summary["last"]["prior"] > 0  # the KFAC prior acted
    voice = load_voicepack(run / "voice.pt")
    assert not torch.equal(voice, load_voicepack(root / f"{prepared['initial_voice']}.pt"))

    recipe("finetune.py", *tuning, cwd=root)  # a finished run: resumed, nothing changes
    assert torch.equal(load_voicepack(run / "voice.pt"), voice)

    recipe("synthesize.py", f"run={run}", "text=Good morning.", cwd=root)
    wave, rate = sf.read(run / "synthesized" / "0000.wav")
    assert rate == 24000 and len(wave) > 2400 and np.abs(wave).max() > 0
