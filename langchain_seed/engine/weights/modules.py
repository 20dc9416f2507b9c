"""`nn.Module`s that keep their weight in a GGML block format and compute in float32.

`QuantizedLinear` and `QuantizedEmbedding` stand where a model's `nn.Linear` and
`nn.Embedding` stood. Their weight exists only as blocks (`engine.weights.formats`); what
they compute is defined as the float32 module on the dequantised weight. Inside the
engine's kernel block (`kernels.engine_kernels("native")`) a linear runs on the quantised
C kernel at every size, which equals the dense kernel on the dequantised weight bit for
bit and computes each row the same way whatever else is in the batch
(`QuantizedLinear.batch_invariant`); everywhere else (other kernels, outside the engine,
autograd) it dequantises the weight and calls `F.linear`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from langchain_seed.engine import kernels, native
from langchain_seed.engine.weights.formats import check_blocks, dequantize


class QuantizedLinear(torch.nn.Module):
    """`nn.Linear(in_features, out_features)` whose weight is kept as `fmt` blocks.

    blocks: `[out_features, in_features / 32 * block bytes]` uint8 (may be shared with
    another module, e.g. a tied embedding); bias: `[out_features]` float32 or None.
    """

    blocks: torch.Tensor
    bias: torch.Tensor | None
    batch_invariant = True
    """On the engine's kernels it computes every row the same way at any batch size (the C
    kernel at every size, `kernels.batch_invariant`): a prompt's cache is then the same
    however it was prefilled, so the engine keeps prompt prefixes (`engine.prefix_cache`).
    Past 128 rows that costs 1.1-1.5x of dequantising for MKL (docs/BENCHMARKS.md)."""

    def __init__(self, blocks: torch.Tensor, fmt: str, in_features: int, bias: torch.Tensor | None = None,
                 name: str = "weight") -> None:
        super().__init__()
        check_blocks(blocks, fmt, in_features, name)
        if bias is not None and bias.shape != (blocks.shape[0],):
            raise ValueError(f"{name}: bias {tuple(bias.shape)} does not fit {blocks.shape[0]} outputs")
        self.fmt, self.in_features, self.out_features = fmt, in_features, int(blocks.shape[0])
        self.register_buffer("blocks", blocks.contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.float32).contiguous())

    @property
    def weight(self) -> torch.Tensor:
        """The dequantised float32 weight `[out, in]` (built on each access: for callers that
        need the dense tensor; the forward never builds all of it at decoding sizes)."""
        return dequantize(self.blocks, self.fmt, self.in_features)

    def rows(self, output_ids: torch.Tensor) -> torch.Tensor:
        """The float32 weight rows of `output_ids` (`[n]` int64): `[n, in_features]`."""
        return dequantize(self.blocks.index_select(0, output_ids.cpu()), self.fmt, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: `[..., in_features]` -> `[..., out_features]`."""
        if _takes_kernel(x, self.in_features):
            return native.quantized_linear(x, self.blocks, self.fmt, self.bias)
        return F.linear(x, self.weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fmt={self.fmt}, " \
               f"bias={self.bias is not None}"


class QuantizedEmbedding(torch.nn.Module):
    """`nn.Embedding(num_embeddings, embedding_dim)` whose table is kept as `fmt` blocks
    `[num_embeddings, embedding_dim / 32 * block bytes]` uint8; a lookup dequantises only the
    rows it returns."""

    blocks: torch.Tensor

    def __init__(self, blocks: torch.Tensor, fmt: str, embedding_dim: int, name: str = "embedding") -> None:
        super().__init__()
        check_blocks(blocks, fmt, embedding_dim, name)
        self.fmt, self.embedding_dim, self.num_embeddings = fmt, embedding_dim, int(blocks.shape[0])
        self.register_buffer("blocks", blocks.contiguous())

    @property
    def weight(self) -> torch.Tensor:
        """The dequantised float32 table `[num_embeddings, embedding_dim]` (built on each access)."""
        return dequantize(self.blocks, self.fmt, self.embedding_dim)

    def rows(self, token_ids: torch.Tensor) -> torch.Tensor:
        """The float32 rows of `token_ids` (`[n]` int64): `[n, embedding_dim]`."""
        return dequantize(self.blocks.index_select(0, token_ids), self.fmt, self.embedding_dim)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids: `[...]` int64 -> `[..., embedding_dim]` float32."""
        return embedding_lookup(self, input_ids)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, fmt={self.fmt}"


def embedding_lookup(embedding, input_ids: torch.Tensor) -> torch.Tensor:
    """An embedding kept in blocks looked up: `input_ids` `[...]` int64 checked against its
    `num_embeddings`, then its `rows` -> `[..., embedding_dim]` float32."""
    flat = input_ids.reshape(-1)
    if flat.numel():
        smallest, largest = (int(bound) for bound in torch.aminmax(flat))
        if smallest < 0 or largest >= embedding.num_embeddings:
            raise IndexError(f"token ids must be in [0, {embedding.num_embeddings}); got {smallest}..{largest}")
    return embedding.rows(flat).view(*input_ids.shape, embedding.embedding_dim)


def _takes_kernel(x: torch.Tensor, in_features: int) -> bool:
    """Inside `engine_kernels("native")`, a CPU float32 input without autograd (of any number
    of rows), where the C kernels run."""
    return (kernels.active_kernel() == "native" and x.is_cpu and x.dtype is torch.float32 and x.dim() >= 1
            and x.shape[-1] == in_features and x.numel() > 0
            and not (torch.is_grad_enabled() and x.requires_grad) and native.available())


def is_quantized(module: torch.nn.Module) -> bool:
    """Whether `module` keeps its weight in blocks (`QuantizedLinear` or `QuantizedEmbedding`)."""
    return isinstance(module, (QuantizedLinear, QuantizedEmbedding))
