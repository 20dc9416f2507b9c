"""Engine modes side by side on k generations from one prompt (issues 2 and 3).

`python -m langchain_seed.bench.engine_modes` loads the default pair and, for each k,
runs k sampled generations of one GSM8K Tree-of-Thoughts prompt (the "sample k thoughts
of one state" call) with every mode, interleaved, several repetitions, medians:
autoregressive (one after another), speculative (one after another), scheduled with
SeeD's rounds policy, scheduled with batched verification. k = 1 at temperature 0 is
the single-sequence speculative-vs-autoregressive ratio. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from importlib import resources

from langchain_seed.engine import SamplingParams, SeedEngine, SpeculativeConfig
from langchain_seed.engine.config import VerifyPolicy
from langchain_seed.engine.kernels import LINEAR_KERNELS

MODES: tuple[tuple[str, str, VerifyPolicy], ...] = (
    ("autoregressive", "autoregressive", "rounds"),
    ("speculative", "speculative", "rounds"),
    ("scheduled_rounds", "scheduled", "rounds"),
    ("scheduled_batched", "scheduled", "batched"),
)


def heldout_question(index: int = 0) -> str:
    lines = resources.files("langchain_seed.bench").joinpath("data/gsm8k_heldout.jsonl").read_text().splitlines()
    return json.loads(lines[index])["question"]


def load_default_engine(k_config: tuple[int, ...], linear_kernel: str = "native") -> SeedEngine:
    from langchain_seed.lc.llms import SeedLLM

    engine = SeedLLM.from_default(k_config=k_config).engine
    if linear_kernel == engine.linear_kernel:
        return engine
    return SeedEngine(engine.target_model, engine.draft_model, engine.tokenizer, engine.config,
                      draft_head_token_ids=engine.draft_head_token_ids, linear_kernel=linear_kernel)


def run_once(engine: SeedEngine, prompt: list[int], k: int, temperature: float, max_tokens: int, mode: str,
             verify: VerifyPolicy, k_config: tuple[int, ...], rep: int) -> dict:
    params = [SamplingParams(temperature=temperature, max_tokens=max_tokens, seed=1000 * rep + i) for i in range(k)]
    config = SpeculativeConfig(k_config=k_config, verify=verify)
    started = time.perf_counter()
    results = engine.generate([prompt] * k, params, mode=mode, config=config)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "new_tokens": results.stats.new_tokens,
            "target_forwards": results.stats.target_forwards,
            "acceptance_rate": results.stats.acceptance_rate, "tokens": [r.token_ids for r in results]}


def compare(engine: SeedEngine, prompt: list[int], k: int, temperature: float, max_tokens: int, reps: int,
            k_config: tuple[int, ...]) -> list[dict]:
    samples: dict[str, list[dict]] = {name: [] for name, _, _ in MODES}
    for rep in range(reps + 1):  # the first repetition warms up and is dropped
        for name, mode, verify in MODES:
            outcome = run_once(engine, prompt, k, temperature, max_tokens, mode, verify, k_config, rep)
            if rep:
                samples[name].append(outcome)
    base = statistics.median(o["seconds"] for o in samples["autoregressive"])
    rows = []
    for name, _, _ in MODES:
        seconds = statistics.median(o["seconds"] for o in samples[name])
        tokens = statistics.median(o["new_tokens"] for o in samples[name])
        rows.append({
            "k": k, "mode": name, "seconds": round(seconds, 3), "new_tokens": tokens,
            "tokens_per_s": round(tokens / seconds, 1), "speedup_vs_autoregressive": round(base / seconds, 2),
            "target_forwards": statistics.median(o["target_forwards"] for o in samples[name]),
            "acceptance_rate": round(statistics.median(o["acceptance_rate"] for o in samples[name]), 3),
        })
    if temperature == 0:
        reference = samples["autoregressive"][0]["tokens"]
        for row, (name, _, _) in zip(rows, MODES):
            row["identical_to_autoregressive"] = all(o["tokens"] == reference for o in samples[name])
    return rows


def markdown(rows: list[dict]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(row.get(key, "")) for key in keys) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", default="1,3,6", help="generations per prompt to compare (default 1,3,6)")
    parser.add_argument("--temperature", type=float, default=0.7, help="for k > 1 (k = 1 runs greedy)")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--k-config", default="1,1,1,1")
    parser.add_argument("--linear-kernel", choices=LINEAR_KERNELS, default="native",
                        help="the engine's CPU float32 matmuls (every mode, autoregressive included)")
    args = parser.parse_args(argv)
    k_config = tuple(int(x) for x in args.k_config.split(","))
    engine = load_default_engine(k_config, args.linear_kernel)
    from langchain_seed.tot.prompts import default_prompts

    text = default_prompts("gsm8k")["sample"].format(question=heldout_question(), steps="", index=1, k=3)
    prompt = engine.tokenizer(text).input_ids
    rows = []
    for k in (int(x) for x in args.ks.split(",")):
        temperature = 0.0 if k == 1 else args.temperature
        rows += compare(engine, prompt, k, temperature, args.max_tokens, args.reps, k_config)
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
