"""Loading a pair (`engine.models.load_models`): the draft's activations by default, and the
memory loading frees handed back to the system."""

from __future__ import annotations

import platform

import pytest

from langchain_seed.engine import models, native
from langchain_seed.engine.weights.int8_dot import Int8Linear

from tiny_llama import make_tiny_llama


@pytest.fixture
def pair_dirs(tmp_path):
    return make_tiny_llama(tmp_path / "target", layers=2, seed=0), make_tiny_llama(tmp_path / "draft", layers=1, seed=1)


def test_loading_hands_back_what_it_freed_and_defaults_the_draft_to_int8_where_it_can(pair_dirs, monkeypatch):
    calls = []
    monkeypatch.setattr(models, "return_freed_memory", lambda: calls.append(1) or True)
    loaded = models.load_models(*pair_dirs)
    assert calls == [1]
    int8_layers = any(isinstance(m, Int8Linear) for m in loaded.draft.model.layers.modules())
    # the tiny draft's 32-wide linears are whole Q8_0 blocks, so "auto" converts them where the kernels run
    assert int8_layers == native.available()
    assert not any(isinstance(m, Int8Linear) for m in loaded.target.modules())  # the target is left as loaded
    float_draft = models.load_models(*pair_dirs, draft_activations="float32").draft
    assert not any(isinstance(m, Int8Linear) for m in float_draft.modules())


def test_handing_back_memory_runs_on_glibc_linux_only(monkeypatch):
    on_glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert models.return_freed_memory() is on_glibc
    monkeypatch.setattr(platform, "system", lambda: "Darwin")
    assert models.return_freed_memory() is False
