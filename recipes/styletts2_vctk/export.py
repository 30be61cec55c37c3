"""Export a fine-tuning run as a plain official StyleTTS 2 checkpoint, its adapter merged exactly.

    python export.py outputs/finetune/p248/lora_kfac_lam1000.0_nNone merged.pth

The result loads with the original code's ``load_checkpoint`` and inference (``{'net': {module: state}}``,
``module.`` key prefixes), weight-normed layers included. Works for any run folder of ``finetune.py``.
"""

import argparse
from collections.abc import Sequence

from tts_bpeft.quiet import silence_known_warnings
from tts_bpeft.runs import export_run


def main(argv: Sequence[str] | None = None) -> None:
    silence_known_warnings()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a finetune.py run folder (run.json + adapter/ or trainable.safetensors)")
    parser.add_argument("output", help="the checkpoint to write (.pth), atomically")
    parser.add_argument("--device", default="cpu", help="where the model is rebuilt and merged (default: cpu)")
    args = parser.parse_args(argv)
    path = export_run(args.run, args.output, args.device)
    print(f"exported {args.run} -> {path} ({path.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
