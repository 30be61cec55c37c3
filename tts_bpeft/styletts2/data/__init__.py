"""StyleTTS 2 data: corpus readers (VCTK, LibriTTS), audio and mel, phonemes and tokens, data lists,
the training Dataset and its batch, and synthetic corpora for tests and demos."""

from tts_bpeft.styletts2.data.audio import SAMPLE_RATE, load_audio, mel_spectrogram, probe_audio
from tts_bpeft.styletts2.data.datalist import DataListEntry, read_datalist, speaker_index, write_datalist
from tts_bpeft.styletts2.data.dataset import TTSBatch, TTSDataset, TTSItem, align_wave, collate
from tts_bpeft.styletts2.data.issues import BadInputError, SkipReport
from tts_bpeft.styletts2.data.libritts import LibriTTSCorpus, read_libritts
from tts_bpeft.styletts2.data.records import Utterance
from tts_bpeft.styletts2.data.selection import Splits, sample_nested, sample_per_speaker, split_per_speaker
from tts_bpeft.styletts2.data.text import SYMBOLS, Phonemizer, tokenize
from tts_bpeft.styletts2.data.vctk import VCTKCorpus, read_vctk

__all__ = [
    "SAMPLE_RATE",
    "SYMBOLS",
    "BadInputError",
    "DataListEntry",
    "LibriTTSCorpus",
    "Phonemizer",
    "SkipReport",
    "Splits",
    "TTSBatch",
    "TTSDataset",
    "TTSItem",
    "Utterance",
    "VCTKCorpus",
    "align_wave",
    "collate",
    "load_audio",
    "mel_spectrogram",
    "probe_audio",
    "read_datalist",
    "read_libritts",
    "read_vctk",
    "sample_nested",
    "sample_per_speaker",
    "speaker_index",
    "split_per_speaker",
    "tokenize",
    "write_datalist",
]
