"""The layout's arrows point one way: the model integrations (styletts2/, kokoro/, text/) depend on the rest,
never the reverse, and the core (LoRA, curvature, prior, selection, training, I/O) imports nothing outside
itself. Read from the source with `ast`, every import counted, those inside functions too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import tts_bpeft

PACKAGE = Path(tts_bpeft.__file__).resolve().parent
INTEGRATIONS = ("tts_bpeft.styletts2", "tts_bpeft.kokoro", "tts_bpeft.text")
THIRD_PARTY_MODELS = ("styletts2", "kokoro")
CORE = ("lora", "curvature", "prior.py", "selection.py", "training.py", "layers.py", "io.py", "choices.py",
        "version.py")
OUTSIDE_CORE = ("tts_bpeft.eval", "tts_bpeft.speech_data", "tts_bpeft.family", "tts_bpeft.runs", "tts_bpeft.hub",
                "tts_bpeft.quiet")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every module `path` imports, relative imports resolved to absolute names."""
    package = module_name(path).split(".") if path.name == "__init__.py" else module_name(path).split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            name = ".".join([*base, node.module] if node.module else base)
            found.add(name)
            found.update(f"{name}.{alias.name}" for alias in node.names)
    return found


def within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def files(*places: str) -> list[Path]:
    paths = [PACKAGE / place for place in places]
    return sorted(p for path in paths for p in ([path] if path.is_file() else path.rglob("*.py")))


def test_the_import_reader_sees_relative_absolute_and_local_imports():
    found = imports(PACKAGE / "styletts2" / "family.py")
    assert "tts_bpeft.styletts2.presets" in found  # from .presets import ...
    assert "tts_bpeft.family" in found  # from tts_bpeft.family import ... or from ..family import ...
    assert "tts_bpeft.kokoro.offline" in imports(PACKAGE / "kokoro" / "family.py")  # imported inside a function


@pytest.mark.parametrize("path", [p for p in files(".") if not within(module_name(p), INTEGRATIONS)],
                         ids=lambda p: str(p.relative_to(PACKAGE)))
def test_nothing_outside_the_integrations_imports_one(path):
    wrong = sorted(n for n in imports(path) if within(n, INTEGRATIONS + THIRD_PARTY_MODELS))
    assert not wrong, f"{path} imports a model integration: {wrong}"


@pytest.mark.parametrize("path", files(*CORE), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_the_core_imports_only_the_core(path):
    wrong = sorted(n for n in imports(path) if within(n, OUTSIDE_CORE))
    assert not wrong, f"{path} (core) imports {wrong}"
