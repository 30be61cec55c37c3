"""Voicepack files and the style row for an utterance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tts_bpeft.kokoro.voices import load_voicepack, style_row


def test_pt_and_npy_voicepacks_load_and_pick_the_row_of_the_phoneme_count(tmp_path):
    pack = torch.randn(510, 1, 256)
    torch.save(pack, tmp_path / "af_test.pt")
    np.save(tmp_path / "flat.npy", pack[:, 0].numpy())
    for path in (tmp_path / "af_test.pt", tmp_path / "flat.npy"):
        loaded = load_voicepack(path)
        assert loaded.shape == (510, 1, 256) and torch.equal(loaded, pack)
    assert torch.equal(style_row(pack, 12), pack[11])
    assert torch.equal(style_row(pack, 0), pack[0])
    assert torch.equal(style_row(pack, 900), pack[509])


def test_bad_voicepacks_are_refused_naming_the_file(tmp_path):
    torch.save(torch.randn(510, 128), tmp_path / "narrow.pt")
    with pytest.raises(ValueError, match="narrow.pt.*got \\(510, 1, 128\\)"):
        load_voicepack(tmp_path / "narrow.pt")
    torch.save({"style": torch.randn(510, 1, 256)}, tmp_path / "dict.pt")
    with pytest.raises(ValueError, match="dict.pt: expected a tensor"):
        load_voicepack(tmp_path / "dict.pt")
    nan = torch.randn(510, 1, 256)
    nan[3, 0, 7] = float("nan")
    torch.save(nan, tmp_path / "nan.pt")
    with pytest.raises(ValueError, match="nan.pt.*NaN"):
        load_voicepack(tmp_path / "nan.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_voicepack(tmp_path / "missing.pt")
