"""Fixtures of the engine tests (helpers live in engine_fixtures.py)."""

import pytest

from engine_fixtures import build_model, noisy_copy


@pytest.fixture(scope="session")
def llama_pair():
    target = build_model("llama")
    return target, noisy_copy(target, 0.02)
