"""Speaker similarity: cosine similarity between speaker embeddings of synthesized and real speech.

Two embedding backends share one interface (`SpeakerEncoder`): SpeechBrain's ECAPA-TDNN
(`EncoderClassifier.from_hparams`, the hub model ``speechbrain/spkrec-ecapa-voxceleb`` from the hub or the
local Hugging Face cache, or a local folder in its layout) and resemblyzer's GE2E encoder (weights ship in its
wheel). `load_speaker_encoder` with ``backend="auto"`` (the default) takes ECAPA wherever it can be had and
falls back to resemblyzer with a one-line warning saying why. Results always name the backend and model.

A SpeechBrain model folder's ``hyperparams.yaml`` is a HyperPyYAML file: its ``!new:`` / ``!name:`` tags
import and call Python, so loading a folder runs code from it. Load only folders you trust.
"""

from __future__ import annotations

import logging
import re
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from tts_bpeft.eval.audio import load_mono
from tts_bpeft.eval.embedding_cache import EmbeddingCache
from tts_bpeft.eval.pretrained import PretrainedScorer
from tts_bpeft.hub import cached_file, hub_cache_dir, hub_reachable, is_hub_id
from tts_bpeft.io import save_json

logger = logging.getLogger(__name__)
AudioItem = str | Path | np.ndarray
ECAPA_HUB_ID = "speechbrain/spkrec-ecapa-voxceleb"


class SpeakerEncoder(PretrainedScorer):
    """Maps waveforms to speaker embeddings."""

    sample_rate: int = 16000

    @property
    def cache_tag(self) -> str:
        """Identifies the backend and weights in embedding-cache keys."""
        return f"{self.name}:{self.model_id}"

    @abstractmethod
    def embed_waveforms(self, wavs: Sequence[np.ndarray]) -> np.ndarray:
        """Embed N mono float32 waveforms at ``sample_rate`` Hz; returns (N, D) float32."""


class ResemblyzerEncoder(SpeakerEncoder):
    """resemblyzer's GE2E speaker encoder (256-d, 16 kHz); its weights are inside the wheel.

    Each waveform is volume-normalised and has long silences removed (resemblyzer's own preprocessing),
    then embedded as the normalised mean of its partial-utterance embeddings.
    """

    name = "resemblyzer"

    def __init__(self, device: str = "cpu") -> None:
        from resemblyzer import VoiceEncoder

        self._encoder = VoiceEncoder(device, verbose=False)

    @property
    def model_id(self) -> str:
        return f"resemblyzer-{version('resemblyzer')}/pretrained.pt (GE2E)"

    def embed_waveforms(self, wavs: Sequence[np.ndarray]) -> np.ndarray:
        from resemblyzer import preprocess_wav

        out = []
        for i, wav in enumerate(wavs):
            wav = np.asarray(wav, dtype=np.float32)
            speech = preprocess_wav(wav) if np.any(wav) else wav[:0]
            if speech.size == 0:
                raise ValueError(f"waveform {i} holds no speech after silence removal")
            out.append(self._encoder.embed_utterance(speech))
        return np.stack(out).astype(np.float32)


class EcapaEncoder(SpeakerEncoder):
    """SpeechBrain ECAPA-TDNN speaker encoder (192-d for the official model, 16 kHz).

    ``source`` is a hub id (default ``speechbrain/spkrec-ecapa-voxceleb``) or a local folder holding
    ``hyperparams.yaml`` and the checkpoints it names. A local folder is loaded fully offline: when its
    hyperparams declare ``pretrained_path`` (the official file points it at the hub), it is overridden
    with the folder. A hub id is read from the Hugging Face cache (``hub_cache``, default ``$HF_HUB_CACHE``)
    and downloaded into it when ``allow_network`` (None: when the hub answers, see `tts_bpeft.hub`).

    The folder's ``hyperparams.yaml`` is HyperPyYAML and runs code when loaded: use trusted models only.
    """

    name = "speechbrain-ecapa"

    def __init__(
        self,
        source: str | Path = ECAPA_HUB_ID,
        savedir: str | Path | None = None,
        device: str = "cpu",
        allow_network: bool | None = None,
        hub_cache: str | Path | None = None,
    ) -> None:
        self.source = source
        self.local_dir = _local_model_dir(source)
        network = self.local_dir is None and (hub_reachable() if allow_network is None else allow_network)
        self.classifier = _load_speechbrain_classifier(source, self.local_dir, savedir, device, network, hub_cache)
        self.sample_rate = int(getattr(self.classifier.audio_normalizer, "sample_rate", 16000))
        self.device = device
        self.weights_file = (
            self.local_dir / "embedding_model.ckpt"
            if self.local_dir is not None
            else cached_file(str(source), "embedding_model.ckpt", hub_cache)
        )

    @property
    def model_id(self) -> str:
        return str(self.local_dir) if self.local_dir is not None else str(self.source)

    @property
    def cache_tag(self) -> str:
        """Backend, model and the weights file's identity (resolved name, size, mtime): new weights, new tag."""
        if self.weights_file is None or not self.weights_file.exists():
            return super().cache_tag
        weights = self.weights_file.resolve()
        stat = weights.stat()
        return f"{super().cache_tag}:{weights.name}:{stat.st_mtime_ns}:{stat.st_size}"

    def embed_waveforms(self, wavs: Sequence[np.ndarray]) -> np.ndarray:
        # One waveform per forward pass: zero-padding a batch changes ECAPA embeddings (the filterbank and
        # the convolutions see the padding), so a file's embedding would depend on its batchmates.
        out = []
        with torch.inference_mode():
            for wav in wavs:
                signal = torch.as_tensor(np.asarray(wav, dtype=np.float32))[None]
                out.append(self.classifier.encode_batch(signal).reshape(-1).cpu().numpy())
        return np.stack(out).astype(np.float32)


def _local_model_dir(source: str | Path) -> Path | None:
    """The folder ``source`` names, or None for a hub id; a path-like source that is missing raises."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path.resolve()
    if not is_hub_id(source):
        raise FileNotFoundError(f"SpeechBrain model folder not found: {source}")
    return None


def _load_speechbrain_classifier(
    source: str | Path, local_dir: Path | None, savedir: str | Path | None, device: str, allow_network: bool,
    hub_cache: str | Path | None,
) -> Any:
    from speechbrain.inference.speaker import EncoderClassifier
    from speechbrain.utils.fetching import FetchConfig

    run_opts = {"device": device}
    if local_dir is not None:
        hparams_file = local_dir / "hyperparams.yaml"
        if not hparams_file.is_file():
            raise FileNotFoundError(f"no hyperparams.yaml in SpeechBrain model folder {local_dir}")
        text = hparams_file.read_text(encoding="utf-8")
        declares_path = re.search(r"(?m)^pretrained_path\s*:", text) is not None
        overrides = {"pretrained_path": str(local_dir)} if declares_path else {}
        return EncoderClassifier.from_hparams(
            source=str(local_dir),
            savedir=str(savedir) if savedir is not None else None,
            overrides=overrides,
            run_opts=run_opts,
            fetch_config=FetchConfig(allow_network=False),
        )
    cache = hub_cache_dir(hub_cache)
    try:
        return EncoderClassifier.from_hparams(
            source=str(source),
            savedir=str(savedir) if savedir is not None else None,
            run_opts=run_opts,
            fetch_config=FetchConfig(allow_network=allow_network, huggingface_cache_dir=str(cache)),
        )
    except (OSError, ValueError) as err:
        where = "the Hugging Face Hub or its local cache" if allow_network else "the local Hugging Face cache"
        raise RuntimeError(
            f"could not load SpeechBrain model '{source}' from {where} {cache} "
            f"({type(err).__name__}: {err}). Without network, download the model folder elsewhere "
            "(hyperparams.yaml, embedding_model.ckpt, ...) and pass its path as the source, "
            "or use the offline 'resemblyzer' backend."
        ) from err


SPEAKER_BACKENDS = ("auto", "ecapa", "resemblyzer")


def load_speaker_encoder(
    backend: str = "auto", source: str | Path | None = None, device: str = "cpu",
    hub_cache: str | Path | None = None, allow_network: bool | None = None,
) -> SpeakerEncoder:
    """Build a speaker encoder by name (one of `SPEAKER_BACKENDS`).

    - ``"ecapa"``: SpeechBrain ECAPA from ``source`` (a local folder or a hub id; default
      ``speechbrain/spkrec-ecapa-voxceleb``, read from the Hugging Face cache ``hub_cache`` or downloaded
      when ``allow_network``, None: when the hub answers); raises when it cannot be loaded.
    - ``"resemblyzer"``: GE2E from the resemblyzer wheel (``source`` must be None).
    - ``"auto"``: ECAPA when it can be had; a named ``source`` must load (a model the user names is never
      swapped silently), the default hub model falls back to resemblyzer with a one-line warning, and the
      encoder's `describe` records why (``"fallback"``).
    """
    if backend == "resemblyzer":
        if source is not None:
            raise ValueError("the resemblyzer backend uses the weights in its wheel; source must be None")
        return ResemblyzerEncoder(device)
    if backend == "ecapa" or (backend == "auto" and source is not None):
        return EcapaEncoder(source if source is not None else ECAPA_HUB_ID, device=device, hub_cache=hub_cache,
                            allow_network=allow_network)
    if backend != "auto":
        raise ValueError(f"unknown speaker-encoder backend {backend!r}; choose one of {SPEAKER_BACKENDS}")
    network = hub_reachable() if allow_network is None else allow_network
    try:
        return EcapaEncoder(ECAPA_HUB_ID, device=device, hub_cache=hub_cache, allow_network=network)
    except ImportError as err:
        reason = f"speechbrain cannot be imported ({err})"
    except RuntimeError:
        hub = "could not be downloaded" if network else "the hub is out of reach"
        reason = f"{ECAPA_HUB_ID} is not in the Hugging Face cache {hub_cache_dir(hub_cache)} and {hub}"
    logger.warning("speaker similarity: SpeechBrain ECAPA unavailable (%s); falling back to resemblyzer (GE2E). "
                   "For ECAPA, put the model into that cache or pass its folder as the source.", reason)
    encoder = ResemblyzerEncoder(device)
    encoder.fallback_reason = f"SpeechBrain ECAPA unavailable: {reason}"
    return encoder


def embed_audio(
    encoder: SpeakerEncoder,
    items: Sequence[AudioItem],
    cache_dir: str | Path | None = None,
    batch_size: int = 16,
    progress: bool = True,
) -> np.ndarray:
    """Speaker embeddings (N, D) float32 of audio files or waveforms (arrays at ``encoder.sample_rate``).

    A path listed several times is embedded once. With ``cache_dir``, file embeddings are read from and
    written to an `EmbeddingCache` keyed by path, mtime, size and ``encoder.cache_tag``. ``batch_size``
    files go to ``encoder.embed_waveforms`` per call (one progress-bar step).
    """
    cache = EmbeddingCache(cache_dir, encoder.cache_tag) if cache_dir is not None else None
    keys: list[Path | int] = []  # unique items: a resolved file path, or the index of an array
    position: dict[Path | int, int] = {}
    slots = []
    for i, item in enumerate(items):
        key = i if isinstance(item, np.ndarray) else Path(item).resolve()
        if key not in position:
            position[key] = len(keys)
            keys.append(key)
        slots.append(position[key])
    embs: list[np.ndarray | None] = [
        cache.get(key) if cache is not None and isinstance(key, Path) else None for key in keys
    ]
    pending = [u for u, emb in enumerate(embs) if emb is None]
    batches = range(0, len(pending), batch_size)
    for start in tqdm(batches, desc=f"embedding ({encoder.name})", unit="batch", disable=not progress):
        chunk = pending[start : start + batch_size]
        wavs = [_waveform(items, keys[u], encoder.sample_rate) for u in chunk]
        try:
            batch_embs = encoder.embed_waveforms(wavs)
        except ValueError as err:
            names = ", ".join(f"array {keys[u]}" if isinstance(keys[u], int) else str(keys[u]) for u in chunk)
            raise ValueError(f"speaker embedding failed for a batch of [{names}]: {err}") from err
        for u, emb in zip(chunk, batch_embs, strict=True):
            embs[u] = emb
            if cache is not None and isinstance(keys[u], Path):
                cache.put(keys[u], emb)
    return np.stack([embs[s] for s in slots]).astype(np.float32)


def _waveform(items: Sequence[AudioItem], key: Path | int, sample_rate: int) -> np.ndarray:
    return np.asarray(items[key], dtype=np.float32) if isinstance(key, int) else load_mono(key, sample_rate)


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of (N, D) and (N, D) (or broadcastable) arrays; returns (N,)."""
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return np.sum(a * b, axis=-1)


@dataclass
class SimilarityResult:
    """Speaker similarity of synthesized speech to real references.

    ``utterances``: one dict per synthesized file (speaker, synth, refs, similarity); ``per_speaker``: mean
    similarity of each speaker's utterances; ``mean``: mean of the per-speaker means; ``encoder``: backend.
    Similarities are cosines in [-1, 1].
    """

    encoder: dict[str, str]
    utterances: list[dict[str, Any]]
    per_speaker: dict[str, float]
    mean: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | Path) -> Path:
        """Write the result as JSON, atomically."""
        return save_json(self.to_dict(), path)


def speaker_similarity(
    synth: Sequence[str | Path],
    refs: Sequence[str | Path | Sequence[str | Path]],
    speakers: Sequence[str],
    encoder: SpeakerEncoder,
    cache_dir: str | Path | None = None,
    batch_size: int = 16,
    progress: bool = True,
) -> SimilarityResult:
    """Cosine similarity of each synthesized file to real reference speech of the same speaker.

    ``synth[i]`` is scored against ``refs[i]``: one file, or several files of ``speakers[i]`` (then the
    mean cosine over them). Each reference file is embedded once, and not at all when cached.
    """
    if not len(synth) == len(refs) == len(speakers):
        sizes = f"{len(synth)}, {len(refs)}, {len(speakers)}"
        raise ValueError(f"synth, refs and speakers differ in length: {sizes}")
    ref_lists = [[r] if isinstance(r, str | Path) else list(r) for r in refs]
    for path, group in zip(synth, ref_lists, strict=True):
        if not group:
            raise ValueError(f"no reference files for {path}")
    flat_refs = [r for group in ref_lists for r in group]
    embs = embed_audio(encoder, [*synth, *flat_refs], cache_dir, batch_size, progress)
    synth_embs, ref_embs = embs[: len(synth)], embs[len(synth) :]
    utterances = []
    start = 0
    for path, group, speaker, s_emb in zip(synth, ref_lists, speakers, synth_embs, strict=True):
        sims = cosine_similarity(s_emb[None], ref_embs[start : start + len(group)])
        start += len(group)
        utt = {"speaker": speaker, "synth": str(path), "refs": [str(r) for r in group]}
        utterances.append({**utt, "similarity": float(sims.mean())})
    per_speaker: dict[str, list[float]] = {}
    for utt in utterances:
        per_speaker.setdefault(utt["speaker"], []).append(utt["similarity"])
    means = {spk: float(np.mean(v)) for spk, v in per_speaker.items()}
    return SimilarityResult(encoder.describe(), utterances, means, float(np.mean(list(means.values()))))
