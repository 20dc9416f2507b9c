"""GGML's block formats for weights, by name: what a block holds and how to (de)quantise it.

Both formats keep rows of 32-value blocks, exactly as llama.cpp writes them into a GGUF:

- ``q8_0``: an fp16 scale d and 32 int8 values q; value = q * d (34 bytes, 8.5 bits a weight).
- ``q4_1``: an fp16 scale d, an fp16 minimum m and 32 4-bit values q; value = q * d + m
  (20 bytes, 5 bits a weight).

Quantising goes through gguf-py (the GGUF format's own library, `gguf.quants`), so an
int8 or int4 model made here holds the same blocks llama.cpp's reference quantiser
writes. Dequantising is exact: each value is one float32 product (and sum), so the
float32 weight of a quantised model is well defined, and the engine's kernels reproduce it
bit for bit (`engine.native`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

BLOCK_VALUES = 32
"""Values per block, in both formats."""


@dataclass(frozen=True)
class BlockFormat:
    """One GGML block format: its name, bytes per block and what it is called elsewhere."""

    name: str
    block_bytes: int
    ggml_type: str

    def row_bytes(self, in_features: int) -> int:
        """Bytes of one row of `in_features` values (a multiple of `BLOCK_VALUES`)."""
        return in_features // BLOCK_VALUES * self.block_bytes


FORMATS = {"q8_0": BlockFormat("q8_0", 34, "Q8_0"), "q4_1": BlockFormat("q4_1", 20, "Q4_1")}
"""The formats the engine computes with, by name."""


def block_format(name: str) -> BlockFormat:
    """The format called `name`; a ValueError listing the known ones otherwise."""
    if name not in FORMATS:
        raise ValueError(f"unknown weight format {name!r}; the engine reads {', '.join(FORMATS)}")
    return FORMATS[name]


def check_blocks(blocks: torch.Tensor, fmt: str, in_features: int, what: str = "weight") -> None:
    """Raise ValueError (naming `what`) unless `blocks` is a contiguous uint8 CPU tensor
    `[out, row_bytes(in_features)]` of format `fmt`."""
    layout = block_format(fmt)
    if in_features % BLOCK_VALUES:
        raise ValueError(f"{what}: {in_features} input features are not a multiple of {BLOCK_VALUES}, "
                         f"so it cannot be kept in {fmt} blocks")
    expected = layout.row_bytes(in_features)
    if blocks.dtype is not torch.uint8 or blocks.dim() != 2 or blocks.shape[1] != expected or not blocks.is_cpu:
        raise ValueError(f"{what}: {fmt} blocks must be uint8 [out, {expected}] on the CPU for {in_features} "
                         f"input features; got {blocks.dtype} {tuple(blocks.shape)} on {blocks.device}")


def quantize(weight: torch.Tensor, fmt: str) -> torch.Tensor:
    """`weight` `[out, in]` (in a multiple of 32) as `fmt` blocks `[out, row bytes]` uint8,
    with gguf-py's reference quantiser."""
    from gguf import GGMLQuantizationType, quants

    layout = block_format(fmt)
    if weight.dim() != 2 or weight.shape[1] % BLOCK_VALUES:
        raise ValueError(f"cannot quantise a weight of shape {tuple(weight.shape)} to {fmt}: it must be 2-D "
                         f"with a multiple of {BLOCK_VALUES} input features")
    values = weight.detach().to(torch.float32, copy=True).cpu().numpy()
    blocks = quants.quantize(values, GGMLQuantizationType[layout.ggml_type])
    return torch.from_numpy(blocks.copy()).view(torch.uint8).reshape(weight.shape[0], layout.row_bytes(weight.shape[1]))


def dequantize(blocks: torch.Tensor, fmt: str, in_features: int) -> torch.Tensor:
    """The float32 weight `[out, in_features]` that `fmt` blocks `[out, row bytes]` hold:
    on the engine's C kernel where it runs, else with gguf-py (the same numbers)."""
    from langchain_seed.engine import native

    check_blocks(blocks, fmt, in_features)
    if native.available():
        return native.dequantize(blocks.contiguous(), fmt, in_features)
    from gguf import GGMLQuantizationType, quants

    values = quants.dequantize(blocks.contiguous().numpy(), GGMLQuantizationType[block_format(fmt).ggml_type])
    return torch.from_numpy(values.copy()).reshape(blocks.shape[0], in_features)
