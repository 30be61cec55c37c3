"""tts_bpeft.hub: the offline switch read when asked, cache look-ups without network, hub ids vs. folders."""

from pathlib import Path

from tts_bpeft.hub import cached_file, hub_cache_dir, hub_offline, hub_reachable, is_hub_id


def test_offline_switch_is_read_when_asked(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub_offline() and not hub_reachable()
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert hub_offline() is bool(__import__("huggingface_hub").constants.HF_HUB_OFFLINE)


def test_cached_file_finds_the_main_revision_only_when_there(tmp_path):
    repo = tmp_path / "models--org--name"
    snapshot = repo / "snapshots" / ("c" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    assert cached_file("org/name", "config.json", tmp_path) is None  # no refs/main: no revision to read
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("c" * 40)
    assert cached_file("org/name", "config.json", tmp_path) == snapshot / "config.json"
    assert cached_file("org/name", "model.bin", tmp_path) is None
    assert cached_file("org/other", "config.json", tmp_path) is None
    assert hub_cache_dir(tmp_path) == tmp_path and isinstance(hub_cache_dir(), Path)


def test_hub_ids_and_folders(tmp_path, monkeypatch):
    assert is_hub_id("speechbrain/spkrec-ecapa-voxceleb") and is_hub_id("openai/whisper-small.en")
    assert not is_hub_id(Path("speechbrain/spkrec-ecapa-voxceleb"))  # a Path is always a path
    assert not is_hub_id("no-slash") and not is_hub_id("/abs/path") and not is_hub_id("a/b/c")
    (tmp_path / "org" / "name").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert not is_hub_id("org/name")  # an existing folder wins
