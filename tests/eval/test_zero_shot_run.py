"""A zero-shot evaluation over two small systems on a generated VCTK corpus, end to end through the library.

The two systems are stand-ins that speak with real synthesizers (flite / espeak-ng, the voices the corpus
was generated with): "pretrained" clones every reference speaker's voice; the run "lora_kfac_lam1000.0"
has collapsed onto the target speaker and speaks every text in the target's voice. So the target SIM of
both is high, the unseen-speaker SIM of the collapsed system is much lower, and the cloner dominates.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import librosa
import numpy as np
import pytest

from tts_bpeft.eval.asr import AsrBackend, load_asr
from tts_bpeft.eval.report import RESULT_COLUMNS, read_rows
from tts_bpeft.eval.speaker import cosine_similarity, embed_audio, load_speaker_encoder
from tts_bpeft.eval.speaker_sets import TargetSplit, build_test_sets
from tts_bpeft.eval.synthesis import job_seed, plan_jobs
from tts_bpeft.eval.systems import SystemSpec, collect_systems, pretrained_system, target_speaker
from tts_bpeft.eval.zero_shot import evaluate_zero_shot
from tts_bpeft.family import Voice
from tts_bpeft.runs import find_run_dirs
from tts_bpeft.speech_data.synthesizers import available_voices
from tts_bpeft.speech_data.synthetic import make_vctk

pytestmark = pytest.mark.usefixtures("one_thread")

TARGET = "p248"
UNSEEN = ("p225", "p302")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory):
    """p248 (flite slt), p225 (espeak-ng en-us+f1), p302 (flite awb), 4 utterances each, VCTK layout."""
    root = tmp_path_factory.mktemp("zs_vctk") / "VCTK-Corpus-0.92"
    return make_vctk(root, speakers=(TARGET, *UNSEEN), utterances_per_speaker=4)



@pytest.fixture(scope="module")
def encoder():
    return load_speaker_encoder("resemblyzer")


class VoiceCopy:
    """Fake zero-shot TTS: speaks the text with the voice that spoke the reference's speaker in the generated
    corpus (or always with ``fixed``'s voice), at 16 kHz, with a little seeded noise."""

    sample_rate = 16000

    def __init__(self, speaker_voices: dict[str, str], fixed: str | None = None) -> None:
        by_name = {str(v): v for v in available_voices()}
        self.voices = {spk: by_name[name] for spk, name in speaker_voices.items()}
        self.fixed = fixed

    def __call__(self, text: str, voice: Voice, seed: int) -> np.ndarray:
        speaker = self.fixed or voice.reference.parent.name
        wave, rate = self.voices[speaker].synthesize(text)
        wave = librosa.resample(wave, orig_sr=rate, target_sr=self.sample_rate)
        return 0.8 * wave / np.abs(wave).max() + 1e-3 * np.random.default_rng(seed).standard_normal(wave.shape)


class CountingAsr(AsrBackend):
    """Counts the waveforms sent to a real ASR backend."""

    def __init__(self, inner: AsrBackend) -> None:
        self.inner, self.name, self.calls = inner, inner.name, 0

    @property
    def model_id(self) -> str:
        return self.inner.model_id

    def transcribe(self, wavs):
        self.calls += len(wavs)
        return self.inner.transcribe(wavs)


def _write_run(folder: Path, vctk_root: Path, kind: str, lam: float, finished: bool = True) -> Path:
    folder.mkdir(parents=True)
    settings = {"system": "lora", "speaker": TARGET, "seed": 0, "model": {"config": "tiny", "checkpoint": None},
                "prior": {"kind": kind, "lam": lam},
                "data": {"vctk_root": str(vctk_root), "mic": "mic1", "val_utterances": 1, "test_utterances": 2}}
    (folder / "run.json").write_text(json.dumps(settings))
    if finished:
        (folder / "adapter").mkdir()
        (folder / "adapter" / "adapter_config.json").write_text("{}")
        rows = ["step,epoch,seconds,loss,mel,prior"] + [f"{s},0,{s},{3 / s},{2 / s},{0.1 * s}" for s in range(1, 9)]
        (folder / "log.csv").write_text("\n".join(rows) + "\n")
    return folder


@pytest.fixture(scope="module")
def multirun(corpus, tmp_path_factory) -> Path:
    """A hydra-multirun-like folder: one finished KFAC run, one unfinished EWC run."""
    root = tmp_path_factory.mktemp("zs_multirun") / "multirun" / "finetune" / TARGET
    _write_run(root / "lora_kfac_lam1000.0", corpus.root, "kfac", 1000.0)
    _write_run(root / "lora_ewc_lam1000.0", corpus.root, "ewc", 1000.0, finished=False)
    return root


def test_collect_systems_expands_multirun(multirun, tmp_path) -> None:
    messages: list[str] = []
    systems = collect_systems([multirun, multirun / "lora_kfac_lam1000.0"], pretrained={"config": "tiny"},
                              log=messages.append)
    assert [s.name for s in systems] == ["pretrained", "lora_kfac_lam1000.0"]  # named twice, evaluated once
    run = systems[1]
    assert (run.system, run.prior, run.lam, run.speaker) == ("lora", "kfac", 1000.0, TARGET)
    assert systems[0].lam is None and systems[0].system == "pretrained"
    assert len(messages) == 1 and "lora_ewc_lam1000.0" in messages[0] and "not finished" in messages[0]
    assert target_speaker(systems) == TARGET
    with pytest.raises(ValueError, match="fine-tuned p248"):
        target_speaker(systems, "p225")
    split = TargetSplit.from_runs(systems, limit=None)
    assert (split.test_utterances, split.val_utterances, split.mic) == (2, 1, "mic1")

    # two runs with the same folder name get their parent folder in the name
    a = _write_run(tmp_path / "sweep_a" / "run", multirun, "l2sp", 1e-3)
    b = _write_run(tmp_path / "sweep_b" / "run", multirun, "l2sp", 1e-4)
    assert find_run_dirs(tmp_path) == [a, b]
    assert [s.name for s in collect_systems([tmp_path])] == ["sweep_a/run", "sweep_b/run"]
    with pytest.raises(FileNotFoundError):
        find_run_dirs(tmp_path / "sweep_a" / "missing")
    with pytest.raises(ValueError, match="no system"):
        collect_systems([multirun / "lora_ewc_lam1000.0"], log=messages.append)


def test_test_sets_hold_out_what_finetuning_held_out(corpus) -> None:
    from tts_bpeft.styletts2.finetune import target_splits

    split = TargetSplit(test_utterances=2, val_utterances=1, seed=3)
    sets = build_test_sets(corpus.root, TARGET, [TARGET, *UNSEEN, "p999"], unseen_utterances=2, split=split,
                           seed=3, log=lambda m: None)
    assert [(t.speaker, t.role) for t in sets] == [(TARGET, "target"), ("p225", "unseen"), ("p302", "unseen")]
    assert [t.accent for t in sets] == ["Indian", "English", "Canadian"]
    train, val, test = target_splits({"vctk_root": corpus.root, "val_utterances": 1, "test_utterances": 2},
                                     TARGET, None, seed=3)
    assert [u.path for u in sets[0].utterances] == [Path(u.path) for u in test]
    assert [u.text for u in sets[0].utterances] == [u.text for u in test]
    assert sets[0].reference == Path(val[0].path)
    for t in sets:
        assert len(t.utterances) == 2
        assert t.reference not in {u.path for u in t.utterances}
        assert t.reference.parent.name == t.speaker and all(u.path.parent.name == t.speaker for u in t.utterances)
        for u in t.utterances:  # the text is the corpus transcript of that recording
            assert (corpus.root / "txt" / t.speaker / f"{u.utterance_id[:-5]}.txt").read_text().strip() == u.text
    limited = build_test_sets(corpus.root, TARGET, [], split=TargetSplit(2, 1, 3, limit=1))
    assert limited[0].utterances == sets[0].utterances[:1]


def test_job_keys(corpus, tmp_path) -> None:
    sets = build_test_sets(corpus.root, TARGET, UNSEEN, 2, TargetSplit(2, 1))
    a, b = pretrained_system({"config": "tiny"}), pretrained_system({"config": "tiny"}, name="other", seed=1)
    jobs = plan_jobs([a, b], sets, tmp_path, {"alpha": 0.3})
    assert len(jobs) == 2 * 3 * 2
    first, second = jobs[:6], jobs[6:]
    assert [j.seed for j in first] == [j.seed for j in second]  # same sampling seed for every system
    assert first[0].seed == job_seed(0, TARGET, first[0].utterance_id)
    assert len({j.output for j in jobs}) == len(jobs)
    assert first[0].output.parent == tmp_path / "pretrained" / TARGET
    assert [j.output for j in plan_jobs([a], sets, tmp_path, {"alpha": 0.3})] == [j.output for j in first]
    assert not {j.output for j in plan_jobs([a], sets, tmp_path, {"alpha": 0.5})} & {j.output for j in first}
    assert not {j.output for j in plan_jobs([a], sets, tmp_path, {"alpha": 0.3}, seed=1)} & {j.output for j in first}


def test_evaluate_two_systems(corpus, multirun, encoder, tmp_path) -> None:
    inner, why = load_asr("faster-whisper", cpu_threads=1)
    if inner is None:
        pytest.skip(why)
    asr = CountingAsr(inner)
    loads: list[str] = []
    cloner, collapsed = VoiceCopy(corpus.voices), VoiceCopy(corpus.voices, fixed=TARGET)

    def loader(system: SystemSpec):
        loads.append(system.name)
        return cloner if system.system == "pretrained" else collapsed

    systems = collect_systems([multirun], pretrained={"config": "tiny"}, log=lambda m: None)
    # one sentence per speaker keeps the test fast: 6 syntheses, 9 embeddings, 6 transcripts
    split = TargetSplit.from_runs(systems, limit=1)
    test_sets = build_test_sets(corpus.root, target_speaker(systems), UNSEEN, 1, split)
    out = tmp_path / "eval"
    messages: list[str] = []
    result = evaluate_zero_shot(systems, test_sets, out, loader, encoder, asr, inference={"alpha": 0.3},
                                progress=False, log=messages.append)
    assert loads == ["pretrained", "lora_kfac_lam1000.0"]
    assert result.synthesis == {"pretrained": {"written": 3, "reused": 0},
                                "lora_kfac_lam1000.0": {"written": 3, "reused": 0}}
    assert asr.calls == 6
    assert any(m.startswith("speaker similarity backend: resemblyzer") for m in messages)

    # results.csv: the columns, one row per (system, speaker), values consistent with the utterance scores
    with open(out / "results.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == RESULT_COLUMNS
    rows = read_rows(out / "results.csv")
    assert [(r["system"], r["speaker"], r["role"]) for r in rows] == [
        (s, spk, role) for s in ("pretrained", "lora_kfac_lam1000.0")
        for spk, role in ((TARGET, "target"), ("p225", "unseen"), ("p302", "unseen"))]
    by = {(r["system"], r["speaker"]): r for r in rows}
    assert all(r["n"] == 1 and r["n_sim"] == 1 for r in rows)
    assert by[("pretrained", "p225")]["accent"] == "English" and by[("pretrained", TARGET)]["lam"] is None
    assert by[("lora_kfac_lam1000.0", "p302")]["prior"] == "kfac"
    assert by[("lora_kfac_lam1000.0", "p302")]["lam"] == 1000.0
    for row in rows:
        sims = [u["SIM"] for u in result.utterances if (u["system"], u["speaker"]) == (row["system"], row["speaker"])]
        assert row["SIM"] == pytest.approx(np.mean(sims), abs=1e-9)

    # SIM recomputed independently for one utterance: mean cosine to the speaker's real test recordings
    utt = next(u for u in result.utterances if u["system"] == "lora_kfac_lam1000.0" and u["speaker"] == "p302")
    real = [u.path for t in test_sets if t.speaker == "p302" for u in t.utterances]
    embs = embed_audio(encoder, [utt["wav"], *real], progress=False)
    assert utt["SIM"] == pytest.approx(float(cosine_similarity(embs[:1], embs[1:]).mean()), abs=1e-5)

    # values: the cloner keeps every voice; the collapsed system keeps only the target's
    for speaker in (TARGET, *UNSEEN):
        assert by[("pretrained", speaker)]["SIM"] > 0.75, speaker
    assert by[("lora_kfac_lam1000.0", TARGET)]["SIM"] > 0.75
    summary = {s["system"]: s for s in result.summary}
    clone, coll = summary["pretrained"], summary["lora_kfac_lam1000.0"]
    assert coll["unseen_SIM"] < clone["unseen_SIM"] - 0.15
    assert coll["target_SIM"] == pytest.approx(clone["target_SIM"], abs=0.03)  # same voice, same texts
    assert coll["unseen_SIM"] == pytest.approx(np.mean([by[("lora_kfac_lam1000.0", s)]["SIM"] for s in UNSEEN]))
    # Whisper hears flite voices (p248 slt, p302 awb) almost perfectly; espeak-ng (p225) is not checked
    for speaker in (TARGET, "p302"):
        assert by[("pretrained", speaker)]["WER"] <= 0.25, speaker
    assert all(r["words"] > 0 for r in rows)

    table = (out / "summary.md").read_text()
    assert "Speaker similarity: resemblyzer" in table and "ASR: faster-whisper" in table
    line = next(li for li in table.splitlines() if li.startswith("| pretrained |"))
    assert f"{clone['target_SIM']:.3f} (p248)" in line and f"{clone['unseen_SIM']:.3f} (2 spk)" in line
    assert line.rstrip().endswith("| * |")  # the cloner is on the Pareto front
    assert any(m == table for m in messages)  # printed too
    data = json.loads((out / "results.json").read_text())
    assert data["speaker_encoder"]["backend"] == "resemblyzer" and data["asr"]["backend"] == "faster-whisper"
    assert [s["system"] for s in data["summary"]] == ["pretrained", "lora_kfac_lam1000.0"]
    for name in ("tradeoff.png", "speaker_similarity.png", "training_curves.png"):
        assert (out / name).read_bytes()[:8] == PNG_SIGNATURE
    wav = result.utterances[0]["wav"]
    assert Path(wav).is_file() and Path(wav).is_relative_to(out / "wavs" / "pretrained")

    # a rerun with the same inputs synthesizes and transcribes nothing and gives the same results
    before = (out / "results.csv").read_text()
    embeddings = {p: p.stat().st_mtime_ns for p in (out / "cache" / "embeddings").rglob("*.npy")}
    assert len(embeddings) == 3 + 6  # the real recordings of 3 speakers, 6 synthesized wavs
    assert len(list((out / "cache" / "transcripts").rglob("*.json"))) == 6
    again = evaluate_zero_shot(systems, test_sets, out, loader, encoder, asr, inference={"alpha": 0.3},
                               progress=False, log=messages.append)
    assert loads == ["pretrained", "lora_kfac_lam1000.0"] and asr.calls == 6
    assert again.synthesis["pretrained"] == {"written": 0, "reused": 3}
    assert (out / "results.csv").read_text() == before
    assert {p: p.stat().st_mtime_ns for p in (out / "cache" / "embeddings").rglob("*.npy")} == embeddings


def test_evaluate_without_asr(corpus, encoder, tmp_path) -> None:
    systems = [pretrained_system({"config": "tiny"})]
    test_sets = build_test_sets(corpus.root, None, ["p302"], 1)
    result = evaluate_zero_shot(systems, test_sets, tmp_path, lambda s: VoiceCopy(corpus.voices), encoder,
                                asr=None, asr_skipped="faster-whisper unavailable (test)", sim_refs="same",
                                plots=False, progress=False, log=lambda m: None)
    (row,) = result.rows
    assert row["role"] == "unseen" and row["n"] == 1 and row["SIM"] > 0.75
    assert math.isnan(row["WER"]) and math.isnan(row["CER"])
    assert math.isnan(result.summary[0]["target_SIM"])
    with open(tmp_path / "results.csv", newline="") as handle:
        assert next(csv.DictReader(handle))["WER"] == ""
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["asr"] == {"skipped": "faster-whisper unavailable (test)"} and data["sim_references"] == "same"
    assert "ASR: skipped: faster-whisper unavailable (test)" in (tmp_path / "summary.md").read_text()
    assert not (tmp_path / "tradeoff.png").exists()
    # "same": each utterance is compared with the real recording of its own sentence only
    utt = result.utterances[0]
    real = next(u.path for u in test_sets[0].utterances if u.utterance_id == utt["utterance_id"])
    embs = embed_audio(encoder, [utt["wav"], real], progress=False)
    assert utt["SIM"] == pytest.approx(float(cosine_similarity(embs[:1], embs[1:])[0]), abs=1e-5)
