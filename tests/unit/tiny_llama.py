"""A random character-level Llama saved as safetensors, for tests that need a model directory;
Llamas written as GGUF files, as llama.cpp writes them, and a GGUF pair as the product installs one."""

from __future__ import annotations

import json
import string
from pathlib import Path

import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFWriter, quants


def make_tiny_llama(path: Path, layers: int = 3, seed: int = 0, chat_template: str | None = None) -> Path:
    """Vocab 128 (printable characters + <unk>, <s>, </s>), hidden 32; eos = pad = 2."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    chars = sorted(set(string.printable))
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{c: i + 3 for i, c in enumerate(chars)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>",
                                        bos_token="<s>", eos_token="</s>", pad_token="</s>")
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    config = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         head_dim=8, max_position_embeddings=1024, tie_word_embeddings=True,
                         bos_token_id=1, eos_token_id=2, pad_token_id=2)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = 2
    model.generation_config.pad_token_id = 2
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


LAYER_TENSORS = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def _interleave(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's converter's row order for query and key weights (the inverse of the loader's)."""
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(
        weight.shape)


def write_tiny_gguf(path: Path, model: torch.nn.Module, layer_type: str = "Q4_1",
                    embedding_type: str = "Q8_0", rope_freqs: np.ndarray | None = None) -> torch.nn.Module:
    """transformers' Llama `model` as a GGUF file, as llama.cpp would write it (with Llama 3's
    `rope_freqs.weight` frequency divisors where given); returns `model`."""
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
    if rope_freqs is not None:
        add("rope_freqs.weight", rope_freqs, "F32")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return model


def make_tiny_gguf_pair(root: Path, seed: int = 0) -> tuple[Path, Path]:
    """A GGUF target directory as `langchain-seed models` installs one (the Q4_1 file with a
    Q8_0 embedding, config, generation config, a fast tokenizer) and a layers-only draft on
    it (one layer, noisy copies of the target's first)."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    source = make_tiny_llama(root / "source", layers=2, seed=seed)
    model = AutoModelForCausalLM.from_pretrained(source).eval()
    target = root / "target"
    target.mkdir()
    write_tiny_gguf(target / "tiny.Q4_1.gguf", model)
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        (target / name).write_bytes((source / name).read_bytes())
    draft = root / "draft"
    draft.mkdir()
    config = json.loads((source / "config.json").read_text())
    (draft / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 1}))
    generator = torch.Generator().manual_seed(seed + 1)
    layers = {name: value + 0.02 * torch.randn(value.shape, generator=generator)
              for name, value in model.state_dict().items()
              if not name.startswith(("model.embed_tokens", "lm_head", "model.layers.1."))}
    save_file(layers, str(draft / "draft_layers.safetensors"))
    return target, draft
