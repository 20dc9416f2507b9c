"""Benchmark workloads: the paper's datasets' prompts grouped the way Tree-of-Thoughts sends them.

Datasets (``--task``), each with the tree setup of `TASK_SETUPS` (the paper's three):

- ``gsm8k``: the packaged held-out GSM8K questions (`load_questions`); thoughts are
  sampled sub-questions, scored by value (0-10).
- ``writing``: Creative Writing as the ToT paper poses it; each input is 4 sentences
  drawn with ``random.Random(0)`` from the statements of the same held-out GSM8K
  questions (`langchain_seed.tot.tasks.writing_inputs`); thoughts are one-line plans,
  compared by 3 votes; the answer is the passage.
- ``blocksworld``: 4-block problems from the package's generator, seeds 0, 1, 2, ...
  (`langchain_seed.tot.tasks.generate_problems`); a thought is one move, scored by value.

A workload is a list of `PromptGroup`s; every method receives each group as one call
(serial methods decode its prompts one after another, batched ones together). All
prompts are plain text, exactly as the ToT templates render them (no chat template):
that is what `TreeOfThoughts` sends through an LLM. Every method decodes greedily up to
the group's `max_tokens` or EOS, with no stop sequences, so that all methods do the same
work and their outputs can be compared token for token.

Workloads:

- ``tot-step`` (the paper's setting, the headline): per question, group 1 is the three
  thought prompts of the root state (the task's ``sample`` template, option 1, 2 and 3
  of 3, so that greedy outputs differ), ``thought_tokens`` new tokens each; group 2 is
  the evaluation of the states those thoughts make, ``value_tokens`` each: their three
  ``value`` prompts, or for a voting task (writing) its votes over them (each vote lists
  the states rotated by one more place, as `StateEvaluator` does). The evaluation prompts
  are built once from the TARGET's greedy thoughts (a reference run), so every method
  gets identical inputs in both phases.
- ``single``: one prompt per call (the option-1 thought prompt of each question).
- ``tot-full``: a whole BFS tree (the task's setup: breadth, depth, sample generator,
  value or vote evaluator) run by `TreeOfThoughts` over a LangChain LLM per method; it
  is not made of fixed groups, so it is described by `ToTFullWorkload` and run by the
  harness.

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
TASKS = ("gsm8k", "writing", "blocksworld")
DATA_FILE = "gsm8k_heldout.jsonl"
FALLBACK_DATA = Path("/work/shared/data/gsm8k_test.jsonl")
THOUGHT_TOKENS = 48
VALUE_TOKENS = 8
BREADTH = 3
TOT_DEPTH = 2

BLOCKSWORLD_BLOCKS = 4
WRITING_SEED = 0


@dataclass(frozen=True)
class TaskSetup:
    """How the benchmark builds one dataset's trees.

    Attributes:
        evaluator: ``"value"`` or ``"vote"``; n_evaluate: votes cast (value: samples).
        depth, breadth: the BFS tree of ``tot-full`` (breadth states kept per level too).
        max_tokens: new tokens per call of ``tot-full`` (stop sequences end most calls sooner).
    """

    evaluator: str
    n_evaluate: int
    depth: int
    breadth: int
    max_tokens: int


TASK_SETUPS: dict[str, TaskSetup] = {
    "gsm8k": TaskSetup("value", 1, TOT_DEPTH, BREADTH, THOUGHT_TOKENS),
    "writing": TaskSetup("vote", BREADTH, 1, BREADTH, 96),
    "blocksworld": TaskSetup("value", 1, TOT_DEPTH, BREADTH, THOUGHT_TOKENS),
}
"""Per dataset: GSM8K as before; writing plans once, votes 3 times and writes up to 96
tokens of passage; Blocksworld grows two moves."""

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
    """Whole ToT searches: one `TreeOfThoughts.invoke` per question and method.

    ``temperature`` above 0 samples every call (then outputs are not compared)."""

    name: str
    questions: list[str]
    breadth: int = BREADTH
    depth: int = TOT_DEPTH
    max_tokens: int = THOUGHT_TOKENS
    settings: dict = field(default_factory=dict)
    task: str = "gsm8k"
    evaluator: str = "value"
    n_evaluate: int = 1
    temperature: float = 0.0


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


def load_task_questions(task: str, count: int, path: str | Path | None = None) -> list[str]:
    """The first `count` questions of a dataset (see the module docstring for each source).

    `path` overrides the GSM8K file, for gsm8k and for the sentences of writing.
    """
    from langchain_seed.tot.tasks import generate_problems, writing_inputs

    if count < 1:
        raise ValueError(f"count must be >= 1; got {count}")
    if task == "gsm8k":
        return load_questions(count, path)
    if task == "writing":
        texts = [json.loads(line)["question"] for line in _data_lines(path) if line.strip()]
        return writing_inputs(texts, count, WRITING_SEED)
    if task == "blocksworld":
        return [problem.question() for problem in generate_problems(count, BLOCKSWORLD_BLOCKS)]
    raise ValueError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")


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


def thought_from_tokens(tokenizer, token_ids: Sequence[int], task: str = "gsm8k") -> str:
    """The thought a ToT generator would keep from a sampled reply (the task's parse; for
    GSM8K its first non-empty line)."""
    from langchain_seed.tot.tasks import get_task

    text = tokenizer.decode(list(token_ids), skip_special_tokens=True)
    return get_task(task).parse_sample(text) or text.strip() or "(no thought)"


def evaluation_prompts(task_name: str, question: str, thoughts: Sequence[str]) -> list[str]:
    """The evaluation prompts of the states ``thoughts`` make from the root: one value prompt
    per state, or `TaskSetup.n_evaluate` votes over them, rotated as `StateEvaluator` does."""
    from langchain_seed.tot.tasks import get_task

    task, setup = get_task(task_name), TASK_SETUPS.get(task_name, TASK_SETUPS["gsm8k"])
    states = [[thought] for thought in thoughts]
    if setup.evaluator == "value":
        return [task.value_prompt(question, state) for state in states]
    rotations = [j % len(states) for j in range(setup.n_evaluate)]
    return [task.vote_prompt(question, [*states[r:], *states[:r]]) for r in rotations]


def build_tot_step(
    questions: Sequence[str],
    tokenizer,
    reference: ReferenceFn,
    thought_tokens: int = THOUGHT_TOKENS,
    value_tokens: int = VALUE_TOKENS,
    breadth: int = BREADTH,
    task: str = "gsm8k",
) -> Workload:
    """Per question: its `breadth` thought prompts, then the evaluation prompts of the target's
    thoughts (`evaluation_prompts`).

    `reference` is called once per question on the thought group; its outputs (the
    target's greedy thoughts) make the evaluation prompts.
    """
    from langchain_seed.tot.tasks import get_task

    template = get_task(task)
    evaluator = TASK_SETUPS.get(task, TASK_SETUPS["gsm8k"]).evaluator
    groups: list[PromptGroup] = []
    for index, question in enumerate(questions):
        prompts = [template.sample_prompt(question, [], option, breadth) for option in range(1, breadth + 1)]
        thoughts_group = _group(tokenizer, f"q{index}/thoughts", "thoughts", prompts, thought_tokens)
        outputs = reference([list(p) for p in thoughts_group.prompt_ids], thought_tokens)
        thoughts = [thought_from_tokens(tokenizer, tokens, task) for tokens in outputs]
        evaluations = evaluation_prompts(task, question, thoughts)
        groups += [thoughts_group, _group(tokenizer, f"q{index}/values", "values", evaluations, value_tokens)]
    settings = dict(task=task, questions=len(questions), breadth=breadth, thought_tokens=thought_tokens,
                    value_tokens=value_tokens, template=f"{task} sample (option i of k) + {evaluator}",
                    value_prompts_from="target greedy thoughts (the task's parse)")
    return Workload("tot-step", groups, settings)


def build_single(questions: Sequence[str], tokenizer, max_tokens: int = THOUGHT_TOKENS,
                 task: str = "gsm8k") -> Workload:
    """One prompt per call: the option-1 thought prompt of each question."""
    from langchain_seed.tot.tasks import get_task

    template = get_task(task)
    groups = [_group(tokenizer, f"q{i}/single", "single", [template.sample_prompt(q, [], 1, BREADTH)], max_tokens)
              for i, q in enumerate(questions)]
    return Workload("single", groups, dict(task=task, questions=len(questions), max_tokens=max_tokens,
                                           template=f"{task} sample (option 1 of 3)"))


def build_tot_full(questions: Sequence[str], max_tokens: int | None = None, task: str = "gsm8k",
                   temperature: float = 0.0) -> ToTFullWorkload:
    """Whole BFS trees per question, in the task's setup (`TASK_SETUPS`; `max_tokens` overrides its)."""
    setup = TASK_SETUPS[task]
    tokens = max_tokens or setup.max_tokens
    settings = dict(task=task, questions=len(questions), breadth=setup.breadth, depth=setup.depth,
                    generator="sample", evaluator=setup.evaluator, n_evaluate=setup.n_evaluate, search="bfs",
                    max_tokens=tokens, stop_sequences="the task's", temperature=temperature)
    return ToTFullWorkload("tot-full", list(questions), setup.breadth, setup.depth, tokens, settings, task,
                           setup.evaluator, setup.n_evaluate, temperature)


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
