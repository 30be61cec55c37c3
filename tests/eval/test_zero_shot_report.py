"""Aggregation, Pareto front, Markdown table and result files of the zero-shot evaluation, on hand-made scores."""

from __future__ import annotations

import csv
import json
import math

import pytest

from tts_bpeft.eval.report import (
    RESULT_COLUMNS,
    aggregate,
    markdown_table,
    pareto_front,
    read_rows,
    summarize,
    write_results,
)


def test_pareto_front_on_hand_made_points() -> None:
    points = [
        (0.9, 0.3),  # 0: best target, poor unseen -> front
        (0.5, 0.8),  # 1: best unseen -> front
        (0.7, 0.6),  # 2: front
        (0.6, 0.5),  # 3: dominated by 2
        (0.7, 0.6),  # 4: equal to 2 -> also front
        (0.7, 0.55),  # 5: dominated by 2 (equal x, lower y)
        (math.nan, 0.99),  # 6: NaN never on the front, and does not dominate
    ]
    assert pareto_front(points) == [1, 2, 4, 0]  # sorted by x, then index
    assert pareto_front([(0.1, 0.1)]) == [0]
    assert pareto_front([]) == []
    # one point better in both dominates everything
    assert pareto_front([(0.2, 0.2), (0.3, 0.3), (0.25, 0.1)]) == [1]


def _score(system, speaker, role, sim, wer=None, words=None, cer=None, chars=None, prior="kfac", lam=1e3):
    return {"system": system, "method": "lora" if system != "pre" else "pretrained", "prior": prior, "lam": lam,
            "speaker": speaker, "accent": {"p248": "Indian", "p225": "English", "p302": "Canadian"}[speaker],
            "gender": "F", "role": role, "SIM": sim, "WER": wer, "words": words, "CER": cer, "chars": chars}


@pytest.fixture()
def scores() -> list[dict]:
    return [
        # system "pre": target p248 two utterances, unseen p225 and p302
        _score("pre", "p248", "target", 0.60, 0.0, 10, 0.0, 40, prior="none", lam=None),
        _score("pre", "p248", "target", 0.70, 0.5, 4, 0.25, 20, prior="none", lam=None),
        _score("pre", "p225", "unseen", 0.80, 0.2, 5, 0.1, 30, prior="none", lam=None),
        _score("pre", "p302", "unseen", 0.90, 0.0, 5, 0.0, 30, prior="none", lam=None),
        # system "ft": better target, worse unseen; one utterance without speech (NaN SIM)
        _score("ft", "p248", "target", 0.85, 0.1, 10, 0.05, 40),
        _score("ft", "p248", "target", math.nan, 1.0, 2, 0.5, 10),
        _score("ft", "p225", "unseen", 0.40, 0.0, 5, 0.0, 30),
        _score("ft", "p302", "unseen", 0.50, 0.4, 5, 0.2, 30),
        # system "bad": dominated by "ft"
        _score("bad", "p248", "target", 0.80, 0.0, 10, 0.0, 40, lam=10.0),
        _score("bad", "p225", "unseen", 0.30, 0.0, 5, 0.0, 30, lam=10.0),
    ]


def test_aggregate_means_and_pooled_error_rates(scores) -> None:
    rows = aggregate(scores)
    assert [(r["system"], r["speaker"]) for r in rows] == [
        ("pre", "p248"), ("pre", "p225"), ("pre", "p302"), ("ft", "p248"), ("ft", "p225"), ("ft", "p302"),
        ("bad", "p248"), ("bad", "p225")]
    pre_target = rows[0]
    assert pre_target["SIM"] == pytest.approx(0.65)
    assert pre_target["WER"] == pytest.approx((0 * 10 + 0.5 * 4) / 14)  # 2 errors / 14 words
    assert pre_target["CER"] == pytest.approx((0.25 * 20) / 60)
    assert (pre_target["n"], pre_target["n_sim"], pre_target["words"], pre_target["chars"]) == (2, 2, 14, 60)
    assert pre_target["role"] == "target" and pre_target["accent"] == "Indian" and pre_target["lam"] is None
    ft_target = rows[3]
    assert ft_target["SIM"] == pytest.approx(0.85)  # the NaN utterance is left out of the mean
    assert (ft_target["n"], ft_target["n_sim"]) == (2, 1)
    assert ft_target["WER"] == pytest.approx((1 + 2) / 12)


def test_aggregate_without_asr_gives_nan_error_rates() -> None:
    rows = aggregate([_score("pre", "p225", "unseen", 0.5), _score("pre", "p225", "unseen", 0.7)])
    assert rows[0]["SIM"] == pytest.approx(0.6)
    assert math.isnan(rows[0]["WER"]) and math.isnan(rows[0]["CER"])
    assert rows[0]["words"] == 0


def test_summary_and_markdown_table(scores) -> None:
    summary = summarize(aggregate(scores))
    by = {s["system"]: s for s in summary}
    assert by["pre"]["target_SIM"] == pytest.approx(0.65)
    assert by["pre"]["unseen_SIM"] == pytest.approx(0.85)  # mean of per-speaker means 0.8 and 0.9
    assert by["pre"]["WER"] == pytest.approx((2 + 1) / 24)  # 3 word errors over all 24 words
    assert by["pre"]["WER_unseen"] == pytest.approx(1 / 10)
    assert by["ft"]["unseen_SIM"] == pytest.approx(0.45)
    assert by["bad"]["unseen_speakers"] == 1 and by["bad"]["n"] == 2
    assert [by[k]["pareto"] for k in ("pre", "ft", "bad")] == [True, True, False]
    assert by["ft"]["target_speaker"] == "p248"

    table = markdown_table(summary, sim_backend="resemblyzer (GE2E)", asr="faster-whisper (tiny.en)")
    lines = table.strip().splitlines()
    assert lines[0] == "Speaker similarity: resemblyzer (GE2E)  "
    assert lines[1] == "ASR: faster-whisper (tiny.en)  "
    header = [c.strip() for c in lines[3].strip("|").split("|")]
    assert header[:6] == ["system", "method", "prior", "lam", "target SIM", "unseen SIM"]
    body = {cells[0]: cells for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines[5:])}
    assert list(body) == ["pre", "ft", "bad"]
    cer = 100 * (0.25 * 20 + 0.1 * 30) / 120  # 8 character errors over 120 characters
    assert body["pre"][3:8] == ["-", "0.650 (p248)", "0.850 (2 spk)", "12.5", f"{cer:.1f}"]
    assert body["ft"][3] == "1000" and body["bad"][3] == "10"
    assert [body[k][-1] for k in ("pre", "ft", "bad")] == ["*", "*", ""]


def test_summary_rejects_unknown_roles() -> None:
    with pytest.raises(ValueError, match="unknown role"):
        summarize([{"system": "a", "speaker": "p1", "role": "seen", "SIM": 0.5, "n": 1}])


def test_write_results_files_round_trip(tmp_path, scores) -> None:
    rows = aggregate(scores)
    summary = summarize(rows)
    meta = {"speaker_encoder": {"backend": "resemblyzer", "model": "GE2E"},
            "asr": {"skipped": "no model here"}}
    files = write_results(tmp_path, rows, summary, meta, scores)
    assert set(files) == {"results_csv", "results_json", "utterances_csv", "summary_md"}
    with open(files["results_csv"], newline="") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == RESULT_COLUMNS
        raw = list(reader)
    assert raw[0]["lam"] == "" and raw[3]["lam"] == "1000.0"
    back = read_rows(files["results_csv"])
    assert len(back) == len(rows)
    for got, want in zip(back, rows, strict=True):
        assert got["SIM"] == pytest.approx(want["SIM"]) and got["n"] == want["n"]
        assert got["speaker"] == want["speaker"] and got["role"] == want["role"]
    data = json.loads(files["results_json"].read_text())
    assert data["speaker_encoder"]["backend"] == "resemblyzer" and data["asr"]["skipped"] == "no model here"
    assert data["summary"][1]["system"] == "ft" and data["summary"][1]["pareto"] is True
    assert data["summary"][0]["lam"] is None
    md = files["summary_md"].read_text()
    assert "ASR: skipped: no model here" in md and "| ft |" in md
    assert len(files["utterances_csv"].read_text().strip().splitlines()) == len(scores) + 1
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporaries


def test_every_result_file_names_the_scorers(tmp_path, scores) -> None:
    rows = aggregate(scores)
    meta = {"speaker_encoder": {"backend": "resemblyzer", "model": "GE2E",
                                "fallback": "SpeechBrain ECAPA unavailable: not cached"},
            "asr": {"backend": "faster-whisper", "model": "Systran/faster-whisper-small.en"}}
    files = write_results(tmp_path, rows, summarize(rows), meta, scores)
    md = files["summary_md"].read_text().splitlines()
    assert md[0] == "Speaker similarity: resemblyzer (GE2E); fallback: SpeechBrain ECAPA unavailable: not cached  "
    assert md[1] == "ASR: faster-whisper (Systran/faster-whisper-small.en)  "
    for name in ("results_csv", "utterances_csv"):
        with open(files[name], newline="") as handle:
            records = list(csv.DictReader(handle))
        assert len(records) == (len(rows) if name == "results_csv" else len(scores))
        assert {r["SIM_encoder"] for r in records} == {"resemblyzer (GE2E)"}
        assert {r["ASR_model"] for r in records} == {"faster-whisper (Systran/faster-whisper-small.en)"}
    data = json.loads(files["results_json"].read_text())
    assert data["speaker_encoder"]["fallback"].startswith("SpeechBrain ECAPA unavailable")
    assert read_rows(files["results_csv"])[0]["SIM_encoder"] == "resemblyzer (GE2E)"
