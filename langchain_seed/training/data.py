"""Distillation prompts: GSM8K questions in the shapes Tree-of-Thoughts sends a model.

Each prompt is one role of the ``gsm8k`` task (propose / sample / value / answer), made
by the task's own templates (`tot.tasks.GSM8KTask`), at the root or after a few steps
of the question's reference solution, some wrapped in the tokenizer's chat template.
Draws are deterministic: one RNG per (seed, question).
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from langchain_seed.tot.prompts import fill
from langchain_seed.tot.tasks import GSM8KTask

PROMPT_SHAPES = ("propose", "sample", "value", "answer")
SHAPE_WEIGHTS = (0.35, 0.30, 0.15, 0.20)


@functools.cache
def gsm8k_task() -> GSM8KTask:
    """The task whose templates the prompts use (never mutated)."""
    return GSM8KTask()


def strip_calculator(text: str) -> str:
    """Remove GSM8K calculator annotations such as ``<<16-3-4=9>>``."""
    return re.sub(r"<<[^>]*>>", "", text)


def reference_steps(answer: str) -> list[str]:
    """The reference solution's reasoning lines (without the final ``#### n`` line)."""
    lines = [strip_calculator(line).strip() for line in answer.split("\n")]
    return [line for line in lines if line and not line.startswith("####")]


def format_steps(steps: Sequence[str]) -> str:
    """The state as the gsm8k task writes it: ``Step i: ...`` lines."""
    return gsm8k_task().format_steps(steps)


def render_prompt(shape: str, question: str, steps: str, k: int = 3, index: int = 1) -> str:
    """One ToT GSM8K prompt; ``steps`` is "" at the root or "Step i: ...\\n" lines."""
    if shape not in PROMPT_SHAPES:
        raise ValueError(f"unknown prompt shape {shape!r}")
    variables = {"question": question, "steps": steps, "k": k, "index": index}
    return fill(gsm8k_task().prompts[shape], variables)


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


def shape_counts(specs: Sequence[PromptSpec]) -> dict:
    """Prompts per shape (``+chat`` when wrapped), sorted by name."""
    counts: dict[str, int] = {}
    for s in specs:
        key = s.shape + ("+chat" if s.chat else "")
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def load_jsonl(path: Path) -> list[dict]:
    """The records of a jsonl file (GSM8K: one {"question": ..., "answer": ...} object a line).

    A line that is not such an object is refused with a ValueError naming the file and line.
    """
    records = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}, line {number}: not JSON ({error.msg})") from None
            if not (isinstance(record, dict) and isinstance(record.get("question"), str)
                    and isinstance(record.get("answer"), str)):
                raise ValueError(f"{path}, line {number}: expected an object with 'question' and 'answer' strings")
            records.append(record)
    return records
