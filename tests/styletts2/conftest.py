"""Shared fixtures: small synthetic corpora in the official VCTK and LibriTTS layouts (one per session)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_data_support import LIBRITTS_SPEAKERS, LIBRITTS_UTTERANCES, VCTK_SPEAKERS, VCTK_UTTERANCES

from tts_bpeft.speech_data.synthetic import make_libritts, make_vctk


@pytest.fixture(scope="session")
def vctk_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("vctk") / "VCTK-Corpus-0.92"
    make_vctk(root, speakers=VCTK_SPEAKERS, utterances_per_speaker=VCTK_UTTERANCES)
    return root


@pytest.fixture(scope="session")
def libritts_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("libritts") / "LibriTTS"
    make_libritts(root, speakers=LIBRITTS_SPEAKERS, utterances_per_speaker=LIBRITTS_UTTERANCES)
    return root
