"""The engine's CPU kernels on the default target: the tables of docs/BENCHMARKS.md "The
native kernels".

    .venv/bin/python scripts/kernel_bench.py [--rows 1,2,4,6,12,18,32,48,64,83,128,192] [--reps 7]
        [--forward-reps 12] [--context 150]

1. All linears of the target (decoder and LM head), weights streamed from memory, one pass
   per kernel and row count: oneDNN, MKL (`F.linear`) and the native C kernel; passes
   interleaved, medians.
2. The layer ops the native library replaces, us per call on the target's shapes (one
   row x one token over 151 slots, 3 rows x 6 tokens over 156 and 330 slots): attention
   (native against torch's SDPA on un-repeated keys), RMS norm (native, `F.rms_norm`, the
   transformers module), rotary embedding of q and k (native, transformers' eager ops),
   the MLP's `silu(gate(x)) * up(x)` (native in one pass, native as two matmuls and eager
   ops, `F.linear`), weights rotating through the 30 layers; interleaved, medians.
3. The whole target forward over a cache of `--context` tokens, rows x new tokens of
   1 x 1, 1 x 6, 3 x 6 and 3 x 10, inside `engine_kernels(...)` as the engine calls it:
   native (with its layer forward, `engine/layers.py`), the oneDNN routes and torch's
   kernels; interleaved, medians.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from langchain_seed.engine import kernels, native, routing
from langchain_seed.engine.models import load_model
from langchain_seed.pair.fetch import ensure_default_target

FORWARD_SHAPES = ((1, 1), (1, 6), (3, 6), (3, 10))


def linears_table(model, rows: list[int], reps: int) -> None:
    weights = [m.weight.detach() for m in model.modules() if isinstance(m, torch.nn.Linear)]
    routes = {"oneDNN": lambda x, w: torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], ""),
              "MKL": F.linear, "native": native.skinny_linear}
    times = {(name, r): [] for name in routes for r in rows}
    with torch.inference_mode():
        for _ in range(reps):
            for r in rows:
                inputs = {w.shape[1]: torch.randn(r, w.shape[1]) for w in weights}
                for name, route in routes.items():
                    started = time.perf_counter()
                    for w in weights:
                        route(inputs[w.shape[1]], w)
                    times[name, r].append(1000 * (time.perf_counter() - started))
    print(f"all {len(weights)} linears, ms per pass (medians of {reps})")
    print("rows      " + "".join(f"{r:>8}" for r in rows))
    for name in routes:
        print(f"{name:<10}" + "".join(f"{statistics.median(times[name, r]):8.1f}" for r in rows))


OP_SHAPES = ((1, 1, 151), (3, 6, 156), (3, 6, 330))


def layer_ops(model, batch: int, new: int, slots: int) -> dict:
    """The timed calls for one shape: name -> a function of no arguments."""
    from transformers.models.llama.modeling_llama import rotate_half

    config, layers = model.config, model.model.layers
    heads, kv_heads, hidden = config.num_attention_heads, config.num_key_value_heads, config.hidden_size
    dim = hidden // heads
    query, key, value = (torch.randn(batch, heads, new, dim), torch.randn(batch, kv_heads, slots, dim),
                         torch.randn(batch, kv_heads, slots, dim))
    mask = torch.zeros(batch, 1, new, slots) if new > 1 else None
    x = torch.randn(batch, new, hidden)
    q_view = torch.randn(batch, new, heads, dim).transpose(1, 2)
    k_view = torch.randn(batch, new, kv_heads, dim).transpose(1, 2)
    cos, sin = torch.randn(batch, new, dim), torch.randn(batch, new, dim)
    norm = layers[0].input_layernorm
    mlps = [layer.mlp for layer in layers]
    return {
        "attention native": lambda: native.attention(query, key, value, mask, 0.125),
        "attention SDPA": lambda: F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=0.125,
                                                                 enable_gqa=True).transpose(1, 2).contiguous(),
        "RMS norm native": lambda: native.rms_norm(x, norm.weight, norm.variance_epsilon),
        "RMS norm F.rms_norm": lambda: F.rms_norm(x, (hidden,), norm.weight, norm.variance_epsilon),
        "RMS norm module": lambda: norm.__class__.forward(norm, x),
        "rotary native": lambda: (native.rotary(q_view, cos, sin), native.rotary(k_view, cos, sin)),
        "rotary eager": lambda: (q_view * cos[:, None] + rotate_half(q_view) * sin[:, None],
                                 k_view * cos[:, None] + rotate_half(k_view) * sin[:, None]),
        "MLP half native": lambda: [native.gate_up_silu(x, m.gate_proj.weight, m.up_proj.weight) for m in mlps],
        "MLP half 2 native": lambda: [F.silu(native.skinny_linear(x, m.gate_proj.weight))
                                      * native.skinny_linear(x, m.up_proj.weight) for m in mlps],
        "MLP half F.linear": lambda: [F.silu(F.linear(x, m.gate_proj.weight)) * F.linear(x, m.up_proj.weight)
                                      for m in mlps],
    }


def layer_ops_table(model, reps: int) -> None:
    ops = {shape: layer_ops(model, *shape) for shape in OP_SHAPES}
    layer_count = len(model.model.layers)
    times = {(shape, name): [] for shape, named in ops.items() for name in named}
    with torch.inference_mode():
        for _ in range(reps):
            for shape, named in ops.items():
                for name, op in named.items():
                    per_layer = name.startswith("MLP")  # one call covers every layer's weights
                    calls = 1 if per_layer else 50
                    started = time.perf_counter()
                    for _ in range(calls):
                        op()
                    times[shape, name].append(1e6 * (time.perf_counter() - started) / calls
                                              / (layer_count if per_layer else 1))
    print(f"\nlayer ops, us per call (MLP: per layer, weights streamed; medians of {reps})")
    print("op                    " + "".join(f"{f'{b}x{n} @{s}':>14}" for b, n, s in OP_SHAPES))
    for name in ops[OP_SHAPES[0]]:
        print(f"{name:<22}" + "".join(f"{statistics.median(times[shape, name]):14.1f}" for shape in OP_SHAPES))


def forward_table(model, context: int, reps: int) -> None:
    from transformers import DynamicCache

    engine_routes = ("native", "onednn", "torch")
    times = {(k, s): [] for k in engine_routes for s in FORWARD_SHAPES}
    with torch.inference_mode():
        caches = {}
        for batch, new in FORWARD_SHAPES:
            caches[batch, new] = DynamicCache()
            model(input_ids=torch.randint(0, 40000, (batch, context)), cache=caches[batch, new], use_cache=True)
        for _ in range(reps):
            for batch, new in FORWARD_SHAPES:
                cache = caches[batch, new]
                mask = torch.zeros(batch, 1, new, context + new)
                mask[..., context:] = torch.full((new, new), float("-inf")).triu(1)
                inputs = dict(input_ids=torch.randint(0, 40000, (batch, new)),
                              position_ids=torch.arange(context, context + new).expand(batch, new),
                              attention_mask=mask if new > 1 else None, cache=cache, use_cache=True)
                for kernel in engine_routes:
                    with kernels.engine_kernels(kernel):
                        started = time.perf_counter()
                        model(**inputs)
                        times[kernel, (batch, new)].append(1000 * (time.perf_counter() - started))
                    cache.crop(-new)
    print(f"\nwhole target forward at a {context}-token context, ms (medians of {reps})")
    print("rows x new  " + "".join(f"{k:>10}" for k in engine_routes))
    for shape in FORWARD_SHAPES:
        print(f"{shape[0]} x {shape[1]:<7}" + "".join(f"{statistics.median(times[k, shape]):10.1f}"
                                                     for k in engine_routes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1,2,4,6,12,18,32,48,64,83,128,192")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--forward-reps", type=int, default=12)
    parser.add_argument("--context", type=int, default=150)
    args = parser.parse_args()
    if not native.available():
        raise SystemExit(f"the native kernel is unavailable here: {native.unavailable_reason()}")
    model = load_model(ensure_default_target(progress=False), weights="float32").eval()
    routing.install(model)  # for this script's whole process
    print(f"torch threads: {torch.get_num_threads()}")
    linears_table(model, [int(r) for r in args.rows.split(",")], args.reps)
    layer_ops_table(model, args.reps)
    forward_table(model, args.context, args.forward_reps)


if __name__ == "__main__":
    main()
