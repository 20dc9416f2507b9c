"""`langchain-seed distill`: train a small draft model for a target by distillation.

The draft shares the target's tokenizer and embedding. It is the target's config with
fewer decoder layers, initialised from the target's embedding, its first layers and its
final norm; only the layers and the norm are trained (the embedding and the tied head
stay frozen, so they never need shipping). Its LM head is restricted to a few thousand
token ids (the ones the target uses most), which makes a draft step about ten times
cheaper than a target step on a CPU.

Data: Tree-of-Thoughts prompts built from GSM8K questions (propose / sample / value /
answer shapes, some wrapped in the chat template), answered by the target itself with
greedy decoding. The loss is cross-entropy on the target's greedy token plus a soft
term toward the target's top-k distribution (restricted to the draft head).

Stages: 1. prompts, 2. target outputs (cached), 3. head ids, 4. draft init,
5. training, 6. held-out acceptance and per-token cost, 7. save weights + model card.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import re
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from langchain_seed.cli import non_negative_int, positive_int

PROMPT_SHAPES = ("propose", "sample", "value", "answer")
SHAPE_WEIGHTS = (0.35, 0.30, 0.15, 0.20)
LAYERS_FILE = "draft_layers.safetensors"
HEAD_IDS_FILE = "head_token_ids.json"
REPORT_FILE = "distill_report.json"


# ----------------------------------------------------------------------------- prompts


def strip_calculator(text: str) -> str:
    """Remove GSM8K calculator annotations such as ``<<16-3-4=9>>``."""
    return re.sub(r"<<[^>]*>>", "", text)


def reference_steps(answer: str) -> list[str]:
    """The reference solution's reasoning lines (without the final ``#### n`` line)."""
    lines = [strip_calculator(line).strip() for line in answer.split("\n")]
    return [line for line in lines if line and not line.startswith("####")]


def format_steps(steps: Sequence[str]) -> str:
    return "".join(f"Step {i + 1}: {step}\n" for i, step in enumerate(steps))


def render_prompt(shape: str, question: str, steps: str, k: int = 3, index: int = 1) -> str:
    """One ToT GSM8K prompt; ``steps`` is "" at the root or "Step i: ...\\n" lines."""
    if shape == "propose":
        return (
            f"Solve the math problem step by step.\nQuestion: {question}\n{steps}"
            f"Propose {k} different next steps. Write each on its own line as a "
            "sub-question followed by its answer.\n"
        )
    if shape == "sample":
        return (
            f"Solve the math problem step by step.\nQuestion: {question}\n{steps}"
            f"Next step (option {index} of {k}): "
        )
    if shape == "value":
        return (
            f"Question: {question}\n{steps}How likely is this partial solution to lead "
            "to the correct answer? Give a score from 0 to 10.\nScore: "
        )
    if shape == "answer":
        return f"Question: {question}\n{steps}Therefore, the final answer (a number) is "
    raise ValueError(f"unknown prompt shape {shape!r}")


@dataclass
class PromptSpec:
    """One distillation prompt: which question, which shape, raw or chat-wrapped."""

    question_index: int
    shape: str
    n_steps: int
    chat: bool
    text: str


def build_prompts(
    records: Sequence[dict], indices: Sequence[int], tokenizer: Any, seed: int,
    per_question: int = 1, chat_fraction: float = 0.25,
) -> list[PromptSpec]:
    """Deterministic prompts for the given question indices (a per-question RNG)."""
    specs = []
    for question_index in indices:
        record = records[question_index]
        rng = random.Random(f"{seed}-{question_index}")
        steps = reference_steps(record.get("answer", ""))
        for _ in range(per_question):
            shape = rng.choices(PROMPT_SHAPES, weights=SHAPE_WEIGHTS)[0]
            n_steps = rng.randint(0, max(0, min(2, len(steps) - 1)))
            k = rng.choice((3, 3, 3, 2, 4, 5))
            text = render_prompt(shape, record["question"], format_steps(steps[:n_steps]),
                                 k=k, index=rng.randint(1, k))
            chat = rng.random() < chat_fraction and tokenizer.chat_template is not None
            if chat:
                text = tokenizer.apply_chat_template(
                    [{"role": "user", "content": text}], tokenize=False,
                    add_generation_prompt=True)
            specs.append(PromptSpec(question_index, shape, n_steps, chat, text))
    return specs


def load_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


# ------------------------------------------------------------------------ target data


@dataclass
class Example:
    """A prompt and the target's greedy continuation, with its top-k soft targets."""

    ids: Any  # [seq] int64: prompt + output (output ends with eos if it stopped)
    n_prompt: int
    topk_ids: Any  # [seq - 1, top_k] int32: target top-k at position p (predicts p + 1)
    topk_logprobs: Any  # [seq - 1, top_k] float16
    meta: dict = field(default_factory=dict)


def _trim_output(tokens: list[int], eos_ids: set[int], pad_id: int) -> list[int]:
    for i, token in enumerate(tokens):
        if token in eos_ids:
            return tokens[: i + 1]
    while tokens and tokens[-1] == pad_id and pad_id not in eos_ids:
        tokens = tokens[:-1]
    return tokens


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    eos = model.generation_config.eos_token_id
    if eos is None:
        eos = tokenizer.eos_token_id
    return set(eos if isinstance(eos, list) else [eos])


def _topk(logits: Any, top_k: int) -> tuple[Any, Any]:
    """(ids int32, log-probs float16) of the top-k of each row, on the CPU. logits [n, vocab]."""
    import torch

    values, indices = torch.log_softmax(logits.float(), dim=-1).topk(top_k, dim=-1)
    return indices.to("cpu", torch.int32), values.to("cpu", torch.float16)


def target_topk(model: Any, sequences: list[list[int]], top_k: int) -> list[tuple[Any, Any]]:
    """Teacher-forced target top-k log-probs at every position of each sequence."""
    import torch

    width = max(len(s) for s in sequences)
    ids = torch.zeros(len(sequences), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
    with torch.no_grad():
        logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits  # [batch, seq, vocab]
    return [_topk(logits[row, : len(seq) - 1], top_k) for row, seq in enumerate(sequences)]


def _generation_batches(specs: Sequence[PromptSpec], prompt_ids: Sequence[Sequence[int]],
                        batch_size: int, chunk_batches: int = 4) -> list[list[int]]:
    """Batches in prompt order, sorted by (shape, length) within chunks of a few batches.

    Similar prompts batch together (they stop at similar times), and a batch depends only
    on its chunk, so the batches of the first N prompts (N a multiple of the chunk) are
    the same whatever the total: saved batches are reused when the data set grows.
    """
    chunk = batch_size * chunk_batches
    batches = []
    for start in range(0, len(specs), chunk):
        order = sorted(range(start, min(start + chunk, len(specs))),
                       key=lambda i: (specs[i].shape, len(prompt_ids[i]), i))
        batches += [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return batches


def generate_examples(
    model: Any, tokenizer: Any, specs: Sequence[PromptSpec], batch_size: int,
    max_new_tokens: int, top_k: int, progress: bool = True, partial_dir: Path | None = None,
    prompt_topk: bool = True,
) -> list[Example]:
    """Batched greedy generation (left padding) + teacher-forced top-k, in prompt order.

    With ``partial_dir`` every finished batch is saved there, and batches already saved
    (by an interrupted run with the same prompts and settings) are loaded, not redone.
    """
    import torch
    from tqdm.auto import tqdm

    tokenizer.padding_side = "left"
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos_ids = _eos_ids(model, tokenizer)
    prompt_ids = [tokenizer(s.text, add_special_tokens=False).input_ids for s in specs]
    examples: list[Example | None] = [None] * len(specs)
    bar = tqdm(total=len(specs), desc="target outputs", unit="seq", disable=not progress)
    for batch in _generation_batches(specs, prompt_ids, batch_size):
        key = hashlib.sha256(json.dumps([[specs[i].text for i in batch], max_new_tokens, top_k, prompt_topk])
                             .encode()).hexdigest()[:20]
        saved = partial_dir / f"batch-{key}.pt" if partial_dir else None
        if saved is not None and saved.exists():
            for i, example in zip(batch, _load_examples(saved)):
                examples[i] = example
            bar.update(len(batch))
            continue
        enc = tokenizer.pad({"input_ids": [prompt_ids[i] for i in batch]}, return_tensors="pt").to(model.device)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad_id,
                                 output_logits=not prompt_topk, return_dict_in_generate=True)
        width = enc["input_ids"].shape[1]
        seqs = [prompt_ids[i] + _trim_output(out.sequences[row, width:].tolist(), eos_ids, pad_id)
                for row, i in enumerate(batch)]
        if prompt_topk:  # one teacher-forced forward: top-k at prompt and output positions
            soft = target_topk(model, seqs, top_k)
        else:  # top-k at output positions only, from generate's own logits
            steps = torch.stack(out.logits, dim=1)  # [batch, new, vocab]
            soft = [_topk(steps[row, : len(seq) - len(prompt_ids[i])], top_k)
                    for row, (i, seq) in enumerate(zip(batch, seqs))]
        for i, seq, (topk_ids, topk_logprobs) in zip(batch, seqs, soft):
            examples[i] = Example(torch.tensor(seq), len(prompt_ids[i]), topk_ids, topk_logprobs,
                                  meta={"question_index": specs[i].question_index,
                                        "shape": specs[i].shape, "chat": specs[i].chat})
        if saved is not None:
            _save_examples([examples[i] for i in batch], saved)
        bar.update(len(batch))
    bar.close()
    return examples  # type: ignore[return-value]


def _save_examples(examples: Sequence[Example], path: Path) -> None:
    import torch

    rows = [{"ids": e.ids, "n_prompt": e.n_prompt, "topk_ids": e.topk_ids,
             "topk_logprobs": e.topk_logprobs, "meta": json.dumps(e.meta)} for e in examples]
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(rows, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)


def _load_examples(path: Path) -> list[Example]:
    import torch

    rows = torch.load(path, weights_only=True)
    return [Example(r["ids"], int(r["n_prompt"]), r["topk_ids"], r["topk_logprobs"],
                    json.loads(r["meta"])) for r in rows]


def cached_examples(
    cache_path: Path | None, model: Any, tokenizer: Any, specs: Sequence[PromptSpec],
    batch_size: int, max_new_tokens: int, top_k: int, progress: bool = True, prompt_topk: bool = True,
) -> list[Example]:
    """`generate_examples`, reusing a cache file keyed by prompts and settings."""
    settings = [max_new_tokens, top_k] + ([] if prompt_topk else ["outputs-only"])
    key = hashlib.sha256(json.dumps(
        [[s.text for s in specs], *settings, model.config.to_json_string()]
    ).encode()).hexdigest()[:16]
    if cache_path is None:
        return generate_examples(model, tokenizer, specs, batch_size, max_new_tokens, top_k, progress,
                                 prompt_topk=prompt_topk)
    path = cache_path.with_name(f"{cache_path.stem}-{key}.pt")
    if path.exists():
        return _load_examples(path)
    # Finished batches are kept (keyed by their prompts) until the whole set is done.
    partial = cache_path.with_name(f"{cache_path.stem}-batches")
    examples = generate_examples(model, tokenizer, specs, batch_size, max_new_tokens, top_k,
                                 progress, partial_dir=partial, prompt_topk=prompt_topk)
    _save_examples(examples, path)
    return examples


# --------------------------------------------------------------------------- head ids


def select_head_ids(
    outputs: Sequence[Sequence[int]], texts_ids: Sequence[Sequence[int]], head_size: int,
    vocab_size: int, always: Sequence[int] = (),
) -> list[int]:
    """The ids most frequent in the target outputs + the texts, filled with the lowest ids.

    Target-output tokens are counted before text tokens on ties (they are what the draft
    must predict). Ids in ``always`` (e.g. eos) are always kept. Returns sorted ids.
    """
    from collections import Counter

    head_size = min(head_size, vocab_size)
    counts: Counter[int] = Counter()
    for seq in outputs:
        counts.update(int(t) for t in seq)
    for seq in texts_ids:
        counts.update(int(t) for t in seq)
    chosen = {int(t) for t in always if 0 <= int(t) < vocab_size}
    for token, _ in counts.most_common():
        if len(chosen) >= head_size:
            break
        if 0 <= token < vocab_size:
            chosen.add(token)
    filler = 0
    while len(chosen) < head_size:
        chosen.add(filler)
        filler += 1
    return sorted(chosen)[:head_size] if len(chosen) > head_size else sorted(chosen)


# --------------------------------------------------------------------------- the draft


def init_draft(target: Any, layers: int) -> Any:
    """A LlamaForCausalLM with the target's config, ``layers`` layers, target weights."""
    from transformers import AutoModelForCausalLM

    from langchain_seed.engine.feature_draft import cut_config

    draft = AutoModelForCausalLM.from_config(cut_config(target.config, layers))
    source = target.state_dict()
    state = {name: source[name] for name in draft.state_dict() if name in source}
    missing, _ = draft.load_state_dict(state, strict=False)
    missing = [m for m in missing if m != "lm_head.weight"]
    if missing:
        raise ValueError(f"target has no weights for draft parameters {missing[:5]}")
    draft.tie_weights()
    return draft.float()


def load_init_draft(path: str | Path) -> Any:
    """A trained (assembled) token draft to start from, float32, in train mode."""
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, use_safetensors=True)


def trainable_state(draft: Any) -> dict:
    """The draft's own weights: everything except the (target-derived) embedding/head."""
    return {name: tensor for name, tensor in draft.state_dict().items()
            if not name.endswith("embed_tokens.weight") and name != "lm_head.weight"}


def freeze_embedding(draft: Any) -> None:
    for name, param in draft.named_parameters():
        param.requires_grad = not (name.endswith("embed_tokens.weight") or name == "lm_head.weight")


def head_logits(hidden: Any, head_weight: Any) -> Any:
    """Draft logits over the restricted head. hidden [..., H], head_weight [head, H]."""
    from langchain_seed.engine.kernels import linear

    return linear(hidden, head_weight)


# ---------------------------------------------------------------------------- training


def _collate(batch: Sequence[Example], head_index: Any, prompt_weight: float) -> dict:
    """Right-padded tensors: ids, mask, next-token head targets, weights, soft targets."""
    import torch

    width = max(len(e.ids) for e in batch)
    top_k = batch[0].topk_ids.shape[1]
    ids = torch.zeros(len(batch), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    weight = torch.zeros(len(batch), width)  # weight of the loss at position p (predicts p + 1)
    hard = torch.full((len(batch), width), -100, dtype=torch.long)
    soft_idx = torch.full((len(batch), width, top_k), -1, dtype=torch.long)
    soft_lp = torch.full((len(batch), width, top_k), float("-inf"))
    for row, e in enumerate(batch):
        n = len(e.ids)
        ids[row, :n] = e.ids
        mask[row, :n] = 1
        weight[row, : e.n_prompt - 1] = prompt_weight
        weight[row, e.n_prompt - 1 : n - 1] = 1.0
        hard[row, : n - 1] = head_index[e.ids[1:]]
        covered = e.topk_ids.shape[0]  # top-k covers the last `covered` positions (up to n - 2)
        if covered == n - 1:
            # Prompt positions: the target's argmax is the hard target, not the text.
            hard[row, : e.n_prompt - 1] = head_index[e.topk_ids[: e.n_prompt - 1, 0].long()]
        else:
            weight[row, : n - 1 - covered] = 0.0
        soft_idx[row, n - 1 - covered : n - 1] = head_index[e.topk_ids.long()]
        soft_lp[row, n - 1 - covered : n - 1] = e.topk_logprobs.float()
    soft_lp = soft_lp.masked_fill(soft_idx < 0, float("-inf"))
    return {"ids": ids, "mask": mask, "weight": weight, "hard": hard,
            "soft_idx": soft_idx, "soft_lp": soft_lp}


def distill_loss(draft: Any, head_weight: Any, batch: dict, soft_weight: float) -> Any:
    """Weighted CE on the target's greedy token + soft CE toward its top-k (over the head)."""
    import torch

    hidden = draft.model(input_ids=batch["ids"], attention_mask=batch["mask"]).last_hidden_state
    keep = batch["weight"] > 0  # [batch, seq]
    logprobs = torch.log_softmax(head_logits(hidden[keep], head_weight), dim=-1)  # [n, head]
    weight = batch["weight"][keep]
    hard = batch["hard"][keep]
    hard_ok = hard >= 0
    ce = -logprobs.gather(1, hard.clamp(min=0)[:, None])[:, 0] * hard_ok
    soft_lp = batch["soft_lp"][keep]  # [n, top_k]
    has_soft = torch.isfinite(soft_lp).any(-1)
    target_probs = torch.softmax(soft_lp.masked_fill(~has_soft[:, None], 0.0), dim=-1)
    target_probs = target_probs * torch.isfinite(soft_lp)
    soft_ce = -(target_probs * logprobs.gather(1, batch["soft_idx"][keep].clamp(min=0))).sum(-1)
    per_token = ce + soft_weight * soft_ce * has_soft
    return (per_token * weight).sum() / weight.sum().clamp(min=1e-6)


def train_draft(
    draft: Any, head_weight: Any, examples: Sequence[Example], head_index: Any, steps: int,
    batch_size: int, lr: float, soft_weight: float, prompt_weight: float, seed: int,
    progress: bool = True,
) -> list[float]:
    """AdamW with warmup + cosine decay over shuffled epochs; returns the loss curve."""
    freeze_embedding(draft)
    return fit(draft, len(examples), lambda picked: distill_loss(
        draft, head_weight, to_device(_collate([examples[i] for i in picked], head_index, prompt_weight),
                                      head_weight.device), soft_weight),
        steps, batch_size, lr, seed, "distill", progress)


def to_device(batch: dict, device: Any) -> dict:
    """A collated batch's tensors moved to ``device`` (the model's)."""
    return {name: tensor.to(device, non_blocking=True) for name, tensor in batch.items()}


def fit(model: Any, count: int, batch_loss: Any, steps: int, batch_size: int, lr: float, seed: int,
        desc: str, progress: bool = True) -> list[float]:
    """Train `model`'s trainable parameters on `batch_loss(example indices) -> loss` over
    shuffled epochs of `count` examples: AdamW, warmup + cosine decay, gradients clipped at 1.
    Returns the loss curve."""
    import torch
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    rng = random.Random(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, betas=(0.9, 0.98))
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(
        (s + 1) / warmup, 0.5 * (1 + math.cos(math.pi * min(1.0, s / max(1, steps))))))
    order: list[int] = []
    losses: list[float] = []
    model.train()
    bar = tqdm(range(steps), desc=desc, disable=not progress)
    for _ in bar:
        if len(order) < batch_size:
            fresh = list(range(count))
            rng.shuffle(fresh)
            order += fresh
        picked, order = order[:batch_size], order[batch_size:]
        loss = batch_loss(picked)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
    model.eval()
    return losses


# -------------------------------------------------------------------------- measuring


def teacher_forced_acceptance(
    draft_tokens: Sequence[int], target_tokens: Sequence[int], chain: int = 4,
    count_past_end: bool = False,
) -> tuple[int, int]:
    """Greedy chain-of-``chain`` speculative decoding, replayed by teacher forcing.

    ``target_tokens[i]`` is the target's greedy continuation and ``draft_tokens[i]`` the
    draft's argmax for position i given the target's tokens before it. A round starting
    at j drafts ``min(chain, n - j)`` tokens, accepts the longest prefix where the draft
    matches the target, and advances by accepted + 1 (the recovered or bonus token).
    With ``count_past_end`` every round counts ``chain`` drafted tokens, also where fewer
    are left before the end (the strict count of `scripts/draft_acceptance.py`).
    Returns (accepted, drafted) summed over all rounds.
    """
    n = len(target_tokens)
    if len(draft_tokens) != n:
        raise ValueError("draft_tokens and target_tokens must have the same length")
    accepted = drafted = 0
    j = 0
    while j < n:
        width = min(chain, n - j)
        matched = 0
        while matched < width and draft_tokens[j + matched] == target_tokens[j + matched]:
            matched += 1
        accepted += matched
        drafted += chain if count_past_end else width
        j += matched + 1
    return accepted, drafted


def draft_predictions(draft: Any, head_ids: Any, head_weight: Any, example: Example) -> list[int]:
    """The draft's restricted-head argmax at every output position (teacher forced).

    head_ids: `[head]` on the draft's device; head_weight: `[head, H]`, its embedding rows.
    """
    import torch

    with torch.no_grad():
        hidden = draft.model(input_ids=example.ids[None].to(draft.device)).last_hidden_state[0]  # [seq, H]
        positions = hidden[example.n_prompt - 1 : len(example.ids) - 1]
        best = head_logits(positions, head_weight).argmax(-1)
    return head_ids[best].tolist()


def heldout_acceptance(draft: Any, head_ids: Any, examples: Sequence[Example], chain: int = 4) -> dict:
    """Chain-of-``chain`` greedy acceptance and per-token agreement over held-out examples."""
    accepted = drafted = agree = total = 0
    by_shape: dict[str, list[int]] = {}
    head_ids = head_ids.to(draft.device)
    head_weight = draft.get_input_embeddings().weight[head_ids].detach()  # once, not per example
    for example in examples:
        target_tokens = example.ids[example.n_prompt :].tolist()
        if not target_tokens:
            continue
        predicted = draft_predictions(draft, head_ids, head_weight, example)
        a, d = teacher_forced_acceptance(predicted, target_tokens, chain)
        accepted, drafted = accepted + a, drafted + d
        agree += sum(p == t for p, t in zip(predicted, target_tokens))
        total += len(target_tokens)
        shape = by_shape.setdefault(example.meta.get("shape", "?"), [0, 0])
        shape[0], shape[1] = shape[0] + a, shape[1] + d
    return {
        "acceptance_rate": accepted / max(1, drafted), "accepted": accepted, "drafted": drafted,
        "token_agreement": agree / max(1, total), "tokens": total,
        "acceptance_by_shape": {k: v[0] / max(1, v[1]) for k, v in sorted(by_shape.items())},
    }


def token_costs(draft: Any, target: Any, head_ids: Any, repeats: int = 5) -> tuple[float, float]:
    """(draft ms, target ms) per cached single-token forward, as the engine runs them
    (`alternating_costs` of `step_ms` with the draft's restricted head)."""
    return alternating_costs(draft, target, lambda: step_ms(draft, head_ids), repeats)


def alternating_costs(draft: Any, target: Any, draft_step_ms: Any, repeats: int = 5) -> tuple[float, float]:
    """(draft ms, target ms): `draft_step_ms()` and the target's `step_ms` timed alternately
    ``repeats`` times, medians, so that a change in the machine's load hits both. The
    models' linears run on the engine's kernels (`engine.kernels`: the native C kernel where it builds).
    """
    import statistics

    from langchain_seed.engine import kernels

    draft_times, target_times = [], []
    with kernels.install(draft), kernels.install(target), kernels.engine_kernels():
        for _ in range(repeats):
            draft_times.append(draft_step_ms())
            target_times.append(step_ms(target))
    return statistics.median(draft_times), statistics.median(target_times)


def step_ms(model: Any, head_ids: Any | None = None, context: int = 64, steps: int = 30) -> float:
    """Median ms of one cached single-token forward (restricted head if ``head_ids``)."""
    import statistics

    import torch
    from transformers import DynamicCache

    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, model.config.vocab_size, (1, context), generator=generator)
    times = []
    with torch.no_grad():
        cache = DynamicCache(config=model.config)
        model.model(input_ids=ids, cache=cache, use_cache=True)
        token = ids[:, -1:]
        head_weight = model.get_input_embeddings().weight[head_ids] if head_ids is not None else None
        for i in range(steps + 3):
            start = time.perf_counter()
            position = torch.tensor([[context + i]])
            if head_weight is not None:
                hidden = model.model(input_ids=token, cache=cache, use_cache=True,
                                     position_ids=position).last_hidden_state
                token = head_ids[head_logits(hidden[:, -1], head_weight).argmax(-1)][:, None]
            else:
                logits = model(input_ids=token, cache=cache, use_cache=True,
                               position_ids=position, logits_to_keep=1).logits
                token = logits[:, -1].argmax(-1)[:, None]
            if i >= 3:
                times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


# ------------------------------------------------------------------------------ saving


def save_draft(draft: Any, head_ids: Sequence[int], out: Path, dtype: str = "float16") -> int:
    """Write config.json, the trained weights (``dtype``) and head ids; returns bytes."""
    import torch
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    draft.config.save_pretrained(out)
    state = {k: v.detach().to(getattr(torch, dtype)).contiguous() for k, v in trainable_state(draft).items()}
    save_file(state, str(out / LAYERS_FILE), metadata={"format": "pt", "dtype": dtype})
    (out / LAYERS_FILE).chmod(0o644)
    (out / HEAD_IDS_FILE).write_text(json.dumps([int(i) for i in head_ids]))
    return sum(p.stat().st_size for p in out.iterdir() if p.is_file())


def round_trip(draft: Any, dtype: str = "float16") -> None:
    """Round the trained weights through ``dtype`` so measurements match the saved file."""
    import torch

    with torch.no_grad():
        for name, tensor in trainable_state(draft).items():
            tensor.copy_(tensor.to(getattr(torch, dtype)).float())


def write_model_card(out: Path, report: dict) -> None:
    r = report
    acc = r["heldout_after"]
    lines = [
        f"# {r['name']}",
        "",
        f"A {r['layers']}-layer draft model for speculative decoding with `{r['target_name']}` "
        "(the target): same tokenizer, same hidden size, the target's embedding (not shipped: it "
        "is taken from the target when the draft is assembled), its LM head restricted to "
        f"{r['head_size']} token ids (`{HEAD_IDS_FILE}`).",
        "",
        "## Size",
        "",
        f"- parameters: {r['params_total']:,} in the assembled model, of which {r['params_own']:,} "
        f"are the draft's own (trained {r['layers']} decoder layers + final norm)",
        f"- shipped: {r['shipped_bytes'] / 1e6:.1f} MB (`{LAYERS_FILE}` in {r['dtype']}, config, head ids, this card)",
        "",
        "## Training data",
        "",
        f"- GSM8K test split (Cobbe et al. 2021, MIT licence), file `{r['data']}` ({r['n_questions']} questions).",
        f"- held out, never trained on: questions {r['heldout_range']} (the first {r['heldout']} lines).",
        f"- trained on questions {r['train_range']}: {r['n_train_sequences']} prompts, "
        f"{r['train_output_tokens']:,} target output tokens, {r['train_prompt_tokens']:,} prompt tokens.",
        "- prompts: Tree-of-Thoughts GSM8K shapes (propose / sample / value / answer), at the root "
        "or after 1-2 steps of the reference solution (calculator annotations removed); "
        f"{r['chat_fraction']:.0%} wrapped in the chat template. Shape counts: {r['shape_counts']}.",
        f"- targets: the target's own greedy continuations (batched, left padding, up to "
        f"{r['train_max_new_tokens']} new tokens; {r['max_new_tokens']} for the held-out set) and "
        f"its top-{r['top_k']} distribution at "
        + ("every position." if r["prompt_weight"] > 0 else "every output position."),
        "",
        "## Training",
        "",
        (f"- init: the trained draft `{r['init_draft']}` (its layers, norm and head ids); "
         "embedding/head frozen." if r.get("init_draft") else
         f"- init: target embedding, first {r['layers']} layers and final norm; embedding/head frozen."),
        f"- loss: CE on the target's greedy token + {r['soft_weight']} x soft CE to its top-{r['top_k']} "
        f"distribution over the head; prompt positions weighted {r['prompt_weight']}.",
        f"- AdamW, lr {r['lr']}, {r['steps']} steps x batch {r['batch_size']}, seed {r['seed']}; "
        f"final loss {r['final_loss']:.3f}.",
        f"- time on {_where(r)}: target outputs {r['seconds_generate']:.0f} s "
        "(outputs found in the --work cache are not regenerated), training "
        f"{r['seconds_train']:.0f} s.",
        "",
        "## Measured (held-out questions, greedy, teacher-forced exact replay)",
        "",
        f"- chain-of-{r['chain']} acceptance rate (accepted / drafted): **{acc['acceptance_rate']:.3f}** "
        f"over {acc['drafted']:,} drafted tokens (before training: {r['heldout_before']['acceptance_rate']:.3f})",
        f"- per-token agreement with the target: {acc['token_agreement']:.3f} over {acc['tokens']:,} tokens",
        f"- by prompt shape: {json.dumps({k: round(v, 3) for k, v in acc['acceptance_by_shape'].items()})}",
        *card_cost_and_command(r, " (restricted head)"),
    ]
    (out / "README.md").write_text("\n".join(lines))


def _where(r: dict) -> str:
    """Where a report's generation and training ran, for the card."""
    if r.get("device", "cpu") == "cpu":
        return f"the CPU ({r['threads']} threads)"
    return f"{r['device']} ({r.get('device_name', '?')})"


def card_cost_and_command(r: dict, draft_note: str = "") -> list[str]:
    """A model card's per-token cost line and its Command section."""
    return [
        f"- per-token cost, one cached forward, fp32 on the engine's kernels, {r['threads']} CPU threads, "
        f"medians of 5 alternating runs: draft {r['draft_ms']:.1f} ms{draft_note} vs target {r['target_ms']:.1f} ms "
        f"= **{r['draft_ms'] / r['target_ms']:.3f}** of the target.",
        "", "## Command", "", "```", r["command"], "```", "",
    ]


# -------------------------------------------------------------------------------- main


def training_prompts(records: Sequence[dict], indices: Sequence[int], tokenizer: Any,
                     args: argparse.Namespace) -> list[PromptSpec]:
    """`--prompt-passes` passes over the training questions from pass `--first-pass` on,
    pass p drawn with seed + 1000 p.

    Passes are appended (pass 0 is the single-pass set), so target outputs cached for
    fewer passes are reused when more are asked for; a run continuing a draft trained on
    passes 0..N-1 asks for fresh draws with `--first-pass N`.
    """
    specs: list[PromptSpec] = []
    for prompt_pass in range(args.first_pass, args.first_pass + args.prompt_passes):
        specs += build_prompts(records, indices, tokenizer, args.seed + 1000 * prompt_pass,
                               args.per_question, args.chat_fraction)
    return specs


def _shape_counts(specs: Sequence[PromptSpec]) -> dict:
    counts: dict[str, int] = {}
    for s in specs:
        key = s.shape + ("+chat" if s.chat else "")
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def distill(args: argparse.Namespace) -> dict:
    """Run all stages; returns the report written to ``distill_report.json``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = training_device(args.device, args.kind)
    out = Path(args.out)
    records = load_jsonl(Path(args.data))
    heldout = min(args.heldout, len(records))
    train_indices = list(range(heldout, len(records)))[: args.max_train_questions or None]
    if not train_indices:
        raise SystemExit(f"{args.data} has {len(records)} questions, all held out (--heldout "
                         f"{args.heldout}): pass the full GSM8K test jsonl with --data")
    tokenizer = AutoTokenizer.from_pretrained(args.target)
    target = AutoModelForCausalLM.from_pretrained(args.target, dtype=torch.float32, use_safetensors=True)
    target = target.to(device).eval()
    # 1. prompts
    train_specs = training_prompts(records, train_indices, tokenizer, args)
    heldout_specs = build_prompts(records, range(heldout), tokenizer, args.seed + 1, 1, args.chat_fraction)
    # 2. target outputs
    started = time.perf_counter()
    cache = Path(args.work) / "target-outputs" if args.work else None
    gen = (target, tokenizer)
    heldout_examples = cached_examples(cache and cache.with_name("heldout"), *gen, heldout_specs,
                                       args.gen_batch, args.max_new_tokens, args.top_k, args.progress)
    train_examples = cached_examples(cache and cache.with_name("train"), *gen, train_specs, args.gen_batch,
                                     args.train_max_new_tokens or args.max_new_tokens, args.top_k, args.progress,
                                     prompt_topk=args.prompt_weight > 0 and args.kind == "token")
    seconds_generate = time.perf_counter() - started
    # 3. head ids
    texts = [tokenizer(records[i]["question"] + "\n" + strip_calculator(records[i].get("answer", "")),
                       add_special_tokens=False).input_ids for i in train_indices]
    outputs = [e.ids[e.n_prompt :].tolist() for e in train_examples]
    head_list = select_head_ids(outputs, texts, args.head_size, target.config.vocab_size,
                                always=sorted(_eos_ids(target, tokenizer)))
    if args.init_draft:  # the draft continues from a trained one: keep the head it learnt
        head_list = _head_ids_of(Path(args.init_draft)) or head_list
    head_ids = torch.tensor(head_list)
    head_index = torch.full((target.config.vocab_size,), -1, dtype=torch.long)
    head_index[head_ids] = torch.arange(len(head_ids))
    data = {
        "name": out.name, "target_name": Path(args.target).resolve().name,
        "data": Path(args.data).name, "n_questions": len(records), "heldout": heldout,
        "heldout_range": f"0..{heldout - 1}", "train_range": f"{train_indices[0]}..{train_indices[-1]}",
        "n_train_sequences": len(train_examples),
        "train_output_tokens": sum(len(e.ids) - e.n_prompt for e in train_examples),
        "train_prompt_tokens": sum(e.n_prompt for e in train_examples),
        "prompt_passes": args.prompt_passes, "first_pass": args.first_pass, "chat_fraction": args.chat_fraction,
        "shape_counts": _shape_counts(train_specs), "max_new_tokens": args.max_new_tokens,
        "train_max_new_tokens": args.train_max_new_tokens or args.max_new_tokens,
        "seconds_generate": seconds_generate, "threads": args.threads, "chain": args.chain,
        "command": args.command_line, "seed": args.seed, "lr": args.lr, "steps": args.steps,
        "batch_size": args.batch_size, "prompt_weight": args.prompt_weight, "dtype": args.dtype,
        "init_draft": Path(args.init_draft).name if args.init_draft else None,
        "device": str(device), "device_name": _device_name(device),
    }
    if args.kind == "feature":
        from langchain_seed.feature_distill import distill_feature

        return _finish(args, out, distill_feature(args, target, train_examples, heldout_examples, head_list, data))
    # 4. draft init
    draft = load_init_draft(args.init_draft) if args.init_draft else init_draft(target, args.layers)
    draft = draft.to(device)
    head_weight = draft.get_input_embeddings().weight[head_ids.to(device)].detach()
    before = heldout_acceptance(draft, head_ids, heldout_examples, args.chain)
    print(f"held-out acceptance before training: {before['acceptance_rate']:.3f}", file=sys.stderr)
    # 5. training
    started = time.perf_counter()
    losses = train_draft(draft, head_weight, train_examples, head_index, args.steps, args.batch_size,
                         args.lr, args.soft_weight, args.prompt_weight, args.seed, args.progress)
    seconds_train = time.perf_counter() - started
    # 6. measure (on the weights as saved)
    round_trip(draft, args.dtype)
    after = heldout_acceptance(draft, head_ids, heldout_examples, args.chain)
    draft, target = draft.cpu(), target.cpu()  # the cost that matters is the CPU's (decoding runs there)
    draft_ms, target_ms = token_costs(draft, target, head_ids)
    # 7. save
    shipped = save_draft(draft, head_list, out, args.dtype)
    own = sum(v.numel() for v in trainable_state(draft).values())
    report = {
        **data, "layers": args.layers, "head_size": len(head_list),
        "params_total": sum(p.numel() for p in draft.parameters()), "params_own": own,
        "top_k": args.top_k, "soft_weight": args.soft_weight,
        "final_loss": sum(losses[-20:]) / max(1, len(losses[-20:])),
        "seconds_train": seconds_train, "heldout_before": before, "heldout_after": after,
        "draft_ms": draft_ms, "target_ms": target_ms, "losses_every_10": losses[::10],
    }
    report["shipped_bytes"] = shipped
    write_model_card(out, report)  # twice: the card's own size is part of the shipped size
    report["shipped_bytes"] = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    write_model_card(out, report)
    return _finish(args, out, report)


def training_device(name: str, kind: str = "token") -> Any:
    """The torch device `distill` runs the target and the training on, checked up front."""
    import torch

    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise SystemExit(f"--device {name!r} is not a torch device ({error})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: this torch ({torch.__version__}) sees no CUDA GPU")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise SystemExit(f"--device {name}: MPS is not available on this machine")
    if device.type != "cpu" and kind != "token":
        raise SystemExit(f"--device {name}: only token drafts train off the CPU so far (--kind {kind})")
    return device


def _device_name(device: Any) -> str:
    import platform

    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def _finish(args: argparse.Namespace, out: Path, report: dict) -> dict:
    """Write the report beside the work cache (or the draft) and print its headline."""
    report_dir = Path(args.work) if args.work else out
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / REPORT_FILE).write_text(json.dumps(report, indent=1))
    print(json.dumps({k: report[k] for k in ("heldout_after", "draft_ms", "target_ms", "shipped_bytes")}))
    return report


def _head_ids_of(draft_dir: Path) -> list[int] | None:
    path = draft_dir / HEAD_IDS_FILE
    return [int(i) for i in json.loads(path.read_text())] if path.is_file() else None


def _run(args: argparse.Namespace) -> int:
    tail = args.argv_tail
    if tail is None:
        tail = sys.argv[sys.argv.index("distill") + 1 :] if "distill" in sys.argv else []
    args.command_line = "langchain-seed distill " + " ".join(shlex.quote(a) for a in tail)
    distill(args)
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    default_data = Path(__file__).parent / "bench" / "data" / "gsm8k_heldout.jsonl"
    parser = subparsers.add_parser("distill", help="train a small draft model for a target by distillation")
    parser.add_argument("--target", required=True, help="target model dir (safetensors)")
    parser.add_argument("--out", required=True, help="output dir for the draft's own weights + card")
    parser.add_argument("--data", default=str(default_data), help="GSM8K-style jsonl (question, answer)")
    parser.add_argument("--kind", choices=("token", "feature"), default="token",
                        help="token: a small LM over tokens; feature: EAGLE-style, also reads the "
                             "target's hidden states (see langchain_seed.feature_distill)")
    parser.add_argument("--init-draft", default="",
                        help="start from this trained draft dir (assembled, with head_token_ids.json); "
                             "its head ids are kept")
    parser.add_argument("--feature-weight", type=float, default=1.0,
                        help="feature drafts: weight of the feature regression term")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--head-size", type=int, default=8192)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--soft-weight", type=float, default=1.0)
    parser.add_argument("--prompt-weight", type=float, default=0.2)
    parser.add_argument("--top-k", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--heldout", type=int, default=100, help="first N questions are never trained on")
    parser.add_argument("--max-train-questions", type=int, default=0, help="0 = all the rest")
    parser.add_argument("--per-question", type=int, default=1, help="prompts per training question")
    parser.add_argument("--prompt-passes", type=positive_int, default=1,
                        help="passes over the training questions, each with its own prompt draws")
    parser.add_argument("--first-pass", type=non_negative_int, default=0,
                        help="the first pass drawn (fresh prompts for continuing a draft trained on "
                             "passes 0..N-1)")
    parser.add_argument("--chat-fraction", type=float, default=0.25)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--train-max-new-tokens", type=int, default=0,
                        help="new tokens per training prompt (0 = --max-new-tokens, used for held-out)")
    parser.add_argument("--gen-batch", type=int, default=16)
    parser.add_argument("--chain", type=int, default=4, help="draft chain length for the acceptance metric")
    parser.add_argument("--dtype", default="float16", choices=("float16", "bfloat16", "float32"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu",
                        help="where the target writes its outputs and the draft trains (cpu, cuda, cuda:1, "
                             "mps); the per-token cost is always measured on the CPU")
    parser.add_argument("--work", default="", help="cache dir for target outputs (reused on rerun)")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    parser.set_defaults(func=_run, argv_tail=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="langchain-seed")
    add_parser(parser.add_subparsers(dest="command", required=True))
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv_tail = argv[1:]
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
