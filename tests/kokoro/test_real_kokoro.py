"""Kokoro-82M from the offline packages: the conversion, agreement with onnxruntime, intelligibility.

Slow (minutes on 2 cores): run with ``pytest -m slow tests/kokoro``. Skipped when the kokoro extra's
packages are missing. ``benchmarks/kokoro_int8.py`` measures the same things on 12 sentences with timings.
"""

from __future__ import annotations

import importlib.util

import librosa
import pytest
import torch
from safetensors.torch import load_file

from tts_bpeft.kokoro.offline import expected_sha256, offline_config, offline_voices, onnx_bytes

pytestmark = pytest.mark.slow

SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "Please call Stella and ask her to bring these things with her from the store.",
    "We walked along the river until the sun went down.",
    "My brother bought a small red car last week.",
    "The children played in the garden all afternoon.",
    "She opened the window to let in some fresh air.",
    "The train to the city leaves at noon.",
    "He forgot his keys at home again this morning.",
    "Our teacher read us a story about a brave little mouse.",
    "The weather was cold, so we stayed inside and made soup.",
)
"""Everyday sentences. The Harvard sentences of benchmarks/kokoro_int8.py (unusual word pairs that Whisper
tiny's language model cannot guess) give a higher WER, for onnxruntime as well (docs/kokoro.md)."""


@pytest.fixture(scope="module")
def packages():
    for name in ("kokoro", "onnx", "onnxruntime"):
        if importlib.util.find_spec(name) is None:
            pytest.skip(f"{name} is not installed (pip install -e '.[kokoro]')")
    try:
        return onnx_bytes(), offline_config(), offline_voices()
    except FileNotFoundError as err:
        pytest.skip(str(err))


@pytest.fixture(scope="module")
def real_model(packages, tmp_path_factory):
    from tts_bpeft.kokoro.offline import load_offline_kokoro

    cache = tmp_path_factory.mktemp("cache")
    first = load_offline_kokoro(cache)  # converts and writes the cache
    files = list((cache / "kokoro").glob("*.safetensors"))
    assert [f.name for f in files] == [f"kokoro-v1.0-int8-{expected_sha256()[:12]}.safetensors"]
    second = load_offline_kokoro(cache)  # reads it
    cached = load_file(files[0])
    assert len(cached) == 546
    assert all(torch.equal(first.state_dict()[k], v) and torch.equal(second.state_dict()[k], v)
               for k, v in cached.items())
    return second


def test_the_conversion_maps_99_percent_of_the_parameters(packages):
    import onnx

    from tts_bpeft.kokoro.architecture import build_kmodel
    from tts_bpeft.kokoro.onnx_weights import dequantize_onnx

    data, config, _ = packages
    model = build_kmodel(config)
    conversion = dequantize_onnx(onnx.load_from_string(data).graph, model)
    state = model.state_dict()
    mapped = sum(v.numel() for v in conversion.state.values())
    assert mapped / sum(v.numel() for v in state.values()) > 0.99
    left = [k for k in state if k not in conversion.state]
    assert all(k.startswith("bert.pooler.") or k.endswith((".norm.weight", ".norm.bias")) for k in left), left
    assert [name for name, _ in conversion.unmapped] == ["decoder.decoder.generator.stft.istft.stft.inverse_basis"]
    assert all(torch.isfinite(v).all() for v in conversion.state.values())


def test_torch_follows_onnxruntime_on_durations_and_features(packages, real_model):
    from tts_bpeft.kokoro.agreement import OnnxKokoro, compare, torch_features
    from tts_bpeft.kokoro.text import english_phonemes, token_ids
    from tts_bpeft.kokoro.voices import style_row

    data, _, voices = packages
    reference = OnnxKokoro(data)
    texts = SENTENCES[:3]
    for text, phonemes in zip(texts, english_phonemes(texts), strict=True):
        ids, style = token_ids(phonemes, real_model.vocab, text), style_row(voices["jf_alpha"], len(phonemes))
        result = compare(torch_features(real_model, ids, style), reference(ids, style))
        assert result["max_duration_diff"] <= 1, (text, result)
        for key in ("corr_bert", "corr_duration", "corr_f0", "corr_energy"):
            assert result[key] >= 0.95, (text, key, result)


def test_whisper_understands_the_converted_model(packages, real_model):
    from tts_bpeft.eval.asr import FasterWhisperAsr, error_rates
    from tts_bpeft.kokoro.synthesis import synthesize

    _, _, voices = packages
    waves = synthesize(real_model, SENTENCES, voices["jf_alpha"], seed=0)
    hypotheses = FasterWhisperAsr().transcribe([librosa.resample(w, orig_sr=24_000, target_sr=16_000) for w in waves])
    assert error_rates(list(SENTENCES), hypotheses).wer <= 0.05, list(zip(SENTENCES, hypotheses, strict=True))


def test_the_python_example_of_the_docs_runs(packages, tmp_path, monkeypatch):
    """The first ```python block of docs/kokoro.md, executed as written (offline weights, cache in tmp)."""
    import re
    from pathlib import Path

    import numpy as np

    monkeypatch.setenv("TTS_BPEFT_CACHE", str(tmp_path))
    text = (Path(__file__).parents[2] / "docs" / "kokoro.md").read_text(encoding="utf-8")
    block = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    namespace: dict = {}
    exec(compile(block, "docs/kokoro.md", "exec"), namespace)
    wave = namespace["wave"]
    assert wave.dtype == np.float32 and 24_000 < len(wave) < 10 * 24_000 and np.isfinite(wave).all()
