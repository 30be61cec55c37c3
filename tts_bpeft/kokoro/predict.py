"""Kokoro's differentiable forward on a batch of utterances: what its losses and its Fisher see.

``KModel.forward_with_tokens`` runs under ``no_grad`` and synthesises one utterance; `predict` calls the
same sub-modules itself, for a padded batch, with gradients:

1. tokens (B, T) -> PL-BERT -> ``bert_encoder`` -> the predictor's duration encoder (prosody style) ->
   ``predictor.lstm`` (packed) -> ``duration_proj``: durations (B, T) in aligned frames (25 ms), the sum of
   the 50 step sigmoids (the value Kokoro rounds to synthesise);
2. an alignment cropped to ``crop_frames`` aligned frames at a start drawn from the utterance's seed:
   ``alignment="own"``, the model's own (its rounded durations, at least 1 frame per token, as Kokoro
   synthesises); ``alignment="target"``, the batch's target durations (a recording's, teacher forcing)
   -> ``F0Ntrain``: F0 (Hz) and energy N, (B, 2 * crop_frames) at 12.5 ms;
3. the text encoder's states on the same crop and F0, N -> the decoder: a 24 kHz waveform of
   ``600 * crop_frames`` samples -> StyleTTS 2's normalised log-mel (B, 80, 1 + 2 * crop_frames). With the
   target alignment the decoder gets the *target* F0 and N of the crop, as in StyleTTS 2's second stage.

Every sample in a batch has the same crop length, so the frame-level modules (InstanceNorm over time, the
unpacked ``predictor.shared`` LSTM) never see padding, and the token-level ones mask or pack it: a sample's
outputs do not depend on the other samples of its batch. The decoder's harmonic source draws random phases
and noise; `seeded_source` draws them per sample from the sample's seed. Crops follow StyleTTS 2's
training, which runs the prosody heads and the decoder on segments (the 24 kHz decoder dominates the cost).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ..curvature import utterance_seed
from ..speech_data.audio import mel_spectrogram
from .targets import FRAME, Targets

ALIGNMENTS = ("own", "target")


@dataclass(frozen=True)
class KokoroUtterance:
    """One voice speaking one sentence: ``tokens`` (T,) long Kokoro ids with the boundary 0 at both ends,
    ``style`` (256,) the voice's voicepack row for this length (acoustic half first, then prosody), ``key``
    a unique name (it seeds the utterance's random draws).

    For training, ``targets`` (durations (T,), F0 and N (2F,), `tts_bpeft.kokoro.targets`) and ``audio``
    (600 F,) float 24 kHz: what the utterance should sound like. ``new_voice``: the style is the learnable
    new voice (`tts_bpeft.kokoro.voice.VoiceShift`), ``style`` then its initial row; otherwise the style is
    fixed (a built-in voice, e.g. a self-replay example)."""

    key: str
    tokens: Tensor
    style: Tensor
    targets: Targets | None = None
    audio: Tensor | None = None
    new_voice: bool = False


@dataclass
class BatchTargets:
    """Padded targets of a batch: durations (B, T) long (0 on padding), f0 and energy (B, 2 F_max),
    audio (B, 600 F_max), frames (B,) long (F per sample: aligned frames of 25 ms)."""

    durations: Tensor
    f0: Tensor
    energy: Tensor
    audio: Tensor
    frames: Tensor

    def to(self, device: torch.device | str) -> BatchTargets:
        return BatchTargets(self.durations.to(device), self.f0.to(device), self.energy.to(device),
                            self.audio.to(device), self.frames)


@dataclass
class KokoroBatch:
    """Padded utterances: tokens (B, T) long (0-padded), lengths (B,) long, styles (B, 2 * style_dim) float
    (Kokoro-82M: 256, the acoustic style for the decoder first, then the prosody style for the predictor),
    one seed and one key per sample; ``new_voice`` (B,) bool (see `KokoroUtterance`); ``targets`` when the
    utterances carry them."""

    tokens: Tensor
    lengths: Tensor
    styles: Tensor
    seeds: list[int]
    keys: list[str]
    new_voice: Tensor | None = None
    targets: BatchTargets | None = None

    def to(self, device: torch.device | str) -> KokoroBatch:
        return replace(self, tokens=self.tokens.to(device), styles=self.styles.to(device),
                       targets=self.targets.to(device) if self.targets is not None else None)


def _pad(rows: Sequence[Tensor], dtype: torch.dtype) -> Tensor:
    out = torch.zeros(len(rows), max(len(r) for r in rows), dtype=dtype)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return out


def _targets(utterances: Sequence[KokoroUtterance]) -> BatchTargets | None:
    have = [u.targets is not None and u.audio is not None for u in utterances]
    if not any(have):
        return None
    if not all(have):
        missing = [u.key for u, h in zip(utterances, have, strict=True) if not h]
        raise ValueError(f"utterances {missing[:3]} have no targets or audio while others of the batch do; "
                         "batch training examples only with training examples")
    for u in utterances:
        t = u.targets
        if len(t.durations) != len(u.tokens) or len(t.f0) != 2 * t.frames or len(t.energy) != 2 * t.frames \
                or len(u.audio) < FRAME * t.frames:
            raise ValueError(f"utterance {u.key!r}: targets for {len(t.durations)} tokens, {t.frames} frames, "
                             f"F0/N of {len(t.f0)}/{len(t.energy)} and {len(u.audio)} audio samples do not fit "
                             f"its {len(u.tokens)} tokens (need 2 F0/N values and {FRAME} samples per frame)")
    return BatchTargets(_pad([u.targets.durations for u in utterances], torch.long),
                        _pad([u.targets.f0 for u in utterances], torch.float32),
                        _pad([u.targets.energy for u in utterances], torch.float32),
                        _pad([u.audio[:FRAME * u.targets.frames] for u in utterances], torch.float32),
                        torch.tensor([u.targets.frames for u in utterances]))


def collate(utterances: Sequence[KokoroUtterance], seed: int = 0) -> KokoroBatch:
    """A batch of `utterances`; each sample's seed is derived from `seed` and its key."""
    lengths = torch.tensor([len(u.tokens) for u in utterances])
    tokens = _pad([u.tokens for u in utterances], torch.long)
    styles = torch.stack([u.style.reshape(-1).float() for u in utterances])
    return KokoroBatch(tokens, lengths, styles, [utterance_seed(seed, u.key) for u in utterances],
                       [u.key for u in utterances], torch.tensor([u.new_voice for u in utterances]),
                       _targets(utterances))


@dataclass
class KokoroPrediction:
    """What the forward predicts for a batch (units in the module docstring).

    durations: (B, T) float; duration_logits: (B, T, max_dur) the step logits whose sigmoids sum to them.
    token_mask: (B, T) bool, True for real tokens. f0, energy: (B, 2 * crop_frames), audio: (B, 600 *
    crop_frames) and mel: (B, 80, 1 + 2 * crop_frames), or None when not asked for; starts: (B,) long, the
    crops' first aligned frames.
    """

    durations: Tensor
    token_mask: Tensor
    duration_logits: Tensor | None = None
    f0: Tensor | None = None
    energy: Tensor | None = None
    audio: Tensor | None = None
    mel: Tensor | None = None
    starts: Tensor | None = None


def crop_alignment(frames: Tensor, batch: KokoroBatch, crop_frames: int, whose: str = "the model"
                   ) -> tuple[Tensor, Tensor]:
    """A crop of the alignment that `frames` (B, T) long, aligned frames per token, defines: (B, T,
    crop_frames) float one-hot, entry (b, t, f) 1 when aligned frame ``start_b + f`` belongs to token t, and
    the starts (B,) long, uniform over the possible ones, drawn from each sample's seed."""
    B, T = frames.shape
    frames = frames.cpu()
    alignment = torch.zeros(B, T, crop_frames)
    starts = torch.zeros(B, dtype=torch.long)
    for b in range(B):
        n = int(batch.lengths[b])
        owner = torch.repeat_interleave(torch.arange(n), frames[b, :n])
        if owner.numel() < crop_frames:
            raise ValueError(f"utterance {batch.keys[b]!r}: {whose} gives it {owner.numel()} aligned frames "
                             f"({owner.numel() * 25} ms), fewer than a crop of {crop_frames}; use a smaller "
                             "crop or a longer sentence")
        generator = torch.Generator().manual_seed(utterance_seed(batch.seeds[b], "crop"))
        starts[b] = int(torch.randint(owner.numel() - crop_frames + 1, (1,), generator=generator))
        alignment[b, owner[starts[b]:starts[b] + crop_frames], torch.arange(crop_frames)] = 1.0
    return alignment, starts


def crop_frames_of(values: Tensor, starts: Tensor, crop_frames: int, per_frame: int) -> Tensor:
    """The crops of `values` (B, per_frame * F) at aligned frames ``starts`` (B,): (B, per_frame *
    crop_frames). ``per_frame``: 2 for F0 and N, 600 for 24 kHz audio."""
    index = (starts.to(values.device)[:, None] * per_frame
             + torch.arange(per_frame * crop_frames, device=values.device)[None])
    return values.gather(1, index)


@contextlib.contextmanager
def seeded_source(model: nn.Module, seeds: Sequence[int]) -> Iterator[None]:
    """While active, the decoder's sine generator draws each sample's random phases and noise from the
    sample's seed (Kokoro draws them for the whole batch from the global RNG)."""
    sine = model.decoder.generator.m_source.l_sin_gen
    own = sine.__dict__.get("forward")
    batched = sine.forward

    def forward(f0: Tensor):
        if f0.shape[0] != len(seeds):
            raise ValueError(f"the decoder saw {f0.shape[0]} samples but {len(seeds)} seeds were given")
        devices = [f0.device.index or 0] if f0.device.type == "cuda" else []
        parts = []
        for i, seed in enumerate(seeds):
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(utterance_seed(seed, "source"))
                parts.append(batched(f0[i:i + 1]))
        return tuple(torch.cat(p) for p in zip(*parts))

    sine.forward = forward
    try:
        yield
    finally:
        if own is None:
            del sine.forward
        else:
            sine.forward = own


def predict(model: nn.Module, batch: KokoroBatch, crop_frames: int | None = None, decoder: bool = True,
            alignment: str = "own") -> KokoroPrediction:
    """Kokoro's forward with gradients (module docstring). Without `crop_frames` only the durations; with
    it F0 and energy on the crop and, if `decoder`, the decoded crop (audio and log-mel), on the model's
    own alignment or (``alignment="target"``) the batch's targets'. The model's modes (eval, train) are used
    as they are."""
    if alignment not in ALIGNMENTS:
        raise ValueError(f"alignment must be one of {ALIGNMENTS}, got {alignment!r}")
    if alignment == "target" and batch.targets is None:
        raise ValueError("alignment='target' needs a batch with targets (utterances with targets and audio)")
    device, dtype = model.bert.device, model.bert_encoder.weight.dtype
    batch = batch.to(device)
    tokens, lengths = batch.tokens, batch.lengths
    T = tokens.shape[1]
    padding = torch.arange(T, device=device)[None] >= lengths.to(device)[:, None]  # Kokoro's mask: True = pad
    style_dim = model.predictor.text_encoder.sty_dim
    if batch.styles.shape[1] != 2 * style_dim:
        raise ValueError(f"this Kokoro model takes styles of {2 * style_dim} values (one voicepack row), "
                         f"got {batch.styles.shape[1]}")
    styles = batch.styles.to(dtype)
    acoustic, prosody = styles[:, :style_dim], styles[:, style_dim:]

    hidden = model.bert(tokens, attention_mask=(~padding).int())
    d_en = model.bert_encoder(hidden).transpose(-1, -2)
    d = model.predictor.text_encoder(d_en, prosody, lengths, padding)  # (B, T, d_hid + style)
    packed = pack_padded_sequence(d, lengths.cpu(), batch_first=True, enforce_sorted=False)
    x, _ = model.predictor.lstm(packed)
    x, _ = pad_packed_sequence(x, batch_first=True, total_length=T)
    logits = model.predictor.duration_proj(x)
    out = KokoroPrediction(torch.sigmoid(logits).sum(-1), ~padding, logits)
    if crop_frames is None:
        return out

    if alignment == "own":
        frames = out.durations.detach().round().clamp(min=1).long()
        aligned, out.starts = crop_alignment(frames, batch, crop_frames)
    else:
        aligned, out.starts = crop_alignment(batch.targets.durations, batch, crop_frames, "its target alignment")
    aligned = aligned.to(device, d.dtype)
    out.f0, out.energy = model.predictor.F0Ntrain(d.transpose(-1, -2) @ aligned, prosody)
    if decoder:
        f0, energy = out.f0, out.energy
        if alignment == "target":
            f0, energy = (crop_frames_of(t, out.starts, crop_frames, 2).to(d.dtype)
                          for t in (batch.targets.f0, batch.targets.energy))
        asr = model.text_encoder(tokens, lengths, padding) @ aligned
        with seeded_source(model, batch.seeds):
            out.audio = model.decoder(asr, f0, energy, acoustic).squeeze(1)
        out.mel = mel_spectrogram(out.audio)
    return out
