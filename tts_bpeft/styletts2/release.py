"""The official StyleTTS 2 releases by name (``model.config=libritts`` or ``ljspeech``), fetched into caches.

A release is three kinds of files:

- the model's ``config.yml`` and second-stage checkpoint, from the Hugging Face hub: ``yl4579/StyleTTS2-LibriTTS``
  (``Models/LibriTTS/{config.yml, epochs_2nd_00020.pth}``) and ``yl4579/StyleTTS2-LJSpeech``
  (``Models/LJSpeech/{config.yml, epoch_2nd_00100.pth}``), fetched by ``huggingface_hub`` into the hub cache
  (``$HF_HUB_CACHE/models--yl4579--StyleTTS2-LibriTTS/snapshots/<revision>/Models/...``);
- the auxiliary models that config names (``Utils/ASR/{config.yml, epoch_00080.pth}``, ``Utils/JDC/bst.t7``,
  ``Utils/PLBERT/{config.yml, step_1000000.t7}``): they are not on the hub but in the StyleTTS 2 GitHub
  repository, where the ``styletts2`` package fetches them too; here from the pinned commit `UTILS_COMMIT`
  into ``<user cache>/styletts2/<commit>/Utils/...`` (user cache: ``$TTS_BPEFT_CACHE``, else
  ``$XDG_CACHE_HOME/tts_bpeft``, else ``~/.cache/tts_bpeft``).

Integrity: every Utils file must have the git blob hash of the pinned commit (`UTILS_FILES`; sha1 of
``b"blob <size>\\0" + content``, which fixes the size too). A hub file is checked against the name of its cache
blob, which huggingface_hub names by the file's hash (sha256 of an LFS file, git blob sha1 of a small one);
huggingface_hub itself checks a download's size. A file that fails its check is refused with its path.

Offline (``HF_HUB_OFFLINE=1``, or the hub does not answer), only the caches are read: a missing file raises
`FileNotFoundError` at once, naming the cache path it belongs at and where to get it by hand.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx
from tqdm.auto import tqdm

from ..hub import cached_file, hub_cache_dir, hub_offline, hub_reachable, user_cache_dir
from ..io import atomic_write


@dataclass(frozen=True)
class Release:
    """One official release on the hub: ``repo_id`` and the repository paths of its config and checkpoint."""

    repo_id: str
    config: str
    checkpoint: str


RELEASES = {
    "libritts": Release("yl4579/StyleTTS2-LibriTTS", "Models/LibriTTS/config.yml",
                        "Models/LibriTTS/epochs_2nd_00020.pth"),
    "ljspeech": Release("yl4579/StyleTTS2-LJSpeech", "Models/LJSpeech/config.yml",
                        "Models/LJSpeech/epoch_2nd_00100.pth"),
}
UTILS_REPOSITORY = "yl4579/StyleTTS2"
UTILS_COMMIT = "5cedc71c333f8d8b8551ca59378bdcc7af4c9529"  # main as of 2024-03; Utils/ unchanged since 2023-10
UTILS_FILES = {  # repository path: git blob sha1 at UTILS_COMMIT
    "Utils/ASR/config.yml": "ca334a10a12dd3ef12497eb12651fa5f508106dc",
    "Utils/ASR/epoch_00080.pth": "04e2d802d561086860228eed48790ba7034c1b25",
    "Utils/JDC/bst.t7": "d6cf419f9e964af2fd4e3a110c0f0af5fa6e6a43",
    "Utils/PLBERT/config.yml": "75f60d1eccfee7e253649a1ae02105b5245e2473",
    "Utils/PLBERT/step_1000000.t7": "b34fd8bc081f01f0db59666d6cc3aed5a3624597",
}


@dataclass(frozen=True)
class ReleaseFiles:
    """A release's local files: ``config`` and ``checkpoint`` (in the hub cache; None when not asked for) and
    ``utils_root``, the folder holding ``Utils/...`` that the config's relative ``ASR_config`` / ``ASR_path`` /
    ``F0_path`` / ``PLBERT_dir`` name."""

    config: Path
    checkpoint: Path | None
    utils_root: Path


class HashMismatchError(ValueError):
    """A downloaded or cached file is not the file it should be (hash or size differs)."""


def git_blob_sha1(path: Path) -> str:
    """The git blob hash of a file: sha1 of ``b"blob <size in bytes>\\0"`` followed by its bytes."""
    return file_hash(path, "git")


def file_hash(path: Path, kind: str) -> str:
    """The hex digest of a file's bytes: ``kind`` "sha256", or "git" (`git_blob_sha1`). Computed once per
    process for each version (size, mtime) of the file."""
    stat = path.stat()
    return _file_hash(path, kind, stat.st_size, stat.st_mtime_ns)


@functools.cache
def _file_hash(path: Path, kind: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256() if kind == "sha256" else hashlib.sha1(f"blob {size}\0".encode())
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_hub_blob(path: Path, repo_id: str, filename: str) -> Path:
    """`path` (a hub cache snapshot file) after checking that its blob's content has the hash the blob is named
    by; files not stored as hash-named blobs (no symlinks on this file system) are taken as they are."""
    blob = path.resolve()
    if re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", blob.name):
        if file_hash(blob, "sha256" if len(blob.name) == 64 else "git") != blob.name:
            raise HashMismatchError(f"{path} ({repo_id}: {filename}): the cached blob {blob} does not have the "
                                    f"hash it is named by (a damaged or replaced download): delete it and fetch "
                                    f"it again")
    return path


def hub_file(repo_id: str, filename: str, cache_dir: str | Path | None = None) -> Path:
    """``filename`` of hub repository ``repo_id`` (``main``): from the cache when offline or when the hub does
    not answer, else fetched by ``hf_hub_download``; checked with `check_hub_blob`. Offline and not cached:
    `FileNotFoundError` naming the cache folder and the command that fetches it elsewhere."""
    if hub_reachable():
        from huggingface_hub import hf_hub_download

        found = Path(hf_hub_download(repo_id, filename, cache_dir=str(hub_cache_dir(cache_dir))))
    else:
        found = cached_file(repo_id, filename, cache_dir)
        if found is None:
            cache = hub_cache_dir(cache_dir)
            why = "HF_HUB_OFFLINE is set" if hub_offline() else "the Hugging Face Hub does not answer"
            raise FileNotFoundError(
                f"{repo_id}: {filename} is not in the hub cache {cache} and {why}. On a machine with network run\n"
                f"  huggingface-cli download {repo_id} {filename} --cache-dir <folder>\n"
                f"and copy <folder>/models--{repo_id.replace('/', '--')} into {cache}; or download "
                f"https://huggingface.co/{repo_id}/resolve/main/{filename} and give its path as model.config / "
                f"model.checkpoint instead of the release name.")
    return check_hub_blob(found, repo_id, filename)


def utils_url(relative: str, commit: str = UTILS_COMMIT) -> str:
    """The download URL of a file of the StyleTTS 2 GitHub repository at `commit`."""
    return f"https://github.com/{UTILS_REPOSITORY}/raw/{commit}/{relative}"


def utils_root(cache: str | Path | None = None, commit: str = UTILS_COMMIT) -> Path:
    """The folder that holds ``Utils/...`` of `commit`: ``<cache or user cache>/styletts2/<commit>``."""
    return Path(cache if cache is not None else user_cache_dir()) / "styletts2" / commit


def _download_checked(url: str, path: Path, expected: str, timeout: float) -> None:
    """Stream `url` into `path` atomically; the file is kept only if its git blob hash is `expected` (the
    hash's size prefix is the response's Content-Length, so a truncated download fails too)."""

    def write(handle: IO[bytes]) -> None:
        with httpx.stream("GET", url, follow_redirects=True, timeout=timeout) as response:
            response.raise_for_status()
            size = int(response.headers.get("content-length", -1))
            digest = hashlib.sha1(f"blob {size}\0".encode())
            received = 0
            with tqdm(total=max(size, 0) or None, unit="B", unit_scale=True, desc=path.name, leave=False) as bar:
                for chunk in response.iter_bytes(1 << 20):
                    handle.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
        if received != size or digest.hexdigest() != expected:
            raise HashMismatchError(f"{url}: got {received} of {size} bytes with git blob hash {digest.hexdigest()}, "
                                    f"expected {expected}; nothing was written to {path}")

    atomic_write(path, write)


def utils_files(cache: str | Path | None = None, files: Mapping[str, str] | None = None,
                commit: str = UTILS_COMMIT, timeout: float = 60.0) -> Path:
    """The aux model files `files` ({repository path: git blob sha1}, default `UTILS_FILES`) in `utils_root`,
    each downloaded once from the GitHub repository at `commit` and checked against its hash. Returns the
    root. Offline (``HF_HUB_OFFLINE=1``) a missing file raises `FileNotFoundError` naming its place and URL;
    a cached file with another hash raises `HashMismatchError`."""
    root = utils_root(cache, commit)
    for relative, expected in (UTILS_FILES if files is None else files).items():
        path = root / relative
        url = utils_url(relative, commit)
        if path.is_file():
            if git_blob_sha1(path) != expected:
                raise HashMismatchError(f"{path}: not {relative} of {UTILS_REPOSITORY} at {commit} (its git blob "
                                        f"hash is not {expected}): delete it, or put {url} there")
            continue
        hint = f"download {url} and put it at {path}"
        if hub_offline():
            raise FileNotFoundError(f"{path} is missing and HF_HUB_OFFLINE is set (no downloads): {hint}")
        try:
            _download_checked(url, path, expected, timeout)
        except (OSError, httpx.HTTPError) as error:
            raise FileNotFoundError(f"{url} could not be downloaded ({error}): {hint}") from error
    return root


def release_files(name: str, hub_cache: str | Path | None = None, cache: str | Path | None = None,
                  checkpoint: bool = True) -> ReleaseFiles:
    """The files of the official release `name` (a key of `RELEASES`): config and (with `checkpoint`) the
    checkpoint from the hub (`hub_file`), the aux models from GitHub (`utils_files`), each fetched once and
    checked."""
    if name not in RELEASES:
        raise ValueError(f"unknown StyleTTS 2 release {name!r}; known: {sorted(RELEASES)}")
    release = RELEASES[name]
    return ReleaseFiles(config=hub_file(release.repo_id, release.config, hub_cache),
                        checkpoint=hub_file(release.repo_id, release.checkpoint, hub_cache) if checkpoint else None,
                        utils_root=utils_files(cache))
