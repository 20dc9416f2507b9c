"""Benchmark workloads: GSM8K prompts grouped the way Tree-of-Thoughts sends them.

A workload is a list of `PromptGroup`s; every method receives each group as one call
(serial methods decode its prompts one after another, batched ones together). All
prompts are plain text, exactly as the ToT templates render them (no chat template):
that is what `TreeOfThoughts` sends through an LLM. Every method decodes greedily up to
the group's `max_tokens` or EOS, with no stop sequences, so that all methods do the same
work and their outputs can be compared token for token.

Workloads:

- ``tot-step`` (the paper's setting, the headline): per question, group 1 is the three
  thought prompts of the root state (the GSM8K ``sample`` template, option 1, 2 and 3 of
  3, so that greedy outputs differ), ``thought_tokens`` new tokens each; group 2 is the
  three ``value`` prompts of the states those thoughts make, ``value_tokens`` each. The
  value prompts are built once from the TARGET's greedy thoughts (a reference run), so
  every method gets identical inputs in both phases.
- ``single``: one prompt per call (the option-1 thought prompt of each question).
- ``tot-full``: a whole BFS tree (breadth 3, depth 2, sample generator, value
  evaluator) run by `TreeOfThoughts` over a LangChain LLM per method; it is not made of
  fixed groups, so it is described by `ToTFullWorkload` and run by the harness.

Defaults: 48 thought tokens (a ToT step is one line, 20-40 tokens, in GSM8K) and 8 value
tokens (a score and a few tokens of explanation).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

WORKLOADS = ("tot-step", "tot-full", "single")
DATA_FILE = "gsm8k_heldout.jsonl"
FALLBACK_DATA = Path("/work/shared/data/gsm8k_test.jsonl")
THOUGHT_TOKENS = 48
VALUE_TOKENS = 8
BREADTH = 3
TOT_DEPTH = 2

ReferenceFn = Callable[[list[list[int]], int], list[list[int]]]
"""Target greedy decoding: (prompt ids of one group, max_tokens) -> new token ids per prompt."""


@dataclass(frozen=True)
class PromptGroup:
    """Prompts a method receives in one call.

    Attributes:
        name: e.g. ``"q3/thoughts"``.
        phase: ``"thoughts"``, ``"values"`` or ``"single"``.
        prompts: the prompt texts.
        prompt_ids: their token ids (the tokenizer's defaults, no chat template).
        max_tokens: new tokens per prompt, at most.
    """

    name: str
    phase: str
    prompts: tuple[str, ...]
    prompt_ids: tuple[tuple[int, ...], ...]
    max_tokens: int

    def id_lists(self) -> list[list[int]]:
        """The prompts' token ids as the lists a method takes."""
        return [list(ids) for ids in self.prompt_ids]


@dataclass
class Workload:
    """Prompt groups, in the order every method runs them, and how they were made."""

    name: str
    groups: list[PromptGroup]
    settings: dict = field(default_factory=dict)

    @property
    def prompt_count(self) -> int:
        return sum(len(group.prompts) for group in self.groups)


@dataclass
class ToTFullWorkload:
    """Whole ToT searches: one `TreeOfThoughts.invoke` per question and method."""

    name: str
    questions: list[str]
    breadth: int = BREADTH
    depth: int = TOT_DEPTH
    max_tokens: int = THOUGHT_TOKENS
    settings: dict = field(default_factory=dict)


def load_questions(count: int, path: str | Path | None = None) -> list[str]:
    """The first `count` held-out GSM8K questions (the package's `bench/data` file).

    `path` overrides the file (JSON lines with a ``question`` field). Where the packaged
    file is missing, the shared test split is read instead (development checkouts).
    """
    if count < 1:
        raise ValueError(f"count must be >= 1; got {count}")
    lines = _data_lines(path)
    questions = [json.loads(line)["question"] for line in lines if line.strip()][:count]
    if len(questions) < count:
        raise ValueError(f"asked for {count} questions; the data file has {len(questions)}")
    return questions


def _data_lines(path: str | Path | None) -> list[str]:
    if path is not None:
        return Path(path).read_text(encoding="utf-8").splitlines()
    packaged = resources.files("langchain_seed.bench").joinpath("data", DATA_FILE)
    if packaged.is_file():
        return packaged.read_text(encoding="utf-8").splitlines()
    if FALLBACK_DATA.is_file():
        return FALLBACK_DATA.read_text(encoding="utf-8").splitlines()[:100]
    raise FileNotFoundError(f"no benchmark data: langchain_seed/bench/data/{DATA_FILE} is missing")


def encode(tokenizer, text: str) -> tuple[int, ...]:
    """Token ids of a plain-text prompt (the tokenizer's default special tokens)."""
    return tuple(int(t) for t in tokenizer(text)["input_ids"])


def _group(tokenizer, name: str, phase: str, prompts: Sequence[str], max_tokens: int) -> PromptGroup:
    return PromptGroup(name, phase, tuple(prompts), tuple(encode(tokenizer, p) for p in prompts), max_tokens)


def thought_from_tokens(tokenizer, token_ids: Sequence[int]) -> str:
    """The thought a ToT generator would keep from a sampled reply (its first non-empty line)."""
    from langchain_seed.tot.tasks import get_task

    text = tokenizer.decode(list(token_ids), skip_special_tokens=True)
    return get_task("gsm8k").parse_sample(text) or text.strip() or "(no thought)"


def build_tot_step(
    questions: Sequence[str],
    tokenizer,
    reference: ReferenceFn,
    thought_tokens: int = THOUGHT_TOKENS,
    value_tokens: int = VALUE_TOKENS,
    breadth: int = BREADTH,
) -> Workload:
    """Per question: its `breadth` thought prompts, then the value prompts of the target's thoughts.

    `reference` is called once per question on the thought group; its outputs (the
    target's greedy thoughts) make the value prompts.
    """
    from langchain_seed.tot.tasks import get_task

    task = get_task("gsm8k")
    groups: list[PromptGroup] = []
    for index, question in enumerate(questions):
        prompts = [task.sample_prompt(question, [], option, breadth) for option in range(1, breadth + 1)]
        thoughts_group = _group(tokenizer, f"q{index}/thoughts", "thoughts", prompts, thought_tokens)
        outputs = reference([list(p) for p in thoughts_group.prompt_ids], thought_tokens)
        thoughts = [thought_from_tokens(tokenizer, tokens) for tokens in outputs]
        values = [task.value_prompt(question, [thought]) for thought in thoughts]
        groups += [thoughts_group, _group(tokenizer, f"q{index}/values", "values", values, value_tokens)]
    settings = dict(questions=len(questions), breadth=breadth, thought_tokens=thought_tokens,
                    value_tokens=value_tokens, template="gsm8k sample (option i of k) + value",
                    value_prompts_from="target greedy thoughts (first line)")
    return Workload("tot-step", groups, settings)


def build_single(questions: Sequence[str], tokenizer, max_tokens: int = THOUGHT_TOKENS) -> Workload:
    """One prompt per call: the option-1 thought prompt of each question."""
    from langchain_seed.tot.tasks import get_task

    task = get_task("gsm8k")
    groups = [_group(tokenizer, f"q{i}/single", "single", [task.sample_prompt(q, [], 1, BREADTH)], max_tokens)
              for i, q in enumerate(questions)]
    return Workload("single", groups, dict(questions=len(questions), max_tokens=max_tokens,
                                           template="gsm8k sample (option 1 of 3)"))


def build_tot_full(questions: Sequence[str], max_tokens: int = THOUGHT_TOKENS) -> ToTFullWorkload:
    """Whole BFS trees (breadth 3, depth 2, sample generator, value evaluator) per question."""
    settings = dict(questions=len(questions), breadth=BREADTH, depth=TOT_DEPTH, generator="sample",
                    evaluator="value", search="bfs", max_tokens=max_tokens, stop_sequences="the task's")
    return ToTFullWorkload("tot-full", list(questions), BREADTH, TOT_DEPTH, max_tokens, settings)


def truncate_at_eos(token_ids: Sequence[int], eos_token_ids: frozenset[int] | set[int],
                    max_tokens: int | None = None) -> list[int]:
    """New tokens up to and including the first EOS, and at most `max_tokens`.

    Makes outputs comparable across methods: transformers pads rows that ended early
    in a batch, and some methods may run past an EOS inside an accepted draft.
    """
    out: list[int] = []
    for token in token_ids:
        if max_tokens is not None and len(out) >= max_tokens:
            break
        out.append(int(token))
        if int(token) in eos_token_ids:
            break
    return out
