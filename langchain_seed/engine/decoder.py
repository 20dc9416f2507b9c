"""A Llama decoder's whole forward as one loop over its layers' native calls.

Inside `engine_kernels("native")`, every installed `LlamaModel` (the decoder a causal LM
wraps: transformers' or the engine's own, `engine.llama`) runs `native_decoder_forward`:
transformers' `LlamaModel.forward` step for step: the token embedding, the attention mask
transformers builds (`create_causal_mask`, or the engine's Llama's `causal_mask`, the same
mask; both pass the engine's 4-D masks through unchanged), the rotary embedding, each decoder
layer as `layers.layer_on_kernels` computes it, and the final norm. The bits are the
layers' own; what it removes is the Python around them: transformers' decorators and
output capture, thirty layer module calls, and the checks `layers.native_layer_forward`
makes per layer (row limit, rotary inputs, keyword arguments, the attention's route),
here made once per forward: 0.7-0.9 ms of the default target's 30-layer forward at
decoding sizes (docs/BENCHMARKS.md). Where the cache is the engine's own (growing layers
holding the same slots) and the attention runs natively in one piece, every layer runs
in one native call (`native.decoder_layers`: each layer's two calls, its new keys and
values written straight into its cache's spare slots): 2 ms less again of a 3 x 6-token
verification (25.2 -> 23.1 ms), the same bits.

Everything else goes to the decoder's own forward, whose layers stay routed one by one:
other kernels, autograd, training mode, `inputs_embeds`, no cache, a keyword argument or
config flag that asks for hidden states or attentions, hooks on a layer (or global ones),
rows past a layer's row limit, rotary inputs the layers do not take, a layer
`layers.supports` does not cover.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import torch

from langchain_seed.engine import kernels, layers, native
from langchain_seed.engine.cache import GrowingLayer

DECODER_CLASSES = frozenset({"LlamaModel"})
"""Decoders whose forward `native_decoder_forward` reproduces."""

_RECORDING_FLAGS = ("output_hidden_states", "output_attentions")


def supports(decoder: Any) -> bool:
    """Whether `decoder` has the structure `native_decoder_forward` reproduces (checked
    once, at install): a Llama decoder all of whose layers `layers.supports`."""
    config = getattr(decoder, "config", None)
    decoder_layers = getattr(decoder, "layers", None)
    return (type(decoder).__name__ in DECODER_CLASSES and config is not None and decoder_layers is not None
            and getattr(config, "num_hidden_layers", None) == len(decoder_layers) and len(decoder_layers) > 0
            and all(hasattr(decoder, name) for name in ("embed_tokens", "rotary_emb", "norm"))
            and all(layers.supports(layer) for layer in decoder_layers)
            and len({layer.self_attn.head_dim for layer in decoder_layers}) == 1)


@dataclass(frozen=True)
class _DecoderFacts:
    """What the per-forward checks need of a decoder's layers, learnt once per decoder."""

    layers: tuple[Any, ...]
    uniform_attention: bool  # every layer's attention takes the same route for the same shapes
    head_dim: int
    stacked: native.DecoderWeights | None  # every layer in one native call (`_all_layers_at_once`), where they fit


_decoder_facts: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def forget(decoder: Any) -> None:
    """Drop what was learnt of `decoder` (`routing.install` does, with `layers.forget`)."""
    _decoder_facts.pop(decoder, None)


def _facts(decoder: Any) -> _DecoderFacts:
    facts = _decoder_facts.get(decoder)
    if facts is None:
        decoder_layers = tuple(decoder.layers)
        settings = {_attention_settings(layer.self_attn) for layer in decoder_layers}
        facts = _decoder_facts[decoder] = _DecoderFacts(decoder_layers, len(settings) == 1,
                                                        decoder_layers[0].self_attn.head_dim,
                                                        _stacked(decoder_layers) if len(settings) == 1 else None)
    return facts


def _stacked(decoder_layers: tuple[Any, ...]) -> native.DecoderWeights | None:
    """The layers for `native.decoder_layers`: each one's two native calls, caches in layer
    order, one attention scale; else None."""
    fused = [layers.fused_weights(layer) for layer in decoder_layers]
    if (any(weights is None for weights in fused)
            or any(getattr(layer.self_attn, "layer_idx", None) != index for index, layer in enumerate(decoder_layers))
            or len({layer.self_attn.scaling for layer in decoder_layers}) != 1):
        return None
    try:
        return native.decoder_weights(tuple(weights for weights in fused if weights is not None))
    except ValueError:
        return None


def _attention_settings(attention: Any) -> tuple:
    """What `kernels.takes_native_attention` reads of an attention module besides its inputs
    (and the module's class)."""
    return (type(attention), attention.head_dim, getattr(attention, "num_key_value_groups", 1),
            kernels.batch_invariant(attention))


def native_decoder_forward(decoder: Any, replaced, input_ids: torch.Tensor | None = None,
                           attention_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                           cache=None, inputs_embeds: torch.Tensor | None = None, use_cache: bool | None = None,
                           **kwargs):
    """transformers' `LlamaModel.forward` on the native kernels where it applies (module
    notes); `replaced` (the decoder's own forward) everywhere else.

    input_ids, position_ids: `[batch, new]`; attention_mask: the engine's 4-D mask
    `[batch, 1, new, slots + new]` or None. Returns `BaseModelOutputWithPast` (the last
    hidden state `[batch, new, hidden]` after the final norm, and the cache).
    """
    if not _applies(decoder, input_ids, position_ids, cache, inputs_embeds, kwargs):
        return replaced(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
                        inputs_embeds=inputs_embeds, use_cache=use_cache, **kwargs)
    from transformers.modeling_outputs import BaseModelOutputWithPast

    facts = _facts(decoder)
    hidden_states = decoder.embed_tokens(input_ids)
    if position_ids is None:  # as transformers numbers them: after the cache's tokens
        position_ids = (torch.arange(hidden_states.shape[1]) + cache.get_seq_length())[None, :]
    mask = _causal_mask(decoder, hidden_states, attention_mask, cache, position_ids)
    position_embeddings = decoder.rotary_emb(hidden_states, position_ids=position_ids)
    if not (_fits_layers(facts, hidden_states, position_embeddings) and _rows_fit(facts, hidden_states)):
        return _layer_by_layer(decoder, hidden_states, mask, position_embeddings, position_ids, cache, use_cache)
    if facts.stacked is not None:
        output = _all_layers_at_once(facts, hidden_states, position_embeddings, mask, cache)
        if output is not None:
            return BaseModelOutputWithPast(last_hidden_state=decoder.norm(output), cache=cache)
    route = None
    for layer in facts.layers:
        hidden_states, route = layers.layer_on_kernels(layer, hidden_states, position_embeddings, mask, cache,
                                                       route if facts.uniform_attention else None)
    return BaseModelOutputWithPast(last_hidden_state=decoder.norm(hidden_states), cache=cache)


def _causal_mask(decoder: Any, hidden_states: torch.Tensor, attention_mask, cache, position_ids):
    """The mask the layers get: the decoder's own `causal_mask` where it has one (the engine's
    Llama, `engine.llama`, which imports no transformers model code), else transformers'
    `create_causal_mask`."""
    own = getattr(decoder, "causal_mask", None)
    if own is not None:
        return own(hidden_states, attention_mask, cache)
    from transformers.masking_utils import create_causal_mask

    return create_causal_mask(config=decoder.config, inputs_embeds=hidden_states, attention_mask=attention_mask,
                              cache=cache, position_ids=position_ids)


def _all_layers_at_once(facts: _DecoderFacts, hidden_states: torch.Tensor, position_embeddings, mask,
                        cache) -> torch.Tensor | None:
    """Every layer in one native call (`native.decoder_layers`: the same calls, so the same
    bits, as `layers.layer_on_kernels` layer by layer, without the Python between them),
    where the cache's layers are the engine's growing ones, all holding the same slots, and
    the attention runs natively in one piece; None elsewhere (nothing changed but the
    stores' room). hidden_states: `[batch, new, hidden]`. Returns the last layer's output."""
    cache_layers = getattr(cache, "layers", None)
    if cache_layers is None or len(cache_layers) != len(facts.layers):
        return None
    first = cache_layers[0]
    if not (type(first) is GrowingLayer and first.is_initialized and first.keys is not None
            and first.keys.numel()):
        return None
    shape = first.keys.shape
    if not all(type(layer) is GrowingLayer and layer.keys is not None and layer.values is not None
               and layer.keys.shape == shape and layer.values.shape == shape for layer in cache_layers):
        return None
    stacked = facts.stacked
    assert stacked is not None, "called where the layers were stacked"
    batch, new = hidden_states.shape[:2]
    weights, attention = stacked.layers[0], facts.layers[0].self_attn
    slots = shape[2] + new
    if shape[:2] != (batch, weights.kv_heads) or shape[3] != weights.head_dim:
        return None
    keys = _shaped(batch, weights.kv_heads, slots, weights.head_dim)
    route = layers.attention_route(attention, _shaped(batch, weights.heads, new, weights.head_dim), keys, keys, mask)
    if not route.native or route.chunks:
        return None
    stores = [layer.reserve(new) for layer in cache_layers]
    if len({(key.shape, key.stride(), value.shape, value.stride()) for key, value in stores}) != 1:
        return None
    cos, sin = position_embeddings
    output = native.decoder_layers(stacked, hidden_states, cos, sin, [key for key, _ in stores],
                                   [value for _, value in stores], slots, route.mask, attention.scaling)
    for layer in cache_layers:
        layer.filled(slots)
    return output


def _shaped(*shape: int) -> torch.Tensor:
    """A float32 CPU tensor of `shape` without storage of its own (for the route's checks)."""
    return torch.empty(1, 1, 1, 1).expand(*shape)


def _layer_by_layer(decoder: Any, hidden_states: torch.Tensor, mask, position_embeddings, position_ids, cache,
                    use_cache):
    """The rest of transformers' forward with each layer through its own (routed) forward."""
    from transformers.modeling_outputs import BaseModelOutputWithPast

    for layer in decoder.layers:
        hidden_states = layer(hidden_states, attention_mask=mask, position_embeddings=position_embeddings,
                              position_ids=position_ids, cache=cache, use_cache=use_cache)
    return BaseModelOutputWithPast(last_hidden_state=decoder.norm(hidden_states), cache=cache)


def _applies(decoder: Any, input_ids, position_ids, cache, inputs_embeds, kwargs) -> bool:
    """The native kernels in this thread, eval mode, no autograd, token ids on the CPU, a
    cache, nothing recorded, no hooks on the layers."""
    if (kernels.active_kernel() != "native" or decoder.training or torch.is_grad_enabled()
            or not native.available()):
        return False
    if inputs_embeds is not None or input_ids is None or not input_ids.is_cpu or cache is None:
        return False
    if any(value is not None and value is not False for value in kwargs.values()):
        return False
    config = decoder.config
    if any(getattr(config, flag, False) for flag in _RECORDING_FLAGS) or not getattr(config, "return_dict", True):
        return False
    if _has_global_hooks():
        return False
    return not any(layer._forward_hooks or layer._forward_pre_hooks for layer in _facts(decoder).layers)


def _has_global_hooks() -> bool:
    """Whether torch has forward hooks registered for every module (which module calls run)."""
    module = torch.nn.modules.module
    return bool(getattr(module, "_global_forward_hooks", None) or getattr(module, "_global_forward_pre_hooks", None))


def _fits_layers(facts: _DecoderFacts, hidden_states: torch.Tensor, position_embeddings) -> bool:
    """What `layers._applies` checks of the inputs every layer gets: float32 CPU hidden
    states and rotary tables of the layers' head size, and the layers' own weights."""
    cos, sin = position_embeddings
    if not (hidden_states.is_cpu and hidden_states.dtype is torch.float32 and hidden_states.dim() == 3):
        return False
    if not (cos.dtype is torch.float32 and sin.dtype is torch.float32 and cos.is_cpu and sin.is_cpu
            and cos.shape == sin.shape and cos.shape[0] in (1, hidden_states.shape[0])
            and cos.shape[1:] == (hidden_states.shape[1], facts.head_dim)):
        return False
    return all(layers.fits(layer) for layer in facts.layers)


def _rows_fit(facts: _DecoderFacts, hidden_states: torch.Tensor) -> bool:
    rows = hidden_states.shape[0] * hidden_states.shape[1]
    return all(rows <= layers.row_limit(layer) for layer in facts.layers)
