"""A Hugging Face cache written by hand, in the layout huggingface_hub itself writes."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path


def hub_cache_with(cache: Path, repo_id: str, folder: Path, revision: str = "ab" * 20) -> Path:
    """``cache`` laid out as huggingface_hub writes it, holding the files of ``folder`` (and its subfolders) as
    ``repo_id``'s ``main`` revision: ``models--<org>--<name>/blobs/<sha256>``, ``snapshots/<revision>/<path>``
    symlinks to the blobs, and ``refs/main``. Returns the snapshot folder."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / revision
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        blob = repo / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
        shutil.copyfile(file, blob)
        link = snapshot / file.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    return snapshot
