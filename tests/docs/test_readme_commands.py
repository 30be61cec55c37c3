"""Every fenced shell block of README.md and recipes/*/README.md is executed, so the docs cannot drift.

Each block is preceded by a marker line (an HTML comment, invisible on the rendered page) that says how:

- ``<!-- doc-test: run -->``: run verbatim by bash (``set -euo pipefail``) in a scratch folder that mirrors the
  README's folder (symlinks to its entries), with this tree's ``tts_bpeft`` importable; fast blocks only.
- ``<!-- doc-test: run slow -->``: the same, marked slow (minutes: tiny end-to-end runs).
- ``<!-- doc-test: run e2e -->``: the same, marked slow and e2e (CI runs it: ``make test-e2e``).
- ``<!-- doc-test: config -->``: for blocks that need real data, a hub or a GPU. Bash runs the block with every
  command but ``python`` / ``torchrun`` doing nothing (``python`` only records its arguments), so variables,
  quoting and line continuations are the shell's own. Each recorded ``python <script>.py <overrides>`` must
  name an existing script; for a hydra script the overrides are composed with its config (``-m`` sweeps
  expanded: every value of each sweep is composed once), which fails on an unknown key, group option or bad
  value, and no mandatory value (``???``) may stay missing. ``<placeholder>`` words are replaced by
  ``PLACEHOLDER``, and ``...`` stands for the arguments of the same script's previous command.
- ``<!-- doc-test: skip <reason> -->``: not executed (e.g. ``make test``, which is what CI runs anyway).

Commands run from the README's folder, or from ``<folder>`` (relative to the repository) with a trailing
``in <folder>``: ``<!-- doc-test: config in . -->`` for commands written from the repository root.

A block without a marker fails the test, naming the file and line: whoever adds a command decides how it is
checked.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[2]
READMES = sorted([REPO / "README.md", *REPO.glob("recipes/*/README.md")])
FENCE = re.compile(r"^```(bash|sh|shell)\s*$")
MARKER = re.compile(r"^<!--\s*doc-test:\s*(run slow|run e2e|run|config|skip\s+\S.*?)(?:\s+in\s+(\S+))?\s*-->\s*$")
HYDRA_MAIN = re.compile(r"@hydra\.main\(.*config_path=\"([^\"]+)\".*config_name=\"([^\"]+)\"")
END = "@@END@@"


@dataclass(frozen=True)
class Block:
    """One fenced shell block: its README, the line of its fence (1-based), its marker mode, its text and the
    folder its commands run from (``in <folder>`` of the marker, relative to the repository; default the
    README's folder)."""

    readme: Path
    line: int
    mode: str
    text: str
    folder: Path

    @property
    def id(self) -> str:
        return f"{self.readme.relative_to(REPO)}:{self.line}"


def blocks(readme: Path) -> list[Block]:
    """The fenced bash/sh blocks of `readme` with their markers (mode "" when the marker is missing)."""
    lines = readme.read_text(encoding="utf-8").splitlines()
    found, i = [], 0
    while i < len(lines):
        if FENCE.match(lines[i]):
            marker = MARKER.match(lines[i - 1]) if i else None
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            folder = REPO / marker.group(2) if marker and marker.group(2) else readme.parent
            found.append(Block(readme, i + 1, marker.group(1) if marker else "", "\n".join(lines[i + 1 : end]),
                               folder.resolve()))
            i = end
        i += 1
    return found


ALL = [b for readme in READMES for b in blocks(readme)]


def test_every_block_has_a_marker() -> None:
    assert ALL, "no shell blocks found: the README discovery is broken"
    unmarked = [b.id for b in ALL if not b.mode]
    assert not unmarked, (f"shell blocks without a '<!-- doc-test: run | run slow | run e2e | config | skip <reason> "
                          f"-->' line above the fence: {unmarked} (see {Path(__file__).relative_to(REPO)})")


def scratch_mirror(folder: Path, scratch: Path) -> Path:
    """`scratch` holding a symlink to each entry of `folder`: commands find what the README's folder holds and
    write their outputs into the scratch folder."""
    for entry in folder.iterdir():
        if entry.name not in (".git", ".venv", "outputs", "multirun", "tiny"):
            (scratch / entry.name).symlink_to(entry)
    return scratch


def shell_env(extra_path: Path | None = None) -> dict[str, str]:
    path = f"{Path(sys.executable).parent}:{os.environ['PATH']}" if extra_path is None else str(extra_path)
    return {**os.environ, "PATH": path, "PYTHONPATH": str(REPO), "HYDRA_FULL_ERROR": "1"}


def run_block(block: Block, tmp_path: Path) -> None:
    cwd = scratch_mirror(block.folder, tmp_path)
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", block.text], cwd=cwd, env=shell_env(),
                          capture_output=True, text=True, timeout=3600)
    assert done.returncode == 0, f"{block.id} failed ({done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"


RECORDER = f"""
command_not_found_handle() {{ return 0; }}
python() {{ printf '%s\\0' "$@" {END} >> "$RECORD"; }}
torchrun() {{ while [[ $# -gt 0 && $1 == -* ]]; do [[ $1 == *=* ]] && shift || shift 2; done; python "$@"; }}
"""


def recorded_commands(block: Block, tmp_path: Path) -> list[list[str]]:
    """The argument lists of every ``python`` call of `block`, as bash expands them (nothing else runs)."""
    work = Path(tempfile.mkdtemp(dir=tmp_path))
    record, empty = work / "record", work / "no_commands"
    record.touch()
    empty.mkdir()
    text = re.sub(r"(?<![<\w])<[A-Za-z][^<>\n]*>", "PLACEHOLDER", block.text)
    done = subprocess.run(["/bin/bash", "-euo", "pipefail", "-c", RECORDER + text], cwd=block.folder,
                          env={**shell_env(empty), "RECORD": str(record)}, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, f"{block.id}: the block is not valid shell:\n{done.stderr}"
    fields = record.read_text().split("\0")
    commands, current = [], []
    for field in fields[:-1]:
        if field == END:
            commands.append(current)
            current = []
        else:
            current.append(field)
    return commands


def with_previous_arguments(commands: list[list[str]]) -> list[list[str]]:
    """`commands` with each ``...`` replaced by the arguments of the same script's previous command."""
    out, last = [], {}
    for argv in commands:
        if argv and "..." in argv[1:]:
            assert argv[0] in last, f"'...' in {argv} follows no earlier command of {argv[0]}"
            at = argv.index("...")
            argv = [*argv[:at], *last[argv[0]], *argv[at + 1:]]
        if argv:
            last[argv[0]] = argv[1:]
        out.append(argv)
    return out


def expanded(overrides: list[str]) -> list[list[str]]:
    """Override lists that together take every value of every sweep in `overrides` (``key=a,b``): the first
    values of all sweeps, then each other value of each sweep with the rest at their first values."""
    choices = []
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.get_key_element()
        values = list(override.sweep_string_iterator()) if override.is_sweep_override() else None
        choices.append([f"{key}={v}" for v in values] if values else [override.input_line])
    first = [options[0] for options in choices]
    return [first] + [[*first[:i], option, *first[i + 1:]] for i, options in enumerate(choices)
                      for option in options[1:]]


def check_command(block: Block, argv: list[str]) -> int:
    """Check one recorded ``python`` call (see the module docstring); returns the number of configs composed."""
    if not argv or not argv[0].endswith(".py"):
        return 0  # python -c / python - <<EOF: only `run` blocks execute inline code
    script = (block.folder / argv[0]).resolve()
    assert script.is_file(), f"{block.id}: {argv[0]} does not exist (looked for {script})"
    main = HYDRA_MAIN.search(script.read_text(encoding="utf-8").replace("\n", " "))
    if main is None:
        return 0
    overrides = [a for a in argv[1:] if a not in ("-m", "--multirun")]
    config_dir = str((script.parent / main.group(1)).resolve())
    for combination in expanded(overrides):
        with initialize_config_dir(config_dir, version_base="1.3"):
            try:
                cfg = compose(main.group(2), overrides=combination)
            except Exception as error:  # noqa: BLE001 -- any hydra error is a wrong command
                pytest.fail(f"{block.id}: {' '.join(argv)}\n  with {combination}: {type(error).__name__}: {error}")
        missing = sorted(OmegaConf.missing_keys(cfg))
        assert not missing, f"{block.id}: {' '.join(argv)} leaves mandatory keys unset: {missing}"
    return len(expanded(overrides))


def _params(mode: str) -> list:
    marks = {"run slow": [pytest.mark.slow], "run e2e": [pytest.mark.slow, pytest.mark.e2e]}.get(mode, [])
    return [pytest.param(b, id=b.id, marks=marks) for b in ALL if b.mode == mode]


@pytest.mark.parametrize("block", _params("config"))
def test_config_blocks_name_existing_scripts_and_valid_overrides(block: Block, tmp_path: Path) -> None:
    commands = recorded_commands(block, tmp_path)
    assert commands, f"{block.id}: a config block with no python command"
    for argv in with_previous_arguments(commands):
        check_command(block, argv)


@pytest.mark.parametrize("block", _params("run") + _params("run slow") + _params("run e2e"))
def test_run_blocks_work_verbatim(block: Block, tmp_path: Path) -> None:
    run_block(block, tmp_path)


def test_the_checker_catches_a_wrong_override(tmp_path: Path) -> None:
    readme = REPO / "recipes/styletts2_vctk/README.md"
    good = Block(readme, 0, "config", "python finetune.py -m data.vctk_root=/d prior=none,kfac prior.lam=1,3",
                 readme.parent)
    assert recorded_commands(good, tmp_path) == [["finetune.py", "-m", "data.vctk_root=/d", "prior=none,kfac",
                                                   "prior.lam=1,3"]]
    assert check_command(good, recorded_commands(good, tmp_path)[0]) == 3  # (none, 1), (kfac, 1), (none, 3)
    for wrong, why in (("python finetune.py data.vctk_root=/d optim.nope=1", "optim.nope"),
                       ("python finetune.py data.vctk_root=/d prior=laplace", "laplace"),
                       ("python finetune.py prior=kfac", "data.vctk_root"),
                       ("python no_such_script.py", "does not exist")):
        block = Block(readme, 0, "config", wrong, readme.parent)
        (argv,) = recorded_commands(block, tmp_path)
        with pytest.raises((AssertionError, pytest.fail.Exception), match=why):
            check_command(block, argv)
