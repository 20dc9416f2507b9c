"""The tiny random model pair from `tests/unit/conftest.py`, loaded once under its own module name."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytest.importorskip("llama_index.core", reason="needs: pip install 'langchain-seed[llamaindex]'")

REPO_ROOT = Path(__file__).resolve().parents[3]
FIXTURES_MODULE = "langchain_seed_tiny_fixtures"

if FIXTURES_MODULE not in sys.modules:
    _spec = importlib.util.spec_from_file_location(FIXTURES_MODULE, REPO_ROOT / "tests" / "unit" / "conftest.py")
    _module = importlib.util.module_from_spec(_spec)
    sys.modules[FIXTURES_MODULE] = _module
    _spec.loader.exec_module(_module)

tiny_tokenizer = sys.modules[FIXTURES_MODULE].tiny_tokenizer
tiny_engine = sys.modules[FIXTURES_MODULE].tiny_engine
tiny_llm = sys.modules[FIXTURES_MODULE].tiny_llm
