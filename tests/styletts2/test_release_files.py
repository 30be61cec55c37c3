"""`model=libritts` / `model=ljspeech`: the official releases by name, from a hub cache in huggingface_hub's own
layout (``models--yl4579--StyleTTS2-LibriTTS/snapshots/<rev>/Models/LibriTTS/...``, ``refs/main``) and the
aux models' cache (``<TTS_BPEFT_CACHE>/styletts2/<commit>/Utils/...``), offline; small files in the official
layouts that the loader accepts. Downloads of the aux models run against a local HTTP server."""

from __future__ import annotations

import functools
import shutil
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import huggingface_hub
import pytest
import torch
from hydra import compose, initialize_config_dir
from release_layout import write_release

from tts_bpeft.family import FAMILIES, family
from tts_bpeft.styletts2 import release as release_module
from tts_bpeft.styletts2.release import (
    RELEASES,
    UTILS_COMMIT,
    HashMismatchError,
    git_blob_sha1,
    release_files,
    utils_files,
    utils_root,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "eval"))
from hub_cache import hub_cache_with  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
UTILS = ("Utils/ASR/config.yml", "Utils/ASR/epoch_00080.pth", "Utils/JDC/bst.t7", "Utils/PLBERT/config.yml",
         "Utils/PLBERT/step_1000000.t7")


def git_hash_object(path: Path) -> str:
    """The git blob hash as git itself computes it (the independent check of `git_blob_sha1`)."""
    return subprocess.run(["git", "hash-object", str(path)], check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict:
    """A tiny release written in the official layout (Models/LibriTTS + Utils)."""
    return write_release(tmp_path_factory.mktemp("StyleTTS2"))


@pytest.fixture
def caches(written, tmp_path, monkeypatch) -> dict:
    """The release's Models/ in a hub cache and its Utils/ in the aux cache, offline; the pinned Utils hashes
    replaced by git's hashes of the test's files."""
    hub = tmp_path / "hub"
    models = tmp_path / "repo"
    shutil.copytree(written["root"] / "Models", models / "Models")
    snapshot = hub_cache_with(hub, RELEASES["libritts"].repo_id, models)
    utils = utils_root(tmp_path / "cache")
    for relative in UTILS:
        (utils / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(written["root"] / relative, utils / relative)
    monkeypatch.setattr(release_module, "UTILS_FILES", {r: git_hash_object(written["root"] / r) for r in UTILS})
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("TTS_BPEFT_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)  # no Utils/ in the working directory: the aux cache must be used
    return {"hub": hub, "snapshot": snapshot, "utils": utils}


def test_the_release_names_are_model_names_not_paths() -> None:
    assert {"tiny", *RELEASES} == set(FAMILIES["styletts2"].model_names)


def test_git_blob_sha1_is_gits_hash(tmp_path) -> None:
    for content in (b"", b"model_params: {}\n", bytes(range(256)) * 5000):
        path = tmp_path / "file"
        path.write_bytes(content)
        assert git_blob_sha1(path) == git_hash_object(path)


def test_model_libritts_loads_the_release_from_the_caches_offline(written, caches) -> None:
    with initialize_config_dir(str(REPO / "recipes/styletts2_vctk/conf"), version_base=None):
        cfg = compose("finetune", overrides=["model=libritts", "data.vctk_root=unused"])
    assert cfg.model.config == "libritts" and cfg.model.checkpoint is None
    files = release_files("libritts", hub_cache=caches["hub"])
    assert files.config == caches["snapshot"] / "Models/LibriTTS/config.yml"
    assert files.checkpoint == caches["snapshot"] / "Models/LibriTTS/epochs_2nd_00020.pth"
    assert files.utils_root == caches["utils"]
    net = family("styletts2").build(dict(cfg.model)).net
    for name in ("text_aligner", "pitch_extractor", "bert", "bert_encoder", "decoder", "diffusion"):
        theirs = written["trained"][name].state_dict()
        assert all(torch.equal(v, theirs[k]) for k, v in net[name].state_dict().items()), name


def test_offline_without_the_files_fails_at_once_naming_the_cache_and_the_fix(caches, tmp_path) -> None:
    shutil.rmtree(caches["hub"] / "models--yl4579--StyleTTS2-LibriTTS")
    with pytest.raises(FileNotFoundError) as error:
        family("styletts2").build({"config": "libritts"})
    message = str(error.value)
    assert f"Models/LibriTTS/config.yml is not in the hub cache {caches['hub']}" in message
    assert "HF_HUB_OFFLINE is set" in message
    assert "huggingface-cli download yl4579/StyleTTS2-LibriTTS Models/LibriTTS/config.yml" in message
    with pytest.raises(FileNotFoundError, match="yl4579/StyleTTS2-LJSpeech: Models/LJSpeech/config.yml"):
        release_files("ljspeech")
    (caches["utils"] / "Utils/JDC/bst.t7").unlink()
    with pytest.raises(FileNotFoundError) as error:
        utils_files()
    assert f"{caches['utils'] / 'Utils/JDC/bst.t7'} is missing and HF_HUB_OFFLINE is set" in str(error.value)
    assert f"https://github.com/yl4579/StyleTTS2/raw/{UTILS_COMMIT}/Utils/JDC/bst.t7" in str(error.value)


def test_a_checkpoint_given_replaces_the_releases_which_is_then_not_needed(written, caches, tmp_path) -> None:
    checkpoint = tmp_path / "mine.pth"
    link = caches["snapshot"] / "Models/LibriTTS/epochs_2nd_00020.pth"
    shutil.copyfile(link, checkpoint)
    link.unlink()  # only the config is cached
    with pytest.raises(FileNotFoundError, match="Models/LibriTTS/epochs_2nd_00020.pth is not in the hub cache"):
        release_files("libritts")
    assert release_files("libritts", checkpoint=False).checkpoint is None
    net = family("styletts2").build({"config": "libritts", "checkpoint": str(checkpoint)}).net
    assert torch.equal(net["decoder"].state_dict()["generator.conv_post.bias"],
                       written["trained"]["decoder"].state_dict()["generator.conv_post.bias"])


def test_a_damaged_file_is_refused_with_its_path(caches) -> None:
    config = caches["snapshot"] / "Models/LibriTTS/config.yml"
    blob = config.resolve()
    blob.write_bytes(blob.read_bytes() + b"\n# edited\n")
    with pytest.raises(HashMismatchError, match=f"{config}.*does not have the hash it is named by"):
        release_files("libritts")
    aligner = caches["utils"] / "Utils/ASR/epoch_00080.pth"
    aligner.write_bytes(aligner.read_bytes()[:-10])
    with pytest.raises(HashMismatchError, match=f"{aligner}: not Utils/ASR/epoch_00080.pth of yl4579/StyleTTS2"):
        utils_files()


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def github(written, monkeypatch):
    """A local HTTP server standing in for GitHub's raw files of the release's Utils/."""
    handler = functools.partial(QuietHandler, directory=str(written["root"]))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setattr(release_module, "utils_url",
                        lambda relative, commit=UTILS_COMMIT: f"http://127.0.0.1:{server.server_port}/{relative}")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(release_module, "hub_offline", lambda: False)
    yield
    server.shutdown()
    server.server_close()


def test_the_aux_models_are_downloaded_once_and_checked(written, github, tmp_path) -> None:
    files = {r: git_hash_object(written["root"] / r) for r in UTILS}
    root = utils_files(tmp_path, files)
    for relative in UTILS:
        assert (root / relative).read_bytes() == (written["root"] / relative).read_bytes()
    before = {r: (root / r).stat().st_mtime_ns for r in UTILS}
    utils_files(tmp_path, files)  # cached: not downloaded again
    assert {r: (root / r).stat().st_mtime_ns for r in UTILS} == before
    wrong = {"Utils/JDC/bst.t7": "0" * 40}
    with pytest.raises(HashMismatchError, match="expected 0{40}; nothing was written"):
        utils_files(tmp_path / "other", wrong)
    assert not list((tmp_path / "other").rglob("*.t7*"))  # not even a temporary file is left
    with pytest.raises(FileNotFoundError, match=r"(?s)Utils/JDC/none.t7 could not be downloaded .*404.*put it at"):
        utils_files(tmp_path / "other", {"Utils/JDC/none.t7": "0" * 40})
