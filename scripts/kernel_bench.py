"""The engine's CPU matmul kernels on the default target: the tables of docs/BENCHMARKS.md
"The native matmul kernel".

    .venv/bin/python scripts/kernel_bench.py [--rows 1,2,4,6,12,16,18,24,32,48,64] [--reps 7]
        [--forward-reps 12] [--context 150]

1. All linears of the target (decoder and LM head), weights streamed from memory, one pass
   per kernel and row count: oneDNN, MKL (`F.linear`) and the native C kernel; passes
   interleaved, medians.
2. The whole target forward over a cache of `--context` tokens, rows x new tokens of
   1 x 1, 1 x 6, 3 x 6 and 3 x 10, inside `engine_kernels(...)` as the engine calls it:
   native, the oneDNN routes and torch's kernels; interleaved, medians.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from langchain_seed.defaults import ensure_default_target
from langchain_seed.engine import kernels, native
from langchain_seed.engine.models import load_model

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
    parser.add_argument("--rows", default="1,2,4,6,12,16,18,24,32,48,64")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--forward-reps", type=int, default=12)
    parser.add_argument("--context", type=int, default=150)
    args = parser.parse_args()
    if not native.available():
        raise SystemExit(f"the native kernel is unavailable here: {native.unavailable_reason()}")
    model = load_model(ensure_default_target(progress=False)).eval()
    kernels.install(model)
    print(f"torch threads: {torch.get_num_threads()}")
    linears_table(model, [int(r) for r in args.rows.split(",")], args.reps)
    forward_table(model, args.context, args.forward_reps)


if __name__ == "__main__":
    main()
