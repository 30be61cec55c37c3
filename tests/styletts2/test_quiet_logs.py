"""Quiet logs: what a recipe process does first (StyleTTS 2 modules, the official STFT loss, phonemizing, LoRA,
the speaker encoder) prints the known third-party warnings without `silence_known_warnings` and none with it,
while the project's own warnings and log records still show."""

import logging
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from tts_bpeft.quiet import KNOWN_LOG_RECORDS, KNOWN_WARNINGS, silence_known_warnings

REPO = Path(__file__).parents[2]
PROJECT_WARNING = "LoRA dropout is not applied inside an LSTM"
PROJECT_LOG = "ignoring unreadable phoneme cache"


def recipe_like_start(cache_dir: Path) -> None:
    """StyleTTS 2's prosody predictor (weight-normed convolutions, one-layer LSTMs with dropout), the official
    STFT loss, LoRA with dropout on its LSTM (a project warning), and phonemizing words espeak joins with a
    corrupt phoneme cache (a project log warning)."""
    from styletts2.losses import MultiResolutionSTFTLoss
    from styletts2.models import ProsodyPredictor

    from tts_bpeft.lora import add_lora
    from tts_bpeft.speech_data.phonemes import Phonemizer

    predictor = ProsodyPredictor(style_dim=8, d_hid=16, nlayers=1, max_dur=5, dropout=0.2)
    MultiResolutionSTFTLoss()
    add_lora(predictor, "lstm", r=2, dropout=0.1)
    cache = cache_dir / "phonemes.json"
    cache.write_text("{not json", encoding="utf-8")
    Phonemizer(cache)(["Of the people, by the people, for the people."])


def _known(pattern: str) -> re.Pattern:
    return re.compile(pattern, re.I)


@pytest.fixture
def restore_log_filters(monkeypatch):
    for record in KNOWN_LOG_RECORDS:
        logger = logging.getLogger(record.logger)
        monkeypatch.setattr(logger, "filters", list(logger.filters))
    monkeypatch.setattr(sys, "warnoptions", [])  # pytest's own -W options must not switch the filters off


def test_known_warnings_go_and_the_projects_own_stay(tmp_path, caplog, restore_log_filters):
    targeted = [k for k in KNOWN_WARNINGS if k.module.startswith("torch")]  # the others come at import time
    assert len(targeted) == 3
    caplog.set_level(logging.INFO)
    with warnings.catch_warnings(record=True) as loud:
        warnings.simplefilter("always")
        recipe_like_start(tmp_path)
    messages = [str(w.message) for w in loud]
    for known in targeted:  # without the filters each known warning is there (so this test can fail)
        assert any(_known(known.message).match(m) for m in messages), known.message
    assert any(m.startswith(PROJECT_WARNING) for m in messages)
    assert any(r.name == "phonemizer" and "words count mismatch" in r.getMessage() for r in caplog.records)

    caplog.clear()
    with warnings.catch_warnings(record=True) as quiet:
        warnings.simplefilter("always")
        silence_known_warnings()
        silence_known_warnings()  # idempotent
        recipe_like_start(tmp_path)
    messages = [str(w.message) for w in quiet]
    assert not [m for m in messages for k in KNOWN_WARNINGS if _known(k.message).match(m)], messages
    assert sum(m.startswith(PROJECT_WARNING) for m in messages) == 1
    assert not [r for r in caplog.records if r.name == "phonemizer"]
    assert {r.levelname for r in caplog.records if PROJECT_LOG in r.getMessage()} == {"WARNING"}
    assert len(logging.getLogger("phonemizer").filters) == 1


def test_user_warning_options_win(restore_log_filters, monkeypatch):
    monkeypatch.setattr(sys, "warnoptions", ["default"])
    with warnings.catch_warnings():
        before = list(warnings.filters)
        silence_known_warnings()
        assert warnings.filters == before


SCRIPT = """
import sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from test_quiet_logs import recipe_like_start
if sys.argv[1] == "quiet":
    from tts_bpeft.quiet import silence_known_warnings
    silence_known_warnings()
import logging
logging.basicConfig(level=logging.INFO)
from tts_bpeft.eval.speaker import load_speaker_encoder
recipe_like_start(Path(sys.argv[2]))
load_speaker_encoder("resemblyzer")
logging.getLogger("faster_whisper").info("Processing audio with duration 00:02.000")
"""


def _run(mode: str, tmp_path: Path) -> str:
    """stderr of the script: "loud" shows every warning once (``-W default``), "quiet" silences the known."""
    folder = tmp_path / mode
    folder.mkdir()
    options = ["-W", "default"] if mode == "loud" else []
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    script = SCRIPT.format(tests=str(Path(__file__).parent))
    done = subprocess.run([sys.executable, *options, "-c", script, mode, str(folder)], capture_output=True,
                          text=True, timeout=600, cwd=REPO, env={**env, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stderr


@pytest.mark.slow  # two fresh processes importing torch, StyleTTS 2 and resemblyzer: ~15 s idle, a minute busy
def test_a_process_prints_no_known_message_and_the_projects_own(tmp_path):
    loud, quiet = _run("loud", tmp_path), _run("quiet", tmp_path)
    made_here = ("phonemizer", "faster_whisper")
    patterns = [k.message for k in KNOWN_WARNINGS] + [r.message for r in KNOWN_LOG_RECORDS if r.logger in made_here]
    for pattern in patterns:  # every warning of the list, and the log lines this path makes
        assert _known(pattern).search(loud), pattern
        assert not _known(pattern).search(quiet), pattern
    assert loud.count(PROJECT_WARNING) == quiet.count(PROJECT_WARNING) == 1
    assert loud.count(PROJECT_LOG) == quiet.count(PROJECT_LOG) >= 1
