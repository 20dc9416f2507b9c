"""A float model's weights quantised in place into GGML blocks: `weights="int8"` or `"int4"`.

``int8`` keeps every linear and the token embedding as Q8_0 (int8 values in groups of 32,
one fp16 scale a group); ``int4`` as Q4_1 (4-bit values in groups of 32, an fp16 scale and
minimum a group), quantised by gguf-py's reference quantiser. The model then *is* the
quantised model: its float32 weights are the blocks' dequantised values, and every decoding
mode reproduces that model's own autoregressive output. A tied LM head shares its
embedding's blocks. Weights whose input size is not a multiple of 32 stay float32.
"""

from __future__ import annotations

import torch

from langchain_seed.engine.weights.formats import BLOCK_VALUES, quantize
from langchain_seed.engine.weights.int8_dot import Int8Embedding, Int8Linear
from langchain_seed.engine.weights.modules import QuantizedEmbedding, QuantizedLinear

WEIGHT_FORMATS = {"int8": "q8_0", "int4": "q4_1"}
"""The `weights=` choices for a float model, and the block format each keeps."""


def quantize_model(model: torch.nn.Module, weights: str) -> int:
    """Replace `model`'s linears and token embedding by block-quantised modules (`weights`:
    "int8" or "int4"); returns how many modules were replaced."""
    if weights not in WEIGHT_FORMATS:
        raise ValueError(f"weights must be one of {', '.join(WEIGHT_FORMATS)} to quantise a model; got {weights!r}")
    fmt = WEIGHT_FORMATS[weights]
    shared: dict[int, torch.Tensor] = {}
    replaced = 0
    for name, module in list(model.named_modules()):
        replacement = _quantized(module, fmt, shared, name)
        if replacement is not None:
            _replace(model, name, replacement)
            replaced += 1
    return replaced


def _quantized(module: torch.nn.Module, fmt: str, shared: dict[int, torch.Tensor], name: str) -> torch.nn.Module | None:
    """The quantised counterpart of a linear or embedding (None for anything else or a
    weight whose rows are not whole blocks); `shared` maps a weight's storage to its blocks,
    so tied weights stay tied."""
    if not (type(module) is torch.nn.Linear or type(module) is torch.nn.Embedding):
        return None
    weight = module.weight
    if weight.dim() != 2 or weight.shape[1] % BLOCK_VALUES or weight.device.type != "cpu":
        return None
    key = weight.untyped_storage().data_ptr()
    if key not in shared:
        shared[key] = quantize(weight, fmt)
    if isinstance(module, torch.nn.Embedding):
        return QuantizedEmbedding(shared[key], fmt, module.embedding_dim, name=name)
    assert isinstance(module, torch.nn.Linear)  # narrowed above; for the type checker
    return QuantizedLinear(shared[key], fmt, module.in_features, module.bias, name=name)


def use_int8_activations(model: torch.nn.Module) -> int:
    """Replace `model`'s `QuantizedLinear`s by `Int8Linear`s (repacked; the old blocks are
    released) and an embedding tied to such a linear by an `Int8Embedding` on the same
    repacked table; returns how many linears were replaced. The model is then the model
    with 8-bit activations, and the engine's target is that model."""
    # Modules sharing blocks (a tied head and embedding) by the blocks' address, taken while
    # all are alive; then each group is repacked and replaced in turn, so its old blocks are
    # freed before the next group's copy is made (no second copy of the whole model at once).
    tied: dict[int, list[str]] = {}
    for name, module in model.named_modules():
        if isinstance(module, (QuantizedLinear, QuantizedEmbedding)):
            tied.setdefault(module.blocks.data_ptr(), []).append(name)
    for names in tied.values():
        linears = [name for name in names if isinstance(model.get_submodule(name), QuantizedLinear)]
        if linears:  # an embedding tied to no linear keeps its blocks
            _repack_group(model, names, linears[0])
    return sum(isinstance(m, Int8Linear) for m in model.modules())


def int8_draft_layers(draft: torch.nn.Module) -> int:
    """Quantise a draft's decoder layers' linears to Q8_0 and give them 8-bit activations
    (`use_int8_activations`), leaving its embedding (often the target's own module) alone;
    returns how many linears now take int8. A draft's arithmetic never changes the output
    (the target verifies every token), only how often the target agrees and what a draft
    step costs."""
    layers = decoder_layers(draft)
    if layers is None:
        raise ValueError("int8 draft layers need a decoder model with .layers")
    quantize_model(layers, "int8")
    return use_int8_activations(layers)


def decoder_layers(model: torch.nn.Module) -> torch.nn.Module | None:
    """A transformers decoder model's layers (`model.get_decoder().layers`), or None for a
    model without them (a feature draft)."""
    get_decoder = getattr(model, "get_decoder", None)
    layers = getattr(get_decoder(), "layers", None) if callable(get_decoder) else None
    return layers if isinstance(layers, torch.nn.Module) else None


def _repack_group(model: torch.nn.Module, names: list[str], first_linear: str) -> None:
    """Replace the modules `names` (sharing one weight's blocks) by `Int8Linear`s on one
    repacked copy and, for an embedding among them, an `Int8Embedding` on it."""
    first = model.get_submodule(first_linear)
    assert isinstance(first, QuantizedLinear)  # chosen so by the caller; for the type checker
    shared = Int8Linear.from_blocks(first.blocks, first.fmt, first.in_features)
    del first
    for name in names:
        module = model.get_submodule(name)
        if isinstance(module, QuantizedEmbedding):
            replacement: torch.nn.Module = Int8Embedding(shared)
        elif not isinstance(module, QuantizedLinear) or module.bias is None:
            replacement = shared
        else:
            replacement = Int8Linear(shared.groups, shared.fmt, shared.in_features, shared.out_features, module.bias)
        del module
        _replace(model, name, replacement)


def has_int8_activations(model: torch.nn.Module) -> bool:
    """Whether any of `model`'s linears quantise their input (`use_int8_activations`)."""
    return any(isinstance(m, Int8Linear) for m in model.modules())


def _replace(model: torch.nn.Module, name: str, module: torch.nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def dequantized_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of `model` with its block-quantised modules dense again (`dequantize_model`):
    the same model, computed by transformers' and torch's own code (the benchmark's float32
    baselines; a model in the engine's own Llama modules is copied into transformers'
    classes, `llama.as_transformers`); `model` keeps its blocks."""
    import copy

    from langchain_seed.engine.llama import as_transformers

    return dequantize_model(copy.deepcopy(as_transformers(model)))


def dequantize_model(model: torch.nn.Module) -> torch.nn.Module:
    """Replace, in place, every block-quantised module of `model` by a plain float32
    `nn.Linear` / `nn.Embedding` holding the dequantised weight; tied modules (shared blocks)
    share one dense parameter. Returns `model`, in eval mode."""
    tables: dict[int, torch.nn.Parameter] = {}
    for name, module in list(model.named_modules()):
        if isinstance(module, (QuantizedLinear, QuantizedEmbedding)):
            _replace(model, name, _dense(module, tables))
    return model.eval()


def _dense(module: QuantizedLinear | QuantizedEmbedding, tables: dict[int, torch.nn.Parameter]) -> torch.nn.Module:
    """The plain module a quantised one stands for; `tables` maps blocks to their dense weight."""
    key = module.blocks.untyped_storage().data_ptr()
    if key not in tables:
        tables[key] = torch.nn.Parameter(module.weight, requires_grad=False)
    if isinstance(module, QuantizedEmbedding):
        return torch.nn.Embedding(module.num_embeddings, module.embedding_dim, _weight=tables[key])
    dense = torch.nn.Linear(module.in_features, module.out_features, bias=module.bias is not None, device="meta")
    dense.weight = tables[key]
    if module.bias is not None:
        dense.bias = torch.nn.Parameter(module.bias.clone(), requires_grad=False)
    return dense


def is_quantized_model(model: torch.nn.Module) -> bool:
    """Whether any of `model`'s modules keeps its weight in blocks."""
    return any(isinstance(m, (QuantizedLinear, QuantizedEmbedding, Int8Linear)) for m in model.modules())


def dense_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """`module.state_dict()` with each block-quantised submodule's blocks given as its
    dequantised float32 ``weight`` (what the plain module's state dict would hold)."""
    state = module.state_dict()
    for name, child in module.named_modules():
        if isinstance(child, (QuantizedLinear, QuantizedEmbedding)):
            prefix = f"{name}." if name else ""
            state.pop(f"{prefix}blocks", None)
            state[f"{prefix}weight"] = child.weight
    return state
