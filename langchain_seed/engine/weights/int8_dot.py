"""Linears that multiply 8-bit activations by GGML-block weights with integer dot products.

This is llama.cpp's arithmetic for Q4_1 and Q8_0 weights: each input row is quantised per
block of 32 values (a scale d = max|x| / 127 and int8 values, as its Q8_1), and each
block's product is an exact integer sum scaled by the two fp16 scales (plus, for Q4_1, the
weight's minimum times the row's scaled sum). It changes the numbers: a model whose
linears are `Int8Linear`s is a different model from the float32 one its blocks dequantise
to, and the engine treats it as the target (every mode reproduces *its* greedy output).

The weights are repacked at load (`repack`) into groups of 8 output rows whose values are
interleaved 4 at a time (layout in `engine/native/int8_dot.c`), the same bytes per weight
as the GGUF's blocks. `reference_linear` computes the same numbers in torch, in the same
order, bit for bit; the C kernel (`native.int8_linear`) is what runs, and the reference is
the fallback where the kernels cannot be built.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from langchain_seed.engine import native
from langchain_seed.engine.weights.formats import BLOCK_VALUES, block_format, dequantize
from langchain_seed.engine.weights.modules import embedding_lookup

GROUP_ROWS = 8
"""Output rows per repacked group (one lane each in a vector of 8 int32 sums)."""
LANE_VALUES = 4
"""Consecutive values of one row that one 32-bit lane of a dot product sums."""


def group_bytes(fmt: str) -> int:
    """Bytes of one block of 32 values for a group of 8 rows in the repacked layout."""
    return {"q8_0": 16 + 256, "q4_1": 32 + 128}[block_format(fmt).name]


def repack(blocks: torch.Tensor, fmt: str, in_features: int) -> torch.Tensor:
    """GGML `fmt` blocks `[out, in / 32 * block bytes]` uint8 as the int8 kernels' groups
    `[ceil(out / 8), in / 32 * group bytes]` uint8 (rows past `out` are zero: they compute 0)."""
    layout = block_format(fmt)
    rows, n_blocks = blocks.shape[0], in_features // BLOCK_VALUES
    padded = -(-rows // GROUP_ROWS) * GROUP_ROWS
    per_block = blocks.reshape(rows, n_blocks, layout.block_bytes)
    if padded != rows:
        per_block = torch.cat([per_block, per_block.new_zeros(padded - rows, n_blocks, layout.block_bytes)])
    # [group, row in group, block, bytes] -> [group, block, ...]: scales, then values by lane.
    grouped = per_block.view(padded // GROUP_ROWS, GROUP_ROWS, n_blocks, layout.block_bytes).transpose(1, 2)
    scale_bytes = 2 if fmt == "q8_0" else 4
    scales = [grouped[..., i:i + 2].flatten(2) for i in range(0, scale_bytes, 2)]
    values = grouped[..., scale_bytes:]  # q8_0: 32 int8 values; q4_1: 16 bytes of nibbles
    chunks = values.shape[-1] // LANE_VALUES
    lanes = values.reshape(*values.shape[:3], chunks, LANE_VALUES).permute(0, 1, 3, 2, 4).flatten(2)
    return torch.cat([*scales, lanes], dim=2).reshape(padded // GROUP_ROWS, n_blocks * group_bytes(fmt)).contiguous()


def unpack_rows(groups: torch.Tensor, fmt: str, in_features: int, row_ids: torch.Tensor) -> torch.Tensor:
    """The GGML blocks `[n, in / 32 * block bytes]` of rows `row_ids` (`[n]` int64) of a
    repacked weight (the inverse of `repack`)."""
    layout = block_format(fmt)
    n_blocks = in_features // BLOCK_VALUES
    grouped = groups.view(groups.shape[0], n_blocks, group_bytes(fmt))
    group_ids, lane = row_ids // GROUP_ROWS, row_ids % GROUP_ROWS
    scale_bytes = 2 if fmt == "q8_0" else 4
    parts = [grouped[..., i * GROUP_ROWS:(i + 2) * GROUP_ROWS].view(*grouped.shape[:2], GROUP_ROWS, 2)
             [group_ids, :, lane] for i in range(0, scale_bytes, 2)]
    chunks = (layout.block_bytes - scale_bytes) // LANE_VALUES
    values = grouped[..., scale_bytes * GROUP_ROWS:].view(*grouped.shape[:2], chunks, GROUP_ROWS, LANE_VALUES)
    parts.append(values[group_ids, :, :, lane].flatten(2))
    return torch.cat(parts, dim=2).reshape(len(row_ids), n_blocks * layout.block_bytes)


def quantize_activations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x `[rows, in]` float32 per block of 32 as the kernels do: values `[rows, in]` (int8
    range, int32), scales d and scaled sums s `[rows, in / 32]` float32 (fp16 values)."""
    blocks = x.reshape(x.shape[0], -1, BLOCK_VALUES)
    scale = blocks.abs().amax(dim=-1) / 127.0
    inverse = torch.where(scale != 0, 1.0 / scale, torch.zeros_like(scale))
    values = torch.round(blocks * inverse.unsqueeze(-1)).to(torch.int32)
    sums = (scale * values.sum(dim=-1).to(torch.float32)).half().float()
    return values.reshape(x.shape), scale.half().float(), sums


def weight_values(groups: torch.Tensor, fmt: str, in_features: int) -> tuple[torch.Tensor, ...]:
    """A repacked weight's integer values `[out, in]` int32, scales `[out, in / 32]` and,
    for q4_1, minimums `[out, in / 32]` (float32)."""
    rows = torch.arange(groups.shape[0] * GROUP_ROWS)
    blocks = unpack_rows(groups, fmt, in_features, rows).view(len(rows), -1, block_format(fmt).block_bytes)
    scale = blocks[..., 0:2].contiguous().view(torch.float16).float().squeeze(-1)
    if fmt == "q8_0":
        return blocks[..., 2:].contiguous().view(torch.int8).to(torch.int32).flatten(1), scale
    nibbles = blocks[..., 4:].to(torch.int32)
    values = torch.cat([nibbles & 0x0F, nibbles >> 4], dim=-1).flatten(1)
    return values, scale, blocks[..., 2:4].contiguous().view(torch.float16).float().squeeze(-1)


def reference_linear(x: torch.Tensor, groups: torch.Tensor, fmt: str, in_features: int,
                     bias: torch.Tensor | None = None) -> torch.Tensor:
    """What `native.int8_linear` computes, in torch, in its order (bit for bit). x: `[...,
    in]` float32. Returns `[..., out / 8 * 8]`."""
    flat = x.reshape(-1, in_features).to(torch.float32)
    x_values, x_scale, x_sums = quantize_activations(flat)
    weight = weight_values(groups, fmt, in_features)
    n_blocks = in_features // BLOCK_VALUES
    products = torch.einsum("rbk,obk->rob", x_values.view(-1, n_blocks, BLOCK_VALUES).double(),
                            weight[0].view(-1, n_blocks, BLOCK_VALUES).double()).to(torch.float32)
    out = torch.zeros(flat.shape[0], weight[0].shape[0], dtype=torch.float32)
    for b in range(n_blocks):
        out = out + products[..., b] * (weight[1][:, b] * x_scale[:, b:b + 1])
        if fmt == "q4_1":
            out = out + weight[2][:, b] * x_sums[:, b:b + 1]
    if bias is not None:
        out = out + bias
    return out.view(*x.shape[:-1], -1)


class Int8Linear(torch.nn.Module):
    """`nn.Linear(in_features, out_features)` on repacked `fmt` blocks whose forward always
    quantises its input to 8 bits (module notes): in any kernel block, at any size, in or
    out of the engine, so a transformers `generate` on the model computes what the engine
    does.

    groups: `[ceil(out / 8), in / 32 * group bytes]` uint8 (`repack`); bias `[out]` or None.
    """

    groups: torch.Tensor
    padded_bias: torch.Tensor | None
    batch_invariant = True
    """Its layer must compute every row the same way at any batch size and cache layout
    (`kernels.batch_invariant`): its rounding of activations would turn float noise into a
    different model."""

    def __init__(self, groups: torch.Tensor, fmt: str, in_features: int, out_features: int,
                 bias: torch.Tensor | None = None) -> None:
        super().__init__()
        expected = (-(-out_features // GROUP_ROWS), in_features // BLOCK_VALUES * group_bytes(fmt))
        if in_features % BLOCK_VALUES or groups.dtype is not torch.uint8 or tuple(groups.shape) != expected:
            raise ValueError(f"repacked {fmt} weight must be uint8 {list(expected)} for {out_features} x "
                             f"{in_features}; got {groups.dtype} {tuple(groups.shape)}")
        self.fmt, self.in_features, self.out_features = fmt, in_features, out_features
        if bias is not None and tuple(bias.shape) != (out_features,):
            raise ValueError(f"bias {tuple(bias.shape)} does not fit {out_features} outputs")
        self.register_buffer("groups", groups.contiguous())
        padding = (0, expected[0] * GROUP_ROWS - out_features)
        padded = None if bias is None else F.pad(bias.detach().to(torch.float32), padding)
        self.register_buffer("padded_bias", padded)

    @property
    def bias(self) -> torch.Tensor | None:
        """The bias `[out]` float32, or None."""
        return None if self.padded_bias is None else self.padded_bias[:self.out_features]

    @classmethod
    def from_blocks(cls, blocks: torch.Tensor, fmt: str, in_features: int,
                    bias: torch.Tensor | None = None) -> Int8Linear:
        """The linear whose weight GGML `fmt` blocks `[out, row bytes]` hold."""
        return cls(repack(blocks, fmt, in_features), fmt, in_features, int(blocks.shape[0]), bias)

    @property
    def weight(self) -> torch.Tensor:
        """The dequantised float32 weight `[out, in]` (built on each access)."""
        return self.rows(torch.arange(self.out_features))

    def kernel_args(self) -> tuple[torch.Tensor, str, torch.Tensor | None]:
        """(groups, format, bias padded to whole groups or None): what `native.int8_linear` takes."""
        return self.groups, self.fmt, self.padded_bias

    def rows(self, output_ids: torch.Tensor) -> torch.Tensor:
        """The dequantised float32 weight rows of `output_ids` (`[n]` int64): `[n, in]`."""
        return dequantized_rows(self.groups, self.fmt, self.in_features, output_ids)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: `[..., in_features]` -> `[..., out_features]` (float32)."""
        if x.shape[-1] != self.in_features:
            raise ValueError(f"Int8Linear: input has {x.shape[-1]} features, expected {self.in_features}")
        x = x.to(torch.float32)
        if x.numel() == 0:
            return x.new_zeros(*x.shape[:-1], self.out_features)
        if native.available() and x.is_cpu and not (torch.is_grad_enabled() and x.requires_grad):
            out = native.int8_linear(x, self.groups, self.fmt, self.padded_bias)
        else:
            out = reference_linear(x, self.groups, self.fmt, self.in_features, self.padded_bias)
        return out if out.shape[-1] == self.out_features else out[..., :self.out_features]

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fmt={self.fmt}, " \
               f"bias={self.bias is not None}, activations=int8"


class Int8Embedding(torch.nn.Module):
    """The embedding that shares a tied `Int8Linear` head's repacked table: a lookup
    dequantises only the rows it returns (float32, as `QuantizedEmbedding`)."""

    groups: torch.Tensor

    def __init__(self, head: Int8Linear) -> None:
        super().__init__()
        self.fmt, self.num_embeddings, self.embedding_dim = head.fmt, head.out_features, head.in_features
        self.register_buffer("groups", head.groups)  # the head's tensor, not a copy

    @property
    def weight(self) -> torch.Tensor:
        """The dequantised float32 table `[num_embeddings, embedding_dim]` (built on each access)."""
        return self.rows(torch.arange(self.num_embeddings))

    def rows(self, token_ids: torch.Tensor) -> torch.Tensor:
        """The float32 rows of `token_ids` (`[n]` int64): `[n, embedding_dim]`."""
        return dequantized_rows(self.groups, self.fmt, self.embedding_dim, token_ids)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids: `[...]` int64 -> `[..., embedding_dim]` float32."""
        return embedding_lookup(self, input_ids)


def dequantized_rows(groups: torch.Tensor, fmt: str, in_features: int, row_ids: torch.Tensor) -> torch.Tensor:
    """Rows `row_ids` (`[n]` int64) of a repacked weight, dequantised: `[n, in_features]` float32."""
    return dequantize(unpack_rows(groups, fmt, in_features, row_ids.cpu().long()), fmt, in_features)
