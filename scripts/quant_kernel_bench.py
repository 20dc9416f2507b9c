"""Time the candidate CPU matmuls for quantised weights on the default target's linear shapes.

One pass = every linear of SmolLM2-135M's 30 layers (q, k, v, o, gate, up, down) plus the
tied 49,152-row head, at a given number of rows, so weights stream from memory as in a
forward. Candidates:

- float32 `native` (the engine's dense C kernel) and `mkl` (`F.linear`): today's paths;
- `q4_1-native` / `q8_0-native`: the engine's quantised kernel (dequantise 4 rows into L1,
  then the dense tiles), Q4_1 layers and a Q8_0 head as the GGUF ships them;
- `q4_1-dequant+mkl`: dequantise each weight (C) then `F.linear` (the route above the
  native row limit);
- `q4_1-int8act`: 8-bit activations times repacked Q4_1 layers and Q8_0 head with integer
  dot products (`activations="int8"`, `engine/native/int8_dot.c`: llama.cpp's arithmetic, a
  different model);
- `int8pack`: torch's `_weight_int8pack_mm` (int8 weights, a float scale per output row);
- `int4pack`: torch's `_weight_int4pack_mm_for_cpu` (4-bit groups of 32, scale and zero);
- `torchao-int8`: torchao's `Int8WeightOnlyConfig` on an nn.Linear, when torchao is installed.

Usage: python scripts/quant_kernel_bench.py [--rows 1,3,6,18,48,128] [--candidates a,b] [--json PATH]
Prints milliseconds per pass (best of --repeats), and the CPU model.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from langchain_seed.engine import native
from langchain_seed.engine.calibration import cpu_model_name
from langchain_seed.engine.weights import formats, int8_dot

HIDDEN, INTERMEDIATE, KV, LAYERS, VOCAB = 576, 1536, 192, 30, 49152
LAYER_SHAPES = [(HIDDEN, HIDDEN), (KV, HIDDEN), (KV, HIDDEN), (HIDDEN, HIDDEN), (INTERMEDIATE, HIDDEN),
                (INTERMEDIATE, HIDDEN), (HIDDEN, INTERMEDIATE)]


def _weights() -> tuple[list[torch.Tensor], torch.Tensor]:
    torch.manual_seed(0)
    layers = [torch.randn(*shape) * 0.05 for _ in range(LAYERS) for shape in LAYER_SHAPES]
    return layers, torch.randn(VOCAB, HIDDEN) * 0.05


def _candidates(layers: list[torch.Tensor], head: torch.Tensor) -> dict[str, list[Callable]]:
    """Per candidate, one callable per weight taking x `[rows, in]`."""
    q4 = [formats.quantize(w, "q4_1") for w in layers]
    q8_head = formats.quantize(head, "q8_0")
    q8 = [formats.quantize(w, "q8_0") for w in layers]
    dense = [*layers, head]
    out: dict[str, list[Callable]] = {
        "float32-native": [lambda x, w=w: native.skinny_linear(x, w) for w in dense],
        "float32-mkl": [lambda x, w=w: F.linear(x, w) for w in dense],
        "q4_1-native": [lambda x, b=b: native.quantized_linear(x, b, "q4_1") for b in q4]
        + [lambda x: native.quantized_linear(x, q8_head, "q8_0")],
        "q8_0-native": [lambda x, b=b: native.quantized_linear(x, b, "q8_0") for b in [*q8, q8_head]],
        "q4_1-dequant+mkl": [lambda x, b=b, n=w.shape[1]: F.linear(x, native.dequantize(b, "q4_1", n))
                             for b, w in zip(q4, layers, strict=True)]
        + [lambda x: F.linear(x, native.dequantize(q8_head, "q8_0", HIDDEN))],
    }
    q4_groups = [int8_dot.repack(b, "q4_1", w.shape[1]) for b, w in zip(q4, layers, strict=True)]
    q8_head_groups = int8_dot.repack(q8_head, "q8_0", HIDDEN)
    out["q4_1-int8act"] = [lambda x, g=g: native.int8_linear(x, g, "q4_1") for g in q4_groups] + [
        lambda x: native.int8_linear(x, q8_head_groups, "q8_0")]
    out["int8pack"] = [_int8pack(w) for w in dense]
    out["int4pack"] = [_int4pack(w) for w in dense]
    torchao = _torchao_int8(dense)
    if torchao is not None:
        out["torchao-int8"] = torchao
    return out


def _int8pack(weight: torch.Tensor) -> Callable:
    scales = weight.abs().amax(dim=1).clamp(min=1e-8) / 127
    packed = torch.round(weight / scales[:, None]).to(torch.int8)
    return lambda x: torch.ops.aten._weight_int8pack_mm(x, packed, scales)


def _int4pack(weight: torch.Tensor, group: int = 32) -> Callable:
    out_features, in_features = weight.shape
    grouped = weight.view(out_features, in_features // group, group)
    low, high = grouped.amin(-1), grouped.amax(-1)
    scales = ((high - low) / 15).clamp(min=1e-8)
    q = torch.clamp(torch.round((grouped - low[..., None]) / scales[..., None]), 0, 15).to(torch.int32)
    q = q.view(out_features, in_features)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
    zeros = low + 8 * scales  # the op computes (q - 8) * scale + zero
    scales_and_zeros = torch.stack([scales.t(), zeros.t()], dim=-1).contiguous()
    return lambda x: torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, group, scales_and_zeros)


def _torchao_int8(weights: list[torch.Tensor]) -> list[Callable] | None:
    try:
        from torchao.quantization import Int8WeightOnlyConfig, quantize_
    except ImportError:
        return None
    calls = []
    for weight in weights:
        linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        linear.weight.data = weight.clone()
        wrapper = torch.nn.Sequential(linear)
        quantize_(wrapper, Int8WeightOnlyConfig())
        calls.append(wrapper)
    return calls


def _time(calls: list[Callable], inputs: dict[int, torch.Tensor], weights: list[torch.Tensor], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for call, weight in zip(calls, weights, strict=True):
            call(inputs[weight.shape[1]])
        best = min(best, time.perf_counter() - started)
    return best * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1,3,6,18,48,128")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--candidates", default=None, help="comma-separated candidate names (default: all)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    layers, head = _weights()
    dense = [*layers, head]
    candidates = _candidates(layers, head)
    if args.candidates:
        candidates = {name: candidates[name] for name in args.candidates.split(",")}
    table: dict[str, dict[int, float]] = {name: {} for name in candidates}
    with torch.inference_mode():
        for rows in (int(r) for r in args.rows.split(",")):
            inputs = {n: torch.randn(rows, n) for n in (HIDDEN, INTERMEDIATE)}
            for name, calls in candidates.items():
                _time(calls, inputs, dense, 1)  # warm-up
                table[name][rows] = _time(calls, inputs, dense, args.repeats)
    print(f"CPU: {cpu_model_name()}, torch {torch.__version__}, {torch.get_num_threads()} threads; ms per pass")
    row_counts = list(next(iter(table.values())))
    print(f"{'candidate':<20}" + "".join(f"{r:>9}" for r in row_counts))
    for name, times in table.items():
        print(f"{name:<20}" + "".join(f"{times[r]:>9.1f}" for r in row_counts))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"cpu": cpu_model_name(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                       "ms_per_pass": table}, handle, indent=1)


if __name__ == "__main__":
    main()
