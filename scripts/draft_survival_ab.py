"""A/B of `SpeculativeConfig.draft_survival` (the learnt draft depth) on the default pair.

For each value, one `SeedEngine` over the same loaded models; the workloads run one after
another on every engine (so each engine learns across them, as one serving an app does),
and within a workload the engines take turns, repetition by repetition (the first
repetition is a warm-up). Workloads: one ToT step (`bench --workload tot-step`'s prompts:
3 thoughts, then their evaluations) on 3 questions of GSM8K, Blocksworld and Creative
Writing, scheduled and verified in batches, then the `single` workload one prompt at a time
(speculative). Greedy; every engine's outputs are checked against the first's.

Usage: python scripts/draft_survival_ab.py [--values 0,0.2,0.3] [--reps 3]
Prints median seconds per workload and value, and the speedup over the first value.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from langchain_seed.bench import workloads
from langchain_seed.engine import SamplingParams, SeedEngine, SpeculativeConfig
from langchain_seed.engine.calibration import cpu_model_name
from langchain_seed.engine.models import load_models, read_head_token_ids
from langchain_seed.pair.assemble import ensure_default_pair
from langchain_seed.pair.paths import DEFAULT_PAIR_OPTIONS, default_seed_draft_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--values", default="0,0.2,0.3")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    values = [float(value) for value in args.values.split(",")]
    torch.set_num_threads(2)
    target_dir, draft_dir = ensure_default_pair()
    draft_dir = default_seed_draft_dir() or draft_dir
    models = load_models(target_dir, draft_dir)
    head = read_head_token_ids(draft_dir)

    def engine(survival: float) -> SeedEngine:
        config = SpeculativeConfig(k_config=tuple(DEFAULT_PAIR_OPTIONS["k_config"]),
                                   draft_confidence=DEFAULT_PAIR_OPTIONS["draft_confidence"], draft_survival=survival)
        return SeedEngine(models.target, models.draft, models.tokenizer, config=config, draft_head_token_ids=head)

    reference = engine(0.0)

    def greedy(prompts: list[list[int]], max_tokens: int) -> list[list[int]]:
        params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
        return [result.token_ids for result in reference.generate(prompts, params, mode="scheduled")]

    loads = {f"{task} tot-step": ("scheduled", workloads.build_tot_step(
        workloads.load_task_questions(task, 3), models.tokenizer, greedy, task=task).groups)
        for task in ("gsm8k", "blocksworld", "writing")}
    loads["single"] = ("speculative", workloads.build_single(workloads.load_task_questions("gsm8k", 6),
                                                             models.tokenizer).groups)
    engines = {value: engine(value) for value in values}
    print(f"{cpu_model_name()}, torch {torch.__version__}, 2 threads; median s of {args.reps - 1} reps")
    for name, (mode, groups) in loads.items():
        seconds: dict[float, list[float]] = {value: [] for value in values}
        outputs: dict[float, list[list[int]]] = {}
        for rep in range(args.reps):
            for value in values:
                start = time.perf_counter()
                outputs[value] = [r.token_ids for group in groups for r in engines[value].generate(
                    group.id_lists(), SamplingParams(temperature=0.0, max_tokens=group.max_tokens), mode=mode)]
                if rep:
                    seconds[value].append(time.perf_counter() - start)
        if any(outputs[value] != outputs[values[0]] for value in values):
            raise SystemExit(f"{name}: outputs differ between values")
        base = statistics.median(seconds[values[0]])
        cells = [f"{value}: {statistics.median(seconds[value]):.2f} s ({base / statistics.median(seconds[value]):.2f}x)"
                 for value in values]
        print(f"{name:22s} " + "  ".join(cells), flush=True)


if __name__ == "__main__":
    main()
