"""Acceptance of the default draft per prompt family on the held-out broad mix, run by the engine.

    flock /tmp/langchain-seed-cpu.lock .venv/bin/python scripts/draft_family_acceptance.py \
        [--per-family 6] [--max-tokens 48] [--draft ASSET_DIR] [--json OUT]

The held-out mix (`training.mix`: ToT prompts of every task, plain and chain-of-thought
questions, chat conversations through the chat template, sub-questions, evaluation and
creative requests; GSM8K questions 0..99 and held-out topics and puzzles only) is decoded by
`SeedEngine` (scheduled, a draft chain of 4 drafted in full every round, no prompt lookup)
greedily and sampled at temperature 0.7 and 1.0 (speculative sampling, the engine's rule);
acceptance is the engine's accepted / drafted. The self-instruct family: the target's greedy
answers to held-out requests for questions are parsed into prompts, decoded in turn (the
requests themselves count in that family too). The target is the default pair's GGUF,
dequantised to float32 for the acceptance runs (the engine's quantised kernels give the same
tokens). Also: the share of the target's greedy tokens outside the draft's restricted head,
and the draft's per-token cost against the target's (`training.token.token_costs`), the
float32 target and the quantised one the engine runs by default. ASSET_DIR: a draft as `langchain-seed distill --out`
writes it; by default the shipped one.
"""

import argparse
import datetime
import json
import os
import subprocess
from pathlib import Path

import torch

from langchain_seed.engine.models import load_draft, load_model, load_tokenizer, read_head_token_ids
from langchain_seed.pair.assemble import ensure_default_draft, ensure_default_pair
from langchain_seed.training import acceptance, mix
from langchain_seed.training.data import load_jsonl
from langchain_seed.training.token import token_costs


def cpu_model() -> str:
    lines = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("Model name")), "?")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-family", type=int, default=6)
    parser.add_argument("--self-instruct-requests", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--data", default=os.environ.get("GSM8K_JSONL", "/work/shared/data/gsm8k_test.jsonl"))
    parser.add_argument("--draft", default=None, help="a draft asset dir (distill --out); default: the shipped draft")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    target_dir, draft_dir = ensure_default_pair(progress=False)
    if args.draft:
        draft_dir = ensure_default_draft(target_dir, progress=False, asset_dir=args.draft)
    tokenizer = load_tokenizer(target_dir)
    target = load_model(target_dir, weights="float32")  # the GGUF's dequantised weights
    draft = load_draft(draft_dir, target)
    head_ids = read_head_token_ids(draft_dir)
    records = load_jsonl(Path(args.data))
    prompts = mix.build_mix(records, "heldout", args.per_family)
    requests = mix.self_instruct_requests("heldout", args.self_instruct_requests)
    started = datetime.datetime.now().astimezone()
    tally, outputs = acceptance.measure(target, draft, tokenizer, head_ids, [*prompts, *requests], args.max_tokens)
    derived = []
    for request, output in zip(requests, outputs[len(prompts):]):
        derived += mix.self_instruct_prompts(request, tokenizer.decode(output, skip_special_tokens=True))
    derived = derived[: args.per_family]
    if derived:
        acceptance.measure(target, draft, tokenizer, head_ids, derived, args.max_tokens, tally=tally)
    draft_ms, target_ms = token_costs(draft, target, torch.tensor(head_ids))
    quantised = load_model(target_dir)  # the target as the engine runs it by default (its GGUF's blocks)
    draft_q_ms, target_q_ms = token_costs(draft, quantised, torch.tensor(head_ids))
    table = tally.table()
    report = {
        "command": "python scripts/draft_family_acceptance.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None and k != "json"),
        "cpu": cpu_model(), "started": started.isoformat(timespec="minutes"),
        "seconds": round((datetime.datetime.now().astimezone() - started).total_seconds()),
        "draft": args.draft or "shipped (langchain_seed/assets/smollm2-draft)", "chain": 4,
        "max_tokens": args.max_tokens, "prompts": mix.family_counts([*prompts, *requests, *derived]),
        **table, "draft_ms": round(draft_ms, 2), "target_ms": round(target_ms, 2),
        "cost_ratio": round(draft_ms / target_ms, 3),
        "draft_ms_vs_quantised": round(draft_q_ms, 2), "quantised_target_ms": round(target_q_ms, 2),
        "cost_ratio_vs_quantised": round(draft_q_ms / target_q_ms, 3),
    }
    print(json.dumps(report, indent=1))
    print(acceptance.format_table(table))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
