"""A causal LM whose weights come straight from a GGUF file, still in blocks.

transformers' own GGUF loading (`from_pretrained(..., gguf_file=...)`) dequantises every
tensor to a dense copy; `load_gguf_model` keeps Q4_1 and Q8_0 tensors as they are in the
file (`QuantizedLinear` / `QuantizedEmbedding`) and dense (F32, F16, BF16) tensors as float32
parameters, so the model holds the file's bytes, not four to six times as many. The
tensor names and Llama's query/key row order follow gguf-py's name map and transformers'
GGUF support, so the model computes exactly what transformers' dequantised model
computes. A Llama is built from the engine's own modules (`engine.llama`: the same
computation, without the ~90 MB that importing a transformers model class costs); other
architectures, or `implementation="transformers"`, from transformers' classes.

Tensor types the engine does not compute with (the K-quants, Q4_0, Q5_x, IQ...) are
refused with a message naming the tensor and its type; `from_pretrained(...,
weights="float32")` dequantises such a file instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from langchain_seed.engine.weights.formats import FORMATS, block_format
from langchain_seed.engine.weights.gguf_file import TensorInfo, read_index, read_tensor
from langchain_seed.engine.weights.modules import QuantizedEmbedding, QuantizedLinear

BLOCK_TYPES = {layout.ggml_type: name for name, layout in FORMATS.items()}
"""GGUF tensor types kept in blocks, and the engine's name for each."""
DENSE_TYPES: dict[str, Any] = {"F32": np.float32, "F16": np.float16, "BF16": None}
"""GGUF tensor types loaded as float32 parameters (BF16 is read as its raw 16 bits)."""
ROW_PERMUTED_ARCHITECTURES = ("llama", "mistral")
"""Architectures whose GGUF stores the query and key rows interleaved for its rotary code
(transformers' `LlamaTensorProcessor` puts them back)."""


class UnsupportedTensorType(ValueError):
    """A GGUF tensor of a type the engine does not compute with (its message names it)."""


IMPLEMENTATIONS = ("engine", "transformers")
"""Whose module classes a GGUF model is built from: the engine's own Llama (`engine.llama`,
where it covers the architecture; else transformers') or transformers'."""


def load_gguf_model(path: str | Path, config: Any = None, implementation: str = "engine") -> torch.nn.Module:
    """The causal LM in GGUF file `path`, its Q4_1/Q8_0 weights kept in blocks, in eval mode.

    `config`: the transformers config to build (default: `config.json` beside the file, else
    the one transformers reads from the file). `implementation` (`IMPLEMENTATIONS`): "engine"
    builds a Llama from the engine's own modules, which import no transformers model class
    (another architecture falls back to transformers'). Raises ValueError naming the tensor
    when one has an unsupported type, an unexpected name or a size that does not match its
    shape (a truncated or corrupt file).
    """
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {', '.join(IMPLEMENTATIONS)}; got {implementation!r}")
    path = Path(path)
    tensors = read_index(path)
    model = _engine_model(path, config) if implementation == "engine" else None
    if model is None:
        model = _transformers_model(path, config)
    config = model.config
    names = _tensor_names(model, config)
    for tensor in tensors:
        _place(model, config, names, tensor, path)
    _tie_output(model, config)
    _refuse_missing(model, path.name)
    return model.eval()


def _engine_model(path: Path, config: Any) -> torch.nn.Module | None:
    """An empty (meta) `engine.llama.LlamaForCausalLM` for the file, or None where its config
    is not one the engine's modules cover."""
    from langchain_seed.engine.llama import LlamaForCausalLM, LlamaSettings

    if config is not None:
        settings = LlamaSettings.from_dict(config.to_dict())
    elif (path.parent / "config.json").is_file():
        settings = LlamaSettings.from_file(path.parent / "config.json")
    else:
        settings = LlamaSettings.from_dict(_transformers_config(path, None).to_dict())
    if settings is None:
        return None
    return LlamaForCausalLM(settings, device="meta")


def _transformers_model(path: Path, config: Any) -> torch.nn.Module:
    """An empty (meta) transformers causal LM for the file."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        return AutoModelForCausalLM.from_config(_transformers_config(path, config), dtype=torch.float32)


def _transformers_config(path: Path, config: Any) -> Any:
    """`config`, else the `config.json` beside the file, else the one transformers reads from it."""
    from transformers import AutoConfig

    if config is not None:
        return config
    if (path.parent / "config.json").is_file():
        return AutoConfig.from_pretrained(path.parent)
    return AutoConfig.from_pretrained(path.parent, gguf_file=path.name)


def _tensor_names(model: torch.nn.Module, config: Any) -> dict[str, str]:
    """GGUF tensor name -> the model's parameter name, from gguf-py's name map for the
    architecture (the one transformers' GGUF loading uses, built once rather than per module)."""
    from gguf import MODEL_ARCH_NAMES, get_tensor_name_map

    arch = next((key for key, name in MODEL_ARCH_NAMES.items() if name == config.model_type), None)
    if arch is None:
        raise ValueError(f"GGUF architecture {config.model_type!r} is not one gguf-py maps; load the model "
                         "with weights='float32'")
    name_map = get_tensor_name_map(arch, config.num_hidden_layers)
    names = {}
    for hf_name in model.state_dict():
        stem, dot, suffix = hf_name.rpartition(".")
        gguf_name = name_map.get_name(stem) if dot else None
        if gguf_name is not None:
            names[f"{gguf_name}.{suffix}"] = hf_name
    return names


def _place(model: torch.nn.Module, config: Any, names: dict[str, str], tensor: TensorInfo, path: Path) -> None:
    """Put one GGUF tensor into the model: blocks into a quantised module, dense as a parameter."""
    kind, file = tensor.type_name, path.name
    if tensor.name == ROPE_FREQS and kind == "F32":
        _check_rope_freqs(model, config, _dense(path, tensor), file)
        return
    if tensor.name not in names:
        raise ValueError(f"{file}: tensor {tensor.name} ({kind}) has no place in a {config.model_type} model")
    module_name, _, attribute = names[tensor.name].rpartition(".")
    module = model.get_submodule(module_name)
    if kind in BLOCK_TYPES:
        _place_blocks(model, module_name, module, attribute, _blocks(path, tensor, BLOCK_TYPES[kind]),
                      BLOCK_TYPES[kind], _permutation(config, tensor.name), file)
    elif kind in DENSE_TYPES:
        values = _permute_rows(_dense(path, tensor), _permutation(config, tensor.name))
        expected = tuple(getattr(module, attribute).shape)
        if tuple(values.shape) != expected:
            raise ValueError(f"{file}: tensor {tensor.name} has shape {tuple(values.shape)}, the model expects "
                             f"{expected}")
        setattr(module, attribute, torch.nn.Parameter(values, requires_grad=False))
    else:
        raise UnsupportedTensorType(
            f"{file}: tensor {tensor.name} has type {kind}, which the engine does not compute with (it keeps "
            f"{', '.join(BLOCK_TYPES)} in blocks and reads {', '.join(DENSE_TYPES)}); load the model with "
            "weights='float32' to dequantise it instead")


ROPE_FREQS = "rope_freqs.weight"
"""Llama 3's rotary frequency divisors, as llama.cpp's converter writes them: derived from
the rope parameters of the model's config, so they are checked against it, not loaded."""


def _check_rope_freqs(model: Any, config: Any, divisors: torch.Tensor, file: str) -> None:
    """The model's rotary frequencies (from its config) are the plain ones divided by the
    file's `divisors` `[head_dim / 2]` (to float32 rounding); else ValueError naming the tensor:
    a config without Llama 3's rope scaling would otherwise give another model silently."""
    from langchain_seed.engine.llama import default_inverse_frequencies

    frequencies = model.get_decoder().rotary_emb.inv_freq
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    plain = default_inverse_frequencies(float(config.rope_parameters["rope_theta"]), head_dim)
    if divisors.shape != plain.shape or not torch.allclose(frequencies, plain / divisors, rtol=1e-5, atol=0.0):
        raise ValueError(f"{file}: tensor {ROPE_FREQS} scales the rotary frequencies otherwise than the config's "
                         f"rope parameters {config.rope_parameters} do; give the model a config.json with its "
                         "rope scaling")


def _place_blocks(model: torch.nn.Module, module_name: str, module: torch.nn.Module, attribute: str,
                  blocks: torch.Tensor, fmt: str, heads: int | None, file: str) -> None:
    """Replace the linear or embedding at `module_name` by its quantised counterpart."""
    blocks = _permute_rows(blocks, heads)
    if attribute != "weight" or not isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
        raise ValueError(f"{file}: {module_name}.{attribute} is a {type(module).__name__}'s {attribute}; only "
                         "linear and embedding weights can be kept in blocks")
    if isinstance(module, torch.nn.Embedding):
        _check_rows(blocks, module.num_embeddings, module_name, file)
        replacement: torch.nn.Module = QuantizedEmbedding(blocks, fmt, module.embedding_dim, name=module_name)
    else:
        _check_rows(blocks, module.out_features, module_name, file)
        bias = None if module.bias is None or module.bias.is_meta else module.bias.detach()
        replacement = QuantizedLinear(blocks, fmt, module.in_features, bias, name=module_name)
    parent_name, _, child = module_name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, replacement)


def _check_rows(blocks: torch.Tensor, rows: int, module_name: str, file: str) -> None:
    if blocks.shape[0] != rows:
        raise ValueError(f"{file}: {module_name} has {blocks.shape[0]} rows in the file, the model expects {rows}")


def _blocks(path: Path, tensor: TensorInfo, fmt: str) -> torch.Tensor:
    """A quantised tensor's bytes as `[rows, row bytes]` uint8."""
    in_features, rows = tensor.dims[0], int(np.prod(tensor.dims[1:]))
    row_bytes = block_format(fmt).row_bytes(in_features)
    return torch.from_numpy(read_tensor(path, tensor)).reshape(rows, row_bytes)


def _dense(path: Path, tensor: TensorInfo) -> torch.Tensor:
    """A dense tensor as float32, shaped as the model's parameter (GGUF lists dims innermost first)."""
    data = read_tensor(path, tensor)
    if tensor.type_name == "BF16":
        values = (torch.from_numpy(data.view(np.int16)).to(torch.int32) << 16).view(torch.float32)
    else:
        values = torch.from_numpy(data.view(np.dtype(DENSE_TYPES[tensor.type_name])).astype(np.float32))
    return values.reshape([int(d) for d in reversed(tensor.dims)])


def _permutation(config: Any, tensor_name: str) -> int | None:
    """How many heads to un-interleave the rows of (query and key weights of Llama-style
    GGUFs), or None."""
    if config.model_type not in ROW_PERMUTED_ARCHITECTURES:
        return None
    if ".attn_q." in tensor_name:
        return int(config.num_attention_heads)
    if ".attn_k." in tensor_name:
        return int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
    return None


def _permute_rows(rows: torch.Tensor, heads: int | None) -> torch.Tensor:
    """Undo llama.cpp's rotary row interleaving: per head, rows (2i, 2i+1) go back to
    (i, i + half). rows: `[out, ...]`; returns the same shape (contiguous)."""
    if heads is None:
        return rows
    half = rows.shape[0] // heads // 2
    return rows.reshape(heads, half, 2, *rows.shape[1:]).transpose(1, 2).reshape(rows.shape).contiguous()


def _tie_output(model: Any, config: Any) -> None:
    """A tied (or absent) LM head reads the embedding's table."""
    head, embedding = model.get_output_embeddings(), model.get_input_embeddings()
    if head is None or not _is_empty(head):
        return
    if isinstance(embedding, QuantizedEmbedding):
        model.set_output_embeddings(QuantizedLinear(embedding.blocks, embedding.fmt, embedding.embedding_dim,
                                                    name="lm_head"))
    elif not _is_empty(embedding):
        head.weight = embedding.weight


def _is_empty(module: torch.nn.Module) -> bool:
    return any(p.is_meta for p in module.parameters(recurse=False))


def _refuse_missing(model: torch.nn.Module, file: str) -> None:
    missing = [name for name, parameter in model.named_parameters() if parameter.is_meta]
    if missing:
        raise ValueError(f"{file}: no tensor for {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}: "
                         "the file is incomplete")
