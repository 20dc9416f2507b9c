"""`distill`'s stages: 1. prompts, 2. target outputs (cached), 3. head ids, then for the
chosen kind of draft (`token.TokenDraft`, `feature.FeatureDraft`) 4. draft init,
5. training, 6. held-out acceptance and per-token cost, 7. weights + model card.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from langchain_seed.engine.models import load_model, load_tokenizer, resolve_model_source
from langchain_seed.training.card import write_model_card
from langchain_seed.training.data import (
    PromptSpec,
    build_prompts,
    load_jsonl,
    shape_counts,
    strip_calculator,
    training_prompts,
)
from langchain_seed.training.device import device_name, training_device
from langchain_seed.training.feature import FeatureDraft
from langchain_seed.training.fit import fit, round_trip
from langchain_seed.training.measure import alternating_costs
from langchain_seed.training.targets import (
    Example,
    cached_examples,
    eos_ids,
    head_ids_of,
    select_head_ids,
)
from langchain_seed.training.token import TokenDraft

REPORT_FILE = "distill_report.json"
STRATEGIES = {"token": TokenDraft, "feature": FeatureDraft}


def distill(args: argparse.Namespace) -> dict:
    """Run all stages; returns the report written to ``distill_report.json``."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = training_device(args.device, args.kind)
    resolve_model_source(args.target, "--target")  # a missing target is refused before any work
    records = load_jsonl(Path(args.data))
    heldout = min(args.heldout, len(records))
    train_indices = list(range(heldout, len(records)))[: args.max_train_questions or None]
    if not train_indices:
        raise SystemExit(f"{args.data} has {len(records)} questions, all held out (--heldout "
                         f"{args.heldout}): pass the full GSM8K test jsonl with --data")
    tokenizer = load_tokenizer(args.target)
    target: Any = load_model(args.target, weights="float32")  # a GGUF target (the default) dequantised
    target = target.to(device).eval()  # transformers types `.to` as taking a model
    # 1. prompts
    train_specs = training_prompts(records, train_indices, tokenizer, args)
    heldout_specs = build_prompts(records, range(heldout), tokenizer, args.seed + 1, 1, args.chat_fraction)
    # 2. target outputs
    started = time.perf_counter()
    train_examples, heldout_examples = _target_outputs(args, target, tokenizer, train_specs, heldout_specs)
    seconds_generate = time.perf_counter() - started
    # 3. head ids
    head_list = _head_ids(args, target, tokenizer, [records[i] for i in train_indices], train_examples)
    data = {
        "name": Path(args.out).name, "target_name": Path(args.target).resolve().name,
        "data": Path(args.data).name, "n_questions": len(records), "heldout": heldout,
        "heldout_range": f"0..{heldout - 1}", "train_range": f"{train_indices[0]}..{train_indices[-1]}",
        "n_train_sequences": len(train_examples),
        "train_output_tokens": sum(len(e.ids) - e.n_prompt for e in train_examples),
        "train_prompt_tokens": sum(e.n_prompt for e in train_examples),
        "prompt_passes": args.prompt_passes, "first_pass": args.first_pass, "chat_fraction": args.chat_fraction,
        "shape_counts": shape_counts(train_specs), "max_new_tokens": args.max_new_tokens,
        "train_max_new_tokens": args.train_max_new_tokens or args.max_new_tokens,
        "seconds_generate": seconds_generate, "threads": args.threads, "chain": args.chain,
        "command": args.command_line, "seed": args.seed, "lr": args.lr, "steps": args.steps,
        "batch_size": args.batch_size, "prompt_weight": args.prompt_weight, "dtype": args.dtype,
        "init_draft": Path(args.init_draft).name if args.init_draft else None,
        "device": str(device), "device_name": device_name(device),
    }
    strategy = STRATEGIES[args.kind](args, target, head_list, train_examples, heldout_examples)
    return _finish(args, train_draft(strategy, args, target, device, data))


def _target_outputs(args: argparse.Namespace, target: Any, tokenizer: Any, train_specs: Sequence[PromptSpec],
                    heldout_specs: Sequence[PromptSpec]) -> tuple[list[Example], list[Example]]:
    """The target's outputs for the training and held-out prompts (cached in --work)."""
    cache = Path(args.work) / "target-outputs" if args.work else None
    gen = (target, tokenizer)
    heldout = cached_examples(cache and cache.with_name("heldout"), *gen, heldout_specs,
                              args.gen_batch, args.max_new_tokens, args.top_k, args.progress)
    train = cached_examples(cache and cache.with_name("train"), *gen, train_specs, args.gen_batch,
                            args.train_max_new_tokens or args.max_new_tokens, args.top_k, args.progress,
                            prompt_topk=args.prompt_weight > 0 and args.kind == "token")
    return train, heldout


def _head_ids(args: argparse.Namespace, target: Any, tokenizer: Any, train_records: Sequence[dict],
              train_examples: Sequence[Example]) -> list[int]:
    """The draft's head: the ids most used by the target's outputs and the training texts,
    or the head of the draft it continues from (--init-draft)."""
    texts = [tokenizer(record["question"] + "\n" + strip_calculator(record.get("answer", "")),
                       add_special_tokens=False).input_ids for record in train_records]
    outputs = [e.ids[e.n_prompt :].tolist() for e in train_examples]
    head_list = select_head_ids(outputs, texts, args.head_size, target.config.vocab_size,
                                always=sorted(eos_ids(target, tokenizer)))
    if args.init_draft:  # the draft continues from a trained one: keep the head it learnt
        head_list = head_ids_of(Path(args.init_draft)) or head_list
    return head_list


def train_draft(strategy: Any, args: argparse.Namespace, target: Any, device: Any, data: dict) -> dict:
    """Stages 4-7 for one kind of draft; returns the report (weights and card written)."""
    prepared = strategy.prepare()
    # 4. draft init
    draft = strategy.initial_draft(device)
    before = strategy.acceptance(draft)
    print(f"held-out acceptance before training: {before['acceptance_rate']:.3f}", file=sys.stderr)
    # 5. training
    started = time.perf_counter()
    losses = fit(draft, len(strategy.train), strategy.batch_loss(draft), args.steps, args.batch_size,
                 args.lr, args.seed, strategy.desc, args.progress)
    seconds_train = time.perf_counter() - started
    # 6. measure (on the weights as saved; the cost that matters is the CPU's: decoding runs there)
    round_trip(strategy.own_state(draft), args.dtype)
    after = strategy.acceptance(draft)
    extra = strategy.extra_measures(draft)
    draft, target = draft.cpu(), target.cpu()
    draft_ms, target_ms = alternating_costs(draft, target, strategy.draft_step_ms(draft))
    # 7. save
    out = Path(args.out)
    report = {
        **data, **strategy.report_fields(draft), **prepared, "layers": args.layers,
        "head_size": len(strategy.head_list),
        "params_own": sum(t.numel() for t in strategy.own_state(draft).values()),
        "final_loss": _mean(losses[-20:]), "seconds_train": seconds_train,
        "heldout_before": before, "heldout_after": after, **extra,
        "draft_ms": draft_ms, "target_ms": target_ms, "losses_every_10": losses[::10],
    }
    report["shipped_bytes"] = strategy.save(draft, out)
    write_model_card(out, report)  # twice: the card's own size is part of the shipped size
    report["shipped_bytes"] = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    write_model_card(out, report)
    return report


def _mean(values: Sequence[float]) -> float:
    return sum(values) / max(1, len(values))


def _finish(args: argparse.Namespace, report: dict) -> dict:
    """Write the report beside the work cache (or the draft) and print its headline."""
    report_dir = Path(args.work) if args.work else Path(args.out)
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / REPORT_FILE).write_text(json.dumps(report, indent=1))
    print(json.dumps({k: report[k] for k in ("heldout_after", "draft_ms", "target_ms", "shipped_bytes")}))
    return report

