"""Tiny random model pairs for engine tests: no downloads, a few milliseconds per forward."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFWriter, quants

from langchain_seed.engine import native

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


LAYER_TENSORS = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def _interleave(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's converter's row order for query and key weights (the inverse of the loader's)."""
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(
        weight.shape)


def write_tiny_gguf(path: Path, layer_type: str = "Q4_1", embedding_type: str = "Q8_0",
                    model: torch.nn.Module | None = None) -> torch.nn.Module:
    """A tiny Llama (`model`, else `build_model("llama")`) as a GGUF file, as llama.cpp would
    write it; returns the float model."""
    model = model if model is not None else build_model("llama")
    config = model.config
    writer = GGUFWriter(str(path), "llama")
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(float(config.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    state = {name: value.detach().numpy() for name, value in model.state_dict().items()}

    def add(name: str, values: np.ndarray, kind: str) -> None:
        if kind == "F32":
            writer.add_tensor(name, values.astype(np.float32))
            return
        qtype = GGMLQuantizationType[kind]
        writer.add_tensor(name, quants.quantize(values.astype(np.float32), qtype), raw_dtype=qtype)

    add("token_embd.weight", state["model.embed_tokens.weight"], embedding_type)
    add("output.weight", state["lm_head.weight"], embedding_type)
    add("output_norm.weight", state["model.norm.weight"], "F32")
    for layer in range(config.num_hidden_layers):
        prefix = f"model.layers.{layer}."
        for gguf_name, hf_name in LAYER_TENSORS.items():
            values = state[f"{prefix}{hf_name}.weight"]
            if gguf_name in ("attn_q", "attn_k"):
                values = _interleave(values, config.num_attention_heads if gguf_name == "attn_q"
                                     else config.num_key_value_heads)
            add(f"blk.{layer}.{gguf_name}.weight", values, layer_type)
        add(f"blk.{layer}.attn_norm.weight", state[f"{prefix}input_layernorm.weight"], "F32")
        add(f"blk.{layer}.ffn_norm.weight", state[f"{prefix}post_attention_layernorm.weight"], "F32")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return model
