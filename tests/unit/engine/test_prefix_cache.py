"""Prompt prefixes kept between requests (`engine.prefix_cache`)."""

from __future__ import annotations

import pytest
import torch

from langchain_seed.engine import SamplingParams, SeedEngine, SpeculativeConfig
from langchain_seed.engine.cache import _layers
from langchain_seed.engine.forward import prefill
from langchain_seed.engine.prefix_cache import MIN_REUSE, PrefixStore, prefill_cached, store_for
from langchain_seed.engine.routing import engine_forward
from langchain_seed.engine.weights.convert import quantize_model, use_int8_activations

from engine_fixtures import build_model, hf_greedy, needs_kernel, noisy_copy

pytestmark = needs_kernel


def blocks_model(seed: int):
    """A float model with its weights kept in blocks (`QuantizedLinear`, the default pair's
    kind): it computes every row the same way at every size, so it keeps a store."""
    model = build_model("llama", seed=seed)
    quantize_model(model, "int4")
    return model


def int8_model(seed: int):
    """The same with 8-bit activations."""
    model = blocks_model(seed)
    use_int8_activations(model)
    return model


STORE_KEEPERS = {"int8 activations": int8_model, "blocks": blocks_model}

STEM = [(7 * i) % 60 + 1 for i in range(40)]  # longer than a lane's pending limit


def _keys(kv) -> list[torch.Tensor]:
    return [layer.keys for layer in _layers(kv.cache)]


@pytest.mark.parametrize("kind", STORE_KEEPERS)
@pytest.mark.parametrize("stem", [STEM, STEM * 4], ids=["40", "160"])
def test_a_prompt_sharing_a_stored_prefix_prefills_only_the_rest(kind, stem):
    """Also past the dense kernels' row limit (160 tokens): a stored prefix holds the bits a
    fresh prefill of the whole prompt computes."""
    model = STORE_KEEPERS[kind](3)
    first, second = stem + [5, 6, 7], stem + [9, 10]
    with engine_forward(model), torch.inference_mode():  # as the engine runs
        prefill_cached(model, first)
        kv, forwards = prefill_cached(model, second)
        fresh, _ = prefill(model, second)
    assert forwards == 1 and store_for(model).reused_tokens == len(stem)
    assert kv.num_slots == len(second) and kv.valid_counts().tolist() == [len(second)]
    for reused, computed in zip(_keys(kv), _keys(fresh)):
        assert torch.equal(reused, computed)  # the same bits: reuse cannot change an output


def test_a_dense_float_model_keeps_no_store():
    model = build_model("llama", seed=8)
    assert store_for(model) is None
    partly = build_model("llama", seed=8)  # blocks, but one dense linear left in a layer
    quantize_model(partly, "int4")
    partly.model.layers[1].mlp.down_proj = torch.nn.Linear(64, 32, bias=False)
    assert store_for(partly) is None
    kv, forwards = prefill_cached(model, STEM)
    assert forwards == 1 and kv.num_slots == len(STEM)


def test_a_stored_prompt_costs_no_forward_and_its_copy_is_not_shared():
    model = int8_model(4)
    kv, _ = prefill_cached(model, STEM)
    again, forwards = prefill_cached(model, STEM)
    assert forwards == 0
    assert all(torch.equal(a, b) for a, b in zip(_keys(kv), _keys(again)))
    with torch.inference_mode():  # the engine grows and edits its caches: the store keeps its own copy
        _keys(again)[0].zero_()
    third, _ = prefill_cached(model, STEM)
    assert torch.equal(_keys(third)[0], _keys(kv)[0])


def test_short_shared_prefixes_are_not_reused():
    model = int8_model(5)
    prefill_cached(model, STEM[: MIN_REUSE - 1] + [1, 2, 3] * 6)
    prefill_cached(model, STEM[: MIN_REUSE - 1] + [4, 5, 6] * 6)
    assert store_for(model).reused_tokens == 0


def test_the_store_evicts_the_least_recently_used_prompt_past_its_budget():
    model = build_model("llama", seed=6)
    one, _ = prefill(model, STEM)
    store = PrefixStore(max_bytes=2 * one.nbytes())
    prompts = [[p] + STEM[1:] for p in (1, 2, 3)]
    for prompt in prompts[:2]:
        store.put(prompt, prefill(model, prompt)[0])
    assert store.longest(prompts[0])[0] == len(STEM)  # prompts[0] is now the most recent
    store.put(prompts[2], prefill(model, prompts[2])[0])
    assert store.longest(prompts[1]) == (0, None)
    assert store.longest(prompts[0])[0] == store.longest(prompts[2])[0] == len(STEM)


def test_forgetting_prompts_empties_the_targets_and_the_drafts_stores():
    target, draft = blocks_model(9), int8_model(9)
    engine = SeedEngine(target, draft, config=SpeculativeConfig(k_config=(1, 1)))
    try:
        engine.generate([STEM + [1, 2]], SamplingParams(max_tokens=3), mode="speculative")
        assert store_for(target).longest(STEM)[0] == len(STEM) and store_for(draft).longest(STEM)[0] > 0
        engine.forget_prompts()
        assert store_for(target).longest(STEM) == (0, None) and store_for(draft).longest(STEM) == (0, None)
    finally:
        engine.close()


@pytest.mark.parametrize("kind", STORE_KEEPERS)
@pytest.mark.parametrize(("mode", "verify"), [("autoregressive", "batched"), ("speculative", "batched"),
                                              ("scheduled", "batched"), ("scheduled", "rounds")])
def test_requests_sharing_a_template_decode_the_targets_greedy_output(kind, mode, verify):
    target = STORE_KEEPERS[kind](7)
    draft = noisy_copy(build_model("llama", seed=7), 0.05)
    prompts = [STEM + [10 + i, 20 + i, 30 + i] for i in range(4)]
    with engine_forward(target):
        reference = [hf_greedy(target, prompt, 12) for prompt in prompts]
    engine = SeedEngine(target, draft, config=SpeculativeConfig(k_config=(1, 1, 1), verify=verify))
    try:
        for prompt in prompts:  # one at a time: each after the previous is stored
            result = engine.generate([prompt], SamplingParams(max_tokens=12), mode=mode)[0]
            assert result.token_ids == reference[prompts.index(prompt)]
    finally:
        engine.close()
    assert store_for(target).reused_tokens >= len(STEM) * (len(prompts) - 1)
