"""A model straight from a GGUF file, its Q4_1/Q8_0 tensors kept in blocks: the same weights
and logits as transformers' own (dequantising) GGUF loading, and bad files refused with
the tensor and the reason named."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from langchain_seed.engine.models import find_gguf, load_model
from langchain_seed.engine.weights.gguf import load_gguf_model
from langchain_seed.engine.weights.gguf_file import read_index
from langchain_seed.engine.weights.modules import QuantizedEmbedding, QuantizedLinear

from engine_fixtures import build_model
from tiny_llama import write_tiny_gguf


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("gguf") / "tiny.Q4_1.gguf"
    write_tiny_gguf(path, build_model("llama"))
    return path


def test_blocks_are_kept_and_weights_equal_transformers_dequantised_load(tiny_gguf):
    from transformers import AutoModelForCausalLM

    model = load_gguf_model(tiny_gguf)
    assert isinstance(model.model.embed_tokens, QuantizedEmbedding) and model.model.embed_tokens.fmt == "q8_0"
    assert isinstance(model.model.layers[0].self_attn.q_proj, QuantizedLinear)
    assert model.model.layers[1].mlp.down_proj.fmt == "q4_1"
    reference = AutoModelForCausalLM.from_pretrained(tiny_gguf.parent, gguf_file=tiny_gguf.name,
                                                     dtype=torch.float32).eval()
    expected = reference.state_dict()
    for name, module in model.named_modules():
        if isinstance(module, (QuantizedLinear, QuantizedEmbedding)):
            assert torch.equal(module.weight, expected[f"{name}.weight"]), name
    for name, parameter in model.named_parameters():
        assert torch.equal(parameter, expected[name]), name
    ids = torch.tensor([[1, 5, 9, 2, 33]])
    with torch.inference_mode():
        assert torch.equal(model(ids).logits, reference(ids).logits)


def test_query_and_key_rows_come_back_in_the_models_order(tiny_gguf, tmp_path):
    float_model = write_tiny_gguf(tmp_path / "again.gguf", build_model("llama"), layer_type="Q8_0")
    model = load_gguf_model(tmp_path / "again.gguf")
    original = float_model.model.layers[0].self_attn.k_proj.weight
    loaded = model.model.layers[0].self_attn.k_proj.weight
    half_step = original.abs().max() / 127 / 2  # Q8_0's largest rounding error, at the largest block scale
    assert (loaded - original).abs().max() <= half_step * 1.01
    assert (loaded - original.flip(0)).abs().max() > 10 * half_step, "rows out of order differ by the weights' size"


def test_load_model_keeps_a_gguf_as_shipped_or_dequantises_it(tiny_gguf):
    assert find_gguf(tiny_gguf.parent) == tiny_gguf
    assert isinstance(load_model(tiny_gguf).lm_head, QuantizedLinear)
    assert type(load_model(tiny_gguf, weights="float32").lm_head) is torch.nn.Linear
    with pytest.raises(ValueError, match="quantises float models"):
        load_model(tiny_gguf, weights="int8")
    with pytest.raises(ValueError, match="weights must be one of"):
        load_model(tiny_gguf, weights="fp8")


def test_an_unsupported_tensor_type_is_refused_naming_the_tensor_and_type(tmp_path):
    path = tmp_path / "q5.gguf"
    write_tiny_gguf(path, build_model("llama"), layer_type="Q5_0")
    with pytest.raises(ValueError, match=r"tensor blk\.0\.attn_q\.weight has type Q5_0.*weights='float32'"):
        load_gguf_model(path)
    with pytest.raises(ValueError, match="Q5_0"):
        load_model(path)
    dense = load_model(path, weights="float32")  # transformers dequantises what the engine does not read
    assert type(dense.model.layers[0].self_attn.q_proj) is torch.nn.Linear


def test_a_truncated_file_is_refused_naming_the_tensor(tiny_gguf, tmp_path):
    data = tiny_gguf.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: len(data) - 100])
    last = read_index(tiny_gguf)[-1].name
    with pytest.raises(ValueError, match=rf"tensor {last}.*truncated"):
        read_index(cut)
    header_only = tmp_path / "header.gguf"
    header_only.write_bytes(data[:30])
    with pytest.raises(ValueError, match="cut short"):
        read_index(header_only)


def test_a_file_that_is_not_gguf_is_refused(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"PK\x03\x04" + b"\0" * 64)
    with pytest.raises(ValueError, match="not a GGUF file"):
        read_index(path)
