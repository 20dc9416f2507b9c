"""Time a running llama.cpp server (`llama-server`) on the exact `bench --quick` tot-step prompts.

    BIN=~/.cache/langchain-seed/llama.cpp-0.3.36/bin   # built as docs/BENCHMARKS.md says
    GGUF=$(.venv/bin/python -c "from langchain_seed.bench.peers import shipped_gguf; print(shipped_gguf())")
    $BIN/llama-server -m "$GGUF" -t 2 -c 4096 -np 1 --port 8080 &        # one slot
    .venv/bin/python scripts/llama_server_bench.py --parallel 1
    $BIN/llama-server -m "$GGUF" -t 2 -c 12288 -np 3 --port 8080 &       # three slots
    .venv/bin/python scripts/llama_server_bench.py --parallel 3

The prompts are the harness's own (`bench.workloads.build_tot_step`: per question the 3
thought prompts, 48 new tokens each, then the 3 value prompts of the target's greedy
thoughts, 8 each), sent as token ids to ``/completion``, greedy (temperature 0, top_k 1),
with ``cache_prompt`` (the server keeps each slot's last prompt and reuses its prefix).
``--parallel 1`` sends one prompt at a time; ``--parallel 3`` sends a group's 3 prompts at
once (one per slot). A warm-up call, then ``--reps`` timed passes over all groups; prints
the median seconds and tokens/s, how many outputs equal the target's greedy output (the
float32 transformers model, from the bench's reference cache), and the prompt tokens the
server evaluated versus reused. Start the server with ``-np`` >= ``--parallel``, and ``-c``
at least ``-np`` x 4096 (each slot gets ``-c`` / ``-np``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from langchain_seed.bench import protocol, workloads
from langchain_seed.bench.methods import BenchModels, reference_outputs
from langchain_seed.bench.records import first_divergence
from langchain_seed.cli.bench import QUICK
from langchain_seed.engine.calibration import cpu_model_name
from langchain_seed.engine.models import load_models
from langchain_seed.pair.assemble import ensure_default_pair
from langchain_seed.pair.paths import cache_dir


@dataclass
class Completion:
    """One ``/completion`` answer: new token ids, and the prompt tokens evaluated and reused."""

    tokens: list[int]
    prompt_evaluated: int
    prompt_reused: int
    prompt_ms: float
    """The server's own time for the prompt tokens it evaluated."""
    predicted_ms: float
    """The server's own time for the new tokens after the first."""


def complete(url: str, prompt_ids: list[int], max_tokens: int, cache_prompt: bool, timeout: float) -> Completion:
    """Greedy completion of token ids by the server (its ``tokens`` include the EOS that ends one)."""
    body = {"prompt": prompt_ids, "n_predict": max_tokens, "temperature": 0.0, "top_k": 1,
            "cache_prompt": cache_prompt, "return_tokens": True, "stream": False}
    request = urllib.request.Request(f"{url}/completion", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        answer = json.loads(response.read())
    timings = answer["timings"]
    return Completion(list(answer["tokens"]), int(timings["prompt_n"]), int(timings["cache_n"]),
                      float(timings["prompt_ms"]), float(timings["predicted_ms"]))


def run_group(url: str, group: workloads.PromptGroup, parallel: int, cache_prompt: bool,
              timeout: float) -> list[Completion]:
    """The group's prompts, one at a time (parallel 1) or ``parallel`` at once."""
    def one(ids: list[int]) -> Completion:
        return complete(url, ids, group.max_tokens, cache_prompt, timeout)

    if parallel == 1:
        return [one(ids) for ids in group.id_lists()]
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        return list(pool.map(one, group.id_lists()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--parallel", type=int, default=1, help="prompts of a group in flight at once")
    parser.add_argument("--questions", type=int, default=QUICK["tot-step"][0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--no-cache-prompt", dest="cache_prompt", action="store_false")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per request")
    args = parser.parse_args()

    target_dir, _ = ensure_default_pair(progress=False)
    loaded = load_models(target_dir)
    models = BenchModels(loaded.target, None, loaded.tokenizer)
    eos = models.eos_token_ids
    reference_file = cache_dir() / "bench-reference" / f"{protocol.model_fingerprint(loaded.target)}.json"
    reference = protocol.CachedReference(reference_outputs(models), reference_file)
    workload = workloads.build_tot_step(workloads.load_questions(args.questions), loaded.tokenizer, reference,
                                        thought_tokens=workloads.THOUGHT_TOKENS, value_tokens=workloads.VALUE_TOKENS)
    expected = [[workloads.truncate_at_eos(out, eos, g.max_tokens) for out in reference(g.id_lists(), g.max_tokens)]
                for g in workload.groups]

    run_group(args.url, workload.groups[0], args.parallel, args.cache_prompt, args.timeout)  # warm-up
    seconds, tokens, evaluated, reused, server_s = [], [], [], [], []
    divergences: list[int | None] = []
    for rep in range(args.reps):
        started = time.perf_counter()
        answers = [run_group(args.url, g, args.parallel, args.cache_prompt, args.timeout) for g in workload.groups]
        seconds.append(time.perf_counter() - started)
        flat = [a for group in answers for a in group]
        outputs = [workloads.truncate_at_eos(a.tokens, eos) for a in flat]
        tokens.append(sum(len(o) for o in outputs))
        evaluated.append(sum(a.prompt_evaluated for a in flat))
        reused.append(sum(a.prompt_reused for a in flat))
        server_s.append(sum(a.prompt_ms + a.predicted_ms for a in flat) / 1000)
        if rep == 0:
            divergences = [first_divergence(out, ref)
                           for out, ref in zip(outputs, [ref for group in expected for ref in group])]
    median = statistics.median(seconds)
    same = sum(d is None for d in divergences)
    print(json.dumps({
        "cpu_model": cpu_model_name(), "load_average_1m": round(os.getloadavg()[0], 2), "url": args.url,
        "parallel": args.parallel, "cache_prompt": args.cache_prompt,
        "groups": len(workload.groups), "prompts": workload.prompt_count, "reps": args.reps,
        "seconds_median": round(median, 2), "seconds_reps": [round(s, 2) for s in seconds],
        "new_tokens": tokens[0], "tokens_per_s": round(tokens[0] / median, 1),
        "prompt_tokens_evaluated": evaluated[0], "prompt_tokens_reused": reused[0],
        "server_seconds_reps": [round(s, 2) for s in server_s],
        "identical_to_target": f"{same}/{len(divergences)}", "first_divergence": divergences,
    }, indent=1))


if __name__ == "__main__":
    main()
