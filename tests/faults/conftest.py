"""Shared fixture of the fault tests: a small generated VCTK corpus (official layout; p315 has no
transcripts, as in the real corpus)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tts_bpeft.speech_data.synthetic import make_vctk


@pytest.fixture(scope="session")
def vctk_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("vctk") / "VCTK-Corpus-0.92"
    make_vctk(root, speakers=("p248", "p315"), utterances_per_speaker=5)
    return root
