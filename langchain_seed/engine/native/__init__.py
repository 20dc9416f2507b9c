"""The engine's own C kernels for decoding-sized float32 work, built on first use.

At decoding sizes torch's CPU kernels spend most of a call on packing weights, dispatch
and waking threads. These do the work directly:

- `skinny_linear(x, weight, bias)`: `F.linear` for a few rows (`skinny_linear.c`). It reads
  each weight once with a register tile of accumulators and prefetches the next block.
- `gate_up_silu(x, gate, up)`: a Llama-family MLP's `silu(gate(x)) * up(x)` in one pass.
- `attention(query, key, value, mask, scale)`: grouped-query attention of a few new tokens
  over a cache (`attention.c`).
- `rotary(x, cos, sin)`: one side of transformers' `apply_rotary_pos_emb`, bit for bit, in
  one call instead of nine eager ops (`rotary.c`).
- `rms_norm(x, weight, eps)`: a Llama-family RMS norm (`rms_norm.c`).
- `quantized_linear`, `quantized_gate_up_silu`, `dequantize`: the same matmuls on weights
  kept in GGML's Q8_0 / Q4_1 blocks (`quantized_linear.c`), equal bit for bit to the dense
  kernels on the dequantised weights (`engine.weights`).

The float32 products run on 512-bit registers where the CPU has AVX-512F (twice the
arithmetic per instruction: verification and prefill are bound by it), else on 256
(`float_tile_bits`); both sum every output in the same order, so the bits are the same,
and the engine keeps whichever its calibration measured faster (`set_float_tile_bits`).

They are compiled once per machine with the system's C compiler (``cc -O3 -mavx2 -mfma -mf16c
-fopenmp -ffp-contract=off``, two to three seconds) into `build_dir()` and
loaded with `ctypes`; the calls release the GIL.

`available()` says whether it can run here: Linux, a CPU torch reports as AVX2 or better,
torch's OpenMP runtime (libgomp) already mapped in the process (so the kernel shares its
thread pool), a C compiler, and ``LANGCHAIN_SEED_NATIVE`` not set to ``0``. Where any of
that is missing, the engine keeps its other kernels (`engine.kernels`); the reason is
logged once and kept in `unavailable_reason()`.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

ENV_SWITCH = "LANGCHAIN_SEED_NATIVE"
"""Set to 0 to keep the engine off its C kernels."""
ENV_BUILD_DIR = "LANGCHAIN_SEED_NATIVE_DIR"
"""Where to keep the compiled library (see `build_dir`)."""
ENV_HOME = "LANGCHAIN_SEED_HOME"
"""The package's cache directory, whose ``native/`` holds the library by default."""
SOURCES = tuple(Path(__file__).with_name(name)
                for name in ("skinny_linear.c", "quantized_linear.c", "int8_dot.c", "layer.c", "rotary.c",
                             "rms_norm.c", "attention.c"))
HEADERS = tuple(Path(__file__).with_name(name) for name in ("vector_math.h", "linear_tiles.h"))
CFLAGS = ("-O3", "-mavx2", "-mfma", "-mf16c", "-fopenmp", "-ffp-contract=off", "-shared", "-fPIC")
"""-ffp-contract=off: no multiply-add is fused unless the source asks for it (the matmul's
intrinsics do), so the rotary op rounds as torch's eager ops do."""
BUILD_TIMEOUT_S = 120
ATTENTION_MAX_HEAD_DIM = 256
"""The largest head size `attention` takes (a multiple of 8)."""
DEQUANTIZE_ROWS_PER_THREAD = 64
"""`dequantize` runs on one thread below this many rows (rows are independent: the same bits)."""


_P, _L, _F, _I = ctypes.c_void_p, ctypes.c_long, ctypes.c_float, ctypes.c_int
_SIGNATURES = {
    "linear": ("seed_skinny_linear", None, [_P] * 4 + [_L] * 3 + [_I]),
    "gate_up_silu": ("seed_gate_up_silu", None, [_P] * 4 + [_L] * 3 + [_I]),
    "attention": ("seed_attention", _I, [_P] * 5 + [_L] * 10 + [_F, _I]),
    "rotary": ("seed_rotary", None, [_P, _L, _L, _L, _P, _P, _L, _P, _L, _L, _L, _L]),
    "rms_norm": ("seed_rms_norm", None, [_P, _L, _P, _F, _P, _L, _L]),
    "quantized_linear": ("seed_quantized_linear", _I, [_P, _P, _I, _P, _P] + [_L] * 3 + [_I]),
    "quantized_gate_up_silu": ("seed_quantized_gate_up_silu", _I, [_P, _P, _P, _I, _P] + [_L] * 3 + [_I]),
    "dequantize": ("seed_dequantize", None, [_P, _I, _P, _L, _L, _I]),
    "int8_linear": ("seed_int8_linear", _I, [_P, _P, _I, _P, _P] + [_L] * 3 + [_I]),
    "int8_gate_up_silu": ("seed_int8_gate_up_silu", _I, [_P, _P, _P, _I, _P] + [_L] * 3 + [_I]),
    "quantize_activations": ("seed_quantize_activations", None, [_P] * 4 + [_L] * 2 + [_I]),
    "int8_linear3": ("seed_int8_linear3", _I, [_P] * 4 + [_I] + [_P] * 3 + [_L] * 5 + [_I]),
    "layer_qkv": ("seed_layer_qkv", _I, [_P, _P, _F] + [_P] * 4 + [_P, _P, _L] + [_P] * 3 + [_L] * 6 + [_I]),
    "float_tile_bits": ("seed_float_tile_bits", _I, []),
    "set_float_tile_bits": ("seed_set_float_tile_bits", _I, [_I]),
    "layer_rest": ("seed_layer_rest", _I, [_P] * 5 + [_L] * 5 + [_F] + [_P] * 4 + [_P, _F, _P] + [_L] * 7 + [_I]),
    "decoder_layers": ("seed_decoder_layers", _I, [_P, _L] + [_P] * 8 + [_P, _P, _L, _P, _P] + [_L] * 5
                       + [_P, _F, _P] + [_L] * 7 + [_I]),
}
"""Each kernel's Python name: (C symbol, return type, argument types)."""


class _Library:
    """The loaded kernels (attributes named as in `_SIGNATURES`), or why there are none."""

    # Set in __init__ through setattr, one per `_SIGNATURES` entry (None without the library).
    linear: Callable[..., Any] | None
    gate_up_silu: Callable[..., Any] | None
    attention: Callable[..., Any] | None
    rotary: Callable[..., Any] | None
    rms_norm: Callable[..., Any] | None
    quantized_linear: Callable[..., Any] | None
    quantized_gate_up_silu: Callable[..., Any] | None
    dequantize: Callable[..., Any] | None
    int8_linear: Callable[..., Any] | None
    int8_gate_up_silu: Callable[..., Any] | None
    quantize_activations: Callable[..., Any] | None
    int8_linear3: Callable[..., Any] | None
    layer_qkv: Callable[..., Any] | None
    layer_rest: Callable[..., Any] | None
    decoder_layers: Callable[..., Any] | None
    float_tile_bits: Callable[..., Any] | None
    set_float_tile_bits: Callable[..., Any] | None

    def __init__(self, cdll=None, reason: str | None = None) -> None:
        self.reason = reason
        for name, (symbol, restype, argtypes) in _SIGNATURES.items():
            function = None
            if cdll is not None:
                function = getattr(cdll, symbol)
                function.restype, function.argtypes = restype, argtypes
            setattr(self, name, function)


def available() -> bool:
    """True when the C kernels run in this process."""
    return _library().linear is not None


def unavailable_reason() -> str | None:
    """Why the C kernel is not used here (None when it is)."""
    return _library().reason


def float_tile_bits() -> int:
    """The registers, 512 or 256 bits, the float32 products run on in this process: 512 where
    the CPU has AVX-512F unless ``LANGCHAIN_SEED_FLOAT_PATH=avx2``. Both give the same bits."""
    return int(_function("float_tile_bits")())


def set_float_tile_bits(bits: int) -> int:
    """Run the float32 products on `bits` (512 or 256) registers from now on, in the whole
    process, where possible (512 needs AVX-512F); 0 restores the default (the widest).
    Returns the width in force. Every output's bits are the same either way, so this only
    moves speed (`engine.calibration` measures which is faster on the CPU)."""
    if bits not in (0, 256, 512):
        raise ValueError(f"float tile bits must be 0, 256 or 512; got {bits!r}")
    return int(_function("set_float_tile_bits")(bits))


def skinny_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(x, weight, bias)` on the C kernel. x: `[..., in]` float32 on the CPU;
    weight: `[out, in]` and bias `[out]`, contiguous float32. Returns `[..., out]`.

    Raises RuntimeError when the kernel is unavailable (check `available()` first).
    """
    return _rowwise("linear", x, weight.shape[0], weight.data_ptr(), None if bias is None else bias.data_ptr())


def gate_up_silu(x: torch.Tensor, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """`F.silu(F.linear(x, gate)) * F.linear(x, up)` in one pass (the first half of a
    Llama-family MLP), equal to it to rounding. x: `[..., in]` float32 on the CPU; gate, up:
    `[out, in]` contiguous float32. Returns `[..., out]`."""
    if gate.shape != up.shape or x.shape[-1] != gate.shape[1]:
        raise ValueError(f"gate_up_silu: x {tuple(x.shape)}, gate {tuple(gate.shape)}, up {tuple(up.shape)} do not fit")
    return _rowwise("gate_up_silu", x, gate.shape[0], gate.data_ptr(), up.data_ptr())


QUANTIZED_FORMATS = {"q8_0": 0, "q4_1": 1}
"""The block formats the quantised kernels read (GGML's layouts), by name: their C codes."""


def quantized_linear(x: torch.Tensor, blocks: torch.Tensor, fmt: str, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(x, dequantize(blocks, fmt, in), bias)`, equal bit for bit to `skinny_linear`
    on the dequantised weight. x: `[..., in]` float32 on the CPU (`in` a multiple of 32);
    blocks: `[out, in / 32 * block bytes]` contiguous uint8 in `fmt` ("q8_0" or "q4_1");
    bias `[out]` contiguous float32 or None. Returns `[..., out]`."""
    n_in = _quantized_in_features(blocks, fmt, x.shape[-1])
    return _quantized_rowwise("quantized_linear", x, n_in, blocks.shape[0], blocks.data_ptr(), QUANTIZED_FORMATS[fmt],
                              None if bias is None else bias.data_ptr())


def quantized_gate_up_silu(x: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, fmt: str) -> torch.Tensor:
    """`gate_up_silu` on gate and up weights in `fmt` blocks (`[out, in / 32 * block bytes]`
    uint8 each, the same shape). x: `[..., in]` float32. Returns `[..., out]`."""
    if gate.shape != up.shape:
        raise ValueError(f"quantized_gate_up_silu: gate {tuple(gate.shape)} and up {tuple(up.shape)} differ")
    n_in = _quantized_in_features(gate, fmt, x.shape[-1])
    return _quantized_rowwise("quantized_gate_up_silu", x, n_in, gate.shape[0], gate.data_ptr(), up.data_ptr(),
                              QUANTIZED_FORMATS[fmt])


def dequantize(blocks: torch.Tensor, fmt: str, in_features: int) -> torch.Tensor:
    """The float32 weight `[out, in_features]` that `blocks` (`[out, in_features / 32 * block
    bytes]` contiguous uint8 in `fmt`) hold, as gguf-py dequantises it."""
    n_in = _quantized_in_features(blocks, fmt, in_features)
    out = torch.empty(blocks.shape[0], n_in, dtype=torch.float32)
    # a few rows (an embedding lookup) on this thread: waking the others costs more than they save
    workers = threads() if blocks.shape[0] >= DEQUANTIZE_ROWS_PER_THREAD else 1
    _function("dequantize")(blocks.data_ptr(), QUANTIZED_FORMATS[fmt], out.data_ptr(), blocks.shape[0], n_in, workers)
    return out


INT8_GROUP_BYTES = {"q8_0": 16 + 256, "q4_1": 32 + 128}
"""Bytes of one block of 32 values for a group of 8 rows in the int8 kernels' repacked
layout (`int8_dot.c`; `engine.weights.int8_dot.repack` writes it)."""


def int8_linear(x: torch.Tensor, groups: torch.Tensor, fmt: str, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x `[..., in]` float32 (`in` a multiple of 32), its rows quantised to 8 bits per block
    of 32, times the weight in `groups` (`[out / 8, in / 32 * group bytes]` uint8, repacked
    `fmt` blocks) with integer dot products, plus bias `[out]`. Returns `[..., out]`."""
    n_in = _int8_in_features(groups, fmt, x.shape[-1])
    return _quantized_rowwise("int8_linear", x, n_in, groups.shape[0] * 8, groups.data_ptr(), QUANTIZED_FORMATS[fmt],
                              None if bias is None else bias.data_ptr())


def int8_linear3(x: torch.Tensor, first: torch.Tensor, second: torch.Tensor, third: torch.Tensor,
                 fmt: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`int8_linear` of one x by three repacked weights (a layer's query, key and value; no
    biases) in one call, x quantised once; each output equals its own `int8_linear`."""
    n_in = x.shape[-1]
    for groups in (first, second, third):
        _int8_in_features(groups, fmt, n_in)
    x = x.contiguous()
    outs = [x.new_empty((*x.shape[:-1], groups.shape[0] * 8)) for groups in (first, second, third)]
    status = _function("int8_linear3")(x.data_ptr(), first.data_ptr(), second.data_ptr(), third.data_ptr(),
                                       QUANTIZED_FORMATS[fmt], *(out.data_ptr() for out in outs), x.numel() // n_in,
                                       n_in, *(out.shape[-1] for out in outs), threads())
    if status != 0:
        raise MemoryError(f"int8_linear3: no memory for its buffers ({n_in} values a row)")
    return outs[0], outs[1], outs[2]


def int8_gate_up_silu(x: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, fmt: str) -> torch.Tensor:
    """`silu(int8_linear(x, gate)) * int8_linear(x, up)` in one pass, x quantised once.
    gate, up: repacked `[out / 8, in / 32 * group bytes]` uint8 of one shape."""
    if gate.shape != up.shape:
        raise ValueError(f"int8_gate_up_silu: gate {tuple(gate.shape)} and up {tuple(up.shape)} differ")
    n_in = _int8_in_features(gate, fmt, x.shape[-1])
    return _quantized_rowwise("int8_gate_up_silu", x, n_in, gate.shape[0] * 8, gate.data_ptr(), up.data_ptr(),
                              QUANTIZED_FORMATS[fmt])


def quantize_activations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x `[rows, in]` float32 (`in` a multiple of 32) as the int8 kernels quantise it: values
    `[rows, in]` int8, scales and scaled sums `[rows, in / 32]` float32 (each an fp16 value)."""
    rows, n_in = x.shape
    if n_in % 32:
        raise ValueError(f"quantize_activations: {n_in} values a row are not a multiple of 32")
    x = x.contiguous()
    values = torch.empty(rows, n_in, dtype=torch.int8)
    scales, sums = (torch.empty(rows, n_in // 32, dtype=torch.float32) for _ in range(2))
    _function("quantize_activations")(x.data_ptr(), values.data_ptr(), scales.data_ptr(), sums.data_ptr(), rows, n_in,
                                      threads())
    return values, scales, sums


LINEAR_KINDS = {"dense": 0, "blocks": 1, "int8": 2}
"""How a layer's linear keeps its weight (`layer.c`): a float32 `[out, in]` tensor
(`skinny_linear`), GGML blocks with float32 activations (`quantized_linear`), or groups
repacked for 8-bit activations (`int8_linear`)."""


@dataclass(frozen=True)
class LayerWeights:
    """A Llama decoder layer's fixed arguments for `layer_qkv` and `layer_rest` (`layer.c`):
    its seven linears (query, key, value, output, gate, up, down) as C arrays of kinds,
    format codes, weight and bias pointers, the two RMS norms, and the sizes. Build it with
    `layer_weights`, which checks them once; it keeps the tensors alive."""

    tensors: tuple[torch.Tensor, ...]
    arrays: tuple  # the four ctypes arrays: kinds, formats, weights, biases
    linears: tuple  # their addresses, as the calls take them
    input_norm: tuple  # weight pointer, eps
    post_norm: tuple
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int


LayerLinear = tuple[str, torch.Tensor, str | None, torch.Tensor | None]
"""One linear for `layer_weights`: (kind in `LINEAR_KINDS`, weight tensor, block format or
None for dense, bias `[out]` or None)."""


def layer_weights(input_norm: torch.Tensor, input_eps: float, linears: tuple[LayerLinear, ...],
                  post_norm: torch.Tensor, post_eps: float, head_dim: int) -> LayerWeights:
    """`LayerWeights` from the norms' weights `[hidden]` and epsilons and the seven linears
    (query, key, value, output, gate, up, down; `LayerLinear`s). Raises ValueError, naming
    the problem, when they do not make a layer the kernels take."""
    if len(linears) != 7 or head_dim <= 0:
        raise ValueError(f"layer: seven linears (q, k, v, o, gate, up, down) and a positive head size expected, "
                         f"got {len(linears)} and {head_dim}")
    hidden = input_norm.shape[0]
    heads, kv_heads = _outputs(linears[0]) // head_dim, _outputs(linears[1]) // head_dim
    intermediate = _outputs(linears[4])
    sizes = [(hidden, heads * head_dim), (hidden, kv_heads * head_dim), (hidden, kv_heads * head_dim),
             (heads * head_dim, hidden), (hidden, intermediate), (hidden, intermediate), (intermediate, hidden)]
    for linear, (n_in, n_out) in zip(linears, sizes, strict=True):
        _check_layer_linear(linear, n_in, n_out)
    gate, up = linears[4], linears[5]
    if (gate[0], gate[2]) != (up[0], up[2]) or gate[3] is not None or up[3] is not None:
        raise ValueError("layer: gate and up must share a kind and a format and have no bias")
    if (head_dim % 8 or head_dim > ATTENTION_MAX_HEAD_DIM or heads % kv_heads
            or heads * head_dim != _outputs(linears[0])
            or not all(_dense(norm) and norm.shape == (hidden,) for norm in (input_norm, post_norm))):
        raise ValueError(f"layer: the head size ({head_dim}) must be a multiple of 8 up to {ATTENTION_MAX_HEAD_DIM} "
                         "dividing the projections, and the norms contiguous float32 weights of the hidden size")
    arrays = ((ctypes.c_int * 7)(*(LINEAR_KINDS[kind] for kind, *_ in linears)),
              (ctypes.c_int * 7)(*(QUANTIZED_FORMATS.get(fmt or "", 0) for _, _, fmt, _ in linears)),
              (ctypes.c_void_p * 7)(*(weight.data_ptr() for _, weight, _, _ in linears)),
              (ctypes.c_void_p * 7)(*(None if bias is None else bias.data_ptr() for *_, bias in linears)))
    tensors = (input_norm, post_norm, *(t for _, weight, _, bias in linears for t in (weight, bias) if t is not None))
    return LayerWeights(tensors, arrays, tuple(ctypes.addressof(array) for array in arrays),
                        (input_norm.data_ptr(), input_eps), (post_norm.data_ptr(), post_eps), hidden, heads, kv_heads,
                        head_dim, intermediate)


def _outputs(linear: LayerLinear) -> int:
    kind, weight = linear[0], linear[1]
    return weight.shape[0] * 8 if kind == "int8" else weight.shape[0]


def _check_layer_linear(linear: LayerLinear, n_in: int, n_out: int) -> None:
    kind, weight, fmt, bias = linear
    if kind not in LINEAR_KINDS:
        raise ValueError(f"layer: unknown linear kind {kind!r} (one of {', '.join(LINEAR_KINDS)})")
    if kind == "dense":
        fits = _dense(weight) and weight.shape == (n_out, n_in)
    elif kind == "blocks":
        fits = _quantized_in_features(weight, fmt or "", n_in) == n_in and weight.shape[0] == n_out
    else:
        fits = _int8_in_features(weight, fmt or "", n_in) == n_in and weight.shape[0] * 8 == n_out
    if not fits or (bias is not None and (bias.shape != (n_out,) or not _dense(bias))):
        raise ValueError(f"layer: a {kind} weight {tuple(weight.shape)} ({fmt}) does not map {n_in} to {n_out} values")


def layer_qkv(layer: LayerWeights, hidden: torch.Tensor, cos: torch.Tensor,
              sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The first half of the layer (`layer.c`): the input norm, the query, key and value
    projections, and the rotary embedding of query and key. hidden: `[batch, new, hidden]`;
    cos, sin: `[batch or 1, new, head_dim]`, all float32 on the CPU. Returns query
    `[batch, heads, new, head_dim]`, key and value `[batch, kv_heads, new, head_dim]`,
    contiguous, the same bits as `rms_norm`, the projections and `rotary` one after another."""
    batch, tokens, width = hidden.shape
    dim = layer.head_dim
    if (width != layer.hidden or cos.shape[1:] != (tokens, dim) or cos.shape[0] not in (1, batch)
            or sin.shape != cos.shape):
        raise ValueError(f"layer_qkv: hidden {tuple(hidden.shape)}, cos {tuple(cos.shape)}, sin "
                         f"{tuple(sin.shape)} do not fit a layer of {layer.hidden} values and heads of {dim}")
    hidden, cos, sin = hidden.contiguous(), cos.contiguous(), sin.contiguous()
    query = torch.empty(batch, layer.heads, tokens, dim)
    key, value = torch.empty(batch, layer.kv_heads, tokens, dim), torch.empty(batch, layer.kv_heads, tokens, dim)
    status = _function("layer_qkv")(hidden.data_ptr(), *layer.input_norm, *layer.linears, cos.data_ptr(),
                                    sin.data_ptr(), 0 if cos.shape[0] == 1 else tokens * dim, query.data_ptr(),
                                    key.data_ptr(), value.data_ptr(), batch, tokens, width, layer.heads,
                                    layer.kv_heads, dim, threads())
    if status != 0:
        raise MemoryError(f"layer_qkv: no memory for its buffers ({batch * tokens} rows)")
    return query, key, value


def layer_rest(layer: LayerWeights, hidden: torch.Tensor, query: torch.Tensor, key: torch.Tensor,
               value: torch.Tensor, mask: torch.Tensor | None, scale: float) -> torch.Tensor:
    """The rest of the layer (`layer.c`): `attention` of query over key and value (shapes
    and mask as there), the output projection and residual, the post-attention norm, the
    SiLU MLP and its residual. hidden: `[batch, new, hidden]`, the layer's input. Returns
    its output `[batch, new, hidden]`, the same bits as those kernels one after another
    (and the additions as torch makes them)."""
    batch, heads, tokens, dim = query.shape
    slots = key.shape[2]
    if (hidden.shape != (batch, tokens, layer.hidden) or (heads, dim) != (layer.heads, layer.head_dim)
            or key.shape != (batch, layer.kv_heads, slots, dim) or value.shape != key.shape
            or (mask is not None and (mask.shape != (batch, 1, tokens, slots) or mask.dtype is not torch.float32))):
        raise ValueError(f"layer_rest: hidden {tuple(hidden.shape)}, query {tuple(query.shape)}, key "
                         f"{tuple(key.shape)}, value {tuple(value.shape)}, mask "
                         f"{None if mask is None else tuple(mask.shape)} do not fit the layer")
    hidden, query = hidden.contiguous(), query.contiguous()
    key, value = _rows_contiguous(key), _rows_contiguous(value)
    mask = None if mask is None else mask.contiguous()
    out = torch.empty(batch, tokens, layer.hidden)
    status = _function("layer_rest")(hidden.data_ptr(), query.data_ptr(), key.data_ptr(), value.data_ptr(),
                                     None if mask is None else mask.data_ptr(), slots, key.stride(0), key.stride(1),
                                     value.stride(0), value.stride(1), scale, *layer.linears, *layer.post_norm,
                                     out.data_ptr(), batch, tokens, layer.hidden, heads, layer.kv_heads, dim,
                                     layer.intermediate, threads())
    if status != 0:
        raise MemoryError(f"layer_rest: no memory for its buffers ({batch * tokens} rows, {slots} slots)")
    return out


@dataclass(frozen=True)
class DecoderWeights:
    """A decoder's layers for `decoder_layers` (`layer.c`): each layer's `LayerWeights`
    gathered into C arrays (norms, epsilons, and the addresses of its four linear arrays).
    Build it with `decoder_weights`; it keeps the layers' arrays alive."""

    layers: tuple[LayerWeights, ...]
    arrays: tuple  # input norms, input epsilons, kinds, formats, weights, biases, post norms, post epsilons


def decoder_weights(layers: tuple[LayerWeights, ...]) -> DecoderWeights:
    """`DecoderWeights` of `layers`, which must all have the first one's sizes (ValueError)."""
    if not layers or len({_sizes(layer) for layer in layers}) != 1:
        raise ValueError("decoder: one layer at least, every layer of the first one's sizes")
    count = len(layers)

    def pointers(values) -> Any:
        return (ctypes.c_void_p * count)(*values)

    def floats(values) -> Any:
        return (ctypes.c_float * count)(*values)

    arrays = (pointers(layer.input_norm[0] for layer in layers), floats(layer.input_norm[1] for layer in layers),
              *(pointers(layer.linears[i] for layer in layers) for i in range(4)),
              pointers(layer.post_norm[0] for layer in layers), floats(layer.post_norm[1] for layer in layers))
    return DecoderWeights(tuple(layers), arrays)


def decoder_layers(decoder: DecoderWeights, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                   key_stores: list[torch.Tensor], value_stores: list[torch.Tensor], slots: int,
                   mask: torch.Tensor | None, scale: float) -> torch.Tensor:
    """Every layer in turn (`layer.c`), each its `layer_qkv`, its new keys and values
    written into its stores after their first `slots - new` slots, and its `layer_rest`
    over `slots` slots: the same bits as those calls one layer at a time.

    hidden: `[batch, new, hidden]`; cos, sin as `layer_qkv` takes them; key_stores and
    value_stores: one pair per layer, `[batch, kv_heads, capacity >= slots, head_dim]`, each
    slot's values contiguous and the same strides for every layer; mask as `layer_rest`
    takes it, over `slots`. Returns the last layer's output `[batch, new, hidden]`."""
    first = decoder.layers[0]
    batch, tokens, width = hidden.shape
    dim, kv_heads, count = first.head_dim, first.kv_heads, len(decoder.layers)
    store_shape = key_stores[0].shape if key_stores else None
    if (width != first.hidden or cos.shape[1:] != (tokens, dim) or cos.shape[0] not in (1, batch)
            or sin.shape != cos.shape or len(key_stores) != count or len(value_stores) != count
            or store_shape is None or store_shape[:2] != (batch, kv_heads) or store_shape[3] != dim
            or not tokens <= slots <= store_shape[2] or not _alike_stores([*key_stores, *value_stores], dim)
            or (mask is not None and (mask.shape != (batch, 1, tokens, slots) or mask.dtype is not torch.float32))):
        raise ValueError(f"decoder_layers: hidden {tuple(hidden.shape)}, cos {tuple(cos.shape)}, stores "
                         f"{None if store_shape is None else tuple(store_shape)} x {len(key_stores)}, {slots} slots, "
                         f"mask {None if mask is None else tuple(mask.shape)} do not fit {count} layers")
    hidden, cos, sin = hidden.contiguous(), cos.contiguous(), sin.contiguous()
    mask = None if mask is None else mask.contiguous()
    out = torch.empty(batch, tokens, width)
    keys = (ctypes.c_void_p * count)(*(store.data_ptr() for store in key_stores))
    values = (ctypes.c_void_p * count)(*(store.data_ptr() for store in value_stores))
    batch_stride, head_stride = key_stores[0].stride(0), key_stores[0].stride(1)
    status = _function("decoder_layers")(
        hidden.data_ptr(), count, *decoder.arrays, cos.data_ptr(), sin.data_ptr(),
        0 if cos.shape[0] == 1 else tokens * dim, keys, values, slots, batch_stride, head_stride, batch_stride,
        head_stride, None if mask is None else mask.data_ptr(), scale, out.data_ptr(), batch, tokens, width,
        first.heads, kv_heads, dim, first.intermediate, threads())
    if status < 0:
        raise ValueError(f"decoder_layers: the attention kernel does not take {tokens} new tokens over {slots} "
                         f"slots in heads of {dim}")
    if status != 0:
        raise MemoryError(f"decoder_layers: no memory for its buffers ({batch * tokens} rows, {slots} slots)")
    return out


def _sizes(layer: LayerWeights) -> tuple[int, ...]:
    return layer.hidden, layer.heads, layer.kv_heads, layer.head_dim, layer.intermediate


def _alike_stores(stores: list[torch.Tensor], dim: int) -> bool:
    """Float32 CPU stores of one shape and strides, each slot's `dim` values contiguous."""
    shape, strides = stores[0].shape, stores[0].stride()
    return strides[2:] == (dim, 1) and all(store.shape == shape and store.stride() == strides and store.is_cpu
                                           and store.dtype is torch.float32 for store in stores)


def _dense(tensor: torch.Tensor) -> bool:
    return tensor.is_cpu and tensor.dtype is torch.float32 and tensor.is_contiguous()


def _int8_in_features(groups: torch.Tensor, fmt: str, in_features: int) -> int:
    """`in_features`, checked against the repacked weight's shape, type and layout."""
    if fmt not in INT8_GROUP_BYTES:
        raise ValueError(f"unknown block format {fmt!r}; the int8 kernels read {', '.join(INT8_GROUP_BYTES)}")
    if (groups.dtype is not torch.uint8 or groups.dim() != 2 or not groups.is_contiguous() or not groups.is_cpu
            or in_features % 32 or groups.shape[1] != in_features // 32 * INT8_GROUP_BYTES[fmt]):
        raise ValueError(f"repacked {fmt} weight {tuple(groups.shape)} ({groups.dtype}) does not hold rows of "
                         f"{in_features} values (expected contiguous uint8 [out / 8, "
                         f"{in_features // 32 * INT8_GROUP_BYTES[fmt]}], in_features a multiple of 32)")
    return in_features


def _quantized_in_features(blocks: torch.Tensor, fmt: str, in_features: int) -> int:
    """`in_features`, checked against the blocks' shape, type and layout."""
    if fmt not in QUANTIZED_FORMATS:
        raise ValueError(f"unknown block format {fmt!r}; the kernels read {', '.join(QUANTIZED_FORMATS)}")
    block_bytes = 34 if fmt == "q8_0" else 20
    if (blocks.dtype is not torch.uint8 or blocks.dim() != 2 or not blocks.is_contiguous() or not blocks.is_cpu
            or in_features % 32 or blocks.shape[1] != in_features // 32 * block_bytes):
        raise ValueError(f"{fmt} blocks {tuple(blocks.shape)} ({blocks.dtype}) do not hold rows of {in_features} "
                         f"values (expected contiguous uint8 [out, {in_features // 32 * block_bytes}], "
                         "in_features a multiple of 32)")
    return in_features


def _quantized_rowwise(name: str, x: torch.Tensor, n_in: int, n_out: int, *weights) -> torch.Tensor:
    """`_rowwise` for the quantised kernels (which return 1 without memory for their buffers)."""
    function = _function(name)
    x = x.contiguous()
    out = x.new_empty((*x.shape[:-1], n_out))
    if function(x.data_ptr(), *weights, out.data_ptr(), x.numel() // n_in, n_in, n_out, threads()) != 0:
        raise MemoryError(f"{name}: no memory for its buffers ({n_in} values a row)")
    return out


def threads() -> int:
    """How many threads the kernels use in this thread: torch's count, or fewer inside
    `limit_threads`."""
    limit = getattr(_thread_limit, "threads", None)
    count = torch.get_num_threads()
    return count if limit is None else max(1, min(limit, count))


@contextlib.contextmanager
def limit_threads(limit: int | None) -> Iterator[None]:
    """Within this block (this thread only) the kernels use at most `limit` threads (None:
    no limit). The engine uses 1 while other processes hold the CPUs (`engine.cpu_share`)."""
    previous = getattr(_thread_limit, "threads", None)
    _thread_limit.threads = limit
    try:
        yield
    finally:
        _thread_limit.threads = previous


_thread_limit = threading.local()


def _rowwise(name: str, x: torch.Tensor, n_out: int, *weights) -> torch.Tensor:
    """Call the matmul-shaped kernel `name` (x, *weights, out, rows, in, out features,
    threads) on x `[..., in]`; returns `[..., n_out]`."""
    function = _function(name)
    x = x.contiguous()  # a no-op for the engine's activations
    n_in = x.shape[-1]
    out = x.new_empty((*x.shape[:-1], n_out))
    function(x.data_ptr(), *weights, out.data_ptr(), x.numel() // n_in, n_in, n_out, threads())
    return out


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """`x * cos + rotate_half(x) * sin` for x `[batch, heads, tokens, dim]` (rows of `dim`
    contiguous, any other strides) and cos, sin `[batch, tokens, dim]` or `[1, tokens, dim]`
    (the same positions for every row), all float32 on the CPU, `dim` even. Returns a
    contiguous `[batch, heads, tokens, dim]`, equal bit for bit to transformers'
    `apply_rotary_pos_emb` on each of its inputs.
    """
    batch, heads, tokens, dim = x.shape
    if (x.stride(-1) != 1 or dim % 2 or cos.shape[0] not in (1, batch) or cos.shape[1:] != (tokens, dim)
            or sin.shape != cos.shape):
        raise ValueError(f"rotary: x {tuple(x.shape)} (last stride {x.stride(-1)}) does not fit cos "
                         f"{tuple(cos.shape)} / sin {tuple(sin.shape)}")
    function = _function("rotary")
    cos, sin = cos.contiguous(), sin.contiguous()
    out = torch.empty(batch, heads, tokens, dim, dtype=torch.float32)
    function(x.data_ptr(), x.stride(0), x.stride(1), x.stride(2), cos.data_ptr(), sin.data_ptr(),
             0 if cos.shape[0] == 1 else tokens * dim, out.data_ptr(), batch, heads, tokens, dim)
    return out


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """`weight * (x * rsqrt(mean(x ** 2, -1) + eps))`, single-threaded, equal to transformers'
    Llama-family norm to rounding. x: `[..., n]` float32 on the CPU; weight: `[n]`
    contiguous float32. Returns a contiguous tensor shaped as x."""
    n = weight.shape[0]
    if x.shape[-1] != n or weight.dim() != 1 or not weight.is_contiguous():
        raise ValueError(f"rms_norm: weight {tuple(weight.shape)} does not fit x {tuple(x.shape)}")
    x = x.contiguous()
    out = torch.empty_like(x)
    _function("rms_norm")(x.data_ptr(), n, weight.data_ptr(), eps, out.data_ptr(), x.numel() // n, n)
    return out


def attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None,
              scale: float) -> torch.Tensor:
    """softmax(query @ key.T * scale + mask) @ value for grouped query heads, on the C kernel.

    query: `[batch, heads, new, dim]`; key, value: `[batch, kv_heads, slots, dim]`, each slot's
    `dim` values contiguous, any batch and head strides (heads a
    multiple of kv_heads, dim a multiple of 8 up to `ATTENTION_MAX_HEAD_DIM`); mask:
    `[batch, 1, new, slots]` additive float32, or None (every slot visible); all float32 on
    the CPU. Returns `[batch, new, heads, dim]`, as transformers' attention functions do.
    """
    batch, heads, new, dim = query.shape
    kv_heads, slots = key.shape[1], key.shape[2]
    if (key.shape != (batch, kv_heads, slots, dim) or value.shape != key.shape or heads % kv_heads
            or dim % 8 or dim > ATTENTION_MAX_HEAD_DIM
            or (mask is not None and (mask.shape != (batch, 1, new, slots) or mask.dtype is not torch.float32))):
        raise ValueError(f"attention: query {tuple(query.shape)}, key {tuple(key.shape)}, value "
                         f"{tuple(value.shape)}, mask {None if mask is None else tuple(mask.shape)} do not fit")
    function = _function("attention")
    query, key, value = query.contiguous(), _rows_contiguous(key), _rows_contiguous(value)
    mask = None if mask is None else mask.contiguous()
    out = query.new_empty((batch, new, heads, dim))
    status = function(query.data_ptr(), key.data_ptr(), value.data_ptr(), None if mask is None else mask.data_ptr(),
                      out.data_ptr(), batch, heads, kv_heads, new, slots, dim, key.stride(0), key.stride(1),
                      value.stride(0), value.stride(1), scale, threads())
    if status != 0:
        raise MemoryError(f"attention: no memory for {batch * heads * new * slots} scores")
    return out


def _rows_contiguous(cache: torch.Tensor) -> torch.Tensor:
    """A `[batch, heads, slots, dim]` cache whose slots are contiguous rows of `dim` values
    (any batch and head strides: a growing cache's view), else a contiguous copy."""
    if cache.stride(3) == 1 and cache.stride(2) == cache.shape[3]:
        return cache
    return cache.contiguous()


def _function(name: str):
    function = getattr(_library(), name)
    if function is None:
        raise RuntimeError(f"the native kernel is unavailable: {unavailable_reason()}")
    return function


@functools.lru_cache(maxsize=1)
def _library() -> _Library:
    reason = _unsupported_here()
    if reason is not None:
        logger.info("native kernels not used here (%s): the engine uses oneDNN/MKL and torch", reason)
        return _Library(reason=reason)
    try:
        return _Library(cdll=ctypes.CDLL(str(_build())))
    except (OSError, AttributeError, subprocess.SubprocessError) as error:
        reason = f"building or loading it failed: {error}"
        logger.warning("native kernels not used (%s): the engine uses oneDNN/MKL and torch", reason)
        return _Library(reason=reason)


def _unsupported_here() -> str | None:
    if os.environ.get(ENV_SWITCH, "1") == "0":
        return f"{ENV_SWITCH}=0"
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        return f"only built on Linux x86-64 (this is {sys.platform} {platform.machine()})"
    capability = torch.backends.cpu.get_cpu_capability()
    if capability not in ("AVX2", "AVX512"):
        return f"the CPU lacks AVX2/FMA (torch reports {capability})"
    if not _torch_uses_libgomp():
        return "torch's OpenMP runtime is not libgomp, whose thread pool the kernel would share"
    if _compiler() is None:
        return "no C compiler (set CC or install gcc)"
    return None


def _torch_uses_libgomp() -> bool:
    try:
        return "libgomp" in Path("/proc/self/maps").read_text()
    except OSError:
        return False


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def build_dir() -> Path:
    """Where the compiled library is kept: ``$LANGCHAIN_SEED_NATIVE_DIR``, else
    ``$LANGCHAIN_SEED_HOME/native`` (the package's cache), else ``~/.cache/langchain-seed/native``."""
    if os.environ.get(ENV_BUILD_DIR):
        return Path(os.environ[ENV_BUILD_DIR]).expanduser()
    home = os.environ.get(ENV_HOME)
    return (Path(home).expanduser() if home else Path.home() / ".cache" / "langchain-seed") / "native"


@functools.lru_cache(maxsize=1)
def library_key() -> str:
    """What the library is built from: its sources, flags and compiler (a hash)."""
    compiler = _compiler() or ""
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout \
        if compiler else ""
    sources = b"".join(source.read_bytes() for source in SOURCES + HEADERS)
    return hashlib.sha256(sources + repr((CFLAGS, compiler, version)).encode()).hexdigest()[:16]


def _build() -> Path:
    """Compile the kernels into `build_dir()` (once per sources, flags and compiler)."""
    compiler = _compiler()
    if compiler is None:
        raise subprocess.SubprocessError("no C compiler (set CC or install gcc)")
    target = build_dir() / f"seed_native-{library_key()}.so"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as work:
        built = Path(work) / target.name
        result = subprocess.run([compiler, *CFLAGS, "-o", str(built), *map(str, SOURCES)], capture_output=True,
                                text=True, timeout=BUILD_TIMEOUT_S)
        if result.returncode != 0:
            raise subprocess.SubprocessError(f"{compiler} exited with {result.returncode}: {result.stderr[-500:]}")
        os.replace(built, target)
    return target
