"""Safe defaults: no pickled weights unless asked, no remote code unless asked, no prompt text in logs."""

import logging

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from langchain_seed.engine import SamplingParams, SeedEngine, load_model


@pytest.fixture()
def tiny_dirs(tmp_path):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1)
    model = LlamaForCausalLM(config)
    pickled, safe = tmp_path / "pickled", tmp_path / "safe"
    model.save_pretrained(safe)
    pickled.mkdir()
    config.save_pretrained(pickled)
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")
    return pickled, safe


def _same_weights(a, b) -> bool:
    a, b = a.state_dict(), b.state_dict()
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_pickled_weights_are_refused_unless_allowed(tiny_dirs):
    pickled, safe = tiny_dirs
    from_safetensors = load_model(safe)
    assert isinstance(from_safetensors, LlamaForCausalLM)
    with pytest.raises(OSError, match="refuses pickled weights"):
        load_model(pickled)
    assert _same_weights(load_model(pickled, allow_pickle=True), from_safetensors)  # the same saved model


def test_remote_code_is_off_by_default(tiny_dirs, monkeypatch):
    from transformers import AutoModelForCausalLM

    seen = {}

    def spy(*args, **kwargs):
        seen.update(kwargs)
        raise OSError("stop here")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", spy)
    with pytest.raises(OSError):
        load_model(tiny_dirs[1])
    assert seen["trust_remote_code"] is False and seen["use_safetensors"] is True


def test_engine_logs_no_prompt_text(tiny_dirs, caplog):
    model = load_model(tiny_dirs[1])
    with caplog.at_level(logging.DEBUG):
        SeedEngine(model).generate([[3, 4, 5, 6]], SamplingParams(max_tokens=3))
    assert not any("3, 4, 5, 6" in record.getMessage() for record in caplog.records)
