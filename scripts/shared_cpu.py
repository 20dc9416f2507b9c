"""The engine on a shared CPU: ms per target call with and without other processes busy.

Runs the default pair's autoregressive and scheduled modes on an idle machine, then with
``--load`` busy-looping processes beside it, once with the engine's CPU-share adaptation
(`engine.cpu_share`: one kernel thread while others hold the CPUs) and once without it,
and prints seconds, target calls and ms per call for each. Usage:

    python scripts/shared_cpu.py --load 2 --load-kind torch --tokens 24
"""

from __future__ import annotations

import argparse
import multiprocessing
import platform
import subprocess
import time

from langchain_seed.engine import SamplingParams, SeedEngine
from langchain_seed.engine.cpu_share import CpuShare

PROMPTS = ["Question: A baker makes 24 muffins and sells 3 boxes of 6. How many are left?\nAnswer:",
           "Write one sentence about the sea.\n", "List three prime numbers:"]


def _busy(kind: str) -> None:
    """A job beside the engine: a Python spin loop, or torch matmuls on 2 OpenMP threads (like a
    second model server or test run, whose threads also wait at barriers)."""
    if kind == "spin":
        while True:
            pass
    import torch

    torch.set_num_threads(2)
    a, b = torch.randn(256, 256), torch.randn(256, 256)
    while True:
        a @ b


def _cpu_model() -> str:
    lines = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
    names = (line.split(":", 1)[1].strip() for line in lines if line.startswith("Model name"))
    return next(names, platform.processor())


def _run(engine: SeedEngine, prompt_ids: list[list[int]], tokens: int, mode: str) -> tuple[float, int]:
    started = time.perf_counter()
    batch = engine.generate(prompt_ids, SamplingParams(max_tokens=tokens), mode=mode)
    return time.perf_counter() - started, batch.stats.target_forwards


def _row(label: str, seconds: float, calls: int) -> None:
    print(f"| {label} | {seconds:.2f} | {calls} | {1000 * seconds / calls:.0f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--load", type=int, default=3, help="busy-looping processes beside the engine")
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--load-kind", choices=("spin", "torch"), default="torch",
                        help="what each busy process does (default: torch matmuls on 2 threads)")
    args = parser.parse_args()
    from langchain_seed import SeedLLM

    engine = SeedLLM.from_default().engine
    prompt_ids = [engine.tokenizer(p)["input_ids"] for p in PROMPTS]
    print(f"CPU: {_cpu_model()}; load: {args.load} busy processes ({args.load_kind}); {args.tokens} tokens a prompt\n")
    print("| run | seconds | target calls | ms per call |\n|---|---|---|---|")
    _run(engine, prompt_ids[:1], 4, "autoregressive")  # warm-up
    for mode in ("autoregressive", "scheduled"):
        _row(f"{mode}, idle", *_run(engine, prompt_ids, args.tokens, mode))
    context = multiprocessing.get_context("spawn")  # a fresh torch in each job, not a fork of this one
    hogs = [context.Process(target=_busy, args=(args.load_kind,), daemon=True) for _ in range(args.load)]
    for hog in hogs:
        hog.start()
    try:
        time.sleep(1.0)
        for mode in ("autoregressive", "scheduled"):
            engine.cpu_share = CpuShare()
            _row(f"{mode}, loaded, adapting", *_run(engine, prompt_ids, args.tokens, mode))
            engine.cpu_share = CpuShare(read_wait=lambda: None)  # never limits the threads
            _row(f"{mode}, loaded, not adapting", *_run(engine, prompt_ids, args.tokens, mode))
    finally:
        for hog in hogs:
            hog.terminate()
    engine.close()


if __name__ == "__main__":
    main()
