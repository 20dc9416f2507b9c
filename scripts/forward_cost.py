"""Time one target forward of the default pair at decoding sizes, inside the engine's kernels.

A prompt (the README's first tokens) is prefilled into the engine's growing cache, then
`rows` x `new` tokens are run over it, the cache cut back after each; the median of
--repeats. `--layer-by-layer` turns off the decoder's all-layers native call
(`decoder._all_layers_at_once`), for comparison (same bits, more Python).

Usage: python scripts/forward_cost.py [--shapes 3x6,1x2,3x1] [--prompt 80] [--repeats 200] [--layer-by-layer]
Prints milliseconds per forward, and the CPU model.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="3x6,1x2,3x1")
    parser.add_argument("--prompt", type=int, default=80)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--layer-by-layer", action="store_true")
    args = parser.parse_args()
    import torch

    from langchain_seed import SeedLLM
    from langchain_seed.engine import decoder
    from langchain_seed.engine.calibration import cpu_model_name
    from langchain_seed.engine.forward import causal_row, forward_logits, prefill
    from langchain_seed.engine.kernels import engine_kernels

    if args.layer_by_layer:
        decoder._all_layers_at_once = lambda *arguments: None
    engine = SeedLLM.from_default().engine
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    prompt = engine.tokenizer(text)["input_ids"][: args.prompt]
    route = "layer by layer" if args.layer_by_layer else "all layers in one call"
    print(f"{cpu_model_name()}, {torch.get_num_threads()} threads, {route}, a {len(prompt)}-token prompt")
    with engine_kernels("native", engine.row_limits), torch.inference_mode():
        for rows, new in (tuple(int(n) for n in shape.split("x")) for shape in args.shapes.split(",")):
            kv = prefill(engine.target_model, prompt)[0].repeat_rows(rows, room=new)
            times = []
            for _ in range(args.repeats):
                started = time.perf_counter()
                forward_logits(engine.target_model, kv, [causal_row([5] * new, len(prompt)) for _ in range(rows)])
                times.append(time.perf_counter() - started)
                for layer in kv.cache.layers:
                    layer.filled(len(prompt))
            print(f"{rows} x {new} tokens: {statistics.median(times) * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
