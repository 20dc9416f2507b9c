"""Tiny random model pairs for engine tests: no downloads, a few milliseconds per forward."""

from __future__ import annotations

import copy

import pytest
import torch

from langchain_seed.engine import SamplingParams, SeedEngine, SpeculativeConfig, native

VOCAB = 64

needs_kernel = pytest.mark.skipif(not native.available(), reason=f"native kernel: {native.unavailable_reason()}")
"""For tests of the native C kernels: they skip only where the library cannot be built
(test_native's build test fails CI where it should build and does not)."""


def peaked_init(config):
    """Large init scale so that random models have peaked next-token distributions."""
    config.initializer_range = 0.3
    return config


def build_model(arch: str, seed: int = 0, layers: int = 2):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    if arch == "llama":
        config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
        model_class = LlamaForCausalLM
    elif arch == "qwen2":
        config = Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
        model_class = Qwen2ForCausalLM
    elif arch == "gpt2":
        config = GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=layers, n_head=4, n_positions=256)
        model_class = GPT2LMHeadModel
    else:
        raise ValueError(arch)
    config.bos_token_id = config.eos_token_id = config.pad_token_id = None
    model = model_class(peaked_init(config)).eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


def noisy_copy(model, noise: float, seed: int = 1):
    """A draft that agrees with the target often but not always."""
    torch.manual_seed(seed)
    draft = copy.deepcopy(model)
    with torch.no_grad():
        for parameter in draft.parameters():
            parameter.add_(torch.randn_like(parameter) * noise)
    return draft


def hf_greedy(model, prompt: list[int], max_new_tokens: int) -> list[int]:
    """The reference: transformers' own greedy generation, new tokens only."""
    ids = torch.tensor([prompt])
    output = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False)
    return output[0, len(prompt):].tolist()


PROMPTS = [[1, 2, 3, 4, 5], [7, 8], [9, 10, 11, 12, 13, 14, 15, 16, 17], [7, 8], [3]]


def masked_step(batch: int, context: int, new: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """New token ids `[batch, new]`, their positions and a 4-D additive float mask
    `[batch, 1, new, context + new]` hiding cached slots 2-4 of row 0 and keeping the new
    tokens causal."""
    torch.manual_seed(context + new)
    ids = torch.randint(3, 100, (batch, new))
    positions = torch.arange(context, context + new).expand(batch, new)
    visible = torch.ones(batch, new, context + new, dtype=torch.bool)
    visible[:, :, context:] = torch.ones(new, new, dtype=torch.bool).tril()
    visible[0, :, 2:5] = False
    mask = torch.zeros(visible.shape).masked_fill_(~visible, torch.finfo(torch.float32).min)
    return ids, positions, mask[:, None]


def record_decisions(monkeypatch, module, name: str = "_applies") -> list[bool]:
    """Patch `module.name` (a predicate) to also append each answer to the returned list."""
    decisions: list[bool] = []
    decide = getattr(module, name)
    monkeypatch.setattr(module, name, lambda *args: decisions.append(decide(*args)) or decisions[-1])
    return decisions


MODES_AND_VERIFY = [("autoregressive", "batched"), ("speculative", "rounds"), ("scheduled", "rounds"),
                    ("scheduled", "batched")]
"""Every decoding mode, the scheduled one with both verifications."""


def assert_every_mode_decodes(target, draft, reference: list[list[int]], k_config: tuple[int, ...],
                              max_tokens: int) -> None:
    """An engine on the pair gives `reference` (one list per `PROMPTS` entry) in every mode
    of `MODES_AND_VERIFY`, its draft partly right (else the test would mean little)."""
    for mode, verify in MODES_AND_VERIFY:
        engine = SeedEngine(target, draft, config=SpeculativeConfig(k_config=k_config, verify=verify))
        try:
            results = engine.generate(PROMPTS, SamplingParams(max_tokens=max_tokens), mode=mode)
        finally:
            engine.close()
        assert [r.token_ids for r in results] == reference, (mode, verify)
        if mode != "autoregressive":
            assert 0 < results.stats.acceptance_rate < 1, "the draft must be partly right for the test to mean anything"


def engine_llama_copy(model):
    """transformers' Llama `model` in the engine's own modules (`engine.llama`), on copies of
    the same weights."""
    from langchain_seed.engine.llama import LlamaForCausalLM, LlamaSettings

    settings = LlamaSettings.from_dict(model.config.to_dict())
    assert settings is not None, "a Llama config the engine's modules cover"
    copied = LlamaForCausalLM(settings)
    copied.load_state_dict(copy.deepcopy(model.state_dict()))
    copied.generation_config = model.generation_config
    return copied.eval()
