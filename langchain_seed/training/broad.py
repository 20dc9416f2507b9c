"""`distill --mix` (a draft for any prompt) and `distill --prompts FILE` (a draft for yours).

Stages, each resumable from the work directory (``--work``, default ``OUT-work``):

1. prompts: the broad mix's training and held-out splits (`mix`), or the user's file
   (`user_prompts`), held out per family;
2. self-instruct (``--mix``): the target's answers to requests for questions, parsed into
   prompts of the ``self-instruct`` family;
3. target answers: greedy, plus sampled ones at ``--sample-temperatures``, with top-k soft
   targets, appended to ``generations.jsonl`` a batch at a time (`generations`);
4. the draft: ``--init-draft`` (a `distill --out` dir, or an assembled draft), the shipped
   default draft for ``--prompts`` on the default target, else fresh from the target's
   layers, its head then chosen from the answers (`head_report` records the choice);
5. acceptance per held-out family before training, by the engine (`acceptance`);
6. training, checkpointed every ``--checkpoint-every`` steps (`fit.Checkpoint`);
7. acceptance after, per-token cost, the draft's files and its model card.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from langchain_seed.engine.models import context_window, load_model, load_tokenizer, resolve_model_source
from langchain_seed.training import acceptance, mix
from langchain_seed.training.card import write_family_card
from langchain_seed.training.data import load_jsonl
from langchain_seed.training.device import device_name, training_device
from langchain_seed.training.fit import Checkpoint, fit, round_trip
from langchain_seed.training.generations import GenerationCache, generate_all, jobs_for, to_example
from langchain_seed.training.measure import alternating_costs
from langchain_seed.training.targets import eos_ids, select_head_ids
from langchain_seed.training.token import TokenDraft
from langchain_seed.training.user_prompts import check_lengths, load_prompt_file

REPORT_FILE = "distill_report.json"
HEAD_SIZES = (2048, 4096, 8192, 16384)


def work_dir(args: argparse.Namespace) -> Path:
    return Path(args.work) if args.work else Path(f"{args.out.rstrip('/')}-work")


def target_dir_of(args: argparse.Namespace) -> Path:
    """``--target``, or the default target (fetched once into the cache) when none is given."""
    if args.target:
        resolve_model_source(args.target, "--target")
        return Path(args.target)
    from langchain_seed.pair.fetch import ensure_default_target

    return ensure_default_target(progress=args.progress)


def init_draft_dir(args: argparse.Namespace, target_dir: Path) -> str:
    """The draft to continue: ``--init-draft`` (a `distill --out` dir is assembled with the
    target's embedding first), else for ``--prompts`` on the default target the shipped
    draft; "" to start from the target's own first layers."""
    from langchain_seed.pair.assemble import ensure_default_draft
    from langchain_seed.pair.paths import DRAFT_LAYERS_FILE

    if args.init_draft:
        path = Path(args.init_draft)
        if (path / DRAFT_LAYERS_FILE).is_file() and not list(path.glob("model*.safetensors")):
            return str(ensure_default_draft(target_dir, progress=args.progress, asset_dir=path))
        return str(path)
    if args.prompts and not args.target:
        return str(ensure_default_draft(target_dir, progress=args.progress))
    return ""


def _stage(path: Path, key: str, make: Any) -> Any:
    """A stage's JSON result, kept in ``path`` under ``key``; made (and saved) when missing."""
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("key") == key:
            return saved["value"]
    value = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"key": key, "value": value}))
    return value


# ----------------------------------------------------------------------------- prompts


def mix_prompts(args: argparse.Namespace, target: Any, tokenizer: Any, cache: GenerationCache
                ) -> tuple[list[mix.MixPrompt], list[mix.MixPrompt]]:
    """The broad mix's (train, held-out) prompts, self-instruct included (its requests answered
    greedily through the generation cache)."""
    records = load_jsonl(Path(args.data))
    train = mix.build_mix(records, "train", args.per_family, args.seed, args.heldout)
    heldout = mix.build_mix(records, "heldout", args.heldout_per_family, args.seed, args.heldout)
    for split, count, prompts in (("train", args.self_instruct, train),
                                  ("heldout", args.self_instruct and max(1, args.self_instruct // 10), heldout)):
        if count <= 0:
            continue
        requests = mix.self_instruct_requests(split, count, args.seed)
        ids = acceptance.encode_prompts(requests, tokenizer)
        answers = generate_all(target, tokenizer, jobs_for(requests, ids), cache, args.gen_batch,
                               args.max_new_tokens, args.top_k, args.progress)
        derived = []
        for request, answer in zip(requests, answers):
            derived += mix.self_instruct_prompts(request, tokenizer.decode(answer["output_ids"],
                                                                           skip_special_tokens=True))
        limit = count * 5 if split == "train" else args.heldout_per_family
        prompts += (requests + derived)[:limit] if split == "train" else derived[:limit]
    return fitting(train, tokenizer, target, args), fitting(heldout, tokenizer, target, args)


def room_needed(args: argparse.Namespace) -> int:
    """Positions a prompt needs past its own: its answer, or a measured answer and a draft chain."""
    return max(args.max_new_tokens, args.measure_tokens + args.chain)


def fitting(prompts: Sequence[mix.MixPrompt], tokenizer: Any, target: Any, args: argparse.Namespace
            ) -> list[mix.MixPrompt]:
    """The mix's prompts that fit the target's context with `room_needed` positions to spare."""
    limit = (context_window(target) or 2048) - room_needed(args)
    lengths = [len(ids) for ids in acceptance.encode_prompts(prompts, tokenizer)]
    kept = [p for p, n in zip(prompts, lengths) if n <= limit]
    if len(kept) < len(prompts):
        print(f"distill: {len(prompts) - len(kept)} prompts of the mix are longer than the target's context "
              f"allows ({limit} tokens); left out", file=sys.stderr)
    return kept


def file_prompts(args: argparse.Namespace, target: Any, tokenizer: Any) -> tuple[list, list]:
    """The user's (train, held-out) prompts; prompts too long for the context are refused."""
    prompts = load_prompt_file(args.prompts)
    check_lengths(prompts, tokenizer, context_window(target) or 2048, room_needed(args))
    return [p for p in prompts if p.split == "train"], [p for p in prompts if p.split == "heldout"]


# --------------------------------------------------------------------------------- head


def head_report(records: Sequence[dict], head_ids: Sequence[int]) -> dict:
    """How often the target's answer tokens (greedy and sampled, training set) fall outside the
    draft's head, per family; and, for other head sizes, outside the most frequent ids."""
    head = set(head_ids)
    counts: Counter[int] = Counter()
    for r in records:
        counts.update(r["output_ids"])
    by_rank = [token for token, _ in counts.most_common()]
    families: dict[str, list[int]] = {}
    for r in records:
        pair = families.setdefault(r["family"], [0, 0])
        pair[0] += sum(t not in head for t in r["output_ids"])
        pair[1] += len(r["output_ids"])
    total = sum(counts.values())
    sizes = {str(size): round(1 - sum(counts[t] for t in by_rank[:size]) / total, 4) if total else None
             for size in HEAD_SIZES}
    return {"outside_head": {f: round(o / n, 4) if n else None for f, (o, n) in sorted(families.items())},
            "outside_top_n_by_size": sizes, "distinct_tokens": len(counts)}


def choose_head(args: argparse.Namespace, target: Any, tokenizer: Any, records: Sequence[dict]) -> list[int]:
    """The draft's head: the init draft's own (unless ``--choose-head``), else the ids the
    target's answers use most. The head's weights are the target's embedding rows, so a
    continued draft can take a new head."""
    from langchain_seed.engine.models import read_head_token_ids

    if args.init_draft and not args.choose_head:
        kept = read_head_token_ids(args.init_draft)
        if kept is not None:
            return kept
    outputs = [r["output_ids"] for r in records]
    prompts = [r["prompt_ids"] for r in records]
    return select_head_ids(outputs, prompts, args.head_size, target.config.vocab_size,
                           always=sorted(eos_ids(target, tokenizer)))


# ---------------------------------------------------------------------------- measuring


def measure_families(args: argparse.Namespace, target: Any, draft: Any, tokenizer: Any, head: list[int],
                     heldout: Sequence[mix.MixPrompt]) -> dict:
    """Engine acceptance per held-out family (greedy chain and sampled), as a table."""
    settings = acceptance.settings_for(args.measure_temperatures)
    tally, _ = acceptance.measure(target, draft, tokenizer, head, heldout, args.measure_tokens, args.chain,
                                  settings, args.seed)
    return tally.table()


def _fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:20]


def _weights_fingerprint(draft: Any) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(draft.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:20]


# ---------------------------------------------------------------------------- the stages


def distill_broad(args: argparse.Namespace) -> dict:
    """Run every stage; returns the report (also written to the work dir as ``distill_report.json``)."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = training_device(args.device, "token")
    work = work_dir(args)
    target_dir = target_dir_of(args)
    tokenizer = load_tokenizer(target_dir)
    target: Any = load_model(target_dir, weights="float32")  # a GGUF target (the default) dequantised
    target = target.to(device).eval()
    cache = GenerationCache(work / "generations.jsonl")
    started = time.perf_counter()
    # 1-2. prompts (and self-instruct)
    if args.prompts:
        train, heldout = file_prompts(args, target, tokenizer)
    else:
        train, heldout = mix_prompts(args, target, tokenizer, cache)
    if not train:
        raise SystemExit("no training prompts: every prompt is held out (a family needs two or more prompts)")
    # 3. target answers
    jobs = jobs_for(train, acceptance.encode_prompts(train, tokenizer), args.sample_temperatures, args.samples)
    records = generate_all(target, tokenizer, jobs, cache, args.gen_batch, args.max_new_tokens, args.top_k,
                           args.progress)
    seconds_generate = time.perf_counter() - started
    examples = [to_example(r) for r in records]
    # 4. the draft and its head
    args.init_draft = init_draft_dir(args, target_dir)
    head = choose_head(args, target, tokenizer, records)
    strategy = TokenDraft(args, target, head, examples, [])
    draft = strategy.initial_draft(device)
    # 5. before
    settings_key = [args.measure_tokens, args.chain, args.measure_temperatures, args.seed, [p.key for p in heldout]]
    before = _stage(work / "before.json", _fingerprint(_weights_fingerprint(draft), head, settings_key),
                    lambda: measure_families(args, target, draft, tokenizer, head, heldout)) if heldout else None
    # 6. training
    started = time.perf_counter()
    checkpoint = Checkpoint(work / "checkpoint.pt", args.checkpoint_every, _fingerprint(
        [r["key"] for r in records], head, args.steps, args.batch_size, args.lr, args.seed, args.soft_weight,
        args.prompt_weight, args.init_draft, args.layers))
    losses = fit(draft, len(examples), strategy.batch_loss(draft), args.steps, args.batch_size, args.lr, args.seed,
                 "distill", args.progress, checkpoint)
    seconds_train = time.perf_counter() - started
    # 7. after, cost, files
    round_trip(strategy.own_state(draft), args.dtype)
    after = measure_families(args, target, draft, tokenizer, head, heldout) if heldout else None
    draft, target = draft.cpu(), target.cpu()
    draft_ms, target_ms = alternating_costs(draft, target, strategy.draft_step_ms(draft))
    report = {
        "name": Path(args.out).name, "mode": "prompts" if args.prompts else "mix",
        "prompts_file": Path(args.prompts).name if args.prompts else None,
        "target_name": Path(target_dir).resolve().name, "command": args.command_line,
        "init_draft": Path(args.init_draft).name if args.init_draft else None,
        "train_prompts": mix.family_counts(train), "heldout_prompts": mix.family_counts(heldout),
        "train_sequences": len(examples), "sample_temperatures": list(args.sample_temperatures),
        "samples": args.samples, "train_output_tokens": sum(len(r["output_ids"]) for r in records),
        "max_new_tokens": args.max_new_tokens, "measure_tokens": args.measure_tokens, "chain": args.chain,
        "top_k": args.top_k, "soft_weight": args.soft_weight, "prompt_weight": args.prompt_weight,
        "layers": args.layers, "head_size": len(head), "head": head_report(records, head),
        "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed, "dtype": args.dtype,
        "final_loss": sum(losses[-20:]) / max(1, len(losses[-20:])), "losses_every_10": losses[::10],
        "seconds_generate": seconds_generate, "seconds_train": seconds_train, "threads": args.threads,
        "device": str(device), "device_name": device_name(device),
        "before": before, "after": after, "draft_ms": draft_ms, "target_ms": target_ms,
        "params_own": sum(t.numel() for t in strategy.own_state(draft).values()),
    }
    out = Path(args.out)
    strategy.save(draft, out)
    write_family_card(out, report)
    work.mkdir(parents=True, exist_ok=True)
    (work / REPORT_FILE).write_text(json.dumps(report, indent=1))
    headline = {k: report[k] for k in ("draft_ms", "target_ms")}
    headline["after_mean"] = after["mean"] if after else None
    print(json.dumps(headline), file=sys.stderr)
    return report
