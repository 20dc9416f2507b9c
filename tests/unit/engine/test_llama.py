"""The engine's own Llama modules (`engine.llama`): transformers' `LlamaForCausalLM` bit for
bit on shared weights, on torch's kernels and on the engine's; every decoding mode
reproduces their greedy output; and the product's path through them (a GGUF as shipped, a
layers-only draft, the fast tokenizer) imports no transformers model class."""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import DynamicCache

from langchain_seed.engine import SamplingParams, SeedEngine, SpeculativeConfig
from langchain_seed.engine.feature_draft import FeatureDraftModel
from langchain_seed.engine.kernels import engine_kernels
from langchain_seed.engine.llama import (
    LlamaForCausalLM,
    LlamaModel,
    LlamaSettings,
    as_transformers,
    is_engine_llama,
)
from langchain_seed.engine.models import load_models
from langchain_seed.engine.routing import install
from langchain_seed.engine.weights.convert import quantize_model
from langchain_seed.engine.weights.gguf import load_gguf_model
from langchain_seed.engine.weights.modules import QuantizedLinear

from engine_fixtures import (
    PROMPTS,
    VOCAB,
    assert_every_mode_decodes,
    build_model,
    engine_llama_copy,
    hf_greedy,
    needs_kernel,
    noisy_copy,
)
from tiny_llama import make_tiny_gguf_pair, write_tiny_gguf

HEAVY_MODULES = ("transformers.modeling_utils", "transformers.masking_utils", "sympy", "torch._dynamo")
"""What importing a transformers model class (or config) loads: ~90 MB the default pair's
process must not hold."""


@pytest.fixture(scope="module")
def twins():
    transformers_model = build_model("llama")
    return transformers_model, engine_llama_copy(transformers_model)


def test_settings_cover_llama_and_name_the_rest_none():
    config = build_model("llama").config.to_dict()
    settings = LlamaSettings.from_dict(config)
    assert settings is not None and settings.num_key_value_heads == 2 and settings.head_dim == 8
    assert settings.rope_theta == config["rope_parameters"]["rope_theta"]
    older = {**config, "rope_theta": 500000.0, "rope_scaling": None}
    del older["rope_parameters"]
    assert LlamaSettings.from_dict(older).rope_theta == 500000.0
    for change in ({"model_type": "mistral"}, {"hidden_act": "gelu"}, {"pretraining_tp": 2},
                   {"rope_parameters": {"rope_theta": 1e4, "rope_type": "yarn", "factor": 8.0}},
                   {"rope_parameters": {"rope_theta": 1e4, "rope_type": "llama3", "factor": 8.0}},  # incomplete
                   {"rope_parameters": {"rope_theta": 1e4, "rope_type": "default", "partial_rotary_factor": 0.5}}):
        assert LlamaSettings.from_dict({**config, **change}) is None, change


LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
"""Llama 3.x's scaled rotary embeddings, on a context short enough for the tiny model's
positions to reach every wavelength band (long, interpolated and unchanged)."""


def test_llama3_rotary_embeddings_are_transformers_bit_for_bit():
    from transformers import LlamaConfig
    from transformers import LlamaForCausalLM as TransformersLlama
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    config = build_model("llama").config.to_dict()
    config.update(rope_parameters=dict(LLAMA3_ROPE), head_dim=32, num_attention_heads=1, num_key_value_heads=1)
    settings = LlamaSettings.from_dict(config)
    assert settings is not None and settings.rope_parameters == LLAMA3_ROPE
    transformers_config = LlamaConfig(**{k: v for k, v in config.items() if k != "model_type"})
    expected = LlamaRotaryEmbedding(transformers_config).inv_freq
    ours = LlamaForCausalLM(settings)
    got = ours.model.rotary_emb.inv_freq
    plain = LlamaForCausalLM(LlamaSettings.from_dict({**config, "rope_parameters": {
        "rope_type": "default", "rope_theta": 500000.0}})).model.rotary_emb.inv_freq
    assert torch.equal(got, expected)
    assert (got < plain).any() and (got == plain).any(), "some bands scaled, some not: the test means something"
    torch.manual_seed(0)
    transformers_model = TransformersLlama(transformers_config).eval()
    ours.load_state_dict(transformers_model.state_dict())
    ids = torch.tensor([list(range(1, 60))])
    with torch.inference_mode():
        assert torch.equal(ours(ids).logits, transformers_model(ids).logits)
    assert LlamaSettings.from_dict({**config, "rope_parameters": {k: v for k, v in LLAMA3_ROPE.items()
                                                                   if k != "original_max_position_embeddings"}}
                                   ).rope_parameters["original_max_position_embeddings"] == config["max_position_embeddings"]


def _llama_cpp_rope_divisors(rope: dict, head_dim: int) -> np.ndarray:
    """Llama 3's `rope_freqs.weight` as llama.cpp's converter computes it (one divisor per
    frequency: 1, `factor`, or the smooth interpolation between)."""
    low_wavelen = rope["original_max_position_embeddings"] / rope["low_freq_factor"]
    high_wavelen = rope["original_max_position_embeddings"] / rope["high_freq_factor"]
    divisors = []
    for freq in 1.0 / (rope["rope_theta"] ** (np.arange(0, head_dim, 2) / head_dim)):
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            divisors.append(1.0)
        elif wavelen > low_wavelen:
            divisors.append(rope["factor"])
        else:
            smooth = (rope["original_max_position_embeddings"] / wavelen - rope["low_freq_factor"]) / (
                rope["high_freq_factor"] - rope["low_freq_factor"])
            divisors.append(1 / ((1 - smooth) / rope["factor"] + smooth))
    return np.array(divisors, dtype=np.float32)


def test_a_llama3_gguf_checks_its_rope_freqs_against_the_config(tmp_path):
    """llama.cpp writes Llama 3's frequency divisors as a tensor; the loader checks them
    against the config's rope scaling (and refuses, naming the tensor, a config without it)."""
    from transformers import LlamaConfig
    from transformers import LlamaForCausalLM as TransformersLlama

    config = build_model("llama").config.to_dict()
    config.update(rope_parameters=dict(LLAMA3_ROPE), head_dim=32, num_attention_heads=1, num_key_value_heads=1)
    torch.manual_seed(0)
    transformers_model = TransformersLlama(LlamaConfig(**{k: v for k, v in config.items() if k != "model_type"}))
    divisors = _llama_cpp_rope_divisors(LLAMA3_ROPE, 32)
    assert (divisors > 1).any() and (divisors == 1).any()
    gguf = tmp_path / "llama3.gguf"
    write_tiny_gguf(gguf, transformers_model.eval(), layer_type="Q8_0", rope_freqs=divisors)
    (tmp_path / "config.json").write_text(json.dumps(config))
    model = load_gguf_model(gguf)
    assert is_engine_llama(model)
    assert torch.equal(model.model.rotary_emb.inv_freq, transformers_model.model.rotary_emb.inv_freq)
    (tmp_path / "config.json").write_text(json.dumps({**config, "rope_parameters": {"rope_type": "default",
                                                                                   "rope_theta": 500000.0}}))
    for implementation in ("engine", "transformers"):
        with pytest.raises(ValueError, match="rope_freqs.weight scales the rotary frequencies"):
            load_gguf_model(gguf, implementation=implementation)


def _tree_mask(batch: int, new: int, slots: int) -> torch.Tensor:
    """An additive mask `[batch, 1, new, slots + new]` over a cache of `slots`: every cached
    slot, and a tree among the new tokens (each sees itself and the first)."""
    visible = torch.zeros(batch, 1, new, slots + new, dtype=torch.bool)
    visible[..., :slots] = True
    visible[..., slots] = True
    visible[..., torch.arange(new), slots + torch.arange(new)] = True
    return torch.zeros(visible.shape).masked_fill_(~visible, float("-inf"))


def _forwards(model) -> list[torch.Tensor]:
    """Logits of one model over the cases the engine and its callers use."""
    ids = torch.tensor([PROMPTS[2], PROMPTS[2][::-1]])
    padding = torch.ones(ids.shape, dtype=torch.long)
    padding[0, :3] = 0
    outputs = [model(ids).logits, model(ids, attention_mask=padding).logits[1],
               model(ids, logits_to_keep=1).logits, model(inputs_embeds=model.get_input_embeddings()(ids)).logits]
    cache = DynamicCache()
    outputs.append(model(input_ids=ids, cache=cache, use_cache=True).logits)
    outputs.append(model(input_ids=ids[:, :3], cache=cache, use_cache=True).logits)  # causal over a cache
    outputs.append(model(input_ids=ids[:, :1], cache=cache, use_cache=True).logits)  # one token
    positions = torch.full((2, 4), cache.get_seq_length())
    outputs.append(model(input_ids=ids[:, :4], position_ids=positions, cache=cache, use_cache=True,
                         attention_mask=_tree_mask(2, 4, cache.get_seq_length())).logits)
    return outputs


@pytest.mark.parametrize("kernel", [None, "torch", pytest.param("native", marks=needs_kernel)])
def test_logits_are_transformers_bit_for_bit(twins, kernel):
    transformers_model, ours = twins
    routings = [install(transformers_model), install(ours)] if kernel else []
    try:
        with torch.inference_mode(), engine_kernels(kernel) if kernel else torch.inference_mode():
            expected, got = _forwards(transformers_model), _forwards(ours)
    finally:
        for routing in routings:
            routing.remove()
    for index, (want, have) in enumerate(zip(expected, got)):
        assert torch.equal(want, have), index


@pytest.mark.parametrize("weights", ["float32", "int4"])
def test_every_mode_reproduces_the_greedy_output(weights):
    transformers_target = build_model("llama")
    target, draft = engine_llama_copy(transformers_target), engine_llama_copy(noisy_copy(transformers_target, 0.02))
    if weights != "float32":
        quantize_model(target, weights)
    reference = [hf_greedy(as_transformers(target), prompt, 20) for prompt in PROMPTS]
    if weights == "float32":
        assert reference == [hf_greedy(transformers_target, prompt, 20) for prompt in PROMPTS]
    assert_every_mode_decodes(target, draft, reference, (2, 2, 1), 20)


def test_a_feature_draft_on_the_engines_llama_is_built_from_its_modules():
    transformers_target = build_model("llama")
    target = engine_llama_copy(transformers_target)
    draft = FeatureDraftModel.from_target(target, 1, list(range(VOCAB)))
    assert isinstance(draft.decoder, LlamaModel)
    reference = [hf_greedy(transformers_target, prompt, 12) for prompt in PROMPTS]
    engine = SeedEngine(target, draft, config=SpeculativeConfig(k_config=(2, 1)))
    try:
        results = engine.generate(PROMPTS, SamplingParams(max_tokens=12), mode="scheduled")
    finally:
        engine.close()
    assert [r.token_ids for r in results] == reference
    assert results.stats.acceptance_rate > 0


def test_as_transformers_holds_the_same_modules(twins):
    _, ours = twins
    quantized = copy.deepcopy(ours)
    quantize_model(quantized, "int4")
    twin = as_transformers(quantized)
    assert not is_engine_llama(twin) and as_transformers(twin) is twin
    assert twin.model.layers[1].mlp.up_proj is quantized.model.layers[1].mlp.up_proj
    assert isinstance(twin.lm_head, QuantizedLinear)
    assert twin.model.norm.weight is quantized.model.norm.weight
    ids = torch.tensor([PROMPTS[0]])
    with torch.inference_mode():
        assert torch.equal(twin(ids).logits, quantized(ids).logits)


def test_what_only_transformers_computes_is_refused_by_name(twins):
    _, ours = twins
    ids = torch.tensor([PROMPTS[0]])
    with pytest.raises(ValueError, match="output_hidden_states.*as_transformers"):
        ours(ids, output_hidden_states=True)
    with pytest.raises(ValueError, match="labels"):
        ours(ids, labels=ids)
    with pytest.raises(ValueError, match="return_dict=False"):
        ours(ids, return_dict=False)
    assert ours(ids, return_dict=True, output_hidden_states=False).logits.shape == (1, len(PROMPTS[0]), VOCAB)
    with pytest.raises(ValueError, match=r"attention_mask must be 4-D or \[batch, slots\]"):
        ours(ids, attention_mask=torch.ones(1, 3))
    with pytest.raises(ValueError, match="exactly one of input_ids or inputs_embeds"):
        ours()


PRODUCT_RUN = """
import json, sys
from langchain_seed import SeedLLM
llm = SeedLLM.from_pretrained({target!r}, draft={draft!r})
text = llm.invoke("ab", max_tokens=12)
loaded = llm.engine.target_model
print(json.dumps({{"heavy": [name for name in {heavy!r} if name in sys.modules], "text": text,
                  "target": type(loaded).__module__, "draft": type(llm.engine.draft_model).__module__}}))
"""


def test_the_products_path_imports_no_transformers_model_class(tmp_path):
    target, draft = make_tiny_gguf_pair(tmp_path)
    loaded = load_models(target, draft)
    assert is_engine_llama(loaded.target) and is_engine_llama(loaded.draft)
    assert loaded.draft.get_input_embeddings() is loaded.target.get_input_embeddings()
    assert type(loaded.tokenizer).__name__ == "TokenizersBackend"
    from transformers import AutoTokenizer

    auto = AutoTokenizer.from_pretrained(target)
    assert type(auto) is type(loaded.tokenizer) and auto.get_vocab() == loaded.tokenizer.get_vocab()
    for text in ("ab cd", "Hello, world!\n", ""):
        assert auto(text).input_ids == loaded.tokenizer(text).input_ids
    assert (auto.eos_token_id, auto.pad_token_id, auto.bos_token_id) == (
        loaded.tokenizer.eos_token_id, loaded.tokenizer.pad_token_id, loaded.tokenizer.bos_token_id)
    code = PRODUCT_RUN.format(target=str(target), draft=str(draft), heavy=HEAVY_MODULES)
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=300, cwd=Path(__file__).resolve().parents[3])
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["target"] == report["draft"] == "langchain_seed.engine.llama"
    assert report["heavy"] == [], f"imported on the product's path: {report['heavy']}"
    assert isinstance(report["text"], str)
