"""A torch Dataset of StyleTTS 2 training items and the collate function that batches them.

Frame/sample alignment (StyleTTS 2's aligner halves the mel frame rate, and its decoder maps frame ``i``
to samples ``[300 i, 300 (i + 1))``): each wave is padded with ``edge_pad`` zeros on both sides (StyleTTS 2
pads 5000), then cut at its end to a whole number of 600 samples (two hops, so under 25 ms is lost). Its
centred mel then has ``samples / 300 + 1`` frames; the last one, centred past the end, is dropped. So every
item has an even number of frames and exactly ``frames * 300`` samples, and its mel is computed on exactly
the wave it carries.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import numpy as np
import torch
from torch.utils.data import Dataset

from tts_bpeft.speech_data.audio import HOP_LENGTH, MIN_FRAMES, load_audio, mel_spectrogram
from tts_bpeft.speech_data.issues import MISSING_TRANSCRIPT, BadInputError, SkipReport, handle
from tts_bpeft.speech_data.phonemes import Phonemizer
from tts_bpeft.speech_data.records import Utterance
from tts_bpeft.styletts2.data.text import PAD_ID, tokenize

logger = logging.getLogger(__name__)

REF_FRAMES = 192
EDGE_PAD = 5000


@dataclass
class TTSItem:
    """One utterance ready for StyleTTS 2.

    Attributes:
        tokens: int64 (L,), StyleTTS 2 symbol ids with the pad id 0 added at both ends (as StyleTTS 2 does).
        wave: float32 (samples,) at 24 kHz, ``samples == 300 * frames``.
        mel: float32 (80, frames), StyleTTS 2's normalised log mel of ``wave``; ``frames`` is even.
    """

    path: str
    speaker: str
    text: str
    phonemes: str
    tokens: torch.Tensor
    wave: torch.Tensor
    mel: torch.Tensor


@dataclass
class TTSBatch:
    """A padded batch, items in the order given (not sorted by length).

    Attributes:
        tokens: int64 (B, L_max), zero-padded (0 is StyleTTS 2's pad id).
        token_lengths: int64 (B,).
        mels: float32 (B, 80, T_max), zero-padded; every length is even.
        mel_lengths: int64 (B,).
        waves: float32 (B, samples_max) at 24 kHz, zero-padded; ``wave_lengths == 300 * mel_lengths``.
        wave_lengths: int64 (B,).
        ref_mels: float32 (B, 80, T_ref): for each item the mel of another utterance of its speaker (the
            item's own when none is at hand), cropped at random to ``T_ref`` frames or right-zero-padded.
        speakers: corpus speaker ids, length B.
        paths: audio paths, length B.
    """

    tokens: torch.Tensor
    token_lengths: torch.Tensor
    mels: torch.Tensor
    mel_lengths: torch.Tensor
    waves: torch.Tensor
    wave_lengths: torch.Tensor
    ref_mels: torch.Tensor
    speakers: list[str]
    paths: list[str]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> TTSBatch:
        """A copy with every tensor on ``device``."""
        moved = {
            f.name: getattr(self, f.name).to(device, non_blocking=non_blocking)
            for f in fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return replace(self, **moved)


def align_wave(wave: np.ndarray, edge_pad: int = EDGE_PAD) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad, cut and compute the mel as described in the module docstring.

    Args:
        wave: float (samples,) at 24 kHz.
        edge_pad: zeros added before and after, in samples.

    Returns:
        wave float32 (300 * frames,) and mel float32 (80, frames) with ``frames`` even.
    """
    padded = np.pad(np.asarray(wave, dtype=np.float32), edge_pad)
    samples = padded.shape[0] // (2 * HOP_LENGTH) * (2 * HOP_LENGTH)
    aligned = torch.from_numpy(np.ascontiguousarray(padded[:samples]))
    mel = mel_spectrogram(aligned)[:, :-1]
    return aligned, mel


def _pad_stack(tensors: Sequence[torch.Tensor], length: int) -> torch.Tensor:
    """Right-zero-pad each tensor's last axis to ``length`` and stack them."""
    out = tensors[0].new_zeros((len(tensors), *tensors[0].shape[:-1], length))
    for i, t in enumerate(tensors):
        out[i, ..., : t.shape[-1]] = t
    return out


def _fit_reference(mel: torch.Tensor, frames: int, generator: torch.Generator | None) -> torch.Tensor:
    if mel.shape[1] > frames:
        start = int(torch.randint(0, mel.shape[1] - frames + 1, (1,), generator=generator))
        return mel[:, start : start + frames]
    return mel


def _batch_references(items: Sequence[TTSItem]) -> list[TTSItem]:
    """For each item, the next item of the same speaker in the batch (cyclically), else the item itself."""
    refs = []
    for i, item in enumerate(items):
        others = [items[(i + k) % len(items)] for k in range(1, len(items))]
        refs.append(next((o for o in others if o.speaker == item.speaker), item))
    return refs


def collate(
    items: Sequence[TTSItem],
    ref_items: Sequence[TTSItem] | None = None,
    ref_frames: int = REF_FRAMES,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
) -> TTSBatch:
    """Batch items into a :class:`TTSBatch`.

    Args:
        items: the batch, kept in this order.
        ref_items: one reference utterance per item (same speaker); None picks, for each item, another
            item of its speaker inside the batch, or the item itself.
        ref_frames: fixed reference length T_ref in frames, >= 80 (StyleTTS 2's style encoders need 80).
        generator: random source for the reference crop starts: one for the batch, or one per item (crops
            that do not depend on the batch an item is in); None uses torch's global one (then a resumed run
            repeats the crops only because `tts_bpeft.training.train` restores that RNG).
    """
    if not items:
        raise ValueError("collate needs at least one item")
    if ref_frames < MIN_FRAMES:
        raise ValueError(f"ref_frames must be >= {MIN_FRAMES}, got {ref_frames}")
    refs = _batch_references(items) if ref_items is None else list(ref_items)
    if len(refs) != len(items):
        raise ValueError(f"got {len(refs)} reference items for {len(items)} items")
    generators = list(generator) if isinstance(generator, Sequence) else [generator] * len(items)
    if len(generators) != len(items):
        raise ValueError(f"got {len(generators)} generators for {len(items)} items")
    token_lengths = torch.tensor([it.tokens.shape[0] for it in items], dtype=torch.long)
    mel_lengths = torch.tensor([it.mel.shape[1] for it in items], dtype=torch.long)
    wave_lengths = torch.tensor([it.wave.shape[0] for it in items], dtype=torch.long)
    return TTSBatch(
        tokens=_pad_stack([it.tokens for it in items], int(token_lengths.max())),
        token_lengths=token_lengths,
        mels=_pad_stack([it.mel for it in items], int(mel_lengths.max())),
        mel_lengths=mel_lengths,
        waves=_pad_stack([it.wave for it in items], int(wave_lengths.max())),
        wave_lengths=wave_lengths,
        ref_mels=_pad_stack([_fit_reference(r.mel, ref_frames, g) for r, g in zip(refs, generators)], ref_frames),
        speakers=[it.speaker for it in items],
        paths=[it.path for it in items],
    )


class TTSDataset(Dataset):
    """Utterance records -> :class:`TTSItem` (audio loaded, resampled and its mel computed on access).

    Args:
        utterances: records from a reader or a data list; those without phonemes are phonemized at once,
            in one batch, with ``phonemizer`` (a cache-less :class:`Phonemizer` when None).
        edge_pad: zeros added at both ends of each wave, in samples (StyleTTS 2 uses 5000).
        trim_db: trim leading/trailing silence quieter than this many dB below the peak; None: no trim.
        mix_to_mono: average the channels of multi-channel files instead of rejecting them.
        strict: raise :class:`BadInputError` on a bad file; otherwise the file is recorded in ``report``
            and the next utterance is returned in its place.
        ref_frames: reference length used by :meth:`collate_with_references`.

    Attributes:
        unknown_symbols: count of phoneme characters missing from StyleTTS 2's table (left out of tokens).
        report: files skipped so far (in a DataLoader worker, the worker's own copy; each skip is logged).
    """

    def __init__(
        self,
        utterances: Sequence[Utterance],
        phonemizer: Phonemizer | None = None,
        edge_pad: int = EDGE_PAD,
        trim_db: float | None = None,
        mix_to_mono: bool = False,
        strict: bool = False,
        ref_frames: int = REF_FRAMES,
    ) -> None:
        self.edge_pad = edge_pad
        self.trim_db = trim_db
        self.mix_to_mono = mix_to_mono
        self.strict = strict
        self.ref_frames = ref_frames
        self.report = SkipReport()
        self.unknown_symbols: Counter[str] = Counter()
        todo = [u for u in utterances if u.phonemes is None]
        if todo:
            phonemes = iter((phonemizer or Phonemizer())([u.text for u in todo]))
            utterances = [
                replace(u, phonemes=next(phonemes)) if u.phonemes is None else u for u in utterances
            ]
        self.utterances: list[Utterance] = []
        self.tokens: list[torch.Tensor] = []
        for u in utterances:
            ids, unknown = tokenize(u.phonemes)
            self.unknown_symbols.update(unknown)
            if not ids:
                handle(
                    BadInputError(u.path, MISSING_TRANSCRIPT, "no phonemes for this utterance"),
                    self.report,
                    strict,
                )
                continue
            self.utterances.append(u)
            self.tokens.append(torch.tensor([PAD_ID, *ids, PAD_ID], dtype=torch.long))
        if self.unknown_symbols:
            logger.warning(
                "phoneme symbols not in StyleTTS 2's table, left out: %s", dict(self.unknown_symbols)
            )
        self._by_speaker: dict[str, list[int]] = {}
        for i, u in enumerate(self.utterances):
            self._by_speaker.setdefault(u.speaker, []).append(i)

    def __len__(self) -> int:
        return len(self.utterances)

    def load(self, index: int) -> TTSItem:
        """The item at ``index``; raises :class:`BadInputError` for a bad file whatever ``strict`` is."""
        u = self.utterances[index]
        wave = load_audio(u.path, mix_to_mono=self.mix_to_mono, trim_db=self.trim_db)
        aligned, mel = align_wave(wave, self.edge_pad)
        return TTSItem(u.path, u.speaker, u.text, u.phonemes, self.tokens[index], aligned, mel)

    def __getitem__(self, index: int) -> TTSItem:
        for attempt in range(len(self)):
            try:
                return self.load((index + attempt) % len(self))
            except BadInputError as err:
                handle(err, self.report, self.strict)
        raise RuntimeError(f"no loadable utterance in the dataset:\n{self.report.summary()}")

    def reference(self, item: TTSItem, generator: torch.Generator | None = None) -> TTSItem:
        """Another utterance of ``item``'s speaker drawn at random, or ``item`` itself when it is alone
        or the drawn file cannot be loaded (non-strict)."""
        others = [i for i in self._by_speaker.get(item.speaker, []) if self.utterances[i].path != item.path]
        if not others:
            return item
        pick = others[int(torch.randint(0, len(others), (1,), generator=generator))]
        try:
            return self.load(pick)
        except BadInputError as err:
            handle(err, self.report, self.strict)
            return item

    def collate_with_references(self, items: Sequence[TTSItem]) -> TTSBatch:
        """``collate`` with references drawn from the whole dataset (use as a DataLoader ``collate_fn``)."""
        return collate(items, [self.reference(it) for it in items], self.ref_frames)
