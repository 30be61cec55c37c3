"""Forgetting on real speech (`tts_bpeft.eval.forgetting`) with flite voices as the "models": a run that keeps
one built-in voice and swaps another, scored by resemblyzer and the bundled Whisper tiny.en, checked against
embeddings and error rates computed here directly."""

from __future__ import annotations

import shutil
import subprocess

import jiwer
import numpy as np
import pytest
import soundfile as sf

from tts_bpeft.eval.asr import SAMPLE_RATE as ASR_RATE
from tts_bpeft.eval.asr import load_asr
from tts_bpeft.eval.audio import load_mono
from tts_bpeft.eval.forgetting import ORIGINAL, ForgettingPlan, Line, measure_forgetting
from tts_bpeft.eval.speaker import ResemblyzerEncoder
from tts_bpeft.eval.text_norm import normalize_text
from tts_bpeft.family import Voice

pytestmark = pytest.mark.skipif(shutil.which("flite") is None, reason="flite speaks the test voices")


class FliteModel:
    """A stand-in TTS model: its built-in voice names map to flite voices; counts the sentences it says."""

    sample_rate = 16000

    def __init__(self, voices: dict[str, str], tmp) -> None:
        self.voices, self.tmp, self.calls = voices, tmp, 0

    def __call__(self, text: str, voice: Voice, seed: int) -> np.ndarray:
        self.calls += 1
        out = self.tmp / "flite.wav"
        subprocess.run(["flite", "-voice", self.voices[voice.name], "-t", text, "-o", str(out)], check=True)
        return sf.read(out, dtype="float32")[0]


@pytest.fixture(scope="module")
def encoder():
    return ResemblyzerEncoder()


@pytest.fixture(scope="module")
def asr():
    found, why = load_asr("faster-whisper", allow_network=False, cpu_threads=1)
    if found is None:
        pytest.skip(why)
    return found


def test_built_in_voices_and_the_target_are_scored_against_direct_computation(tmp_path, encoder, asr):
    recordings = []
    for k, text in enumerate(["Please call Stella right away.", "The sun rose over the quiet hills."]):
        path = tmp_path / f"target_{k}.wav"
        subprocess.run(["flite", "-voice", "awb", "-t", text, "-o", str(path)], check=True)
        recordings.append(path)
    plan = ForgettingPlan(builtin=("kept", "moved"),
                          sentences=(Line("s1", "The old farmer carried a heavy basket."),
                                     Line("s2", "My neighbour opened the green door.")),
                          target_lines=(Line("t1", "A young teacher found a silver coin."),),
                          target_recordings=tuple(recordings))
    original = FliteModel({"kept": "slt", "moved": "kal", "start": "kal"}, tmp_path)
    adapted = FliteModel({"kept": "slt", "moved": "rms", "new": "awb"}, tmp_path)
    folder, cache = tmp_path / "wavs", tmp_path / "cache"

    before = measure_forgetting(plan, ORIGINAL, lambda: original, "start", lambda: original, folder, encoder, asr,
                                cache, progress=False)
    after = measure_forgetting(plan, "lora", lambda: adapted, "new", lambda: original, folder, encoder, asr, cache,
                               progress=False)
    assert original.calls == 5 and adapted.calls == 5  # the original's built-in wavs are spoken once, shared

    def emb(path):
        e = encoder.embed_waveforms([load_mono(path, encoder.sample_rate)])[0]
        return e / np.linalg.norm(e)

    def wer(text, path):
        hyp = asr.transcribe([load_mono(path, ASR_RATE)])[0]
        return jiwer.wer(normalize_text(text), normalize_text(hyp))

    rows = {(u["voice"], u["id"]): u for u in after.utterances}
    for line in plan.sentences:
        new, old = folder / "lora" / "moved" / f"{line.id}.wav", folder / ORIGINAL / "moved" / f"{line.id}.wav"
        assert rows[("moved", line.id)]["SIM"] == pytest.approx(float(emb(new) @ emb(old)), abs=1e-5)
        assert rows[("kept", line.id)]["SIM"] == pytest.approx(1.0, abs=1e-5)  # flite is deterministic
        assert rows[("moved", line.id)]["WER"] == pytest.approx(wer(line.text, new))
    voices = {v["voice"]: v for v in after.voices}
    assert voices["moved"]["SIM"] < 0.95 < voices["kept"]["SIM"]
    target = folder / "lora" / "new" / "t1.wav"
    direct = np.mean([emb(target) @ emb(r) for r in recordings])
    assert voices["new"]["SIM"] == pytest.approx(float(direct), abs=1e-5)
    summary, start = after.summary(), before.summary()
    assert summary["builtin_SIM"] == pytest.approx((voices["kept"]["SIM"] + voices["moved"]["SIM"]) / 2)
    assert start["builtin_SIM"] == pytest.approx(1.0, abs=1e-5)
    assert summary["target_SIM"] > start["target_SIM"] + 0.1  # awb's recordings: the run now speaks as awb
    assert summary["original_WER"] == pytest.approx(start["builtin_WER"])
    words = [(line.text, folder / "lora" / v / f"{line.id}.wav") for v in plan.builtin for line in plan.sentences]
    hyps = [asr.transcribe([load_mono(p, ASR_RATE)])[0] for _, p in words]
    pooled = jiwer.wer([normalize_text(t) for t, _ in words], [normalize_text(h) for h in hyps])
    assert summary["builtin_WER"] == pytest.approx(pooled)

    def refuse():
        raise AssertionError("every wav is cached: no model may be built")

    again = measure_forgetting(plan, "lora", refuse, "new", refuse, folder, encoder, None, cache, progress=False)
    assert [u["SIM"] for u in again.utterances] == pytest.approx([u["SIM"] for u in after.utterances])
    assert again.summary()["builtin_WER"] is None  # no ASR, no WER


def test_plans_refuse_shared_ids_and_missing_recordings(tmp_path):
    wav = tmp_path / "r.wav"
    sf.write(wav, np.zeros(1600, np.float32), 16000)
    with pytest.raises(ValueError, match="share ids"):
        ForgettingPlan(("a",), (Line("x", "one"),), (Line("x", "two"),), (wav,))
    with pytest.raises(FileNotFoundError, match="missing"):
        ForgettingPlan(("a",), (Line("x", "one"),), (Line("y", "two"),), (tmp_path / "nope.wav",))
    with pytest.raises(ValueError, match="id of letters"):
        Line("a/b", "text")
