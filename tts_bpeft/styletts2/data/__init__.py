"""StyleTTS 2's own data: phoneme tokens, its training data lists, and the training Dataset and its batch.

Corpus readers, audio, phonemes and splits are family-neutral: `tts_bpeft.speech_data`."""

from tts_bpeft.styletts2.data.datalist import DataListEntry, read_datalist, speaker_index, write_datalist
from tts_bpeft.styletts2.data.dataset import TTSBatch, TTSDataset, TTSItem, align_wave, collate
from tts_bpeft.styletts2.data.text import SYMBOLS, tokenize

__all__ = [
    "SYMBOLS",
    "DataListEntry",
    "TTSBatch",
    "TTSDataset",
    "TTSItem",
    "align_wave",
    "collate",
    "read_datalist",
    "speaker_index",
    "tokenize",
    "write_datalist",
]
