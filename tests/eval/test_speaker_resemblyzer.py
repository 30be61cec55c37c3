"""resemblyzer (GE2E) on real synthetic speech: same voice scores higher than a different voice."""

import numpy as np
import pytest

from tts_bpeft.eval.audio import load_mono
from tts_bpeft.eval.speaker import ResemblyzerEncoder, embed_audio, load_speaker_encoder, speaker_similarity


@pytest.fixture(scope="module")
def encoder():
    return ResemblyzerEncoder()


def test_same_voice_more_similar_than_different_voice(encoder, speech, tmp_path):
    # Each synthesized utterance is compared with a different sentence by the same voice (same speaker)
    # and by the other voice (different speaker).
    voices = ["slt", "awb", "m3", "f2"]

    def similarity(ref_voices):
        return speaker_similarity(synth=[speech[f"{v}_a"] for v in voices], refs=[speech[f"{r}_b"] for r in ref_voices],
                                  speakers=voices, encoder=encoder, cache_dir=tmp_path / "cache", progress=False)

    same = similarity(voices)
    different = similarity(["awb", "slt", "f2", "m3"])
    assert same.encoder["backend"] == "resemblyzer"
    for speaker in voices:
        assert same.per_speaker[speaker] > 0.75, (speaker, same.per_speaker)
        assert same.per_speaker[speaker] > different.per_speaker[speaker] + 0.15, (speaker, same, different)
    assert different.mean < 0.75


def test_embeddings_are_unit_norm_256d_and_path_equals_array(encoder, speech):
    embs = embed_audio(encoder, [speech["slt_c"], load_mono(speech["slt_c"], 16000)], progress=False)
    assert embs.shape == (2, 256)
    np.testing.assert_allclose(np.linalg.norm(embs, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(embs[0], embs[1], atol=1e-6)


def test_silence_gives_clear_error(encoder):
    with pytest.raises(ValueError, match="no speech"):
        embed_audio(encoder, [np.zeros(16000, dtype=np.float32)], progress=False)


def test_load_speaker_encoder_names():
    with pytest.raises(ValueError, match="unknown speaker-encoder backend"):
        load_speaker_encoder("xvector")
    with pytest.raises(ValueError, match="source must be None"):
        load_speaker_encoder("resemblyzer", source="some/model")
