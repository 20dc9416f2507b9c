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

Past 16 rows (prefills) MKL catches up and the MLP's down projection is up to 20 % faster
on it, so larger inputs stay on MKL, except for LM-head-sized weights (12 / 64 / 200 rows:
MKL 22.7 / 43.2 / 127 ms, oneDNN 12.4 / 31.8 / 87 ms).

`install(model)` gives every `nn.Linear` of a CPU float32 model a forward that uses oneDNN
while `onednn_linear()` is active in the calling thread, and torch's `F.linear` otherwise.
The engine's rounds run inside `onednn_linear()`; anyone else calling the same model (a
user's own `generate`, the benchmark's transformers baselines) runs it unchanged.
"""

from __future__ import annotations

import contextlib
import threading
from functools import partial
from typing import Iterator

import torch
import torch.nn.functional as F

ONEDNN_MAX_ROWS = 16
"""Past this many rows (a prefill) MKL is as fast or faster, except for LM-head-sized weights."""
HEAD_SIZED_OUT_FEATURES = 8192
"""Weights with at least this many output rows (LM heads) are faster on oneDNN at any row count."""

LINEAR_KERNELS = ("onednn", "torch")
"""`onednn`: the engine's CPU float32 forwards use oneDNN linears; `torch`: torch's default."""

_state = threading.local()


def onednn_available() -> bool:
    """True when this torch build has oneDNN and its linear op."""
    return bool(torch.backends.mkldnn.is_available()) and hasattr(torch.ops.mkldnn, "_linear_pointwise")


@contextlib.contextmanager
def onednn_linear(enabled: bool = True) -> Iterator[None]:
    """Within this block (this thread only), installed linears run on oneDNN."""
    previous = getattr(_state, "enabled", False)
    _state.enabled = enabled
    try:
        yield
    finally:
        _state.enabled = previous


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear`, on oneDNN inside `onednn_linear()` when the tensors allow it. x: `[..., in]`."""
    if getattr(_state, "enabled", False) and _eligible(x, weight):
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


def install(model: torch.nn.Module) -> int:
    """Route the model's `nn.Linear` layers through `linear`; returns how many were routed.

    Does nothing (returns 0) when oneDNN is missing or the model is not float32 on the CPU.
    Installing twice is harmless.
    """
    if not onednn_available():
        return 0
    routed = 0
    for module in model.modules():
        if type(module) is torch.nn.Linear and _eligible_weight(module.weight):
            if not getattr(module, "_seed_onednn", False):
                module.forward = partial(_linear_forward, module)
                module._seed_onednn = True
            routed += 1
    return routed


def _linear_forward(module: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return linear(x, module.weight, module.bias)


def _eligible_weight(weight: torch.Tensor) -> bool:
    return (weight.device.type == "cpu" and weight.dtype == torch.float32 and weight.dim() == 2
            and weight.is_contiguous())


def _eligible(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """CPU float32, no autograd (oneDNN's op has no backward here), a decoding-sized x or a head."""
    if not (_eligible_weight(weight) and x.device.type == "cpu" and x.dtype == torch.float32
            and x.numel() > 0 and x.dim() >= 2):
        return False
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return False
    rows = x.numel() // x.shape[-1]
    return rows <= ONEDNN_MAX_ROWS or weight.shape[0] >= HEAD_SIZED_OUT_FEATURES
