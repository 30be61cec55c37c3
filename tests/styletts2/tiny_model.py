"""Shared test helpers for the StyleTTS 2 model and loss tests: one cached tiny build, random batches."""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import torch
from munch import Munch
from styletts2.Utils.ASR.models import ASRCNN
from styletts2.Utils.JDC.model import JDCNet
from styletts2.Utils.PLBERT.util import CustomAlbert
from transformers import AlbertConfig

from tts_bpeft.styletts2.build import TINY_CONFIG, asr_params, build_styletts2, load_config, plbert_params
from tts_bpeft.styletts2.data.dataset import TTSBatch

AUX_SEED = 123
AUX_FILES: dict[str, Path] = {}
"""The aux files `tiny_model` wrote and loaded (filled by its first call)."""


def aux_modules(seed: int = AUX_SEED) -> dict[str, torch.nn.Module]:
    """Tiny-config aux models with weights drawn from `seed` (the "pre-trained" ones the files hold)."""
    config = load_config(TINY_CONFIG)
    torch.manual_seed(seed)
    return {
        "asr": ASRCNN(**asr_params(config)),
        "pitch": JDCNet(num_class=1, seq_len=192),
        "plbert": CustomAlbert(AlbertConfig(**plbert_params(config))),
    }


def write_aux_checkpoints(folder: Path, modules: dict[str, torch.nn.Module]) -> dict[str, Path]:
    """The three aux files in the official layouts: ASR {'model': ...}, JDC {'net': ...}, PL-BERT
    {'net': {'module.encoder.<key>': ..., prediction heads, position_ids}}."""
    paths = {
        kind: folder / name
        for kind, name in (("asr", "epoch_00080.pth"), ("pitch", "bst.t7"), ("plbert", "step_1000000.t7"))
    }
    torch.save({"model": modules["asr"].state_dict(), "optimizer": {}, "epoch": 80}, paths["asr"])
    torch.save({"net": modules["pitch"].state_dict(), "epoch": 1}, paths["pitch"])
    bert = {f"module.encoder.{k}": v for k, v in modules["plbert"].state_dict().items()}
    bert["module.encoder.embeddings.position_ids"] = torch.arange(512).unsqueeze(0)
    bert["module.mask_predictor.weight"] = torch.zeros(3, 3)
    torch.save({"net": bert, "step": 1000000}, paths["plbert"])
    return paths


@functools.lru_cache(maxsize=1)
def tiny_model() -> Munch:
    """The tiny StyleTTS 2 (seed 0), its aux models loaded from files written in the official formats.
    Built once per test session; tests must not change its weights (deep-copy it first)."""
    folder = Path(tempfile.mkdtemp(prefix="tiny_aux_"))
    paths = write_aux_checkpoints(folder, aux_modules())
    AUX_FILES.update(paths)
    torch.manual_seed(0)
    return build_styletts2(TINY_CONFIG, aux_checkpoints=paths)


def random_batch(frames: list[int], tokens: list[int], seed: int = 0, ref_frames: int = 96) -> TTSBatch:
    """A TTSBatch of random utterances: normalised-log-mel-like mels, 300 samples per frame."""
    g = torch.Generator().manual_seed(seed)
    b = len(frames)
    batch_tokens = torch.zeros(b, max(tokens), dtype=torch.long)
    mels = torch.zeros(b, 80, max(frames))
    waves = torch.zeros(b, 300 * max(frames))
    for i, (t, n) in enumerate(zip(frames, tokens)):
        batch_tokens[i, :n] = torch.randint(1, 178, (n,), generator=g)
        mels[i, :, :t] = torch.randn(80, t, generator=g) * 0.5 - 1.0
        waves[i, : 300 * t] = torch.randn(300 * t, generator=g) * 0.1
    lengths = torch.tensor(frames)
    return TTSBatch(
        tokens=batch_tokens,
        token_lengths=torch.tensor(tokens),
        mels=mels,
        mel_lengths=lengths,
        waves=waves,
        wave_lengths=300 * lengths,
        ref_mels=torch.randn(b, 80, ref_frames, generator=g) * 0.5 - 1.0,
        speakers=[f"s{i}" for i in range(b)],
        paths=[f"u{i}.wav" for i in range(b)],
    )


def sub_batch(batch: TTSBatch, i: int) -> TTSBatch:
    """Item `i` of `batch` alone (still padded as in the batch, lengths unchanged)."""
    return TTSBatch(
        tokens=batch.tokens[i : i + 1],
        token_lengths=batch.token_lengths[i : i + 1],
        mels=batch.mels[i : i + 1],
        mel_lengths=batch.mel_lengths[i : i + 1],
        waves=batch.waves[i : i + 1],
        wave_lengths=batch.wave_lengths[i : i + 1],
        ref_mels=batch.ref_mels[i : i + 1],
        speakers=batch.speakers[i : i + 1],
        paths=batch.paths[i : i + 1],
    )
