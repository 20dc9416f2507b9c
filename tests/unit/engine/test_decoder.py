"""The native decoder forward: the same bits as the decoder's own forward over its routed
layers, taken only where it applies, and every other call handed to that forward."""

from __future__ import annotations

import copy

import pytest
import torch

from langchain_seed.engine import decoder, kernels, layers, routing
from langchain_seed.engine.weights.convert import quantize_model, use_int8_activations

from engine_fixtures import masked_step, needs_kernel, record_decisions

pytestmark = needs_kernel


@pytest.fixture
def taken(monkeypatch) -> list[bool]:
    """Whether each decoder call took the native path, in order."""
    return record_decisions(monkeypatch, decoder)


@pytest.fixture
def routed(tiny_target):
    model = copy.deepcopy(tiny_target)
    with routing.install(model):
        yield model


def _prompt_and_step(model, batch: int, new: int, masked: bool):
    """Logits of a 20-token prompt then of `new` tokens over it, and the cache's keys."""
    from transformers import DynamicCache

    torch.manual_seed(batch)
    prompt = torch.randint(3, 100, (batch, 20))
    ids, positions, mask = masked_step(batch, 20, new)
    cache = DynamicCache()
    with torch.inference_mode(), kernels.engine_kernels("native"):
        model(input_ids=prompt, cache=cache, use_cache=True)
        logits = model(input_ids=ids, position_ids=positions, attention_mask=mask if masked else None, cache=cache,
                       use_cache=True).logits
    return logits, [layer.keys.clone() for layer in cache.layers] + [layer.values.clone() for layer in cache.layers]


def test_the_tiny_llamas_decoder_is_routed_and_put_back(tiny_target):
    model = copy.deepcopy(tiny_target)
    assert decoder.supports(model.model) and not decoder.supports(model) and not decoder.supports(model.model.norm)
    with routing.install(model):
        assert model.model.forward.func is decoder.native_decoder_forward
    assert "forward" not in model.model.__dict__


@pytest.mark.parametrize("weights", ["float32", "int4", "int4+int8 activations"])
@pytest.mark.parametrize("batch, new, masked", [(1, 1, False), (1, 5, False), (3, 6, True), (2, 1, True)])
def test_the_native_decoder_gives_the_layer_by_layer_bits(tiny_target, taken, weights, batch, new, masked,
                                                         monkeypatch):
    """Logits and every cached key and value bit for bit against the decoder's own forward
    over the same routed layers, for dense, block and 8-bit-activation weights."""
    model = copy.deepcopy(tiny_target)
    if weights != "float32":
        quantize_model(model, weights.split("+")[0])
        if weights.endswith("activations"):
            use_int8_activations(model)
    with routing.install(model):
        native_run = _prompt_and_step(model, batch, new, masked)
        applies = decoder._applies
        monkeypatch.setattr(decoder, "_applies", lambda *a: taken.append(False) or False)
        own_run = _prompt_and_step(model, batch, new, masked)
        monkeypatch.setattr(decoder, "_applies", applies)
    assert taken == [True, True, False, False]
    assert torch.equal(native_run[0], own_run[0])
    assert all(torch.equal(a, b) for a, b in zip(native_run[1], own_run[1], strict=True))


def test_positions_left_out_are_numbered_after_the_cache(routed, taken):
    from transformers import DynamicCache

    ids = torch.randint(3, 100, (1, 9))
    results = []
    for positions in (None, torch.arange(4, 9)[None, :]):
        cache = DynamicCache()
        with torch.inference_mode(), kernels.engine_kernels("native"):
            routed(input_ids=ids[:, :4], cache=cache, use_cache=True)
            results.append(routed(input_ids=ids[:, 4:], position_ids=positions, cache=cache, use_cache=True).logits)
    assert all(taken) and torch.equal(results[0], results[1])


def test_the_decoder_called_alone_runs_natively(routed, taken):
    """`forward_hidden` calls the decoder alone (the drafters): it takes the native path too."""
    from transformers import DynamicCache

    with torch.inference_mode(), kernels.engine_kernels("native"):
        hidden = routed.get_decoder()(input_ids=torch.randint(3, 100, (2, 6)), cache=DynamicCache(),
                                      use_cache=True).last_hidden_state
    assert taken == [True] and hidden.shape == (2, 6, routed.config.hidden_size)


def test_calls_it_does_not_implement_go_to_the_decoders_forward(routed, taken):
    from transformers import DynamicCache

    ids = torch.randint(3, 100, (1, 4))

    def run(kernel="native", **extra):
        with torch.inference_mode(), kernels.engine_kernels(kernel):
            return routed(input_ids=ids, cache=DynamicCache(), use_cache=True, **extra)

    run("onednn")
    run(output_hidden_states=True)
    with torch.inference_mode(), kernels.engine_kernels("native"):
        routed(input_ids=ids, use_cache=False)  # no cache
        routed(inputs_embeds=routed.model.embed_tokens(ids), cache=DynamicCache(), use_cache=True)
    with kernels.engine_kernels("native"):  # autograd
        routed(input_ids=ids, cache=DynamicCache(), use_cache=True)
    routed.train()
    try:
        run()
    finally:
        routed.eval()
    assert taken == [False] * 6
    assert len(run(output_hidden_states=True).hidden_states) == routed.config.num_hidden_layers + 1


def test_a_hook_on_a_layer_is_honoured(routed, taken):
    """A layer with a forward hook is called as a module (hooks and all): the whole forward
    goes to the decoder's own, and the logits are the same."""
    from transformers import DynamicCache

    ids = torch.randint(3, 100, (2, 5))

    def run():
        with torch.inference_mode(), kernels.engine_kernels("native"):
            return routed(input_ids=ids, cache=DynamicCache(), use_cache=True).logits

    plain = run()
    seen = []
    handle = routed.model.layers[1].register_forward_hook(lambda module, args, output: seen.append(output.shape))
    try:
        hooked = run()
    finally:
        handle.remove()
    assert taken == [True, False] and seen == [(2, 5, routed.config.hidden_size)]
    assert torch.equal(plain, hooked)


def test_rows_past_a_layers_row_limit_run_layer_by_layer(routed, taken, monkeypatch):
    """Past the row limit the decoder hands each layer to its own forward (which then runs
    off the native layer path): the same logits as the decoder's own forward."""
    layer_calls = []
    applies = layers._applies
    monkeypatch.setattr(layers, "_applies", lambda *a: layer_calls.append(applies(*a)) or layer_calls[-1])
    monkeypatch.setattr(layers, "row_limit", lambda layer: 3)
    logits = _prompt_and_step(routed, 1, 5, masked=False)[0]
    monkeypatch.setattr(decoder, "_applies", lambda *a: False)
    assert torch.equal(logits, _prompt_and_step(routed, 1, 5, masked=False)[0])
    assert taken == [True, True] and layer_calls[:4] == [False] * 4


def _growing_steps(model, batch: int, steps: list[tuple[int, bool]]):
    """Logits of each step over a 20-token prompt in the engine's growing cache, and the
    cache's keys and values after the last."""
    from langchain_seed.engine.cache import growing_cache

    torch.manual_seed(batch)
    prompt = torch.randint(3, 100, (batch, 20))
    cache, outputs, context = growing_cache(), [], 20
    with torch.inference_mode(), kernels.engine_kernels("native"):
        model(input_ids=prompt, cache=cache, use_cache=True)
        for new, masked in steps:
            ids, positions, mask = masked_step(batch, context, new)
            outputs.append(model(input_ids=ids, position_ids=positions, attention_mask=mask if masked else None,
                                 cache=cache, use_cache=True).logits)
            context += new
    return outputs, [layer.keys.clone() for layer in cache.layers] + [layer.values.clone() for layer in cache.layers]


@pytest.mark.parametrize("weights", ["float32", "int4", "int4+int8 activations"])
@pytest.mark.parametrize("batch, steps", [(1, [(1, False), (1, False)]), (3, [(6, True), (2, True), (30, True)]),
                                          (2, [(1, True), (4, True)])])
def test_all_layers_in_one_native_call_give_the_layer_by_layer_bits(tiny_target, monkeypatch, weights, batch,
                                                                    steps):
    """Steps over the engine's growing cache run every layer in one native call (the last
    step past the stores' spare slots): logits and every cached key and value bit for bit
    as layer by layer."""
    model = copy.deepcopy(tiny_target)
    if weights != "float32":
        quantize_model(model, weights.split("+")[0])
        if weights.endswith("activations"):
            use_int8_activations(model)
    at_once = decoder._all_layers_at_once
    taken: list[bool] = []

    def recorded(*args):
        output = at_once(*args)
        taken.append(output is not None)
        return output

    monkeypatch.setattr(decoder, "_all_layers_at_once", recorded)
    with routing.install(model):
        assert decoder._facts(model.model).stacked is not None
        stacked_run = _growing_steps(model, batch, steps)
        monkeypatch.setattr(decoder, "_all_layers_at_once", lambda *a: None)
        layered_run = _growing_steps(model, batch, steps)
    assert taken == [False] + [True] * len(steps)  # the prompt's forward fills empty layers one by one
    assert all(torch.equal(a, b) for a, b in zip(stacked_run[0], layered_run[0], strict=True))
    assert all(torch.equal(a, b) for a, b in zip(stacked_run[1], layered_run[1], strict=True))
