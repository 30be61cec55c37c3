"""Fixtures for the scorer tests: real synthetic speech from flite and espeak-ng written as wav files, and a
local SpeechBrain speaker-model folder in the layout of speechbrain/spkrec-ecapa-voxceleb with a small
randomly initialised ECAPA-TDNN (its sizes are declared in its hyperparams.yaml)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from hub_cache import hub_cache_with

SENTENCES = {
    "a": "The quick brown fox jumps over the lazy dog.",
    "b": "She sells sea shells by the river every summer morning.",
    "c": "Please call Stella and ask her to bring these things with her from the store.",
}


def _flite(voice: str, text: str, out: Path) -> Path:
    subprocess.run(["flite", "-voice", voice, "-t", text, "-o", str(out)], check=True, capture_output=True)
    return out


def _espeak(voice: str, text: str, out: Path) -> Path:
    subprocess.run(["espeak-ng", "-v", voice, "-w", str(out), text], check=True, capture_output=True)
    return out


@pytest.fixture(scope="session")
def sentences() -> dict[str, str]:
    """The text of the test utterances, by sentence key."""
    return SENTENCES


@pytest.fixture(scope="session")
def speech(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Wav files named ``<voice>_<sentence key>``: flite slt (US female, 16 kHz) and awb (Scottish male),
    espeak-ng en-us+m3 and en+f2 (22.05 kHz), each saying sentences a, b and c."""
    if shutil.which("flite") is None or shutil.which("espeak-ng") is None:
        pytest.skip("flite and espeak-ng synthesize the test speech: apt-get install flite espeak-ng")
    root = tmp_path_factory.mktemp("speech")
    files = {}
    for key, text in SENTENCES.items():
        for voice in ("slt", "awb"):
            files[f"{voice}_{key}"] = _flite(voice, text, root / f"{voice}_{key}.wav")
        for name, voice in (("m3", "en-us+m3"), ("f2", "en+f2")):
            files[f"{name}_{key}"] = _espeak(voice, text, root / f"{name}_{key}.wav")
    return files


N_MELS = 24
LIN_NEURONS = 32
SPEAKERS = ["spk_a", "spk_b", "spk_c"]

HYPERPARAMS = f"""\
# ############################################################################
# Model: ECAPA-TDNN for speaker embeddings (test-sized, random weights)
# Layout and keys follow speechbrain/spkrec-ecapa-voxceleb.
# ############################################################################

# Feature parameters
n_mels: {N_MELS}

# Pretrain folder (HuggingFace)
pretrained_path: speechbrain/spkrec-ecapa-voxceleb

# Output parameters
out_n_neurons: {len(SPEAKERS)}

# Model params
compute_features: !new:speechbrain.lobes.features.Fbank
    n_mels: !ref <n_mels>

mean_var_norm: !new:speechbrain.processing.features.InputNormalization
    norm_type: sentence
    std_norm: False

embedding_model: !new:speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN
    input_size: !ref <n_mels>
    channels: [32, 32, 32, 32, 96]
    kernel_sizes: [5, 3, 3, 3, 1]
    dilations: [1, 2, 3, 4, 1]
    attention_channels: 8
    se_channels: 16
    lin_neurons: {LIN_NEURONS}

classifier: !new:speechbrain.lobes.models.ECAPA_TDNN.Classifier
    input_size: {LIN_NEURONS}
    out_neurons: !ref <out_n_neurons>

mean_var_norm_emb: !new:speechbrain.processing.features.InputNormalization
    norm_type: global
    std_norm: False

modules:
    compute_features: !ref <compute_features>
    mean_var_norm: !ref <mean_var_norm>
    embedding_model: !ref <embedding_model>
    mean_var_norm_emb: !ref <mean_var_norm_emb>
    classifier: !ref <classifier>

label_encoder: !new:speechbrain.dataio.encoder.CategoricalEncoder

pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer
    loadables:
        embedding_model: !ref <embedding_model>
        mean_var_norm_emb: !ref <mean_var_norm_emb>
        classifier: !ref <classifier>
        label_encoder: !ref <label_encoder>
    paths:
        embedding_model: !ref <pretrained_path>/embedding_model.ckpt
        mean_var_norm_emb: !ref <pretrained_path>/mean_var_norm_emb.ckpt
        classifier: !ref <pretrained_path>/classifier.ckpt
        label_encoder: !ref <pretrained_path>/label_encoder.txt
"""


@pytest.fixture(scope="session")
def ecapa_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding hyperparams.yaml, embedding_model.ckpt, classifier.ckpt, mean_var_norm_emb.ckpt and
    label_encoder.txt, as the official model does."""
    from speechbrain.dataio.encoder import CategoricalEncoder
    from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN, Classifier
    from speechbrain.processing.features import InputNormalization

    folder = tmp_path_factory.mktemp("spkrec-ecapa-local")
    (folder / "hyperparams.yaml").write_text(HYPERPARAMS, encoding="utf-8")
    torch.manual_seed(0)
    model = ECAPA_TDNN(
        N_MELS, channels=[32, 32, 32, 32, 96], attention_channels=8, se_channels=16, lin_neurons=LIN_NEURONS
    )
    torch.save(model.state_dict(), folder / "embedding_model.ckpt")
    torch.save(Classifier(LIN_NEURONS, out_neurons=len(SPEAKERS)).state_dict(), folder / "classifier.ckpt")
    norm = InputNormalization(norm_type="global", std_norm=False)
    norm(torch.randn(8, 1, LIN_NEURONS), torch.ones(8))
    norm._save(folder / "mean_var_norm_emb.ckpt")
    labels = CategoricalEncoder()
    labels.update_from_iterable(SPEAKERS)
    labels.save(folder / "label_encoder.txt")
    return folder


@pytest.fixture(scope="session")
def ecapa_hub_cache(tmp_path_factory: pytest.TempPathFactory, ecapa_dir: Path) -> Path:
    """A Hugging Face cache holding `ecapa_dir` as speechbrain/spkrec-ecapa-voxceleb (official
    hyperparams: ``pretrained_path`` points at the hub id)."""
    cache = tmp_path_factory.mktemp("hf-cache")
    hub_cache_with(cache, "speechbrain/spkrec-ecapa-voxceleb", ecapa_dir)
    return cache
