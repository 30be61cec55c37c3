"""Text + voicepack -> 24 kHz speech with Kokoro-82M.

Each sentence is phonemized (all sentences of a call in one espeak-ng batch), tokenised, and run through
``KModel.forward_with_tokens`` with the voicepack row for its phoneme count; the sentences' waves are joined.
Kokoro aligns and decodes one utterance at a time (its predicted durations expand the text into frames), and
the 24 kHz decoder is most of the cost, so utterances are not padded into batches.

The decoder's harmonic source draws random initial phases and noise from torch's global generator: each
utterance runs under ``torch.random.fork_rng`` seeded with ``seed + index``, so output is deterministic for a
seed and the caller's random state is left untouched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from tts_bpeft.io import write_audio
from tts_bpeft.kokoro.architecture import SAMPLE_RATE
from tts_bpeft.kokoro.text import MAX_PHONEMES, english_phonemes, split_sentences, token_ids
from tts_bpeft.kokoro.voices import check_voicepack, style_row


@dataclass
class SynthesizedSentence:
    """One synthesized sentence: its phonemes, predicted durations (aligned frames of 25 ms per token,
    boundary tokens included) and wave (float32, 24 kHz, mono, in [-1, 1] roughly)."""

    text: str
    phonemes: str
    durations: np.ndarray
    wave: np.ndarray


def phoneme_chunks(phonemes: str, limit: int = MAX_PHONEMES) -> list[str]:
    """`phonemes` cut at spaces into pieces of at most `limit` symbols (a word longer than that is cut)."""
    chunks, current = [], ""
    for word in phonemes.split(" "):
        candidate = f"{current} {word}" if current else word
        if len(candidate) <= limit:
            current = candidate
            continue
        if current:
            chunks.append(current)
        while len(word) > limit:
            chunks.append(word[:limit])
            word = word[limit:]
        current = word
    if current:
        chunks.append(current)
    return chunks


def synthesize_phonemes(model: torch.nn.Module, phonemes: str, voicepack: torch.Tensor, speed: float = 1.0,
                        seed: int = 0, text: str | None = None) -> SynthesizedSentence:
    """One utterance of at most 510 phonemes (Kokoro's alphabet). `speed` > 1 speaks faster."""
    ids = torch.tensor([token_ids(phonemes, model.vocab, text)], dtype=torch.long, device=model.device)
    style = style_row(voicepack, len(phonemes)).to(model.device)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        audio, durations = model.forward_with_tokens(ids, style, speed)
    return SynthesizedSentence(text=text if text is not None else phonemes, phonemes=phonemes,
                     durations=durations.reshape(-1).cpu().numpy(), wave=audio.reshape(-1).cpu().numpy())


def synthesize(model: torch.nn.Module, texts: Sequence[str], voicepack: torch.Tensor, speed: float = 1.0,
               seed: int = 0, language: str = "en-us", progress: bool = True) -> list[np.ndarray]:
    """One float32 24 kHz wave per text in `texts`; a text is split into sentences (and over-long sentences at
    word boundaries) that are synthesized in turn and joined. Sentence ``k`` of the whole call uses seed
    ``seed + k``. A tqdm bar counts sentences when `progress` and there is more than one."""
    voicepack = check_voicepack(voicepack, "voicepack")
    sentences = [split_sentences(t) for t in texts]
    flat = [s for group in sentences for s in group]
    phonemes = english_phonemes(flat, language) if flat else []
    bar = tqdm(total=len(flat), desc="kokoro synthesis", unit="sentence", disable=not progress or len(flat) < 2)
    waves, k = [], 0
    for group in sentences:
        pieces = []
        for sentence in group:
            for chunk in phoneme_chunks(phonemes[k]):
                pieces.append(synthesize_phonemes(model, chunk, voicepack, speed, seed + k, sentence).wave)
            k += 1
            bar.update()
        waves.append(np.concatenate(pieces).astype(np.float32) if pieces else np.zeros(0, np.float32))
    bar.close()
    return waves


def write_waves(waves: Sequence[np.ndarray], paths: Sequence[str | Path]) -> list[Path]:
    """Write each wave as a 24 kHz wav file, atomically (``tts_bpeft.io.write_audio``)."""
    return [write_audio(path, wave, SAMPLE_RATE) for wave, path in zip(waves, paths, strict=True)]
