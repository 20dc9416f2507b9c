"""Weights kept in GGML blocks: exact dequantisation, the quantised kernels equal to the dense
ones on the dequantised weights bit for bit, models quantised on load, and greedy identity
of every decoding mode with the quantised target's own autoregressive output."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gguf import GGMLQuantizationType, quants

from langchain_seed.engine import SamplingParams, SeedEngine, SpeculativeConfig, kernels, native
from langchain_seed.engine.kernels import engine_kernels
from langchain_seed.engine.routing import install
from langchain_seed.engine.weights import formats
from langchain_seed.engine.weights.convert import quantize_model
from langchain_seed.engine.weights.modules import QuantizedEmbedding, QuantizedLinear

from engine_fixtures import PROMPTS, assert_every_mode_decodes, build_model, hf_greedy, needs_kernel, noisy_copy

FORMATS = ["q8_0", "q4_1"]
ROWS = [1, 2, 3, 4, 5, 6, 7, 17, 64, 130]


def _blocks(out_features: int, in_features: int, fmt: str, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return formats.quantize(torch.randn(out_features, in_features, generator=generator) * 0.05, fmt)


@pytest.mark.parametrize("fmt", FORMATS)
def test_dequantize_is_gguf_pys(fmt):
    blocks = _blocks(37, 96, fmt)
    expected = quants.dequantize(blocks.numpy(), GGMLQuantizationType[fmt.upper()])
    assert torch.equal(formats.dequantize(blocks, fmt, 96), torch.from_numpy(np.ascontiguousarray(expected)))


@needs_kernel
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("out_features,in_features", [(37, 32), (64, 96), (13, 576)])
def test_quantized_linear_equals_the_dense_kernel_on_the_dequantised_weight(fmt, rows, out_features, in_features):
    blocks = _blocks(out_features, in_features, fmt, seed=rows)
    weight = formats.dequantize(blocks, fmt, in_features)
    x = torch.randn(rows, in_features)
    bias = torch.randn(out_features)
    assert torch.equal(native.quantized_linear(x, blocks, fmt, bias), native.skinny_linear(x, weight, bias))
    assert torch.equal(native.quantized_linear(x, blocks, fmt), native.skinny_linear(x, weight))


@needs_kernel
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("rows", [1, 2, 3, 5, 6, 7, 70])
def test_quantized_gate_up_silu_equals_the_dense_kernel(fmt, rows):
    gate, up = _blocks(38, 64, fmt, 1), _blocks(38, 64, fmt, 2)
    x = torch.randn(rows, 64)
    dense = native.gate_up_silu(x, formats.dequantize(gate, fmt, 64), formats.dequantize(up, fmt, 64))
    assert torch.equal(native.quantized_gate_up_silu(x, gate, up, fmt), dense)


@pytest.mark.parametrize("fmt", FORMATS)
def test_quantized_linear_outside_the_engine_is_f_linear_on_the_dequantised_weight(fmt):
    blocks = _blocks(40, 64, fmt)
    bias = torch.randn(40)
    linear = QuantizedLinear(blocks, fmt, 64, bias)
    x = torch.randn(2, 5, 64)
    assert torch.equal(linear(x), F.linear(x, formats.dequantize(blocks, fmt, 64), bias))
    assert torch.equal(linear.rows(torch.tensor([3, 0])), formats.dequantize(blocks, fmt, 64)[[3, 0]])


@needs_kernel
@pytest.mark.parametrize("fmt", FORMATS)
def test_quantized_linear_in_the_engine_block_takes_the_kernel_at_every_size(fmt):
    """The C kernel at every row count, each row the same bits as alone (`batch_invariant`),
    also past the dense kernels' row limit."""
    blocks = _blocks(40, 64, fmt)
    linear = QuantizedLinear(blocks, fmt, 64)
    weight = formats.dequantize(blocks, fmt, 64)
    small, large = torch.randn(6, 64), torch.randn(kernels.NATIVE_MAX_ROWS + 72, 64)
    with engine_kernels("native"):
        assert torch.equal(linear(small), native.skinny_linear(small, weight))
        whole = linear(large)
        assert torch.equal(whole[:7], linear(large[:7])) and torch.equal(whole[-5:], linear(large[-5:]))
    assert QuantizedLinear.batch_invariant


def test_quantized_embedding_returns_the_dequantised_rows():
    blocks = _blocks(50, 64, "q8_0")
    embedding = QuantizedEmbedding(blocks, "q8_0", 64)
    ids = torch.tensor([[4, 0, 49], [4, 4, 1]])
    assert torch.equal(embedding(ids), formats.dequantize(blocks, "q8_0", 64)[ids])
    with pytest.raises(IndexError, match=r"\[0, 50\); got 3\.\.50"):
        embedding(torch.tensor([3, 50]))
    with pytest.raises(IndexError, match=r"got -1\.\.4"):
        embedding(torch.tensor([[4], [-1]]))


@pytest.mark.parametrize("bad,match", [
    (lambda: QuantizedLinear(torch.zeros(4, 40, dtype=torch.uint8), "q4_1", 48), "multiple of 32"),
    (lambda: QuantizedLinear(torch.zeros(4, 39, dtype=torch.uint8), "q4_1", 64), r"uint8 \[out, 40\]"),
    (lambda: QuantizedLinear(torch.zeros(4, 40), "q4_1", 64), "uint8"),
    (lambda: QuantizedLinear(torch.zeros(4, 40, dtype=torch.uint8), "q5_k", 64), "unknown weight format 'q5_k'"),
    (lambda: formats.quantize(torch.zeros(4, 48), "q8_0"), "multiple of 32"),
])
def test_bad_blocks_are_refused_with_what_is_wrong(bad, match):
    with pytest.raises(ValueError, match=match):
        bad()


@pytest.mark.parametrize("weights", ["int8", "int4"])
def test_quantize_model_keeps_a_tied_head_tied_and_equals_the_dequantised_float_model(weights):
    model = build_model("llama")
    model.config.tie_word_embeddings = True
    model.lm_head.weight = model.model.embed_tokens.weight
    quantized = copy.deepcopy(model)
    assert quantize_model(quantized, weights) == 2 * 7 + 2
    assert quantized.lm_head.blocks is quantized.model.embed_tokens.blocks
    dense = _dequantised_copy(model, quantized)
    ids = torch.tensor([PROMPTS[2]])
    with torch.inference_mode():
        assert torch.equal(quantized(ids).logits, dense(ids).logits)


def _dequantised_copy(model, quantized):
    """`model` with every weight replaced by `quantized`'s dequantised one (plain nn modules)."""
    dense = copy.deepcopy(model)
    modules = dict(quantized.named_modules())
    with torch.no_grad():
        for name, module in dense.named_modules():
            if isinstance(modules.get(name), (QuantizedLinear, QuantizedEmbedding)):
                module.weight = torch.nn.Parameter(modules[name].weight)
    return dense


@needs_kernel
@pytest.mark.parametrize("weights", ["int8", "int4"])
def test_native_layers_on_blocks_equal_native_layers_on_the_dequantised_weights_bit_for_bit(weights):
    """With an explicit causal mask both models' attention runs on the native kernel (an
    unmasked prefill would take it only in the blocks' model, which computes every size
    alike, and SDPA in the dense one): the linears are then the only difference, and they
    give the same bits."""
    model = build_model("llama")
    quantized = copy.deepcopy(model)
    quantize_model(quantized, weights)
    dense = _dequantised_copy(model, quantized)
    ids = torch.tensor([PROMPTS[2], PROMPTS[2][::-1]])
    causal = torch.ones(ids.shape[1], ids.shape[1], dtype=torch.bool).tril()
    mask = torch.zeros(causal.shape).masked_fill_(~causal, torch.finfo(torch.float32).min).expand(2, 1, *causal.shape)
    routings = [install(quantized), install(dense)]
    try:
        with torch.inference_mode(), engine_kernels("native"):
            assert torch.equal(quantized(ids, attention_mask=mask).logits, dense(ids, attention_mask=mask).logits)
    finally:
        for routing in routings:
            routing.remove()


@pytest.mark.parametrize("weights", ["int8", "int4"])
@pytest.mark.parametrize("k_config", [(1, 1, 1, 1), (2, 2, 1)])
def test_every_mode_reproduces_the_quantised_targets_greedy_output(weights, k_config):
    target = build_model("llama")
    draft = noisy_copy(target, 0.02)
    quantize_model(target, weights)
    reference = [hf_greedy(target, prompt, 24) for prompt in PROMPTS]
    assert_every_mode_decodes(target, draft, reference, k_config, 24)


@needs_kernel
@pytest.mark.parametrize("mode", ["speculative", "scheduled"])
def test_a_target_in_blocks_never_builds_a_whole_dense_weight_for_a_request(monkeypatch, mode):
    """Every forward of a request, the engine's first check whether the target takes tree
    masks included, runs on the quantised kernels: dequantising a whole weight (the default
    target's head alone is 113 MB of float32) would only raise the peak memory."""
    target = build_model("llama")
    draft = noisy_copy(target, 0.02)
    quantize_model(target, "int4")
    whole_weights: list[tuple[int, int]] = []
    dense_weight = QuantizedLinear.weight.fget

    def counted(linear):
        whole_weights.append((linear.out_features, linear.in_features))
        return dense_weight(linear)

    monkeypatch.setattr(QuantizedLinear, "weight", property(counted))
    engine = SeedEngine(target, draft, config=SpeculativeConfig(k_config=(2, 2, 1)))
    try:
        results = engine.generate(PROMPTS, SamplingParams(max_tokens=8), mode=mode)
    finally:
        engine.close()
    assert all(len(r.token_ids) == 8 for r in results)
    assert whole_weights == []
