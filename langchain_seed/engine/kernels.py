"""The engine's CPU float32 kernels, routed onto the engine's own model instances.

At decoding sizes (one to a few dozen rows against a large weight) torch's `F.linear`
repacks the weight on every call (MKL; oneDNN too), and transformers' attention and norms
spend most of a call on dispatch. The engine therefore runs its forwards on:

- `native`: its C kernels (`engine.native`: a register-tiled matmul that reads each weight
  once, grouped-query attention, the SiLU MLP's first half, RMS norm, rotary embedding) up
  to `NATIVE_MAX_ROWS` rows, and a Llama decoder layer as straight calls into them
  (`engine.layers`);
- `onednn`: oneDNN and weight-major MKL matmuls, and torch's SDPA on un-repeated grouped
  keys (where the C kernels cannot be built, `native` runs as this);
- `torch`: torch's and transformers' own code.

`engine.routing.install(model)` puts these on one model instance; the routed forwards
here act only inside `engine_kernels()` in the calling thread, so anyone else
calling the same model (a user's own `generate`, the benchmark's transformers baselines)
runs transformers' code, before, during and after. The measurements behind the routing
thresholds are in docs/BENCHMARKS.md ("The native kernels", "Thresholds on other CPUs").
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F

from langchain_seed.engine import native
from langchain_seed.engine.calibration import HEAD_SIZED_OUT_FEATURES, RowLimits

NATIVE_MAX_ROWS = 128
"""The most rows the native kernels take (the attention kernel's limit); the matmul's own
limit on this CPU is `RowLimits.native_max_rows` (`engine.calibration`), at most this."""
WEIGHT_MAJOR_MAX_ROWS = 4
"""From 2 rows up to this many, `weight @ x.T` on MKL beats both oneDNN and `F.linear` (where
oneDNN wins at decoding sizes: the AMD EPYC)."""
DEFAULT_LIMITS = RowLimits()
"""The row limits outside a measured engine's block (the AMD EPYC's figures)."""

LINEAR_KERNELS = ("native", "onednn", "torch")
"""The engine's CPU float32 matmuls. `native`: its C kernel for decoding sizes (where it
builds; else as `onednn`); `onednn`: oneDNN and weight-major MKL; `torch`: torch's default."""
ENGINE_KERNELS = ("native", "onednn")
"""The kernels `routing.install` routes to (`torch` installs nothing)."""

_state = threading.local()


@functools.lru_cache(maxsize=1)
def onednn_available() -> bool:
    """True when this torch build has oneDNN and its linear op."""
    return bool(torch.backends.mkldnn.is_available()) and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def effective_kernel(kernel: str) -> str:
    """What `kernel` (one of `LINEAR_KERNELS`) runs on here: `native` falls back to `onednn`
    where the C kernel cannot be built (`native.unavailable_reason()` says why)."""
    return "onednn" if kernel == "native" and not native.available() else kernel


@contextlib.contextmanager
def engine_kernels(kernel: str | None = "native", limits: RowLimits | None = None) -> Iterator[None]:
    """Within this block (this thread only), installed linears and attention run on the
    engine's kernels: `native` or `onednn` (see `LINEAR_KERNELS`); None or `torch`: torch's.
    `limits`: how many rows each matmul route takes on this CPU (`engine.calibration`)."""
    previous = getattr(_state, "kernel", None), getattr(_state, "limits", DEFAULT_LIMITS)
    _state.kernel = kernel if kernel in ENGINE_KERNELS else None
    _state.limits = limits or DEFAULT_LIMITS
    try:
        yield
    finally:
        _state.kernel, _state.limits = previous


def native_max_rows() -> int:
    """Up to how many rows the native kernels run in this thread's block."""
    return min(getattr(_state, "limits", DEFAULT_LIMITS).native_max_rows, NATIVE_MAX_ROWS)


def active_kernel() -> str | None:
    """The engine kernel in force in this thread (`engine_kernels`), or None outside."""
    return getattr(_state, "kernel", None)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear`, on the engine's kernels inside `engine_kernels()` when the tensors allow it.

    x: `[..., in]`; weight: `[out, in]`. Under `native`, up to the block's native row limit
    (`RowLimits`, measured per CPU) rows run on the C kernel. Otherwise, where oneDNN wins
    at decoding sizes, 2 to 4 rows run weight-major (`weight @ x.T`, see
    `weight_major_linear`) and up to its row limit on oneDNN; heads on oneDNN where it wins
    for them; the rest on torch's (MKL).
    """
    kernel = getattr(_state, "kernel", None)
    if kernel is None or not _eligible(x, weight, bias):
        return F.linear(x, weight, bias)
    rows = x.numel() // x.shape[-1]
    limits = getattr(_state, "limits", DEFAULT_LIMITS)
    if kernel == "native" and rows <= native_max_rows() and native.available():
        return native.skinny_linear(x, weight, bias)
    head = weight.shape[0] >= HEAD_SIZED_OUT_FEATURES
    if limits.onednn_max_rows and 1 < rows <= WEIGHT_MAJOR_MAX_ROWS and not head:
        return weight_major_linear(x, weight, bias)
    if onednn_available() and (limits.onednn_heads if head else rows <= limits.onednn_max_rows):
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


def weight_major_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear` as `weight @ x.T` with the rows padded to 2 or 4. x: `[..., in]`, 2 to 4 rows.

    MKL streams the weight once for this orientation and these widths (see the module's
    notes); 3 rows cost more than 4, hence the padding. Returns `[..., out]`.
    """
    flat = x.reshape(-1, x.shape[-1])
    rows = flat.shape[0]
    width = 2 if rows <= 2 else 4
    if width != rows:
        flat = torch.cat([flat, flat.new_zeros(width - rows, flat.shape[1])])
    out = torch.mm(weight, flat.t())[:, :rows].t().contiguous()
    if bias is not None:
        out += bias
    return out.view(*x.shape[:-1], weight.shape[0])


RMS_NORM_CLASSES = frozenset({"LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm"})
"""Norms whose forward is `weight * (x * rsqrt(mean(x ** 2) + eps))` in float32, which
`F.rms_norm` computes bit for bit in one op instead of seven."""
MLP_CLASSES = frozenset({"LlamaMLP", "MistralMLP", "Qwen2MLP", "Qwen3MLP"})
"""MLPs computing `down_proj(act_fn(gate_proj(x)) * up_proj(x))`: with a SiLU activation and
no biases, `native.gate_up_silu` does the part before `down_proj` in one call."""
def engine_attention(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                     **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' "sdpa" attention inside `engine_kernels()`: on the native attention
    kernel under "native" where it fits (`_takes_native_path`), else torch's SDPA on
    un-repeated grouped keys where that fits, else transformers' own "sdpa" function.

    query: `[batch, heads, new, head_dim]`; key, value: `[batch, kv_heads, slots, head_dim]`;
    attention_mask: `[batch, 1, new, slots]` (bool or additive float) or None. Returns the
    output `[batch, new, heads, head_dim]` and None, as transformers' function does.
    """
    if dropout == 0.0 and _takes_native_path(module, query, key, value, attention_mask, kwargs):
        scale = query.shape[-1] ** -0.5 if scaling is None else scaling
        return native.attention(query, key, value, native_attention_mask(query, attention_mask), scale), None
    if not _takes_grouped_path(module, query, key, value, attention_mask, kwargs):
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    output = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=dropout,
                                            scale=scaling, enable_gqa=True)
    return output.transpose(1, 2).contiguous(), None


def takes_native_attention(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                           attention_mask: torch.Tensor | None) -> bool:
    """Whether `engine_attention` would run this call (no dropout, no other arguments) on
    the native kernel; the mask it then takes is `native_attention_mask`."""
    return _takes_native_path(module, query, key, value, attention_mask, {})


def native_attention_mask(query: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """The additive float32 mask `[batch, 1, new, slots]` the native kernel takes for
    `attention_mask` (None: every slot visible), where `takes_native_attention` holds."""
    if attention_mask is not None or query.shape[2] == 1:
        return _additive(attention_mask)
    return _causal(query.shape[0], query.shape[2])


def batch_invariant(module: Any) -> bool:
    """Whether an attention module's layer computes every row the same way whatever the
    batch, its size or the cache's layout: its projections say so (`batch_invariant`, set by
    the linears that run on the C kernels at every size: the 8-bit-activation linears of
    `engine.weights.int8_dot`, whose rounding would turn any float difference into a
    different model, and the block-kept `QuantizedLinear`s). Its attention then runs
    natively at every size too, so that a prompt's cache is the same however it was
    prefilled (`engine.prefix_cache`)."""
    return bool(getattr(getattr(module, "q_proj", None), "batch_invariant", False))


def _causal(batch: int, tokens: int) -> torch.Tensor:
    """The additive causal mask `[batch, 1, tokens, tokens]` of a prefill without a cache."""
    visible = torch.ones(tokens, tokens, dtype=torch.bool).tril()
    return torch.zeros(tokens, tokens).masked_fill_(~visible, float("-inf")).expand(batch, 1, tokens, tokens)


def _additive(mask: torch.Tensor | None) -> torch.Tensor | None:
    """A boolean attention mask (True: visible) as the additive float32 mask the kernel takes
    (converted once per forward: every layer gets the same mask tensor)."""
    if mask is None or mask.dtype is torch.float32:
        return mask
    last = getattr(_state, "additive", None)
    if last is not None and last[0] is mask:
        return last[1]
    additive = torch.zeros(mask.shape, dtype=torch.float32).masked_fill_(~mask, float("-inf"))
    _state.additive = (mask, additive)
    return additive


def _takes_native_path(module, query, key, value, attention_mask, kwargs) -> bool:
    """Inside `engine_kernels("native")`: CPU float32, up to `NATIVE_MAX_ROWS` new tokens
    (any number for a `batch_invariant` layer), one token or a mask over exactly the keys
    (additive float32, or boolean: transformers' causal mask for one sequence; a
    `batch_invariant` layer's prefill without a cache also unmasked), a head size the kernel takes,
    no autograd, and nothing exotic."""
    if getattr(_state, "kernel", None) != "native" or not native.available():
        return False
    if not all(t.is_cpu and t.dtype is torch.float32 for t in (query, key, value)):
        return False
    batch, heads, new, dim = query.shape
    invariant = batch_invariant(module)
    if attention_mask is None:
        if new != 1 and not (invariant and new == key.shape[2]):  # causal over exactly the new tokens
            return False
    elif (attention_mask.dtype not in (torch.float32, torch.bool)
          or attention_mask.shape != (batch, 1, new, key.shape[2])):
        return False
    return ((new <= NATIVE_MAX_ROWS or invariant) and dim % 8 == 0 and dim <= native.ATTENTION_MAX_HEAD_DIM
            and key.dim() == 4 and value.shape == key.shape and key.shape[0] == batch and key.shape[3] == dim
            and heads == key.shape[1] * getattr(module, "num_key_value_groups", 1)
            and not any(kwargs.get(name) is not None for name in _EXOTIC_ATTENTION_KWARGS)
            and not kwargs.get("output_attentions", False)
            and not (torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value))))


def _takes_grouped_path(module, query, key, value, attention_mask, kwargs) -> bool:
    """Inside the block, on the CPU, a grouped-query layer, several new tokens (transformers
    packs one token's query heads itself), a mask, and nothing exotic."""
    return (getattr(_state, "kernel", None) is not None and attention_mask is not None and query.device.type == "cpu"
            and query.shape[2] > 1
            and getattr(module, "num_key_value_groups", 1) > 1 and key.shape[-1] == value.shape[-1]
            and query.shape[1] == key.shape[1] * module.num_key_value_groups
            and not any(kwargs.get(name) is not None for name in _EXOTIC_ATTENTION_KWARGS)
            and not kwargs.get("output_attentions", False))


_EXOTIC_ATTENTION_KWARGS = ("softcap", "position_bias", "s_aux")
"""Arguments the grouped path does not implement: such calls go to transformers' function."""


def linear_forward(module: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """A routed `nn.Linear`'s forward: `linear` on its weight and bias."""
    return linear(x, module.weight, module.bias)


def rms_norm_forward(module: Any, replaced: Callable, hidden_states: torch.Tensor) -> torch.Tensor:
    """A routed RMS norm's forward: the native norm or `F.rms_norm` inside the block, else `replaced`."""
    kernel, weight = getattr(_state, "kernel", None), module.weight
    if (kernel is None or not (hidden_states.is_cpu and weight.is_cpu) or hidden_states.dtype is not torch.float32
            or weight.dtype is not torch.float32 or weight.shape != hidden_states.shape[-1:]):
        return replaced(hidden_states)
    if kernel == "native" and weight.is_contiguous() and native.available():
        return native.rms_norm(hidden_states, weight, module.variance_epsilon)
    return F.rms_norm(hidden_states, weight.shape, weight, module.variance_epsilon)


def is_silu_mlp(module: Any) -> bool:
    """A Llama-family MLP with a SiLU activation and no gate/up biases (`MLP_CLASSES`)."""
    projections = ("gate_proj", "up_proj", "down_proj")
    return (type(module).__name__ in MLP_CLASSES
            and type(getattr(module, "act_fn", None)).__name__ in ("SiLUActivation", "SiLU")
            and all(type(getattr(module, name, None)) is torch.nn.Linear for name in projections)
            and module.gate_proj.bias is None and module.up_proj.bias is None
            and module.gate_proj.weight.shape == module.up_proj.weight.shape)


def mlp_forward(module: Any, replaced: Callable, x: torch.Tensor) -> torch.Tensor:
    """A routed SiLU MLP's forward: its first half on `native.gate_up_silu` where it applies, else `replaced`."""
    gate, up = module.gate_proj.weight, module.up_proj.weight
    if (getattr(_state, "kernel", None) != "native" or not _eligible(x, gate, None) or not _eligible(x, up, None)
            or x.numel() // x.shape[-1] > native_max_rows() or not native.available()):
        return replaced(x)
    return module.down_proj(native.gate_up_silu(x, gate, up))


def eligible_weight(weight: torch.Tensor) -> bool:
    """A weight the engine's matmuls take: a contiguous 2-D float32 tensor on the CPU."""
    return weight.is_cpu and weight.dtype is torch.float32 and weight.dim() == 2 and weight.is_contiguous()


def _eligible(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """CPU float32 tensors, no autograd (the engine's kernels have no backward). Called for
    every linear of every forward, so it sticks to the cheapest checks."""
    if not (x.is_cpu and x.dtype is torch.float32 and eligible_weight(weight) and x.dim() >= 2
            and x.shape[-1] == weight.shape[1] and x.numel() > 0):
        return False
    if bias is not None and not (bias.is_cpu and bias.dtype is torch.float32 and bias.is_contiguous()
                                 and bias.shape == weight.shape[:1]):
        return False
    return not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                            or (bias is not None and bias.requires_grad)))
