"""The comparison's orchestration (`tts_bpeft.kokoro.comparison.prepare` / `run_comparison`) on a small
Kokoro-shaped model with random voicepacks and flite recordings as the target: every system trains and is
measured, lam follows the plain run's penalties, a cached run reloads to the numbers it recorded, and a rerun
trains nothing. Slow: 17 minutes on the 2 cores at a load of 16 (shared), about a minute or two idle (not
measured idle)."""

from __future__ import annotations

import shutil

import pytest
import torch
from conftest import short_durations
from kokoro_models import _one_thread, _quiet  # noqa: F401 (autouse fixtures)

from tts_bpeft.eval.speaker import ResemblyzerEncoder
from tts_bpeft.kokoro.architecture import build_kmodel
from tts_bpeft.kokoro.comparison import (
    PLAIN,
    PRIORS,
    SYSTEMS,
    ComparisonSettings,
    adapted,
    objective_of,
    prepare,
    run_comparison,
)
from tts_bpeft.kokoro.examples import mean_objective
from tts_bpeft.kokoro.finetune import lora_parameters
from tts_bpeft.kokoro.voice import VoiceShift
from tts_bpeft.speech_data.synthesizers import SynthesizerVoice
from tts_bpeft.speech_data.synthetic import make_recordings

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("flite") is None, reason="flite speaks the target recordings")]

SETTINGS = ComparisonSettings(train=2, heldout=1, builtin=("a",), builtin_sentences=1, replay_sentences=1,
                              curvature_sentences=1, initial_voice="b", r=2, alpha=4.0, steps=2, crop_frames=4,
                              strengths=(1.0,), replay_fractions=(0.5,), systems=SYSTEMS,
                              fisher="data-free")


@pytest.fixture(scope="module")
def setup(small_config, tmp_path_factory):
    torch.manual_seed(0)
    base = short_durations(build_kmodel(dict(small_config))).eval()
    g = torch.Generator().manual_seed(11)
    packs = {"a": 0.3 * torch.randn(510, 1, 256, generator=g), "b": 0.3 * torch.randn(510, 1, 256, generator=g)}
    root = tmp_path_factory.mktemp("comparison")
    recordings = make_recordings(root / "target", SynthesizerVoice("flite", "awb", "M"), 3, 0, 24000).root
    materials = prepare(SETTINGS, root / "out", base, packs, recordings, progress=False)
    encoder = ResemblyzerEncoder()
    results = run_comparison(SETTINGS, materials, root / "out", encoder, None, progress=False, log=lambda _: None)
    return materials, results, root / "out", encoder


def test_every_system_runs_with_lam_from_the_plain_run(setup):
    materials, results, _, _ = setup
    runs = {r["system"]: r for r in results["runs"]}
    assert set(runs) == set(SYSTEMS)
    plain = runs[PLAIN]
    assert set(plain["penalties_at_plain"]) == set(PRIORS) and min(plain["penalties_at_plain"].values()) > 0
    for system in PRIORS:
        assert runs[system]["lam"] == pytest.approx(plain["heldout_objective"] / plain["penalties_at_plain"][system])
    assert sorted(materials.curvature) == ["ewc", "kfac", "kfac-bf16"]
    dense, compact = materials.curvature["kfac"], materials.curvature["kfac-bf16"]
    assert compact.stat().st_size < 0.6 * dense.stat().st_size  # the eigenbasis in bf16, at most ~half the bytes
    # the compact file charges plain LoRA's shift what the dense one does, to bf16 rounding
    assert plain["penalties_at_plain"]["kfac-bf16"] == pytest.approx(plain["penalties_at_plain"]["kfac"], rel=2e-2)
    assert plain["penalties_at_plain"]["kfac-bf16"] != plain["penalties_at_plain"]["kfac"]
    assert len(materials.replay) == 2 and not any(e.new_voice for e in materials.replay)
    for run in results["runs"]:
        assert 0.0 < run["builtin_SIM"] <= 1.0 + 1e-6
        assert run["builtin_WER"] is None  # no ASR given


def test_a_cached_run_reloads_to_the_numbers_it_recorded(setup):
    materials, results, out, encoder = setup
    row = next(r for r in results["runs"] if r["system"] == "kfac")
    model = adapted(materials.base, SETTINGS, 0)
    saved = torch.load(f"{row['folder']}/checkpoint.pt", weights_only=True)["trainable"]
    lora = lora_parameters(model)
    assert set(saved) == {*lora, "voice.delta"}
    with torch.no_grad():
        for name, p in lora.items():
            p.copy_(saved[name])
    voice = VoiceShift(torch.load(materials.packs["b"], weights_only=True))
    with torch.no_grad():
        voice.delta.copy_(saved["voice.delta"])
    value = mean_objective(model, materials.heldout, objective_of(SETTINGS), seed=0, shifted=voice)
    assert value == pytest.approx(row["heldout_objective"], rel=1e-5)
    stamps = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/result.json")}
    again = run_comparison(SETTINGS, materials, out, encoder, None, progress=False, log=lambda _: None)
    assert again["runs"] == results["runs"]
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/result.json")} == stamps
