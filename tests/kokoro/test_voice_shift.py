"""The new voice as a shift of a voicepack: rows, gradients, and the saved file in Kokoro's format."""

from __future__ import annotations

import pytest
import torch

from tts_bpeft.kokoro.voice import VoiceShift
from tts_bpeft.kokoro.voices import load_voicepack, style_row


@pytest.fixture
def pack():
    torch.manual_seed(0)
    return torch.randn(510, 1, 256)


def test_starts_at_the_initial_voice_and_picks_kokoros_rows(pack):
    voice = VoiceShift(pack)
    styles = voice.styles([1, 12, 600])
    for style, n in zip(styles, [1, 12, 600], strict=True):
        assert torch.equal(style, style_row(pack, n)[0])
    assert torch.equal(voice.voicepack(), pack)


def test_only_the_shift_learns_and_every_row_moves_by_it(pack):
    voice = VoiceShift(pack)
    assert [name for name, _ in voice.named_parameters()] == ["delta"]
    target = torch.linspace(-1, 1, 256)
    loss = (voice.styles([5, 40]) - (pack[[4, 39], 0] + target)).square().sum()
    loss.backward()
    torch.testing.assert_close(voice.delta.grad, -4 * target)  # d/d delta of sum over 2 rows of (delta - t)^2
    with torch.no_grad():
        voice.delta.copy_(target)
    torch.testing.assert_close(voice.voicepack(), pack + target)
    assert torch.equal(voice.initial, pack)


def test_saved_voicepack_loads_as_kokoro_voice(pack, tmp_path):
    voice = VoiceShift(pack)
    with torch.no_grad():
        voice.delta.fill_(0.5)
    path = voice.save(tmp_path / "voices" / "new.pt")
    loaded = load_voicepack(path)
    assert loaded.shape == (510, 1, 256) and loaded.dtype == torch.float32
    torch.testing.assert_close(loaded, pack + 0.5)
    assert list(tmp_path.joinpath("voices").iterdir()) == [path]  # no temporary file left behind


def test_a_wrong_initial_voicepack_is_refused():
    with pytest.raises(ValueError, match=r"af_bella.pt: a Kokoro voicepack is \[510, 1, 256\]"):
        VoiceShift(torch.zeros(510, 128), "af_bella.pt")
