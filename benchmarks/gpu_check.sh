#!/usr/bin/env bash
# The GPU check, prepared for the day a GPU is at hand: full-size curvature estimation and fine-tuning steps
# (plain LoRA, L2-SP, EWC, KFAC, EKFAC side by side, bf16 autocast) on StyleTTS 2 (LibriTTS config) and
# Kokoro-82M, design preset; prints times and ratios (benchmarks/fullscale_speed.py) and writes JSON to $OUT.
#
#   benchmarks/gpu_check.sh                              # cuda, 50 steps per variant, both models
#   benchmarks/gpu_check.sh --device cpu --steps 2 --tiny   # smoke run of the script's code paths on a CPU
#
# Options: --device DEV (cuda), --steps N (50), --preset P (design), --tiny (StyleTTS 2's tiny build only).
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=cuda STEPS=50 PRESET=design TINY=""
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --steps) STEPS="$2"; shift 2 ;;
    --preset) PRESET="$2"; shift 2 ;;
    --tiny) TINY="--tiny"; shift ;;
    *) echo "unknown option $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
OUT="${OUT:-outputs/gpu_check}"
mkdir -p "$OUT"
PY="${PYTHON:-python}"
AMP=""
[ "$DEVICE" != "cpu" ] && AMP="--amp"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), \
torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
MODELS="styletts2 kokoro"
[ -n "$TINY" ] && MODELS="styletts2"
for MODEL in $MODELS; do
  echo "== $MODEL, preset $PRESET, $DEVICE, $STEPS steps per variant"
  "$PY" benchmarks/fullscale_speed.py --model "$MODEL" --preset "$PRESET" --device "$DEVICE" --steps "$STEPS" \
    --utterances 2 --methods kfac ewc ekfac $AMP $TINY --out "$OUT/speed_${MODEL}_${PRESET}.json"
done
