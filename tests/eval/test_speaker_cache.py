"""embed_audio / speaker_similarity logic with a counting fake encoder (no model weights needed)."""

import json
import os

import numpy as np
import pytest
import soundfile as sf

from tts_bpeft.eval.embedding_cache import EmbeddingCache
from tts_bpeft.eval.speaker import SpeakerEncoder, cosine_similarity, embed_audio, speaker_similarity


class CountingEncoder(SpeakerEncoder):
    """Embeds a waveform as (mean, std, |max|) and counts how many waveforms it was asked to embed."""

    name = "counting"

    def __init__(self):
        self.calls = 0

    @property
    def model_id(self):
        return "fake-v1"

    def embed_waveforms(self, wavs):
        self.calls += len(wavs)
        return np.array([[w.mean(), w.std(), np.abs(w).max()] for w in wavs], dtype=np.float32)


def _write(path, values, sr=16000):
    sf.write(path, np.asarray(values, dtype=np.float32), sr, subtype="FLOAT")
    return path


@pytest.fixture
def wavs(tmp_path):
    rng = np.random.default_rng(0)
    return [_write(tmp_path / f"w{i}.wav", 0.1 * rng.standard_normal(1600) + 0.05 * i) for i in range(3)]


def test_cache_hits_do_not_re_embed_and_return_same_values(tmp_path, wavs):
    enc = CountingEncoder()
    cache = tmp_path / "cache"
    first = embed_audio(enc, wavs, cache_dir=cache, batch_size=2, progress=False)
    assert enc.calls == 3
    assert first.shape == (3, 3)
    second = embed_audio(enc, [wavs[2], wavs[0], wavs[1], wavs[0]], cache_dir=cache, progress=False)
    assert enc.calls == 3
    np.testing.assert_array_equal(second, first[[2, 0, 1, 0]])
    entries = sorted(cache.rglob("*"))
    assert len([p for p in entries if p.suffix == ".npy"]) == 3
    assert not [p for p in entries if p.name.endswith(".tmp")]


def test_cache_key_changes_with_file_content_mtime_and_backend(tmp_path, wavs):
    enc = CountingEncoder()
    cache = tmp_path / "cache"
    embed_audio(enc, wavs[:1], cache_dir=cache, progress=False)
    stat = wavs[0].stat()
    os.utime(wavs[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    embed_audio(enc, wavs[:1], cache_dir=cache, progress=False)
    assert enc.calls == 2
    other = EmbeddingCache(cache, "another-backend")
    assert other.get(wavs[0]) is None
    assert EmbeddingCache(cache, enc.cache_tag).get(wavs[0]) is not None


def test_duplicates_and_arrays_embedded_once_without_cache(wavs):
    enc = CountingEncoder()
    array = np.full(800, 0.25, dtype=np.float32)
    out = embed_audio(enc, [wavs[0], wavs[0], array], progress=False)
    assert enc.calls == 2
    np.testing.assert_allclose(out[2], [0.25, 0.0, 0.25], atol=1e-7)
    np.testing.assert_array_equal(out[0], out[1])


def test_cosine_similarity_values():
    a = np.array([[1.0, 0.0], [1.0, 1.0], [2.0, 0.0]])
    b = np.array([[0.0, 3.0], [1.0, 1.0], [-1.0, 0.0]])
    np.testing.assert_allclose(cosine_similarity(a, b), [0.0, 1.0, -1.0])


class TableEncoder(SpeakerEncoder):
    """Embeds each file by a fixed vector chosen from its first sample value (files are constant)."""

    name = "table"
    table = {1: [1.0, 0.0], 2: [1.0, 1.0], 3: [0.0, 1.0], 4: [-1.0, 0.0]}

    @property
    def model_id(self):
        return "table-v1"

    def embed_waveforms(self, wavs):
        return np.array([self.table[int(round(w[0] * 10))] for w in wavs], dtype=np.float32)


def test_speaker_similarity_per_utterance_per_speaker_and_saved_json(tmp_path):
    f = {k: _write(tmp_path / f"c{k}.wav", np.full(400, k / 10)) for k in TableEncoder.table}
    result = speaker_similarity(
        synth=[f[1], f[2], f[4]],
        refs=[f[1], [f[3], f[2]], f[1]],
        speakers=["A", "A", "B"],
        encoder=TableEncoder(),
        progress=False,
    )
    sims = [u["similarity"] for u in result.utterances]
    # cos(e1, e1) = 1; mean(cos(e2, e3), cos(e2, e2)) = (1/sqrt 2 + 1) / 2; cos(e4, e1) = -1
    np.testing.assert_allclose(sims, [1.0, (2**-0.5 + 1) / 2, -1.0], rtol=1e-6)
    assert result.per_speaker["A"] == pytest.approx((1.0 + (2**-0.5 + 1) / 2) / 2)
    assert result.per_speaker["B"] == pytest.approx(-1.0)
    assert result.mean == pytest.approx((result.per_speaker["A"] - 1.0) / 2)
    saved = json.loads(result.save(tmp_path / "out" / "sim.json").read_text())
    assert saved["encoder"] == {"backend": "table", "model": "table-v1"}
    assert saved["per_speaker"] == result.per_speaker


def test_speaker_similarity_input_errors(tmp_path, wavs):
    with pytest.raises(ValueError, match="differ in length"):
        speaker_similarity(wavs[:2], wavs[:1], ["A", "A"], CountingEncoder(), progress=False)
    with pytest.raises(ValueError, match="no reference files"):
        speaker_similarity(wavs[:1], [[]], ["A"], CountingEncoder(), progress=False)
    with pytest.raises(FileNotFoundError, match="missing.wav"):
        embed_audio(CountingEncoder(), [tmp_path / "missing.wav"], progress=False)
