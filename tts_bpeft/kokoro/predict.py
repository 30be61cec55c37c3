"""Kokoro's differentiable forward on a batch of utterances: what its losses and its Fisher see.

``KModel.forward_with_tokens`` runs under ``no_grad`` and synthesises one utterance; `predict` calls the
same sub-modules itself, for a padded batch, with gradients:

1. tokens (B, T) -> PL-BERT -> ``bert_encoder`` -> the predictor's duration encoder (prosody style) ->
   ``predictor.lstm`` (packed) -> ``duration_proj``: durations (B, T) in aligned frames (25 ms), the sum of
   the 50 step sigmoids (the value Kokoro rounds to synthesise);
2. the model's own alignment (its rounded durations, at least 1 frame per token, as Kokoro synthesises),
   cropped to ``crop_frames`` aligned frames at a start drawn from the utterance's seed -> ``F0Ntrain``:
   F0 (Hz) and energy N, (B, 2 * crop_frames) at 12.5 ms;
3. the text encoder's states on the same crop, F0 and N -> the decoder: a 24 kHz waveform of
   ``600 * crop_frames`` samples -> StyleTTS 2's normalised log-mel (B, 80, 1 + 2 * crop_frames).

Every sample in a batch has the same crop length, so the frame-level modules (InstanceNorm over time, the
unpacked ``predictor.shared`` LSTM) never see padding, and the token-level ones mask or pack it: a sample's
outputs do not depend on the other samples of its batch. The decoder's harmonic source draws random phases
and noise; `seeded_source` draws them per sample from the sample's seed. Crops follow StyleTTS 2's
training, which runs the prosody heads and the decoder on segments (the 24 kHz decoder dominates the cost).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ..curvature import utterance_seed
from ..speech_data.audio import mel_spectrogram


@dataclass(frozen=True)
class KokoroUtterance:
    """One voice speaking one sentence: ``tokens`` (T,) long Kokoro ids with the boundary 0 at both ends,
    ``style`` (256,) the voice's voicepack row for this length (acoustic half first, then prosody), ``key``
    a unique name (it seeds the utterance's random draws)."""

    key: str
    tokens: Tensor
    style: Tensor


@dataclass
class KokoroBatch:
    """Padded utterances: tokens (B, T) long (0-padded), lengths (B,) long, styles (B, 2 * style_dim) float
    (Kokoro-82M: 256, the acoustic style for the decoder first, then the prosody style for the predictor),
    one seed and one key per sample."""

    tokens: Tensor
    lengths: Tensor
    styles: Tensor
    seeds: list[int]
    keys: list[str]

    def to(self, device: torch.device | str) -> KokoroBatch:
        return KokoroBatch(self.tokens.to(device), self.lengths, self.styles.to(device), self.seeds, self.keys)


def collate(utterances: Sequence[KokoroUtterance], seed: int = 0) -> KokoroBatch:
    """A batch of `utterances`; each sample's seed is derived from `seed` and its key."""
    lengths = torch.tensor([len(u.tokens) for u in utterances])
    tokens = torch.zeros(len(utterances), int(lengths.max()), dtype=torch.long)
    for i, u in enumerate(utterances):
        tokens[i, :len(u.tokens)] = u.tokens
    styles = torch.stack([u.style.reshape(-1).float() for u in utterances])
    return KokoroBatch(tokens, lengths, styles, [utterance_seed(seed, u.key) for u in utterances],
                       [u.key for u in utterances])


@dataclass
class KokoroPrediction:
    """What the forward predicts for a batch (units in the module docstring).

    durations: (B, T) float. token_mask: (B, T) bool, True for real tokens. f0, energy: (B, 2 * crop_frames)
    and mel: (B, 80, 1 + 2 * crop_frames), or None when not asked for.
    """

    durations: Tensor
    token_mask: Tensor
    f0: Tensor | None = None
    energy: Tensor | None = None
    mel: Tensor | None = None


def own_alignment(durations: Tensor, batch: KokoroBatch, crop_frames: int) -> Tensor:
    """The crop of the model's own alignment, (B, T, crop_frames) float one-hot: entry (b, t, f) is 1 when
    aligned frame ``start_b + f`` belongs to token t. Durations are rounded, at least 1 for real tokens; the
    start is uniform over the possible ones, drawn from the sample's seed."""
    B, T = durations.shape
    frames = durations.detach().round().clamp(min=1).long().cpu()
    alignment = torch.zeros(B, T, crop_frames, dtype=durations.dtype)
    for b in range(B):
        n = int(batch.lengths[b])
        owner = torch.repeat_interleave(torch.arange(n), frames[b, :n])
        if owner.numel() < crop_frames:
            raise ValueError(f"utterance {batch.keys[b]!r}: the model gives it {owner.numel()} aligned frames "
                             f"({owner.numel() * 25} ms), fewer than a crop of {crop_frames}; use a smaller "
                             "crop or a longer sentence")
        generator = torch.Generator().manual_seed(utterance_seed(batch.seeds[b], "crop"))
        start = int(torch.randint(owner.numel() - crop_frames + 1, (1,), generator=generator))
        alignment[b, owner[start:start + crop_frames], torch.arange(crop_frames)] = 1.0
    return alignment.to(durations.device)


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


def predict(model: nn.Module, batch: KokoroBatch, crop_frames: int | None = None, decoder: bool = True
            ) -> KokoroPrediction:
    """Kokoro's forward with gradients (module docstring). Without `crop_frames` only the durations; with
    it F0 and energy on the crop and, if `decoder`, the log-mel of the decoded crop. The model's modes
    (eval, train) are used as they are."""
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
    out = KokoroPrediction(torch.sigmoid(model.predictor.duration_proj(x)).sum(-1), ~padding)
    if crop_frames is None:
        return out

    alignment = own_alignment(out.durations, batch, crop_frames)
    out.f0, out.energy = model.predictor.F0Ntrain(d.transpose(-1, -2) @ alignment, prosody)
    if decoder:
        asr = model.text_encoder(tokens, lengths, padding) @ alignment
        with seeded_source(model, batch.seeds):
            audio = model.decoder(asr, out.f0, out.energy, acoustic)
        out.mel = mel_spectrogram(audio.squeeze(1))
    return out
