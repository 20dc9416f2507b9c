"""A Llama decoder layer's forward as straight calls into the native kernels.

Inside `engine_kernels("native")`, every installed `LlamaDecoderLayer` runs
`native_layer_forward`: transformers' computation (norm, q/k/v projections, rotary
embedding, cache append, grouped-query attention, output projection, residual, norm,
SiLU MLP, residual), step for step, on `engine.native`'s kernels; its linears may be
`nn.Linear`s, `QuantizedLinear`s or `Int8Linear`s (`engine.weights`), each on its own kernel. Routing each module
separately (`routing.install`) already runs the same kernels; what this removes is the
Python between them: twelve module calls, keyword plumbing and a routing check per op,
about 150 us a layer, or 4-5 ms of a 30-layer forward at decoding sizes.

Everything it does not implement goes to the layer's own forward: other kernels, autograd,
inputs past the row limit (`kernels.native_max_rows()`, for a layer with dense linears),
missing rotary inputs, unknown keyword arguments, a mask or head size the attention
kernel does not take (`kernels.engine_attention` decides that per call, after the cache
append, exactly as the routed module would).
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from langchain_seed.engine import kernels, native
from langchain_seed.engine.weights.int8_dot import Int8Linear
from langchain_seed.engine.weights.modules import QuantizedLinear

LINEAR_CLASSES = (torch.nn.Linear, QuantizedLinear, Int8Linear)
"""The projections `native_layer_forward` runs (each on its own kernel)."""

LAYER_CLASSES = frozenset({"LlamaDecoderLayer"})
"""Decoder layers whose forward `native_layer_forward` reproduces."""


def supports(layer: Any) -> bool:
    """Whether `layer` has the structure `native_layer_forward` reproduces (checked once,
    at install)."""
    attention = getattr(layer, "self_attn", None)
    return (type(layer).__name__ in LAYER_CLASSES and attention is not None
            and all(type(getattr(attention, name, None)) in LINEAR_CLASSES
                    for name in ("q_proj", "k_proj", "v_proj", "o_proj"))
            and all(type(getattr(layer, name, None)).__name__ in kernels.RMS_NORM_CLASSES
                    for name in ("input_layernorm", "post_attention_layernorm"))
            and _is_silu_mlp(getattr(layer, "mlp", None))
            and isinstance(getattr(attention, "head_dim", None), int) and attention.head_dim % 2 == 0
            and isinstance(getattr(attention, "layer_idx", None), int))


def native_layer_forward(layer: Any, replaced: Callable, hidden_states: torch.Tensor,
                         attention_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                         cache=None, use_cache: bool | None = False,
                         position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
                         **kwargs) -> torch.Tensor:
    """transformers' `LlamaDecoderLayer.forward` on the native kernels where it applies
    (module notes); `replaced` (the layer's own forward) everywhere else.

    hidden_states: `[batch, new, hidden]`; position_embeddings: (cos, sin), each
    `[batch or 1, new, head_dim]`; attention_mask: `[batch, 1, new, slots]` or None.
    Returns the layer's output `[batch, new, hidden]`.
    """
    if position_embeddings is None or not _applies(layer, hidden_states, position_embeddings, kwargs):
        return replaced(hidden_states, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
                        use_cache=use_cache, position_embeddings=position_embeddings, **kwargs)
    return layer_on_kernels(layer, hidden_states, position_embeddings, attention_mask, cache)[0]


ATTENTION_CHUNK_ROWS = 128
"""Query rows per native call in a long forward (a prefill): each chunk of rows attends
only up to the last key any of them sees. The keys after it are masked for every row of
the chunk and would add exact zeros, so the bits are the same, for a third less attention
work in a causal prefill of 300 tokens. Shorter forwards stay one call: split, their
linears run on smaller tiles and cost more than the attention saves (docs/BENCHMARKS.md)."""


@dataclass(frozen=True)
class AttentionRoute:
    """How a layer's attention runs for keys of `key_shape`: on the native kernel with
    `mask` (`kernels.native_attention_mask`), or through `kernels.engine_attention`. Layers
    of one model with the same attention settings take the same route for the same
    query, keys and mask, so a model forward decides it once (`layer_on_kernels`).
    `chunks`: for a long native call, its query rows `[start, stop)`, the keys they see
    (`[0, keys)`) and their part of the mask (`[batch, 1, stop - start, keys]`,
    contiguous); empty: one call."""

    key_shape: torch.Size
    native: bool
    mask: torch.Tensor | None
    chunks: tuple[tuple[int, int, int, torch.Tensor], ...] = ()


def layer_on_kernels(layer: Any, hidden_states: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor],
                     attention_mask: torch.Tensor | None, cache, route: AttentionRoute | None = None,
                     ) -> tuple[torch.Tensor, AttentionRoute]:
    """The layer's forward on the native kernels, where `_applies` holds (the caller checked).

    hidden_states: `[batch, new, hidden]`; position_embeddings: (cos, sin), each
    `[batch or 1, new, head_dim]`; attention_mask: `[batch, 1, new, slots]` or None. `route`:
    the attention route of a previous layer of the same model in the same forward (reused
    when its keys have the same shape; None: decided here). Returns the layer's output
    `[batch, new, hidden]` and the route its attention took.
    """
    attention = layer.self_attn
    cos, sin = position_embeddings
    fused = _facts(layer).fused
    if fused is not None:
        query, key, value = native.layer_qkv(fused, hidden_states, cos, sin)
    else:
        query, key, value = _query_key_value(layer, _norm(layer.input_layernorm, hidden_states))
        query, key = native.rotary(query, cos, sin), native.rotary(key, cos, sin)
    if cache is not None:
        key, value = cache.update(key, value, attention.layer_idx, kwargs={})
    if route is None or route.key_shape != key.shape:
        route = attention_route(attention, query, key, value, attention_mask)
    if fused is not None and route.native:
        if route.chunks:
            return torch.cat([native.layer_rest(fused, hidden_states[:, start:stop], query[:, :, start:stop],
                                                key[:, :, :keys], value[:, :, :keys], mask, attention.scaling)
                              for start, stop, keys, mask in route.chunks], dim=1), route
        return native.layer_rest(fused, hidden_states, query, key, value, route.mask, attention.scaling), route
    attended, _ = kernels.engine_attention(attention, query, key, value, attention_mask, scaling=attention.scaling)
    hidden_states = hidden_states + _project(attention.o_proj, attended.flatten(2))
    mlp = layer.mlp
    normed = _norm(layer.post_attention_layernorm, hidden_states)
    return hidden_states + _project(mlp.down_proj, _gate_up_silu(mlp, normed)), route


def attention_route(attention: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    attention_mask: torch.Tensor | None) -> AttentionRoute:
    """How `attention` runs over these query, keys and mask (`AttentionRoute`); only the
    tensors' shapes, dtypes and devices are read."""
    if kernels.takes_native_attention(attention, query, key, value, attention_mask):
        mask = kernels.native_attention_mask(query, attention_mask)
        return AttentionRoute(key.shape, True, mask, _query_chunks(mask))
    return AttentionRoute(key.shape, False, None)


def _query_chunks(mask: torch.Tensor | None) -> tuple[tuple[int, int, int, torch.Tensor], ...]:
    """`AttentionRoute.chunks` for an additive mask `[batch, 1, new, slots]`: chunks of
    `ATTENTION_CHUNK_ROWS` query rows, each up to 1 + the last key a row of it sees (all of
    them where a row sees none: its softmax would change); none unless a chunk saves keys."""
    if mask is None or mask.shape[2] <= ATTENTION_CHUNK_ROWS:
        return ()
    rows, slots = mask.shape[2], mask.shape[3]
    hidden = mask[:, 0] < torch.finfo(mask.dtype).min / 2  # -inf, or the engine's masks' float minimum
    seen = (~hidden) * torch.arange(1, slots + 1)  # [batch, new, slots]: 1 + the slot where visible
    last = seen.amax(dim=-1)  # [batch, new]: 1 + the last visible slot, 0 for none
    chunks = []
    for start in range(0, rows, ATTENTION_CHUNK_ROWS):
        stop = min(rows, start + ATTENTION_CHUNK_ROWS)
        block = last[:, start:stop]
        keys = slots if bool((block == 0).any()) else int(block.max())
        chunks.append((start, stop, keys, mask[:, :, start:stop, :keys].contiguous()))
    return tuple(chunks) if any(keys < slots for _, _, keys, _ in chunks) else ()


def _applies(layer: Any, hidden_states: torch.Tensor, position_embeddings, kwargs) -> bool:
    """The native kernels in this thread, eval mode, CPU float32 tensors (weights
    included), no autograd, at most `kernels.native_max_rows()` rows, rotary inputs, and no keyword
    argument that asks for anything."""
    if (kernels.active_kernel() != "native" or layer.training or position_embeddings is None
            or not native.available()):
        return False
    if any(value is not None and value is not False for value in kwargs.values()):
        return False
    if not (hidden_states.is_cpu and hidden_states.dtype is torch.float32 and hidden_states.dim() == 3
            and hidden_states.shape[0] * hidden_states.shape[1] <= row_limit(layer)):
        return False
    cos, sin = position_embeddings
    if not (cos.dtype is torch.float32 and sin.dtype is torch.float32 and cos.is_cpu and sin.is_cpu
            and cos.shape == sin.shape and cos.shape[0] in (1, hidden_states.shape[0])
            and cos.shape[1:] == (hidden_states.shape[1], layer.self_attn.head_dim)):
        return False
    grad = torch.is_grad_enabled()
    if grad and hidden_states.requires_grad:
        return False
    if not grad:
        return _facts(layer).fits
    return all(_fits(parameter, grad) for parameter in _parameters(layer))


@dataclass(frozen=True)
class _LayerFacts:
    """What `_applies` checks of a layer's own modules, once per layer (the engine does not
    expect a model's weights to change kind or type while it runs its kernels)."""

    invariant: bool  # every linear computes its rows the same way at any size (`batch_invariant`)
    fits: bool  # every float parameter on the CPU, float32, contiguous (without autograd)
    fused_qkv: bool  # query, key and value: Int8Linears of one format, no bias, whole groups
    fused: native.LayerWeights | None  # the whole layer in two native calls, where it fits


_layer_facts: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def forget(layer: Any) -> None:
    """Drop what was learnt of `layer` (`_facts`: its linears' kinds and the weights its two
    native calls read); `routing.install` does, so weights replaced between engines count."""
    _layer_facts.pop(layer, None)


def _facts(layer: Any) -> _LayerFacts:
    facts = _layer_facts.get(layer)
    if facts is None:
        kinds = [type(linear) for linear in _linears(layer)]
        invariant = all(getattr(kind, "batch_invariant", False) for kind in kinds)
        fits = all(_fits(p, False) for p in _parameters(layer))
        facts = _layer_facts[layer] = _LayerFacts(invariant, fits, _fusable_qkv(layer),
                                                  _fused_layer(layer) if fits else None)
    return facts


def fused_weights(layer: Any) -> native.LayerWeights | None:
    """The layer's weights for its two native calls (`native.layer_qkv` / `layer_rest`), or
    None where they do not fit them."""
    return _facts(layer).fused


def _fused_layer(layer: Any) -> native.LayerWeights | None:
    """The layer's weights for `native.layer_qkv` / `layer_rest`, or None where they do not
    fit those calls (it then runs kernel by kernel)."""
    try:
        return native.layer_weights(layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon,
                                    tuple(map(_kernel_linear, _linears(layer))), layer.post_attention_layernorm.weight,
                                    layer.post_attention_layernorm.variance_epsilon, layer.self_attn.head_dim)
    except ValueError:
        return None


def _kernel_linear(linear: Any) -> native.LayerLinear:
    """How `native.layer_weights` takes one of `LINEAR_CLASSES`; ValueError for one it cannot."""
    if type(linear) is Int8Linear:
        if linear.out_features % 8:  # its groups are padded: the calls would write the padding
            raise ValueError(f"an Int8Linear of {linear.out_features} outputs (not whole groups of 8)")
        groups, fmt, bias = linear.kernel_args()
        return "int8", groups, fmt, bias
    if type(linear) is QuantizedLinear:
        return "blocks", linear.blocks, linear.fmt, linear.bias
    return "dense", linear.weight, None, linear.bias


def _fusable_qkv(layer: Any) -> bool:
    projections = [layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj]
    return (all(type(p) is Int8Linear and p.bias is None and p.out_features % 8 == 0 for p in projections)
            and len({p.fmt for p in projections}) == 1 and len({p.in_features for p in projections}) == 1)


def _linears(layer: Any) -> tuple[Any, ...]:
    attention, mlp = layer.self_attn, layer.mlp
    return (attention.q_proj, attention.k_proj, attention.v_proj, attention.o_proj, mlp.gate_proj, mlp.up_proj,
            mlp.down_proj)


def _parameters(layer: Any) -> list[torch.Tensor | None]:
    """Every float parameter the forward reads (None for absent biases; a quantised
    linear's blocks are checked when it is built)."""
    linears = _linears(layer)
    return [*(linear.weight for linear in linears if type(linear) is torch.nn.Linear),
            *(linear.bias for linear in linears), layer.input_layernorm.weight, layer.post_attention_layernorm.weight]


def row_limit(layer: Any) -> int:
    """The most rows the kernels of this layer's linears take: any number for a layer of
    `Int8Linear`s and `QuantizedLinear`s, which compute every row the same way at every size
    (`kernels.batch_invariant`); the native row limit where a dense `nn.Linear` is among them."""
    if _facts(layer).invariant:
        return sys.maxsize  # every size on the same kernels: the model's rows do not depend on the batch
    return kernels.native_max_rows()


def fits(layer: Any) -> bool:
    """Whether the layer is in eval mode and every float parameter it reads is on the CPU,
    float32 and contiguous (what `_applies` asks of its weights without autograd)."""
    return not layer.training and _facts(layer).fits


def _is_silu_mlp(mlp: Any) -> bool:
    """A SiLU MLP of dense linears (`kernels.is_silu_mlp`), or of quantised ones in one format."""
    if kernels.is_silu_mlp(mlp):
        return mlp.down_proj.weight.shape[1] == mlp.gate_proj.weight.shape[0]
    projections = [getattr(mlp, name, None) for name in ("gate_proj", "up_proj", "down_proj")]
    return (type(mlp).__name__ in kernels.MLP_CLASSES
            and type(getattr(mlp, "act_fn", None)).__name__ in ("SiLUActivation", "SiLU")
            and any(all(type(p) is kind for p in projections) for kind in (QuantizedLinear, Int8Linear))
            and mlp.gate_proj.fmt == mlp.up_proj.fmt and mlp.gate_proj.bias is None and mlp.up_proj.bias is None
            and _weight_data(mlp.gate_proj).shape == _weight_data(mlp.up_proj).shape
            and mlp.down_proj.in_features == mlp.gate_proj.out_features
            and (type(mlp.gate_proj) is not Int8Linear or mlp.gate_proj.out_features % 8 == 0))


def _gate_up_silu(mlp: Any, x: torch.Tensor) -> torch.Tensor:
    """`silu(gate_proj(x)) * up_proj(x)` on the kernel of the MLP's weights."""
    if type(mlp.gate_proj) is Int8Linear:
        return native.int8_gate_up_silu(x, mlp.gate_proj.groups, mlp.up_proj.groups, mlp.gate_proj.fmt)
    if type(mlp.gate_proj) is QuantizedLinear:
        return native.quantized_gate_up_silu(x, mlp.gate_proj.blocks, mlp.up_proj.blocks, mlp.gate_proj.fmt)
    return native.gate_up_silu(x, mlp.gate_proj.weight, mlp.up_proj.weight)


def _fits(parameter: torch.Tensor | None, grad: bool) -> bool:
    return parameter is None or (parameter.is_cpu and parameter.dtype is torch.float32 and parameter.is_contiguous()
                                 and not (grad and parameter.requires_grad))


def _weight_data(linear: QuantizedLinear | Int8Linear) -> torch.Tensor:
    return linear.groups if isinstance(linear, Int8Linear) else linear.blocks


def _project(linear: torch.nn.Linear | QuantizedLinear | Int8Linear, x: torch.Tensor) -> torch.Tensor:
    if type(linear) is Int8Linear:
        return linear(x)
    if type(linear) is QuantizedLinear:
        return native.quantized_linear(x, linear.blocks, linear.fmt, linear.bias)
    return native.skinny_linear(x, linear.weight, linear.bias)


def _query_key_value(layer: Any, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The attention's query, key and value projections of x `[batch, new, hidden]`, each as
    `[batch, heads, new, head_dim]`: in one int8 call where the layer allows (`_facts`)."""
    attention = layer.self_attn
    head_dim = attention.head_dim
    if not _facts(layer).fused_qkv:
        return (_heads(attention.q_proj, x, head_dim), _heads(attention.k_proj, x, head_dim),
                _heads(attention.v_proj, x, head_dim))
    query, key, value = native.int8_linear3(x, attention.q_proj.groups, attention.k_proj.groups,
                                            attention.v_proj.groups, attention.q_proj.fmt)
    def heads(projection: torch.Tensor) -> torch.Tensor:
        return projection.view(*x.shape[:2], -1, head_dim).transpose(1, 2)

    return heads(query), heads(key), heads(value)


def _heads(linear: torch.nn.Linear | QuantizedLinear | Int8Linear, x: torch.Tensor, head_dim: int) -> torch.Tensor:
    """The projection of x `[batch, new, hidden]` as `[batch, heads, new, head_dim]` (a view)."""
    return _project(linear, x).view(*x.shape[:2], -1, head_dim).transpose(1, 2)


def _norm(norm: Any, x: torch.Tensor) -> torch.Tensor:
    return native.rms_norm(x, norm.weight, norm.variance_epsilon)
