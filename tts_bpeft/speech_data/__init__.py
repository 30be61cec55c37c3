"""Family-neutral speech data: corpus readers (VCTK, LibriTTS), audio at 24 kHz and its mel, espeak
phonemes, per-speaker splits, the utterance record, bad-input reports, and synthetic corpora for tests and
the demo. Every TTS family (StyleTTS 2, Kokoro) and the evaluation read data through this package."""

from tts_bpeft.speech_data.audio import SAMPLE_RATE, load_audio, mel_spectrogram, probe_audio
from tts_bpeft.speech_data.issues import BadInputError, SkipReport
from tts_bpeft.speech_data.libritts import LibriTTSCorpus, read_libritts
from tts_bpeft.speech_data.phonemes import Phonemizer
from tts_bpeft.speech_data.records import Utterance
from tts_bpeft.speech_data.selection import Splits, sample_nested, sample_per_speaker, split_per_speaker
from tts_bpeft.speech_data.vctk import VCTKCorpus, read_vctk

__all__ = [
    "SAMPLE_RATE",
    "BadInputError",
    "LibriTTSCorpus",
    "Phonemizer",
    "SkipReport",
    "Splits",
    "Utterance",
    "VCTKCorpus",
    "load_audio",
    "mel_spectrogram",
    "probe_audio",
    "read_libritts",
    "read_vctk",
    "sample_nested",
    "sample_per_speaker",
    "split_per_speaker",
]
