"""What the draft learns from: the target's greedy continuations of the prompts, its
top-k distribution at each position (teacher forced), and the head ids they use most.

Outputs are generated in batches (left padding) and cached in the work directory: a
finished batch is kept under a key of its prompts and settings, so an interrupted or
grown run redoes only what is new.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from langchain_seed.training.data import PromptSpec

HEAD_IDS_FILE = "head_token_ids.json"


@dataclass
class Example:
    """A prompt and the target's greedy continuation, with its top-k soft targets."""

    ids: Any  # [seq] int64: prompt + output (output ends with eos if it stopped)
    n_prompt: int
    topk_ids: Any  # [seq - 1, top_k] int32: target top-k at position p (predicts p + 1)
    topk_logprobs: Any  # [seq - 1, top_k] float16
    meta: dict = field(default_factory=dict)


def trim_output(tokens: list[int], eos_ids: set[int], pad_id: int) -> list[int]:
    """Generated tokens up to and including the first eos, without trailing padding."""
    for i, token in enumerate(tokens):
        if token in eos_ids:
            return tokens[: i + 1]
    while tokens and tokens[-1] == pad_id and pad_id not in eos_ids:
        tokens = tokens[:-1]
    return tokens


def eos_ids(model: Any, tokenizer: Any) -> set[int]:
    """The ids that end a generation (the model's generation config, else the tokenizer's)."""
    eos = model.generation_config.eos_token_id
    if eos is None:
        eos = tokenizer.eos_token_id
    return set(eos if isinstance(eos, list) else [eos])


def _topk(logits: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids int32, log-probs float16) of the top-k of each row, on the CPU. logits [n, vocab]."""
    values, indices = torch.log_softmax(logits.float(), dim=-1).topk(top_k, dim=-1)
    return indices.to("cpu", torch.int32), values.to("cpu", torch.float16)


def target_topk(model: Any, sequences: list[list[int]], top_k: int) -> list[tuple[Any, Any]]:
    """Teacher-forced target top-k log-probs at every position of each sequence."""
    width = max(len(s) for s in sequences)
    ids = torch.zeros(len(sequences), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
    with torch.no_grad():
        # [batch, seq, vocab]
        logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits
    return [_topk(logits[row, : len(seq) - 1], top_k) for row, seq in enumerate(sequences)]


def generation_batches(specs: Sequence[PromptSpec], prompt_ids: Sequence[Sequence[int]],
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
    tokenizer.padding_side = "left"
    prompt_ids = [tokenizer(s.text, add_special_tokens=False).input_ids for s in specs]
    examples: list[Example | None] = [None] * len(specs)
    bar = tqdm(total=len(specs), desc="target outputs", unit="seq", disable=not progress)
    for batch in generation_batches(specs, prompt_ids, batch_size):
        key = hashlib.sha256(json.dumps([[specs[i].text for i in batch], max_new_tokens, top_k, prompt_topk])
                             .encode()).hexdigest()[:20]
        saved = partial_dir / f"batch-{key}.pt" if partial_dir else None
        if saved is not None and saved.exists():
            done = load_examples(saved)
        else:
            done = _generate_batch(model, tokenizer, [specs[i] for i in batch], [prompt_ids[i] for i in batch],
                                   max_new_tokens, top_k, prompt_topk)
            if saved is not None:
                save_examples(done, saved)
        for i, example in zip(batch, done):
            examples[i] = example
        bar.update(len(batch))
    bar.close()
    return examples  # type: ignore[return-value]


def _generate_batch(model: Any, tokenizer: Any, specs: Sequence[PromptSpec], prompt_ids: Sequence[list[int]],
                    max_new_tokens: int, top_k: int, prompt_topk: bool) -> list[Example]:
    """One batch of `generate_examples`: greedy outputs and their top-k soft targets."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    enc = tokenizer.pad({"input_ids": list(prompt_ids)}, return_tensors="pt").to(model.device)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad_id,
                             output_logits=not prompt_topk, return_dict_in_generate=True)
    width = enc["input_ids"].shape[1]
    stops = eos_ids(model, tokenizer)
    seqs = [ids + trim_output(out.sequences[row, width:].tolist(), stops, pad_id)
            for row, ids in enumerate(prompt_ids)]
    if prompt_topk:  # one teacher-forced forward: top-k at prompt and output positions
        soft = target_topk(model, seqs, top_k)
    else:  # top-k at output positions only, from generate's own logits
        steps = torch.stack(out.logits, dim=1)  # [batch, new, vocab]
        soft = [_topk(steps[row, : len(seq) - len(ids)], top_k)
                for row, (ids, seq) in enumerate(zip(prompt_ids, seqs))]
    return [Example(torch.tensor(seq), len(ids), topk_ids, topk_logprobs,
                    meta={"question_index": spec.question_index, "shape": spec.shape, "chat": spec.chat})
            for spec, ids, seq, (topk_ids, topk_logprobs) in zip(specs, prompt_ids, seqs, soft)]


def save_examples(examples: Sequence[Example], path: Path) -> None:
    """Write examples to ``path`` atomically (torch.save of plain tensors and JSON)."""
    rows = [{"ids": e.ids, "n_prompt": e.n_prompt, "topk_ids": e.topk_ids,
             "topk_logprobs": e.topk_logprobs, "meta": json.dumps(e.meta)} for e in examples]
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(rows, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)


def load_examples(path: Path) -> list[Example]:
    """The examples `save_examples` wrote."""
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
        return load_examples(path)
    # Finished batches are kept (keyed by their prompts) until the whole set is done.
    partial = cache_path.with_name(f"{cache_path.stem}-batches")
    examples = generate_examples(model, tokenizer, specs, batch_size, max_new_tokens, top_k,
                                 progress, partial_dir=partial, prompt_topk=prompt_topk)
    save_examples(examples, path)
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


def head_index(head_ids: Sequence[int], vocab_size: int) -> torch.Tensor:
    """`[vocab]`: each head id's row in the head, -1 for ids outside it."""
    index = torch.full((vocab_size,), -1, dtype=torch.long)
    index[torch.tensor(list(head_ids))] = torch.arange(len(head_ids))
    return index


def head_ids_of(draft_dir: Path) -> list[int] | None:
    """The head ids a saved draft was trained with, or None when it has none."""
    path = draft_dir / HEAD_IDS_FILE
    return [int(i) for i in json.loads(path.read_text())] if path.is_file() else None
