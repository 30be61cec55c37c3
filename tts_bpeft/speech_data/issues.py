"""Bad-input policy: one error type naming the file and the problem, and a report of skipped files.

Every reader and the dataset take ``strict``: with ``strict=True`` the first bad file raises
:class:`BadInputError`; otherwise the file is skipped, logged and recorded in a :class:`SkipReport`,
so a long run never dies on one bad file and still says at the end what it left out.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

UNREADABLE = "unreadable"
EMPTY = "empty"
TOO_SHORT = "too_short"
WRONG_CHANNELS = "wrong_channels"
MISSING_TRANSCRIPT = "missing_transcript"
MISSING_AUDIO = "missing_audio"
UNKNOWN_SPEAKER = "unknown_speaker"


class BadInputError(ValueError):
    """A file that cannot be used, with the file, a reason code and a human-readable detail."""

    def __init__(self, path: str, reason: str, detail: str) -> None:
        super().__init__(f"{path}: {reason}: {detail}")
        self.path = str(path)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Skipped:
    """One skipped file (or speaker) and why."""

    path: str
    reason: str
    detail: str


@dataclass
class SkipReport:
    """Files skipped under the default (non-strict) policy, and notes on fallbacks that were taken."""

    skipped: list[Skipped] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, error: BadInputError) -> None:
        self.skipped.append(Skipped(error.path, error.reason, error.detail))
        logger.warning("skipped %s", error)

    def note(self, message: str) -> None:
        self.notes.append(message)
        logger.info("%s", message)

    def merge(self, other: SkipReport) -> None:
        self.skipped.extend(other.skipped)
        self.notes.extend(other.notes)

    def counts(self) -> Counter[str]:
        """Number of skipped entries per reason."""
        return Counter(s.reason for s in self.skipped)

    def by_reason(self, reason: str) -> list[str]:
        """Paths skipped for ``reason``, in the order they were met."""
        return [s.path for s in self.skipped if s.reason == reason]

    def __len__(self) -> int:
        return len(self.skipped)

    def summary(self) -> str:
        """A multi-line text: one line per reason with its count, then every skipped path and detail."""
        if not self.skipped and not self.notes:
            return "no files skipped"
        lines = [
            f"{len(self.skipped)} skipped: " + ", ".join(f"{r}={n}" for r, n in sorted(self.counts().items()))
        ]
        lines += [f"  {s.reason}: {s.path} ({s.detail})" for s in self.skipped]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def handle(error: BadInputError, report: SkipReport, strict: bool) -> None:
    """Raise ``error`` when ``strict``; otherwise record it in ``report``."""
    if strict:
        raise error
    report.add(error)
