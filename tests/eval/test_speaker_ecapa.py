"""SpeechBrain ECAPA-TDNN: offline load from a local folder in the spkrec-ecapa-voxceleb layout and from a
Hugging Face cache, the hub path without network, and the default backend choice (ECAPA when it can be had,
resemblyzer announced otherwise)."""

import logging

import numpy as np
import pytest

from tts_bpeft.eval.speaker import (
    ECAPA_HUB_ID,
    EcapaEncoder,
    ResemblyzerEncoder,
    embed_audio,
    load_speaker_encoder,
)


def test_local_folder_loads_offline_with_declared_size_and_is_deterministic(ecapa_dir, speech, tmp_path):
    encoder = load_speaker_encoder("ecapa", source=ecapa_dir)
    assert encoder.describe() == {"backend": "speechbrain-ecapa", "model": str(ecapa_dir.resolve())}
    files = [speech["slt_a"], speech["m3_a"]]  # 16 kHz and 22.05 kHz inputs
    first = embed_audio(encoder, files, progress=False)
    assert first.shape == (2, 32)  # lin_neurons declared in the folder's hyperparams.yaml
    assert np.all(np.isfinite(first)) and not np.allclose(first[0], first[1])
    again = embed_audio(EcapaEncoder(ecapa_dir), files, cache_dir=tmp_path / "cache", progress=False)
    np.testing.assert_allclose(again, first, atol=1e-6)
    # Embedding alone or in a batch gives the same vector (no padding effects).
    np.testing.assert_allclose(embed_audio(encoder, files[1:], progress=False)[0], first[1], atol=1e-6)


def test_local_folder_weights_are_the_saved_ones(ecapa_dir):
    import torch

    encoder = EcapaEncoder(ecapa_dir)
    saved = torch.load(ecapa_dir / "embedding_model.ckpt", weights_only=True)
    loaded = encoder.classifier.mods.embedding_model.state_dict()
    for name, tensor in saved.items():
        torch.testing.assert_close(loaded[name], tensor)


def test_official_hyperparams_reach_for_the_hub_without_the_override(ecapa_dir, monkeypatch):
    from speechbrain.inference.speaker import EncoderClassifier
    from speechbrain.utils.fetching import FetchConfig

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises((OSError, ValueError)):
        EncoderClassifier.from_hparams(source=str(ecapa_dir), fetch_config=FetchConfig(allow_network=False))


def test_hub_id_builds_the_right_call(monkeypatch, tmp_path):
    from speechbrain.inference.speaker import EncoderClassifier

    calls = []

    class Fake:
        audio_normalizer = type("N", (), {"sample_rate": 16000})()

    def fake_from_hparams(**kwargs):
        calls.append(kwargs)
        return Fake()

    monkeypatch.setattr(EncoderClassifier, "from_hparams", staticmethod(fake_from_hparams))
    encoder = EcapaEncoder(savedir=tmp_path / "save", allow_network=False)
    (call,) = calls
    assert call["source"] == ECAPA_HUB_ID
    assert call["savedir"] == str(tmp_path / "save")
    assert call["fetch_config"].allow_network is False
    assert "overrides" not in call
    assert encoder.describe() == {"backend": "speechbrain-ecapa", "model": ECAPA_HUB_ID}


def test_hub_id_offline_gives_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="pass its path as the source") as info:
        EcapaEncoder(ECAPA_HUB_ID, savedir=tmp_path / "save", allow_network=False, hub_cache=tmp_path / "hf")
    assert str(tmp_path / "hf") in str(info.value)


def test_default_is_ecapa_from_the_hugging_face_cache(ecapa_hub_cache, ecapa_dir, speech, caplog):
    encoder = load_speaker_encoder(hub_cache=ecapa_hub_cache, allow_network=False)
    assert isinstance(encoder, EcapaEncoder)
    assert encoder.describe() == {"backend": "speechbrain-ecapa", "model": ECAPA_HUB_ID}
    assert not [r for r in caplog.records if "falling back" in r.getMessage()]
    # the cached weights are the folder's: same embeddings as loading the folder itself
    files = [speech["slt_a"], speech["awb_b"]]
    from_cache = embed_audio(encoder, files, progress=False)
    np.testing.assert_allclose(from_cache, embed_audio(EcapaEncoder(ecapa_dir), files, progress=False), atol=1e-6)
    # embedding-cache keys carry the weights' identity (the blob name is the file's sha256)
    import hashlib

    digest = hashlib.sha256((ecapa_dir / "embedding_model.ckpt").read_bytes()).hexdigest()
    assert digest in encoder.cache_tag


def test_default_with_a_local_folder_is_ecapa_and_a_missing_one_is_an_error(ecapa_dir, tmp_path):
    encoder = load_speaker_encoder(source=ecapa_dir)
    assert encoder.describe() == {"backend": "speechbrain-ecapa", "model": str(ecapa_dir.resolve())}
    with pytest.raises(FileNotFoundError, match="no-such-folder"):  # a named model is never swapped silently
        load_speaker_encoder(source=tmp_path / "no-such-folder")


def test_default_falls_back_to_resemblyzer_and_says_why(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        encoder = load_speaker_encoder(hub_cache=tmp_path / "empty-cache", allow_network=False)
    assert isinstance(encoder, ResemblyzerEncoder)
    (record,) = [r for r in caplog.records if "falling back" in r.getMessage()]
    message = record.getMessage()
    assert "\n" not in message and ECAPA_HUB_ID in message and str(tmp_path / "empty-cache") in message
    assert "the hub is out of reach" in message
    info = encoder.describe()
    assert info["backend"] == "resemblyzer" and info["fallback"].startswith("SpeechBrain ECAPA unavailable")


def test_missing_local_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no-such-folder"):
        EcapaEncoder(tmp_path / "no-such-folder")
    with pytest.raises(FileNotFoundError, match="no hyperparams.yaml"):
        EcapaEncoder(tmp_path)
