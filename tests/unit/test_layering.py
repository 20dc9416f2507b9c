"""The package's layering, as import-linter contracts (`[tool.importlinter]` in
pyproject.toml): kept by the code, and broken by a deliberate violation."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint_imports(package_parent: Path) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(package_parent)}
    return subprocess.run([str(LINT_IMPORTS), "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
                          cwd=package_parent, env=environment, capture_output=True, text=True, timeout=300)


def test_the_import_contracts_are_kept():
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_an_engine_module_importing_the_langchain_face_breaks_the_contract(tmp_path):
    shutil.copytree(ROOT / "langchain_seed", tmp_path / "langchain_seed",
                    ignore=shutil.ignore_patterns("assets", "__pycache__", "*.c", "*.h", "data"))
    stats = tmp_path / "langchain_seed" / "engine" / "stats.py"
    stats.write_text(stats.read_text() + "\nfrom langchain_seed.pair import paths  # a deliberate violation\n")
    result = _lint_imports(tmp_path)
    assert result.returncode != 0
    assert "BROKEN" in result.stdout and "langchain_seed.engine.stats -> langchain_seed.pair.paths" in result.stdout
