"""Training examples for a new Kokoro voice: the new speaker's recordings, and self-replay examples spoken by
built-in voices. Both are `tts_bpeft.kokoro.predict.KokoroUtterance`s with targets and audio.

- :func:`recording_examples`: a recording (read and checked by `tts_bpeft.speech_data.recordings`) and its
  transcript. Targets (`tts_bpeft.kokoro.targets`): pyin F0, energy, and durations by DTW against the
  model's own rendering of the transcript in a reference voice (the initial voice), cached per file. The
  style is the *new* voice's (``new_voice=True``, ``style`` the initial voicepack's row, which
  `tts_bpeft.kokoro.voice.VoiceShift` shifts while training).
- :func:`replay_examples`: a built-in voice speaking a sentence, its targets the ORIGINAL model's own
  outputs: its rounded durations (no DTW needed: they are known), its predicted F0 and N on that alignment,
  and the decoded audio, the whole utterance at once with the decoder's random source seeded from the
  utterance's key. The style is the voice's fixed row (``new_voice=False``). Replaying them while
  fine-tuning anchors the built-in voices to what the model said before (self-distillation).
- :func:`nearest_voice`: the built-in voice to start the new one from: the lowest fine-tuning objective
  (`tts_bpeft.kokoro.voice_loss`) on a few recordings, each voice measured on targets aligned against its
  own rendering. This measures exactly what training then lowers and needs no speaker-embedding model.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from tts_bpeft.kokoro.curvature import own_output_utterances
from tts_bpeft.kokoro.predict import KokoroUtterance, collate, predict
from tts_bpeft.kokoro.targets import FRAME, Targets, kokoro_render, recording_targets
from tts_bpeft.kokoro.text import english_phonemes, token_ids
from tts_bpeft.kokoro.voice import VoiceShift
from tts_bpeft.kokoro.voice_loss import VoiceObjective
from tts_bpeft.kokoro.voices import check_voicepack, style_row
from tts_bpeft.speech_data.audio import load_audio
from tts_bpeft.speech_data.records import Utterance


def _in_eval(model: nn.Module):
    """The model's training flag, after putting it in eval mode (restore with ``model.train(flag)``)."""
    was = model.training
    model.eval()
    return was


def recording_examples(model: nn.Module, recordings: Sequence[Utterance], voicepack: torch.Tensor, voice: str,
                       cache_dir: str | os.PathLike, language: str = "en-us", seed: int = 0,
                       progress: bool = True) -> list[KokoroUtterance]:
    """The new speaker's training examples (module docstring).

    Args:
        model: the pre-trained ``KModel`` (its rendering aligns the recordings; run in eval mode, restored).
        recordings: checked recordings (``path`` a 24 kHz-readable audio file, ``text`` its transcript,
            ``phonemes`` Kokoro phonemes when known, else phonemized with espeak-ng).
        voicepack: the initial voice [510, 1, 256]: style rows and the DTW reference rendering.
        voice: its name (keys the target cache).
        cache_dir: targets are cached in ``<cache_dir>/<voice>/<recording id>.safetensors``.
        seed: seeds the reference rendering's random source.

    Raises:
        ValueError naming the file: a transcript with symbols outside Kokoro's vocabulary or over 510
            phonemes, or a recording shorter than its transcript's token count in 25 ms frames.
    """
    voicepack = check_voicepack(voicepack, f"voicepack {voice!r}")
    missing = [r.text for r in recordings if r.phonemes is None]
    spoken = iter(english_phonemes(missing, language) if missing else [])
    phonemes = [r.phonemes if r.phonemes is not None else next(spoken) for r in recordings]
    render = kokoro_render(model, voicepack, seed)
    was = _in_eval(model)
    out = []
    try:
        for record, ps in tqdm(list(zip(recordings, phonemes, strict=True)), desc=f"targets ({voice})",
                               unit="recording", disable=not progress):
            try:
                tokens = torch.tensor(token_ids(ps, dict(model.vocab), record.text), dtype=torch.long)
                wave = load_audio(record.path, mix_to_mono=True, min_frames=1)
                cache = Path(cache_dir) / voice / f"{record.utterance_id}.safetensors"
                targets = recording_targets(record.path, wave, tokens, voice, render, cache)
            except ValueError as err:
                raise ValueError(f"{record.path}: {err}") from err
            out.append(KokoroUtterance(f"{record.speaker}|{record.utterance_id}", tokens,
                                       style_row(voicepack, len(ps)).reshape(-1), targets,
                                       torch.from_numpy(wave[:FRAME * targets.frames].copy()), new_voice=True))
    finally:
        model.train(was)
    return out


@torch.no_grad()
def replay_examples(model: nn.Module, voicepacks: Mapping[str, torch.Tensor], records: Sequence[Utterance],
                    language: str = "en-us", seed: int = 0, progress: bool = True) -> list[KokoroUtterance]:
    """Self-replay examples (module docstring): each record's ``speaker`` names a voicepack of
    `voicepacks`, its ``text`` (or ``phonemes``) is what the voice says; no audio is read. Call it with the
    ORIGINAL model (before training; a freshly adapted model is the original exactly, LoRA's B being 0).
    The model runs in eval mode (restored after). Keys are ``"<voice>|<text>"``; `seed` seeds the decoder's
    random source."""
    utterances = own_output_utterances(model.vocab, voicepacks, records, language)
    was = _in_eval(model)
    out = []
    try:
        for utterance in tqdm(utterances, desc="self-replay targets", unit="utterance", disable=not progress):
            batch = collate([utterance], seed)
            frames = predict(model, batch).durations[0].round().clamp(min=1).long().cpu()
            whole = predict(model, batch, crop_frames=int(frames.sum()), decoder=True)  # the only crop: all
            targets = Targets(frames, whole.f0[0].float().cpu(), whole.energy[0].float().cpu())
            out.append(replace(utterance, targets=targets, audio=whole.audio[0].float().cpu(), new_voice=False))
    finally:
        model.train(was)
    return out


@torch.no_grad()
def mean_objective(model: nn.Module, examples: Sequence[KokoroUtterance], objective: VoiceObjective,
                   seed: int = 0, batch_size: int = 4, shifted: VoiceShift | None = None) -> float:
    """The objective's mean over `examples` in eval mode (restored after), crops and random source from
    `seed`. ``shifted``: a `tts_bpeft.kokoro.voice.VoiceShift` applied to the new-voice examples' styles."""
    was = _in_eval(model)
    total = 0.0
    try:
        for start in range(0, len(examples), batch_size):
            batch = collate(examples[start:start + batch_size], seed)
            if shifted is not None:
                batch = replace(batch, styles=shifted.shifted(batch.styles, batch.new_voice))
            total += float(objective.per_sample(model, batch).sum())
    finally:
        model.train(was)
    return total / len(examples)


def nearest_voice(model: nn.Module, voicepacks: Mapping[str, torch.Tensor], recordings: Sequence[Utterance],
                  cache_dir: str | os.PathLike, objective: VoiceObjective | None = None, count: int = 3,
                  language: str = "en-us", seed: int = 0, progress: bool = True) -> tuple[str, dict[str, float]]:
    """The voice of `voicepacks` with the lowest mean objective on the first `count` recordings (module
    docstring), and every voice's mean objective. Ties go to the first name in sorted order."""
    objective = objective or VoiceObjective()
    if not voicepacks:
        raise ValueError("no built-in voice to start the new voice from")
    chosen = list(recordings[:count])
    scores = {}
    for name in tqdm(sorted(voicepacks), desc="nearest voice", unit="voice", disable=not progress):
        examples = recording_examples(model, chosen, voicepacks[name], name, cache_dir, language, seed, False)
        scores[name] = mean_objective(model, examples, objective, seed)
    return min(scores, key=lambda n: (scores[n], n)), scores
