"""Time a first prefill of the default target at several prompt lengths, inside the engine's kernels.

The prompt is the README's text, cut to each length; best of --repeats after one warm-up.
`--old-route` times the route of the fifth session (2026-12-06) for comparison: linears kept
in blocks dequantised for MKL past 128 rows, and SDPA for the unmasked prefill (it marks
`QuantizedLinear` as not batch-invariant and limits its C kernel to 128 rows, in this
process only).

Usage: python scripts/prefill_cost.py [--tokens 83,128,300,460] [--repeats 3] [--old-route]
Prints milliseconds per prefill, and the CPU model.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def _use_old_route() -> None:
    from langchain_seed.engine.weights import modules

    modules.QuantizedLinear.batch_invariant = False
    takes_kernel = modules._takes_kernel
    modules._takes_kernel = lambda x, in_features: takes_kernel(x, in_features) and x.numel() // in_features <= 128


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", default="83,128,300,460")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--old-route", action="store_true")
    args = parser.parse_args()
    if args.old_route:
        _use_old_route()
    import torch

    from langchain_seed import SeedLLM
    from langchain_seed.engine.calibration import cpu_model_name
    from langchain_seed.engine.forward import prefill
    from langchain_seed.engine.kernels import engine_kernels

    engine = SeedLLM.from_default().engine
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    ids = engine.tokenizer(text)["input_ids"]
    print(f"{cpu_model_name()}, {torch.get_num_threads()} threads, {'old' if args.old_route else 'current'} route")
    with engine_kernels("native", engine.row_limits), torch.inference_mode():
        for tokens in (int(n) for n in args.tokens.split(",")):
            prefill(engine.target_model, ids[:tokens])
            times = []
            for _ in range(args.repeats):
                started = time.perf_counter()
                prefill(engine.target_model, ids[:tokens])
                times.append(time.perf_counter() - started)
            print(f"{tokens} tokens: {min(times) * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
