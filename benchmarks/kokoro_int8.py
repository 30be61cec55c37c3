"""What the int8 origin of the offline Kokoro-82M weights costs, and how fast the pieces are.

Run: .venv/bin/python benchmarks/kokoro_int8.py [--voice jf_alpha] [--out kokoro_int8.json]

1. Conversion: the four part packages -> fp32 safetensors in a fresh temporary cache (wall time, peak RSS of
   the process so far); then a second load from that cache (wall time).
2. For each of 12 English sentences (Harvard list 1 + two pangram-like ones): the dequantized torch model and
   the int8 onnxruntime model on the same tokens and style row; rounded durations (max difference in frames),
   correlations of PL-BERT projection / duration / F0 / energy features (``tts_bpeft.kokoro.agreement``), RMS
   ratio, synthesis time of each.
3. Whisper tiny.en (``tts_bpeft.eval.asr``) transcribes both models' audio: WER of each.
Prints one table and writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import librosa
import numpy as np
import torch

from tts_bpeft.eval.asr import FasterWhisperAsr, error_rates
from tts_bpeft.io import save_json
from tts_bpeft.kokoro.agreement import OnnxKokoro, compare, torch_features
from tts_bpeft.kokoro.offline import load_offline_kokoro, offline_voices, onnx_bytes
from tts_bpeft.kokoro.text import english_phonemes, token_ids
from tts_bpeft.kokoro.voices import style_row

SENTENCES = (
    "The birch canoe slid on the smooth planks.",
    "Glue the sheet to the dark blue background.",
    "It's easy to tell the depth of a well.",
    "These days a chicken leg is a rare dish.",
    "Rice is often served in round bowls.",
    "The juice of lemons makes fine punch.",
    "The box was thrown beside the parked truck.",
    "The hogs were fed chopped corn and garbage.",
    "Four hours of steady work faced us.",
    "A large size in stockings is hard to sell.",
    "The quick brown fox jumps over the lazy dog.",
    "Please call Stella and ask her to bring these things with her from the store.",
)


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--voice", default="jf_alpha")
    parser.add_argument("--sentences", type=int, default=len(SENTENCES))
    parser.add_argument("--out", type=Path, default=Path("kokoro_int8.json"),
                        help="where the JSON goes (default: ./kokoro_int8.json)")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)

    with tempfile.TemporaryDirectory() as cache:
        rss_before = peak_rss_gb()
        start = time.perf_counter()
        load_offline_kokoro(Path(cache))
        convert_s, convert_rss = time.perf_counter() - start, peak_rss_gb()
        start = time.perf_counter()
        model = load_offline_kokoro(Path(cache))
        cached_s = time.perf_counter() - start
    print(f"conversion {convert_s:.1f} s (peak RSS {rss_before:.2f} -> {convert_rss:.2f} GB); "
          f"load from cache {cached_s:.1f} s", flush=True)

    reference = OnnxKokoro(onnx_bytes(), threads=2)
    pack = offline_voices()[args.voice]
    texts = list(SENTENCES[: args.sentences])
    rows, torch_waves, onnx_waves = [], [], []
    for text, phonemes in zip(texts, english_phonemes(texts), strict=True):
        ids, style = token_ids(phonemes, model.vocab, text), style_row(pack, len(phonemes))
        start = time.perf_counter()
        with torch.no_grad():
            ours = torch_features(model, ids, style)
        torch_s = time.perf_counter() - start
        start = time.perf_counter()
        theirs = reference(ids, style)
        onnx_s = time.perf_counter() - start
        row = {"text": text, "seconds_audio": len(ours.wave) / 24_000, "torch_s": torch_s, "onnx_s": onnx_s,
               **compare(ours, theirs)}
        rows.append(row)
        torch_waves.append(ours.wave)
        onnx_waves.append(theirs.wave)
        print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v!r}" for k, v in row.items()),
              flush=True)

    asr = FasterWhisperAsr()
    hyps = {name: asr.transcribe([librosa.resample(w, orig_sr=24_000, target_sr=16_000) for w in waves])
            for name, waves in (("torch", torch_waves), ("onnx", onnx_waves))}
    wer = {name: error_rates(texts, h).wer for name, h in hyps.items()}
    summary = {
        "voice": args.voice, "sentences": len(texts), "conversion_s": convert_s, "conversion_peak_rss_gb": convert_rss,
        "load_from_cache_s": cached_s, "wer_torch": wer["torch"], "wer_onnx": wer["onnx"],
        "max_duration_diff_frames": max(r["max_duration_diff"] for r in rows),
        **{f"min_{k}": min(r[k] for r in rows) for k in rows[0] if k.startswith("corr_")},
        "mean_rms_ratio": float(np.mean([r["rms_ratio"] for r in rows])),
        "torch_s_per_sentence": float(np.mean([r["torch_s"] for r in rows])),
        "onnx_s_per_sentence": float(np.mean([r["onnx_s"] for r in rows])),
        "mean_seconds_audio": float(np.mean([r["seconds_audio"] for r in rows])),
        "transcripts": hyps, "rows": rows,
    }
    print(json.dumps({k: v for k, v in summary.items() if k not in ("rows", "transcripts")}, indent=1))
    for name, h in hyps.items():
        for ref, hyp in zip(texts, h, strict=True):
            if error_rates([ref], [hyp]).wer > 0:
                print(f"{name}: {ref!r} -> {hyp!r}")
    save_json(summary, args.out)
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
