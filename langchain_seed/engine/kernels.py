"""oneDNN matmuls for the engine's own forwards on CPU.

torch's float32 `F.linear` on x86 CPUs calls MKL. For the shapes of decoding (1 to a few
dozen rows against a large weight) MKL repacks the weight on every call and, on AMD CPUs,
takes a slow generic path. Measured on this project's 2-core AMD EPYC with 2 threads, ms
per call (rows: 1 / 3 / 5 / 16):

- LM head 49152 x 576: MKL 9.4 / 31.8 / 23.6 / 28.0, oneDNN 4.5 / 10.4 / 11.0 / 16.5
- MLP 1536 x 576: MKL 0.12 / 0.34 / 0.22 / 0.30, oneDNN 0.08 / 0.18 / 0.24 / 0.38

So with MKL, verifying a few drafted tokens costs two to three single-token steps, which
is most of what speculative decoding has to win back. oneDNN's linear (the kernel torch's
own CPU compiler emits) reads the same dense weight, so nothing is copied.

From 2 to 4 rows, MKL asked the other way round (`weight @ x.T`: the weight as the left
operand, the few rows as the narrow right one) streams the weight once and beats oneDNN:
ms for all 210 decoder linears of SmolLM2-135M plus its LM head, weights streamed from
memory as in a real forward, 2 threads, medians of 7 interleaved runs (1 / 2 / 3 / 4 / 5
rows): oneDNN 52 / 66 / 67 / 69 / 67, `weight @ x.T` with 3 rows padded to 4 and 5 to 8
59 / 49 / 52 / 47 / 81 (unpadded, 3 rows cost 56 against 4 rows' 41). Past 4 rows its
kernel choice is erratic (16 rows fast, 5-15 slow), so oneDNN keeps those. In the whole
target forward at a 200-token context this takes a 3-token verification from 102 to 91 ms
and a 4-token one from 114 to 100 (medians of 10 interleaved runs).

Past 16 rows (prefills) MKL catches up and the MLP's down projection is up to 20 % faster
on it, so larger inputs stay on MKL, except for LM-head-sized weights (12 / 64 / 200 rows:
MKL 22.7 / 43.2 / 127 ms, oneDNN 12.4 / 31.8 / 87 ms).

Attention: with an attention mask (every multi-token forward over a cache: a verification,
a batched draft stage), transformers' "sdpa" attention copies each layer's keys and values
once per query head of a group (`repeat_kv`) before calling torch's SDPA. For
SmolLM2-135M (9 query heads on 3 key/value heads) at a 200-token context that copy is most
of the attention's time: SDPA with `enable_gqa=True` on the un-repeated keys gives the same
values bit for bit (checked in the tests) in 0.29 ms instead of 1.87 ms per layer for 3
rows of 5 tokens in isolation; in the whole target forward (other work overlaps less with
the copies than that suggests) 3 rows x 5 tokens go from 161.5 to 150.9 ms and 1 row x 5
tokens from 132.9 to 120.6 ms (medians of 12 interleaved runs). transformers itself takes that path
only without a mask because CUDA's fast kernels need it so; on the CPU SDPA handles masked
grouped-query attention natively.

The native kernels (`engine.native`, the default where they build): oneDNN and MKL still
run decoding shapes at half the CPU's arithmetic rate or less (every call packs the
weight). The engine's own C matmul reads each dense weight once with a register tile of 4
weight rows x 3 input rows, prefetching the next block: ms for all 210 decoder linears plus
the LM head, 2 threads, medians of 7 interleaved runs (1 / 6 / 18 / 48 / 83 / 128 / 192
rows): oneDNN 50 / 70 / 98 / 163 / 228 / 341 / 474, MKL 44 / 84 / 107 / 167 / 250 / 393 /
528, native 29 / 33 / 61 / 128 / 215 / 331 / 500. So up to `NATIVE_MAX_ROWS` rows the
engine uses it, with the routes above for larger inputs and wherever it cannot be built.
The library also has the layer's other decoding ops (attention, the SiLU MLP's first half,
RMS norm, rotary embedding); torch's versions of those spend most of a call on dispatch
and thread wake-ups at these sizes (docs/BENCHMARKS.md, "The native kernels").

`install(model)` gives every `nn.Linear` of a CPU float32 model a forward that uses these
kernels, routes Llama-family RMS norms (`F.rms_norm`, the same bits, or the native norm),
SiLU MLPs (`native.gate_up_silu`) and rotary embeddings (`engine_rotary`), registers
`engine_attention` as transformers' "sdpa" attention (it hands every call to the function
it replaced unless it can take the native or grouped-query path above), and gives Llama
decoder layers the native layer forward of `engine.layers`. All of it acts only while
`engine_kernels()` is active in the calling thread. The engine's rounds run inside
`engine_kernels(...)`; anyone else calling the same model (a user's own `generate`, the
benchmark's transformers baselines) runs it unchanged.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import threading
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from langchain_seed.engine import native

NATIVE_MAX_ROWS = 128
"""Up to this many rows the native kernel beats oneDNN and MKL (module notes); past it, MKL."""
WEIGHT_MAJOR_MAX_ROWS = 4
"""From 2 rows up to this many, `weight @ x.T` on MKL beats both oneDNN and `F.linear`."""
ONEDNN_MAX_ROWS = 16
"""Past this many rows (a prefill) MKL is as fast or faster, except for LM-head-sized weights."""
HEAD_SIZED_OUT_FEATURES = 8192
"""Weights with at least this many output rows (LM heads) are faster on oneDNN at any row count."""

LINEAR_KERNELS = ("native", "onednn", "torch")
"""The engine's CPU float32 matmuls. `native`: its C kernel for decoding sizes (where it
builds; else as `onednn`); `onednn`: oneDNN and weight-major MKL; `torch`: torch's default."""
ENGINE_KERNELS = ("native", "onednn")
"""The kernels `install` routes to (`torch` installs nothing)."""

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
def engine_kernels(kernel: str | None = "native") -> Iterator[None]:
    """Within this block (this thread only), installed linears and attention run on the
    engine's kernels: `native` or `onednn` (see `LINEAR_KERNELS`); None or `torch`: torch's."""
    previous = getattr(_state, "kernel", None)
    _state.kernel = kernel if kernel in ENGINE_KERNELS else None
    try:
        yield
    finally:
        _state.kernel = previous


def active_kernel() -> str | None:
    """The engine kernel in force in this thread (`engine_kernels`), or None outside."""
    return getattr(_state, "kernel", None)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear`, on the engine's kernels inside `engine_kernels()` when the tensors allow it.

    x: `[..., in]`; weight: `[out, in]`. Under `native`, up to `NATIVE_MAX_ROWS` rows run on
    the C kernel. Otherwise 2 to 4 rows run weight-major (`weight @ x.T`, see
    `weight_major_linear`), other decoding sizes and heads on oneDNN, the rest on torch's.
    """
    kernel = getattr(_state, "kernel", None)
    if kernel is None or not _eligible(x, weight, bias):
        return F.linear(x, weight, bias)
    rows = x.numel() // x.shape[-1]
    if kernel == "native" and rows <= NATIVE_MAX_ROWS and native.available():
        return native.skinny_linear(x, weight, bias)
    if 1 < rows <= WEIGHT_MAJOR_MAX_ROWS:
        return weight_major_linear(x, weight, bias)
    if onednn_available() and (rows <= ONEDNN_MAX_ROWS or weight.shape[0] >= HEAD_SIZED_OUT_FEATURES):
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
ROTARY_MODULES = frozenset({"transformers.models.llama.modeling_llama", "transformers.models.mistral.modeling_mistral",
                            "transformers.models.qwen2.modeling_qwen2", "transformers.models.qwen3.modeling_qwen3"})
"""transformers modules whose attention calls their module-level, standard
`apply_rotary_pos_emb(q, k, cos, sin)`, which `engine_rotary` takes over."""


def install(model: torch.nn.Module) -> int:
    """Route the model's `nn.Linear` layers through `linear`, its RMS norms through
    `F.rms_norm` (or the native norm), its SiLU MLPs' first half through
    `native.gate_up_silu`, its rotary embedding through `engine_rotary` and its attention
    through `engine_attention`; returns how many linears were routed.

    All of them act only inside `engine_kernels()` in the calling thread. Does nothing
    (returns 0) when the model is not float32 on the CPU. Installing twice is harmless.
    """
    from langchain_seed.engine import layers  # it builds on this module

    install_attention()
    install_rotary(model)
    routed = 0
    for module in model.modules():
        if getattr(module, "_seed_routed", False):
            routed += type(module) is torch.nn.Linear
        elif type(module) is torch.nn.Linear and _eligible_weight(module.weight):
            _route(module, functools.partial(_linear_forward, module))
            routed += 1
        elif type(module).__name__ in RMS_NORM_CLASSES:
            _route(module, functools.partial(_rms_norm_forward, module, module.forward))
        elif is_silu_mlp(module):
            _route(module, functools.partial(_mlp_forward, module, module.forward))
        elif layers.supports(module):
            _route(module, functools.partial(layers.native_layer_forward, module, module.forward))
    return routed


def _route(module: torch.nn.Module, forward: Callable) -> None:
    module.forward = forward
    module._seed_routed = True


def install_rotary(model: torch.nn.Module) -> int:
    """Point `apply_rotary_pos_emb` of the model's transformers modules (those in
    `ROTARY_MODULES`) at `engine_rotary`, once per process; returns how many it replaced now."""
    replaced = 0
    for name in {type(module).__module__ for module in model.modules()} & ROTARY_MODULES:
        namespace = sys.modules[name]
        current = getattr(namespace, "apply_rotary_pos_emb", None)
        if current is not None and name not in _replaced_rotary:
            _replaced_rotary[name] = current
            namespace.apply_rotary_pos_emb = functools.partial(engine_rotary, current)
            replaced += 1
    return replaced


_replaced_rotary: dict[str, Callable] = {}


def engine_rotary(replaced: Callable, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                  unsqueeze_dim: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' `apply_rotary_pos_emb` (`replaced`), on the native kernel inside
    `engine_kernels("native")`: the same bits in two calls instead of eighteen eager ops.

    q: `[batch, heads, tokens, dim]`; k: `[batch, kv_heads, tokens, dim]`; cos, sin:
    `[batch or 1, tokens, dim]`. Anything else (other layouts, dtypes, devices, autograd,
    outside the block) goes to `replaced`.
    """
    if not _rotary_on_native(q, k, cos, sin, unsqueeze_dim):
        return replaced(q, k, cos, sin, unsqueeze_dim)
    return native.rotary(q, cos, sin), native.rotary(k, cos, sin)


def _rotary_on_native(q, k, cos, sin, unsqueeze_dim) -> bool:
    tensors = (q, k, cos, sin)
    return (getattr(_state, "kernel", None) == "native" and unsqueeze_dim == 1 and native.available()
            and all(t.is_cpu and t.dtype is torch.float32 for t in tensors)
            and q.dim() == 4 and k.dim() == 4 and q.stride(-1) == 1 and k.stride(-1) == 1 and q.shape[-1] % 2 == 0
            and k.shape[0] == q.shape[0] and k.shape[2:] == q.shape[2:]
            and cos.shape[0] in (1, q.shape[0]) and cos.shape[1:] == q.shape[2:] and sin.shape == cos.shape
            and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors)))


def engine_attention(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                     **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' "sdpa" attention inside `engine_kernels()`: on the native attention
    kernel under "native" where it fits (`_takes_native_path`), else torch's SDPA on
    un-repeated grouped keys where that fits, else the function it replaced.

    query: `[batch, heads, new, head_dim]`; key, value: `[batch, kv_heads, slots, head_dim]`;
    attention_mask: `[batch, 1, new, slots]` (bool or additive float) or None. Returns the
    output `[batch, new, heads, head_dim]` and None, as the function it replaces does.
    """
    if dropout == 0.0 and _takes_native_path(module, query, key, value, attention_mask, kwargs):
        scale = query.shape[-1] ** -0.5 if scaling is None else scaling
        return native.attention(query, key, value, attention_mask, scale), None
    if not _takes_grouped_path(module, query, key, value, attention_mask, kwargs):
        return _replaced_sdpa(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    output = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=dropout,
                                            scale=scaling, enable_gqa=True)
    return output.transpose(1, 2).contiguous(), None


def _takes_native_path(module, query, key, value, attention_mask, kwargs) -> bool:
    """Inside `engine_kernels("native")`: CPU float32, up to `NATIVE_MAX_ROWS` new tokens,
    one token or an additive float mask over exactly the keys, a head size the kernel takes,
    no autograd, and nothing exotic."""
    if getattr(_state, "kernel", None) != "native" or not native.available():
        return False
    if not all(t.is_cpu and t.dtype is torch.float32 for t in (query, key, value)):
        return False
    batch, heads, new, dim = query.shape
    if attention_mask is None:
        if new != 1:
            return False
    elif attention_mask.dtype is not torch.float32 or attention_mask.shape != (batch, 1, new, key.shape[2]):
        return False
    return (new <= NATIVE_MAX_ROWS and dim % 8 == 0 and dim <= native.ATTENTION_MAX_HEAD_DIM
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
"""Arguments the grouped path does not implement: such calls go to the replaced function."""

_replaced_sdpa = None


def install_attention() -> bool:
    """Register `engine_attention` as transformers' "sdpa" attention (once per process);
    False when transformers has no attention registry to extend."""
    global _replaced_sdpa
    try:
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface
    except ImportError:
        return False
    current = ALL_ATTENTION_FUNCTIONS.get("sdpa")
    if current is None:
        return False
    if current is not engine_attention:
        _replaced_sdpa = current
        AttentionInterface.register("sdpa", engine_attention)
    return True


def _linear_forward(module: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return linear(x, module.weight, module.bias)


def _rms_norm_forward(module: torch.nn.Module, replaced: Callable, hidden_states: torch.Tensor) -> torch.Tensor:
    kernel, weight = getattr(_state, "kernel", None), module.weight
    if (kernel is None or not (hidden_states.is_cpu and weight.is_cpu) or hidden_states.dtype is not torch.float32
            or weight.dtype is not torch.float32 or weight.shape != hidden_states.shape[-1:]):
        return replaced(hidden_states)
    if kernel == "native" and weight.is_contiguous() and native.available():
        return native.rms_norm(hidden_states, weight, module.variance_epsilon)
    return F.rms_norm(hidden_states, weight.shape, weight, module.variance_epsilon)


def is_silu_mlp(module: torch.nn.Module | None) -> bool:
    """A Llama-family MLP with a SiLU activation and no gate/up biases (`MLP_CLASSES`)."""
    projections = ("gate_proj", "up_proj", "down_proj")
    return (type(module).__name__ in MLP_CLASSES
            and type(getattr(module, "act_fn", None)).__name__ in ("SiLUActivation", "SiLU")
            and all(type(getattr(module, name, None)) is torch.nn.Linear for name in projections)
            and module.gate_proj.bias is None and module.up_proj.bias is None
            and module.gate_proj.weight.shape == module.up_proj.weight.shape)


def _mlp_forward(module: torch.nn.Module, replaced: Callable, x: torch.Tensor) -> torch.Tensor:
    gate, up = module.gate_proj.weight, module.up_proj.weight
    if (getattr(_state, "kernel", None) != "native" or not _eligible(x, gate, None) or not _eligible(x, up, None)
            or x.numel() // x.shape[-1] > NATIVE_MAX_ROWS or not native.available()):
        return replaced(x)
    return module.down_proj(native.gate_up_silu(x, gate, up))


def _eligible_weight(weight: torch.Tensor) -> bool:
    return weight.is_cpu and weight.dtype is torch.float32 and weight.dim() == 2 and weight.is_contiguous()


def _eligible(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """CPU float32 tensors, no autograd (the engine's kernels have no backward). Called for
    every linear of every forward, so it sticks to the cheapest checks."""
    if not (x.is_cpu and x.dtype is torch.float32 and _eligible_weight(weight) and x.dim() >= 2
            and x.shape[-1] == weight.shape[1] and x.numel() > 0):
        return False
    if bias is not None and not (bias.is_cpu and bias.dtype is torch.float32 and bias.is_contiguous()
                                 and bias.shape == weight.shape[:1]):
        return False
    return not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                            or (bias is not None and bias.requires_grad)))
