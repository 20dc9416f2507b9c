"""ruff and mypy, configured in pyproject.toml (`[tool.ruff]`, `[tool.mypy]`): clean on the
repository, and failing on a deliberate violation (so a clean run means something)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = ROOT / "pyproject.toml"
RUFF = Path(sys.executable).with_name("ruff")
MYPY = Path(sys.executable).with_name("mypy")
SAMPLE = ROOT / "langchain_seed" / "tot" / "tasks" / "parsing.py"
"""A small module importing only the standard library, copied and broken below."""


def _run(command: list[str | Path], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(part) for part in command], cwd=cwd, capture_output=True, text=True, timeout=600)


def _output(result: subprocess.CompletedProcess) -> str:
    return result.stdout + result.stderr


def _broken_copy(tmp_path: Path, injected: str) -> Path:
    module = tmp_path / "sample.py"
    shutil.copyfile(SAMPLE, module)
    module.write_text(module.read_text() + f"\n{injected}  # a deliberate violation\n")
    return module


def test_ruff_is_clean():
    result = _run([RUFF, "check", "--no-cache", "langchain_seed", "scripts", "integrations", "tests"], ROOT)
    assert result.returncode == 0, _output(result)


def test_mypy_is_clean():
    result = _run([MYPY, "--config-file", PYPROJECT], ROOT)
    assert result.returncode == 0, _output(result)


def test_ruff_fails_on_an_unused_import(tmp_path):
    module = _broken_copy(tmp_path, "import os")
    result = _run([RUFF, "check", "--no-cache", "--config", PYPROJECT, module], tmp_path)
    assert result.returncode != 0, _output(result)
    assert "F401" in result.stdout, _output(result)


def test_mypy_fails_on_a_wrong_type(tmp_path):
    module = _broken_copy(tmp_path, '_injected: int = "a"')
    result = _run([MYPY, "--config-file", PYPROJECT, "--cache-dir", tmp_path / ".mypy_cache", module], tmp_path)
    assert result.returncode != 0, _output(result)
    assert "[assignment]" in result.stdout, _output(result)
