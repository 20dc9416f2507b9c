"""Single-sequence greedy decoding on the default pair: autoregressive vs speculative, per draft tree.

    .venv/bin/python scripts/single_sequence_sweep.py [--prompts 3] [--reps 3] [--max-tokens 48]

One process, every variant over the same held-out GSM8K sample prompts, interleaved in an
order rotated each repetition, the first repetition a warm-up, medians. Autoregressive
runs on torch's kernels and on the engine's (oneDNN); speculative on the engine's. Ratios are against autoregressive on
torch's kernels (plain decoding as a user would run it). Outputs are checked identical.
"""

import argparse
import statistics
import time

from langchain_seed.bench.engine_modes import heldout_question
from langchain_seed.engine import SamplingParams, SeedEngine, SpeculativeConfig
from langchain_seed.llms import SeedLLM
from langchain_seed.tot.prompts import default_prompts

TREES = ((1,), (1, 1), (2, 1), (1, 1, 1), (2, 1, 1), (1, 1, 1, 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=3)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=48)
    args = parser.parse_args()
    base = SeedLLM.from_default().engine
    engines = {kernel: SeedEngine(base.target_model, base.draft_model, base.tokenizer,
                                  draft_head_token_ids=base.draft_head_token_ids, linear_kernel=kernel)
               for kernel in ("torch", "onednn")}
    template = default_prompts("gsm8k")["sample"]
    prompts = [base.tokenizer(template.format(question=heldout_question(i), steps="", index=1, k=3)).input_ids
               for i in range(args.prompts)]
    params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens)
    variants = [("autoregressive, torch kernels", "torch", "autoregressive", (1,)),
                ("autoregressive, oneDNN", "onednn", "autoregressive", (1,))]
    variants += [(f"speculative {tree}, oneDNN", "onednn", "speculative", tree) for tree in TREES]
    seconds: dict[str, list[float]] = {name: [] for name, *_ in variants}
    outputs: dict[str, list[list[int]]] = {}
    for rep in range(args.reps + 1):
        order = variants[rep % len(variants):] + variants[: rep % len(variants)]  # rotate: no fixed slot
        for name, kernel, mode, tree in order:
            started = time.perf_counter()
            results = [engines[kernel].generate([ids], params, mode=mode, config=SpeculativeConfig(k_config=tree))[0]
                       for ids in prompts]
            if rep:
                seconds[name].append(time.perf_counter() - started)
            outputs[name] = [r.token_ids for r in results]
    base_name = variants[0][0]
    base_seconds = statistics.median(seconds[base_name])
    for name, *_ in variants:
        median = statistics.median(seconds[name])
        same = outputs[name] == outputs[base_name]
        print(f"{name:34s} {median:7.2f} s  {base_seconds / median:5.2f}x  identical={same}")


if __name__ == "__main__":
    main()
