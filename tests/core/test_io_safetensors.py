"""`tts_bpeft.io.save_safetensors` on tensors that share memory (rows of one voicepack, as self-replay makes)."""

import torch
from safetensors.torch import load_file

from tts_bpeft.io import save_safetensors


def test_tensors_sharing_memory_are_saved_as_their_own_copies(tmp_path):
    pack = torch.arange(12.0).reshape(4, 3)
    rows = {"0.style": pack[2], "1.style": pack[2], "2.style": pack[1:3], "3.style": pack.t()}
    path = save_safetensors(rows, tmp_path / "shared.safetensors")
    loaded = load_file(path)
    for name, tensor in rows.items():
        torch.testing.assert_close(loaded[name], tensor, rtol=0, atol=0)
    header = int.from_bytes(path.read_bytes()[:8], "little")
    assert path.stat().st_size - 8 - header == 4 * sum(t.numel() for t in rows.values())  # each name its own bytes
