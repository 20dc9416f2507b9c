"""Soak test of the scheduler: many concurrent clients, random lengths, cancellations.

`python -m langchain_seed.bench.soak --requests 400 --clients 16 --minutes 3` runs a tiny
random model pair (no downloads) under load from client threads, cancels a share of the
requests midway, and checks that every greedy request that completed equals the
target's own greedy output (transformers `generate`), that nothing deadlocked, and that
no cache or request is left behind. It prints the figures as JSON.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import random
import threading
import time
from dataclasses import asdict, dataclass

import torch

from langchain_seed.engine import SamplingParams, SeedEngine, SpeculativeConfig
from langchain_seed.engine.stats import current_rss_mb

VOCAB = 96


@dataclass
class SoakReport:
    requests: int = 0
    completed: int = 0
    cancelled: int = 0
    failed: int = 0
    greedy_checked: int = 0
    greedy_mismatches: int = 0
    tie_flips: int = 0
    new_tokens: int = 0
    seconds: float = 0.0
    rss_before_mb: float = 0.0
    rss_after_mb: float = 0.0
    rss_after_warmup_mb: float = 0.0
    kv_bytes_after: int = 0
    active_after: int = 0
    deadlocked: bool = False


def tiny_pair(seed: int = 0):
    """A 2-layer random Llama target and a noisy copy as its draft."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         initializer_range=0.3, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    target = LlamaForCausalLM(config).eval()
    target.generation_config.eos_token_id = None
    draft = copy.deepcopy(target)
    with torch.no_grad():
        for parameter in draft.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02)
    return target, draft


def reference(target, prompt: list[int], max_tokens: int) -> list[int]:
    with torch.inference_mode():
        ids = torch.tensor([prompt])
        output = target.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens,
                                 do_sample=False, pad_token_id=0)
    return output[0, len(prompt):].tolist()


def run_soak(requests: int = 300, clients: int = 12, minutes: float = 2.0, cancel_share: float = 0.2,
             seed: int = 0) -> SoakReport:
    """Serve `requests` from `clients` threads; stops submitting after `minutes`."""
    target, draft = tiny_pair(seed)
    engine = SeedEngine(target, draft, config=SpeculativeConfig(k_config=(2, 1, 1), compact_slack=16))
    report = SoakReport(rss_before_mb=current_rss_mb())
    engine.generate([[1, 2, 3]], SamplingParams(max_tokens=8))  # warm-up
    report.rss_after_warmup_mb = current_rss_mb()
    rng = random.Random(seed)
    plan = [_plan_request(rng, index, cancel_share) for index in range(requests)]
    deadline = time.monotonic() + minutes * 60
    lock = threading.Lock()
    started = time.perf_counter()

    def client(jobs):
        for job in jobs:
            if time.monotonic() > deadline:
                return
            outcome = _serve_one(engine, job)
            with lock:
                _record(report, target, job, outcome)

    threads = [threading.Thread(target=client, args=(plan[i::clients],)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=max(1.0, deadline - time.monotonic()) + 120)
        report.deadlocked |= thread.is_alive()
    report.seconds = time.perf_counter() - started
    engine.close()
    gc.collect()
    after = engine.stats()
    report.active_after, report.kv_bytes_after = after.active, after.kv_bytes
    report.rss_after_mb = current_rss_mb()
    return report


def _plan_request(rng: random.Random, index: int, cancel_share: float) -> dict:
    prompt = [rng.randrange(VOCAB) for _ in range(rng.randint(1, 40))]
    return {
        "prompt": prompt,
        "max_tokens": rng.randint(1, 64),
        "temperature": 0.0 if rng.random() < 0.7 else rng.choice([0.5, 1.0]),
        "seed": index,
        "cancel_after": rng.randint(1, 10) if rng.random() < cancel_share else None,
    }


def _serve_one(engine: SeedEngine, job: dict):
    params = SamplingParams(temperature=job["temperature"], max_tokens=job["max_tokens"], seed=job["seed"])
    handle = engine.submit(job["prompt"], params)
    received = []
    for chunk in handle:
        received.extend(chunk)
        if job["cancel_after"] is not None and len(received) >= job["cancel_after"]:
            handle.cancel()
    return handle.wait(timeout=120), received


def _record(report: SoakReport, target, job: dict, outcome) -> None:
    result, received = outcome
    report.requests += 1
    report.new_tokens += len(result.token_ids)
    if result.finish_reason == "cancelled":
        report.cancelled += 1
    elif result.finish_reason == "error":
        report.failed += 1
    else:
        report.completed += 1
    if received != result.token_ids:
        report.greedy_mismatches += 1  # the stream must add up to the result, whatever the mode
    if job["temperature"] == 0.0 and result.finish_reason != "error":
        expected = reference(target, job["prompt"], job["max_tokens"])
        report.greedy_checked += 1
        got = result.token_ids
        if got != expected[: len(got)] or (result.finish_reason == "length" and got != expected):
            if is_tie_flip(target, job["prompt"], got, expected):
                report.tie_flips += 1
            else:
                report.greedy_mismatches += 1


def is_tie_flip(target, prompt: list[int], got: list[int], expected: list[int], tolerance: float = 1e-4) -> bool:
    """True when the first divergence is between two tokens whose target logits tie within `tolerance`.

    Batched forwards add floating-point rounding of order 1e-6: where the target's two best
    logits are closer than that, batched and unbatched greedy decoding may pick either
    (transformers' own batched `generate` does the same). Such a flip is not a decoding error.
    """
    index = next(i for i, (a, b) in enumerate(zip(got, expected)) if a != b)
    with torch.inference_mode():
        logits = target(torch.tensor([prompt + expected[:index]])).logits[0, -1]
    return abs(float(logits[got[index]] - logits[expected[index]])) < tolerance


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--cancel-share", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    report = run_soak(args.requests, args.clients, args.minutes, args.cancel_share, args.seed)
    print(json.dumps(asdict(report), indent=2))
    ok = not report.deadlocked and report.greedy_mismatches == 0 and report.active_after == 0 and report.failed == 0
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
