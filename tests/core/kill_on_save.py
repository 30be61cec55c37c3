"""SIGKILL this process while `tts_bpeft.training` writes the checkpoint of a given step: after the whole
temporary file is written (before the rename), or with `mid_write` after half of its bytes.

    python kill_on_save.py STEP [--mid-write] SCRIPT [ARGS...]   # runs SCRIPT as __main__ with ARGS
"""

import argparse
import io
import os
import runpy
import signal
import sys

import torch


def install(step: int, mid_write: bool = False) -> None:
    """Wrap torch.save so that saving a checkpoint whose position is `step` kills the process."""
    original_save = torch.save

    def save_then_maybe_die(obj, handle, *args, **kwargs):
        doomed = isinstance(obj, dict) and isinstance(obj.get("position"), dict) and obj["position"]["step"] == step
        if doomed and mid_write:
            buffer = io.BytesIO()
            original_save(obj, buffer, *args, **kwargs)
            handle.write(buffer.getvalue()[:buffer.tell() // 2])
            handle.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        original_save(obj, handle, *args, **kwargs)
        if doomed:
            os.kill(os.getpid(), signal.SIGKILL)

    torch.save = save_then_maybe_die


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("step", type=int)
    parser.add_argument("--mid-write", action="store_true")
    parser.add_argument("script")
    args, rest = parser.parse_known_args()
    install(args.step, args.mid_write)
    sys.argv = [args.script, *rest]
    sys.path.insert(0, os.path.dirname(os.path.abspath(args.script)))
    runpy.run_path(args.script, run_name="__main__")
