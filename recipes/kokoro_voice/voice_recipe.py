"""The steps of the Kokoro voice recipe (the scripts next to this file are their command lines).

``prepare``: read and check the recordings (a folder or a VCTK speaker), hold some out, choose the initial
voice (given, or the nearest by objective), measure and cache every training recording's targets, and write
``prepared.json``. ``estimate``: the data-free Monte-Carlo Fisher of the model's own outputs (built-in voices
speaking built-in sentences) for the prior. ``finetune``: LoRA + the voice shift with the prior (and optional
self-replay) into a run folder (`tts_bpeft.runs`). ``speak``: texts in the new (or a built-in) voice.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from tts_bpeft.family import DataOptions, TTSModel, estimate_pretraining_curvature, family
from tts_bpeft.io import save_json
from tts_bpeft.kokoro.comparison import proxy_recordings
from tts_bpeft.kokoro.examples import nearest_voice, recording_examples, replay_examples
from tts_bpeft.kokoro.family import KokoroFamily
from tts_bpeft.kokoro.finetune import Replay, VoiceTraining, finetune_voice
from tts_bpeft.kokoro.synthesis import synthesize, write_waves
from tts_bpeft.kokoro.voice_loss import VoiceObjective
from tts_bpeft.kokoro.voices import load_voicepack
from tts_bpeft.prior import check_strengths, load_prior
from tts_bpeft.runs import load_run, run_lock, write_run
from tts_bpeft.speech_data.recordings import read_recordings, read_vctk_speaker
from tts_bpeft.speech_data.records import Utterance
from tts_bpeft.speech_data.selection import split_per_speaker
from tts_bpeft.speech_data.sentences import sentence

PREPARED = "prepared.json"
PATHS = ("model.config", "model.checkpoint", "data.recordings", "data.vctk_root", "prior.curvature", "work_dir")
REPLAY_SENTENCES_FROM = 200
"""Replay sentences are the built-in ones from this index on; the curvature's come from 0 on."""


def absolute(settings: Mapping[str, Any], keys=PATHS, base: str | os.PathLike | None = None) -> dict[str, Any]:
    """`settings` with the given dotted path keys made absolute against `base` (default: the working folder),
    and the ``model.voicepacks`` files too, so that a run folder's ``run.json`` works from anywhere."""
    base = Path(base or os.getcwd())
    out = dict(settings)
    out["model"] = dict(out.get("model") or {})
    packs = out["model"].get("voicepacks") or {}
    out["model"]["voicepacks"] = {k: str((base / v).resolve()) for k, v in packs.items()}
    for key in keys:
        *parents, last = key.split(".")
        node = out
        for part in parents:
            node[part] = dict(node.get(part) or {})
            node = node[part]
        if isinstance(node.get(last), str) and node[last]:
            node[last] = str((base / Path(node[last]).expanduser()).resolve())
    return out


def _recordings(data: Mapping[str, Any]):
    if data.get("recordings"):
        return read_recordings(data["recordings"], strict=bool(data.get("strict")))
    if data.get("vctk_root") and data.get("speaker"):
        return read_vctk_speaker(data["vctk_root"], data["speaker"], data.get("mic", "mic1"),
                                 strict=bool(data.get("strict")))
    raise ValueError("no recordings: set data.recordings=<folder of wav + txt pairs>, or data.vctk_root=<VCTK "
                     "folder> and data.speaker=<id>")


def objective_of(settings: Mapping[str, Any]) -> VoiceObjective:
    spec = settings["objective"]
    return VoiceObjective(tuple(spec["terms"]), dict(spec.get("weights") or {}), int(spec["crop_frames"]))


def build(settings: Mapping[str, Any]) -> tuple[KokoroFamily, TTSModel]:
    kokoro = family("kokoro")
    return kokoro, kokoro.build(settings["model"], settings.get("device", "cpu"), int(settings.get("seed", 0)))


def prepare(settings: Mapping[str, Any], work_dir: Path) -> dict[str, Any]:
    """Recordings checked and split, the initial voice, targets cached under ``work_dir/targets``;
    writes and returns ``prepared.json``."""
    data = settings["data"]
    found = _recordings(data)
    if found.report.skipped:
        print(f"skipped {len(found.report.skipped)} recording(s):\n{found.report.summary()}")
    splits = split_per_speaker(found.utterances, test=int(data.get("test_utterances") or 0), seed=settings["seed"])
    train = sorted(splits.train, key=lambda u: u.utterance_id)[:data.get("train_utterances") or None]
    if not train:
        raise ValueError(f"{found.speaker}: all {len(found.utterances)} usable recordings were held out "
                         f"(data.test_utterances={data.get('test_utterances')}); lower it or add recordings")
    kokoro, model = build(settings)
    cache = work_dir / "targets"
    language, seed = data.get("language", "en-us"), int(settings["seed"])
    scores = {}
    initial = settings.get("initial_voice")
    if not initial:
        candidates = settings.get("candidate_voices") or kokoro.voices(model)
        packs = {name: kokoro.voicepack(model, name) for name in candidates}
        initial, scores = nearest_voice(model.net, packs, train, cache, objective_of(settings),
                                        int(settings.get("nearest_count", 3)), language, seed)
    pack = kokoro.voicepack(model, initial)
    examples = recording_examples(model.net, train, pack, initial, cache, language, seed)
    prepared = {"speaker": found.speaker, "initial_voice": initial, "nearest_scores": scores,
                "train": [{"path": u.path, "text": u.text} for u in train],
                "test": [{"path": u.path, "text": u.text} for u in sorted(splits.test, key=lambda u: u.utterance_id)],
                "train_seconds": sum(len(e.audio) for e in examples) / 24000,
                "skipped": len(found.report.skipped)}
    save_json(prepared, work_dir / PREPARED)
    return prepared


def read_prepared(work_dir: Path) -> dict[str, Any]:
    import json

    path = work_dir / PREPARED
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; run prepare.py with the same work_dir first")
    return json.loads(path.read_text(encoding="utf-8"))


def curvature_file(settings: Mapping[str, Any]) -> Path:
    return Path(settings["work_dir"]) / f"curvature_{settings['curvature']['method']}.safetensors"


def estimate(settings: Mapping[str, Any]) -> Path:
    """The Fisher for the prior, saved as ``curvature_<method>``. ``curvature.fisher``: ``empirical`` (the
    fine-tuning objective's empirical Fisher on other speakers' recordings: the ``curvature.proxies`` folders,
    else flite voices reading ``curvature.proxy_sentences`` sentences; each speaker aligned to its nearest
    built-in voice) or ``data-free`` (the Monte-Carlo Fisher of the model's own outputs for the built-in voices
    speaking ``curvature.sentences`` sentences). docs/kokoro.md, "Which Fisher", has the measured comparison."""
    kokoro, model = build(settings)
    spec, lora = settings["curvature"], settings["lora"]
    kokoro.add_preset(model, lora["preset"], r=lora["r"], alpha=lora["alpha"], extra=lora.get("extra") or [],
                      exclude=lora.get("exclude") or [])
    fisher = spec.get("fisher", "empirical")
    if fisher == "empirical":
        work_dir, count = Path(settings["work_dir"]), int(spec["proxy_sentences"])
        folders = spec.get("proxies") or list(proxy_recordings(work_dir / "proxies", count).values())
        utterances = [u for folder in folders for u in read_recordings(folder).utterances[:count]]
        model = replace(model, settings={**model.settings, "targets_cache": str(work_dir / "targets" / "proxies")})
    elif fisher == "data-free":
        voices = spec.get("voices") or kokoro.voices(model)
        utterances = [Utterance("", voice, sentence(i)) for voice in voices for i in range(int(spec["sentences"]))]
    else:
        raise ValueError(f"curvature.fisher={fisher!r}: empirical or data-free")
    estimate = estimate_pretraining_curvature(kokoro, model, utterances, method=spec["method"],
                                              fisher="empirical" if fisher == "empirical" else "mc",
                                              options=DataOptions(max_frames=spec.get("max_frames")),
                                              seed=int(settings["seed"]), progress=settings.get("progress", True))
    return estimate.save(curvature_file(settings))


def finetune(settings: Mapping[str, Any], out_dir: Path) -> dict[str, Any]:
    """Fine-tune the prepared voice into the run folder `out_dir` (resumed when rerun)."""
    prior_spec = settings["prior"]
    if prior_spec["kind"] != "none":
        check_strengths(prior_spec["lam"], prior_spec.get("damping") or 0.0, prior_spec.get("mu") or 0.0,
                        prior_spec.get("lam_per_layer"))
    prepared = read_prepared(Path(settings["work_dir"]))
    with run_lock(out_dir):
        write_run(out_dir, settings, "kokoro")
        kokoro, model = build(settings)
        lora = settings["lora"]
        kokoro.add_preset(model, lora["preset"], r=lora["r"], alpha=lora["alpha"], dropout=lora.get("dropout", 0.0),
                          extra=lora.get("extra") or [], exclude=lora.get("exclude") or [])
        options = {k: prior_spec[k] for k in ("lam", "curvature", "lam_per_layer", "scaling", "damping", "mix", "mu")
                   if prior_spec.get(k) is not None}
        prior = load_prior(model.net, prior_spec["kind"], **options)
        initial, data = prepared["initial_voice"], settings["data"]
        language, seed = data.get("language", "en-us"), int(settings["seed"])
        pack = kokoro.voicepack(model, initial)
        train = [Utterance(t["path"], prepared["speaker"], t["text"]) for t in prepared["train"]]
        examples = recording_examples(model.net, train, pack, initial, Path(settings["work_dir"]) / "targets",
                                      language, seed, settings.get("progress", True))
        replay = None
        spec = settings["replay"]
        if spec["fraction"]:
            voices = spec.get("voices") or kokoro.voices(model)
            records = [Utterance("", voice, sentence(REPLAY_SENTENCES_FROM + i)) for voice in voices
                       for i in range(int(spec["sentences"]))]
            packs = {voice: kokoro.voicepack(model, voice) for voice in voices}
            replay = Replay(replay_examples(model.net, packs, records, language, seed,
                                            settings.get("progress", True)), float(spec["fraction"]))
        t = settings["train"]
        training = VoiceTraining(steps=int(t["steps"]), batch_size=int(t["batch_size"]), lr=float(t["lr"]),
                                 style_lr=float(t["style_lr"]), weight_decay=float(t["weight_decay"]),
                                 max_grad_norm=t.get("max_grad_norm"), seed=seed,
                                 checkpoint_every=int(settings.get("checkpoint_every", 50)),
                                 progress=bool(settings.get("progress", True)))
        result = finetune_voice(model.net, examples, pack, out_dir, training, objective_of(settings), prior, replay,
                                config=model.config, export=bool(settings.get("export", True)),
                                base_model=str(model.settings.get("checkpoint") or f"kokoro ({model.settings})"))
        summary = {**result.summary, "initial_voice": initial, "speaker": prepared["speaker"]}
        save_json(summary, out_dir / "summary.json")
        return summary


def speak(settings: Mapping[str, Any], texts: list[str]) -> list[Path]:
    """Each text in the run's new voice (or ``settings["voice"]``), written as ``<out_dir>/0000.wav`` ..."""
    run_dir = Path(settings["run"])
    model, _ = load_run(run_dir, settings.get("device", "cpu"))
    if settings.get("voice"):
        pack = family("kokoro").voicepack(model, settings["voice"])
    else:
        pack = load_voicepack(run_dir / "voice.pt")
    with torch.no_grad():
        waves = synthesize(model.net, texts, pack, float(settings.get("speed", 1.0)), int(settings.get("seed", 0)),
                           settings.get("language", "en-us"))
    out = run_dir / settings.get("out_dir", "synthesized")
    return write_waves(waves, [out / f"{i:04d}.wav" for i in range(len(waves))])
