"""Where pre-trained models come from: the Hugging Face Hub, or its local cache when the hub is out of reach.

- `hub_offline`: the user switched the hub off (``HF_HUB_OFFLINE=1``, read when called, not at import);
- `hub_reachable`: whether the hub answers, checked once per process with one HEAD request of a few seconds,
  so that a machine without network does not spend huggingface_hub's retries (~25 s) on every model tried;
- `cached_file`: a repository's file in the local cache (``cache_dir``, default ``$HF_HUB_CACHE``), found
  without any network access;
- `hub_cache_dir`: the cache folder that is searched, for error messages that say where files belong;
- `is_hub_id`: whether a model source names a hub repository rather than a local folder;
- `user_cache_dir`: this project's cache folder, for files that do not come from the hub.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path

import httpx
from huggingface_hub import constants, try_to_load_from_cache
from huggingface_hub.utils import get_session

_TRUE = {"1", "ON", "YES", "TRUE"}


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` is set (in the environment now, or when huggingface_hub was imported)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in _TRUE or bool(constants.HF_HUB_OFFLINE)


@functools.cache
def _endpoint_answers(endpoint: str, timeout: float) -> bool:
    try:
        get_session().head(endpoint, timeout=timeout)
    except (OSError, httpx.HTTPError):
        return False
    return True


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face Hub can be used: not `hub_offline` and its endpoint answers (asked once per
    process; ``timeout`` in seconds)."""
    return not hub_offline() and _endpoint_answers(constants.ENDPOINT, timeout)


def hub_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """``cache_dir``, or the Hugging Face cache in use (``$HF_HUB_CACHE``, default ~/.cache/huggingface/hub)."""
    return Path(cache_dir) if cache_dir is not None else Path(constants.HF_HUB_CACHE)


def cached_file(repo_id: str, filename: str, cache_dir: str | Path | None = None) -> Path | None:
    """The local copy of ``filename`` of model repository ``repo_id`` (its ``main`` revision) in the cache, or
    None when it has not been downloaded. Never touches the network."""
    found = try_to_load_from_cache(repo_id, filename, cache_dir=str(hub_cache_dir(cache_dir)))
    return Path(found) if isinstance(found, str) else None


def user_cache_dir() -> Path:
    """This project's cache folder: ``$TTS_BPEFT_CACHE``, else ``$XDG_CACHE_HOME/tts_bpeft``, else
    ``~/.cache/tts_bpeft``; never inside the repository."""
    if os.environ.get("TTS_BPEFT_CACHE"):
        return Path(os.environ["TTS_BPEFT_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "tts_bpeft"


def is_hub_id(source: str | Path) -> bool:
    """Whether ``source`` names a hub repository (``org/name``, a string that is not an existing path)."""
    return (not isinstance(source, Path) and not Path(source).expanduser().exists()
            and re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", source) is not None)
