"""TTSDataset items (frame/sample alignment, tokens) and collate (shapes, padding values, references)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_data_support import LIBRITTS_UTTERANCES, copy_corpus, make_empty
from torch.utils.data import DataLoader

from tts_bpeft.speech_data.audio import load_audio, mel_spectrogram
from tts_bpeft.speech_data.issues import EMPTY, MISSING_TRANSCRIPT, BadInputError
from tts_bpeft.speech_data.libritts import read_libritts
from tts_bpeft.speech_data.phonemes import Phonemizer
from tts_bpeft.speech_data.records import Utterance
from tts_bpeft.styletts2.data.dataset import TTSBatch, TTSDataset, TTSItem, align_wave, collate
from tts_bpeft.styletts2.data.text import tokenize


@pytest.fixture(scope="module")
def dataset(libritts_root: Path, tmp_path_factory: pytest.TempPathFactory) -> TTSDataset:
    utterances = sorted(read_libritts(libritts_root).utterances, key=lambda u: u.path)
    return TTSDataset(utterances, Phonemizer(tmp_path_factory.mktemp("cache") / "phonemes.json"))


def _item(speaker: str, frames: int, tokens: int, fill: float) -> TTSItem:
    mel = torch.arange(80 * frames, dtype=torch.float32).reshape(80, frames) + fill
    return TTSItem(
        path=f"/{speaker}/{fill}.wav", speaker=speaker, text="t", phonemes="p",
        tokens=torch.arange(1, tokens + 1), wave=torch.full((frames * 300,), fill), mel=mel,
    )  # fmt: skip


def test_align_wave_lengths() -> None:
    wave, mel = align_wave(np.ones(24001, dtype=np.float32), edge_pad=0)
    assert wave.shape == (24000,) and mel.shape == (80, 80)
    wave, mel = align_wave(np.ones(24001, dtype=np.float32))
    assert wave.shape == (33600,) and mel.shape == (80, 112)
    assert torch.all(wave[:5000] == 0) and torch.all(wave[5000:29001] == 1) and torch.all(wave[29001:] == 0)


def test_item_alignment_tokens_and_values(dataset: TTSDataset) -> None:
    item = dataset[0]
    utterance = dataset.utterances[0]
    raw = load_audio(utterance.path)
    frames = (raw.shape[0] + 10000) // 600 * 2
    assert item.mel.shape == (80, frames) and frames % 2 == 0
    assert item.wave.shape == (frames * 300,) and item.wave.dtype == torch.float32
    torch.testing.assert_close(item.mel, mel_spectrogram(item.wave)[:, :-1])
    assert torch.all(item.wave[:5000] == 0)
    np.testing.assert_array_equal(item.wave[5000 : 5000 + 1000].numpy(), raw[:1000])
    assert (item.path, item.speaker, item.text) == (utterance.path, utterance.speaker, utterance.text)
    assert item.phonemes == Phonemizer()([utterance.text])[0]
    assert item.tokens.dtype == torch.long
    assert item.tokens[0] == 0 and item.tokens[-1] == 0
    assert item.tokens[1:-1].tolist() == tokenize(item.phonemes)[0]
    assert not dataset.unknown_symbols and not dataset.report


def test_collate_shapes_and_padding_values() -> None:
    items = [_item("a", 100, 5, 0.0), _item("b", 90, 9, 1000.0), _item("a", 130, 7, 2000.0)]
    batch = collate(items, generator=torch.Generator().manual_seed(0))
    assert batch.tokens.shape == (3, 9) and batch.token_lengths.tolist() == [5, 9, 7]
    assert batch.mels.shape == (3, 80, 130) and batch.mel_lengths.tolist() == [100, 90, 130]
    assert batch.waves.shape == (3, 39000) and batch.wave_lengths.tolist() == [30000, 27000, 39000]
    assert batch.ref_mels.shape == (3, 80, 192)
    assert batch.speakers == ["a", "b", "a"] and batch.paths == [it.path for it in items]
    for i, item in enumerate(items):
        n, t, s = item.tokens.shape[0], item.mel.shape[1], item.wave.shape[0]
        assert torch.equal(batch.tokens[i, :n], item.tokens) and torch.all(batch.tokens[i, n:] == 0)
        assert torch.equal(batch.mels[i, :, :t], item.mel) and torch.all(batch.mels[i, :, t:] == 0)
        assert torch.equal(batch.waves[i, :s], item.wave) and torch.all(batch.waves[i, s:] == 0)
    # References: "a" items use each other, "b" is alone and uses itself; all shorter than 192: zero-padded.
    assert torch.equal(batch.ref_mels[0, :, :130], items[2].mel) and torch.all(
        batch.ref_mels[0, :, 130:] == 0
    )
    assert torch.equal(batch.ref_mels[1, :, :90], items[1].mel) and torch.all(batch.ref_mels[1, :, 90:] == 0)
    assert torch.equal(batch.ref_mels[2, :, :100], items[0].mel)


def test_collate_crops_long_references_to_a_window() -> None:
    items = [_item("a", 100, 3, 0.0)]
    long_ref = _item("a", 300, 3, 5.0)
    starts = set()
    for seed in range(6):
        batch = collate(items, [long_ref], ref_frames=96, generator=torch.Generator().manual_seed(seed))
        assert batch.ref_mels.shape == (1, 80, 96)
        start = int(batch.ref_mels[0, 0, 0] - 5.0)  # the mel holds its own index: row 0 starts at 0 + fill
        assert 0 <= start <= 300 - 96
        assert torch.equal(batch.ref_mels[0], long_ref.mel[:, start : start + 96])
        starts.add(start)
    assert len(starts) > 1
    with pytest.raises(ValueError, match=">= 80"):
        collate(items, ref_frames=64)
    with pytest.raises(ValueError, match="reference items"):
        collate(items, [long_ref, long_ref])


def test_batch_to_moves_every_tensor() -> None:
    batch = collate([_item("a", 90, 3, 0.0), _item("b", 100, 4, 1.0)])
    moved = batch.to("meta")
    assert isinstance(moved, TTSBatch)
    for name in ("tokens", "token_lengths", "mels", "mel_lengths", "waves", "wave_lengths", "ref_mels"):
        tensor = getattr(moved, name)
        assert tensor.device.type == "meta" and tensor.dtype == getattr(batch, name).dtype
        assert tensor.shape == getattr(batch, name).shape
    assert moved.speakers == batch.speakers and moved.paths == batch.paths
    assert batch.mels.device.type == "cpu"


def test_dataloader_references_come_from_other_utterances_of_the_speaker(dataset: TTSDataset) -> None:
    torch.manual_seed(0)
    loader = DataLoader(dataset, batch_size=2, collate_fn=dataset.collate_with_references)
    batch = next(iter(loader))
    assert (
        batch.mels.shape[0] == 2
        and batch.mels.shape[1] == 80
        and batch.mel_lengths.max() == batch.mels.shape[2]
    )
    assert torch.equal(batch.wave_lengths, 300 * batch.mel_lengths) and torch.all(batch.mel_lengths % 2 == 0)
    for i, speaker in enumerate(batch.speakers):
        windows = []
        for index, u in enumerate(dataset.utterances):
            if u.speaker == speaker and u.path != batch.paths[i]:
                mel = dataset[index].mel
                windows += [mel[:, s : s + 192] for s in range(mel.shape[1] - 191)]
        assert any(torch.equal(batch.ref_mels[i], w) for w in windows)


def test_skip_policy_and_strict(libritts_root: Path, tmp_path: Path) -> None:
    root = copy_corpus(libritts_root, tmp_path)
    utterances = sorted(read_libritts(root, speakers=["1001"]).utterances, key=lambda u: u.path)
    make_empty(Path(utterances[1].path))
    dataset = TTSDataset(utterances)
    item = dataset[1]
    assert item.path == utterances[2].path
    assert dataset.report.by_reason(EMPTY) == [utterances[1].path]
    assert len(dataset) == LIBRITTS_UTTERANCES
    strict = TTSDataset(utterances, strict=True)
    with pytest.raises(BadInputError, match="0 bytes"):
        strict[1]


def test_unknown_symbols_and_empty_phonemes(libritts_root: Path) -> None:
    path = next(iter(read_libritts(libritts_root, speakers=["1001"]).utterances)).path
    records = [Utterance(path, "1001", "", "a#b#"), Utterance(path + "x", "1001", "", "")]
    dataset = TTSDataset(records)
    assert len(dataset) == 1 and dataset.unknown_symbols == {"#": 2}
    assert dataset.tokens[0].tolist() == [0, 43, 44, 0]
    assert dataset.report.by_reason(MISSING_TRANSCRIPT) == [path + "x"]
    with pytest.raises(BadInputError, match="no phonemes"):
        TTSDataset(records, strict=True)
