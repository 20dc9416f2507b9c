"""The native decoder-layer forward: the same bits as the layer's own (routed) forward, taken
only where it applies, and every other call handed to the layer's forward."""

from __future__ import annotations

import copy

import pytest
import torch

from langchain_seed.engine import decoder, kernels, layers, native, routing
from langchain_seed.engine.weights.convert import quantize_model, use_int8_activations

import numerics
from engine_fixtures import masked_step, needs_kernel, record_decisions

pytestmark = needs_kernel


@pytest.fixture
def routed(tiny_target, monkeypatch):
    """A private copy of the tiny target with the engine's kernels installed, its decoder
    handing every layer to the layer's own routed forward (`engine.decoder` is tested in
    test_decoder.py)."""
    monkeypatch.setattr(decoder, "_applies", lambda *a: False)
    model = copy.deepcopy(tiny_target)
    with routing.install(model):
        yield model


@pytest.fixture
def taken(monkeypatch) -> list[bool]:
    """Whether each layer call took the native path, in order."""
    return record_decisions(monkeypatch, layers)


def _forward(model, ids: torch.Tensor, cache=None, mask: torch.Tensor | None = None, kernel: str | None = "native",
             **extra) -> torch.Tensor:
    with torch.inference_mode(), kernels.engine_kernels(kernel):
        return model(input_ids=ids, cache=cache, attention_mask=mask, use_cache=cache is not None, **extra).logits


def test_the_default_pairs_layer_class_is_supported(routed):
    decoder_layers = list(routed.model.layers)
    assert all(layers.supports(layer) for layer in decoder_layers)
    assert not layers.supports(routed.model.norm) and not layers.supports(torch.nn.Linear(4, 4))


@pytest.mark.parametrize("batch, new", [(1, 1), (3, 6), (2, 5)])
def test_native_layers_give_the_routed_layers_bits(routed, taken, batch, new, monkeypatch):
    from transformers import DynamicCache

    context = 20
    prompt = torch.randint(3, 100, (batch, context))
    ids, positions, mask = masked_step(batch, context, new)
    results = {}
    for path in ("native", "routed"):
        if path == "routed":
            monkeypatch.setattr(layers, "_applies", lambda *a: taken.append(False) or False)
        cache = DynamicCache()
        _forward(routed, prompt, cache)
        logits = _forward(routed, ids, cache, mask if new > 1 else None, position_ids=positions)
        results[path] = (logits, [layer.keys.clone() for layer in cache.layers])
    assert taken[:2] == [True, True] and not any(taken[4:])  # 2 layers x (prompt, step) natively, then routed
    assert torch.equal(results["native"][0], results["routed"][0])
    assert all(torch.equal(a, b) for a, b in zip(results["native"][1], results["routed"][1]))


def test_native_layers_match_the_stock_model(tiny_target, routed):
    """Native layers and the stock model both within float32 rounding of the float64 model
    (numerics.llama_logits, itself checked against the stock model run in float64)."""
    ids, positions, mask = masked_step(2, 0, 7)
    reference = numerics.llama_logits(tiny_target, ids, positions, mask)
    in_float64 = _forward(copy.deepcopy(tiny_target).double(), ids, mask=mask.double(), kernel=None,
                          position_ids=positions)
    numerics.assert_within(in_float64, reference, "stock model in float64")  # rotary angles: float32 there too
    numerics.assert_within(_forward(tiny_target, ids, mask=mask, kernel=None, position_ids=positions), reference,
                           "stock model")
    numerics.assert_within(_forward(routed, ids, mask=mask, position_ids=positions), reference, "native layers")


def test_calls_it_does_not_implement_go_to_the_layers_forward(routed, taken):
    ids = torch.randint(3, 100, (1, 4))
    _forward(routed, ids, kernel="onednn")
    assert taken == [False, False]
    _forward(routed, torch.randint(3, 100, (1, kernels.NATIVE_MAX_ROWS + 1)))  # a long prefill
    assert taken[2:] == [False, False]
    routed.train()
    try:
        _forward(routed, ids)
    finally:
        routed.eval()
    assert taken[4:] == [False, False]
    with kernels.engine_kernels("native"):  # autograd
        routed(input_ids=ids)
    assert taken[6:] == [False, False]
    layer = routed.model.layers[0]
    hidden = torch.randn(1, 4, 32)
    with torch.inference_mode(), kernels.engine_kernels("native"):
        assert not layers._applies(layer, hidden, None, {})  # no rotary inputs
        cos = sin = torch.ones(1, 4, layer.self_attn.head_dim)
        assert layers._applies(layer, hidden, (cos, sin), {"output_attentions": False})
        assert not layers._applies(layer, hidden, (cos, sin), {"output_attentions": True})
        assert not layers._applies(layer, hidden.double(), (cos, sin), {})


@pytest.mark.parametrize("weights", ["float32", "int4", "int8", "int4+int8 activations", "int8+int8 activations"])
@pytest.mark.parametrize("batch, new", [(1, 1), (3, 6)])
def test_a_layer_in_two_native_calls_gives_the_kernel_by_kernel_bits(tiny_target, weights, batch, new, monkeypatch):
    """`native.layer_qkv` / `layer_rest` (the whole layer in two calls) against the same
    layer kernel by kernel (`layers._fused_layer` off), for each kind of linear: dense,
    blocks with float activations, and 8-bit activations. Logits and cached keys bit for bit."""
    from transformers import DynamicCache

    model = copy.deepcopy(tiny_target)
    if weights != "float32":
        quantize_model(model, weights.split("+")[0])
        if weights.endswith("activations"):
            use_int8_activations(model)
    prompt = torch.randint(3, 100, (batch, 20))
    ids, positions, mask = masked_step(batch, 20, new)
    calls = []
    layer_qkv = native.layer_qkv
    monkeypatch.setattr(native, "layer_qkv", lambda *a: calls.append(1) or layer_qkv(*a))
    results = []
    with routing.install(model):
        for fused in (True, False):
            if not fused:
                monkeypatch.setattr(layers, "_fused_layer", lambda layer: None)
            layers._layer_facts.clear()
            cache = DynamicCache()
            _forward(model, prompt, cache)
            logits = _forward(model, ids, cache, mask if new > 1 else None, position_ids=positions)
            results.append((logits, [layer.keys.clone() for layer in cache.layers], len(calls)))
    layers._layer_facts.clear()
    assert results[0][2] == 4 and results[1][2] == 4  # 2 layers x (prompt, step) in two calls, then none
    assert torch.equal(results[0][0], results[1][0])
    assert all(torch.equal(a, b) for a, b in zip(results[0][1], results[1][1], strict=True))


def test_a_layer_the_two_calls_do_not_take_runs_kernel_by_kernel(monkeypatch):
    """Heads of 4 values (the attention kernel takes multiples of 8): `layer_weights`
    refuses them naming the head size, and the layer still runs on the engine's kernels."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=64)
    model = LlamaForCausalLM(config).eval()
    layer = model.model.layers[0]
    with pytest.raises(ValueError, match=r"head size \(4\)"):
        native.layer_weights(layer.input_layernorm.weight, 1e-6, tuple(map(layers._kernel_linear, layers._linears(layer))),
                             layer.post_attention_layernorm.weight, 1e-6, 4)
    with routing.install(model):
        logits = _forward(model, torch.tensor([[1, 2, 3, 4, 5]]))
        assert layers._facts(layer).fused is None and layers.supports(layer)
    assert torch.isfinite(logits).all()


def test_weights_replaced_between_engines_are_read_again(tiny_target):
    """A layer's two native calls keep pointers to its weights; installing the routing again
    (what each engine does) reads them afresh, so a replaced weight is the one computed with."""
    model = copy.deepcopy(tiny_target)
    ids = torch.randint(3, 100, (1, 1))  # one token: both calls native (a longer unmasked prefill is not)
    with routing.install(model):
        before = _forward(model, ids)
    projection = model.model.layers[1].self_attn.o_proj
    projection.weight = torch.nn.Parameter(torch.randn_like(projection.weight))
    fresh = copy.deepcopy(model)
    with routing.install(model):
        after = _forward(model, ids)
    with routing.install(fresh):
        expected = _forward(fresh, ids)
    assert torch.equal(after, expected) and not torch.equal(after, before)


def test_an_int8_linear_whose_outputs_are_not_whole_groups_is_not_given_to_the_layer_calls():
    """An Int8Linear of 20 outputs keeps padded groups, which the two calls would write:
    `_kernel_linear` refuses it (so `_fused_layer` leaves such a layer kernel by kernel)."""
    from langchain_seed.engine.weights import formats, int8_dot

    padded = int8_dot.Int8Linear.from_blocks(formats.quantize(torch.randn(20, 32), "q8_0"), "q8_0", 32)
    whole = int8_dot.Int8Linear.from_blocks(formats.quantize(torch.randn(24, 32), "q8_0"), "q8_0", 32)
    assert layers._kernel_linear(whole)[0] == "int8"
    with pytest.raises(ValueError, match="not whole groups of 8"):
        layers._kernel_linear(padded)


@pytest.mark.parametrize("masked", [False, True])
def test_a_long_forward_attends_in_chunks_of_rows_with_the_same_bits(tiny_target, masked, monkeypatch):
    """Past `ATTENTION_CHUNK_ROWS` query rows the native attention runs chunk by chunk, each
    up to the last key its rows see: logits and cache bit for bit those of one call. The
    masked case hides some keys of one row and lets another see none of the new tokens but
    its own (padding)."""
    from transformers import DynamicCache

    model = copy.deepcopy(tiny_target)
    quantize_model(model, "int4")  # blocks: every size on the native kernels, attention included
    chunk = layers.ATTENTION_CHUNK_ROWS
    new = chunk + 11
    ids, positions, mask = masked_step(2, 0, new)
    if masked:
        own = torch.arange(120, new)
        mask[1, 0, 120:] = torch.finfo(torch.float32).min
        mask[1, 0, own, own] = 0.0  # these rows see only their own slot, as padding does
    results, calls = [], []
    layer_rest = native.layer_rest
    monkeypatch.setattr(native, "layer_rest", lambda *a: calls.append(a[2].shape[2]) or layer_rest(*a))
    with routing.install(model):
        for chunk_rows in (chunk, 10**6):
            monkeypatch.setattr(layers, "ATTENTION_CHUNK_ROWS", chunk_rows)
            cache = DynamicCache()
            logits = _forward(model, ids, cache, mask if masked else None, position_ids=positions)
            results.append((logits, [layer.keys.clone() for layer in cache.layers]))
    assert calls == [chunk, 11, chunk, 11, new, new]  # 2 layers x 2 chunks, then 2 layers x 1 call
    assert torch.equal(results[0][0], results[1][0])
    assert all(torch.equal(a, b) for a, b in zip(results[0][1], results[1][1], strict=True))


def test_the_all_layers_call_refuses_what_does_not_fit_it(tiny_target):
    """`native.decoder_weights` takes layers of one size; `native.decoder_layers` refuses
    stores, masks or slots that do not fit, naming what it got."""
    model = copy.deepcopy(tiny_target)
    with routing.install(model):
        fused = tuple(layers.fused_weights(layer) for layer in model.model.layers)
    assert all(weights is not None for weights in fused)
    with pytest.raises(ValueError, match="every layer of the first one's sizes"):
        native.decoder_weights(())
    stacked = native.decoder_weights(fused)
    first = fused[0]
    hidden = torch.zeros(2, 3, first.hidden)
    cos = sin = torch.ones(1, 3, first.head_dim)

    def stores(capacity: int) -> list[torch.Tensor]:
        return [torch.zeros(2, first.kv_heads, capacity, first.head_dim) for _ in fused]

    with pytest.raises(ValueError, match=r"decoder_layers: .*\b9 slots"):
        native.decoder_layers(stacked, hidden, cos, sin, stores(8), stores(8), 9, None, 1.0)  # no room for them
    with pytest.raises(ValueError, match=r"mask \(2, 1, 3, 4\)"):
        native.decoder_layers(stacked, hidden, cos, sin, stores(8), stores(8), 5, torch.zeros(2, 1, 3, 4), 1.0)
    with pytest.raises(ValueError, match="decoder_layers"):
        native.decoder_layers(stacked, hidden, cos, sin, stores(8)[:1], stores(8), 5, None, 1.0)
    assert native.decoder_layers(stacked, hidden, cos, sin, stores(8), stores(8), 5, None, 1.0).shape == hidden.shape
