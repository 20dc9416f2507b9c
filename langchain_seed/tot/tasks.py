"""Tasks own their prompts and their parsing (princeton ToT style).

A :class:`Task` turns a question and a state (the steps so far) into the prompt for
each role, parses what the LLM writes back (thoughts, values, votes, the final answer)
robustly against small-model junk, and checks an answer when it can. Built-in tasks:
``gsm8k``, ``game24``, ``writing`` and ``generic``; pick one with :func:`get_task`.
A custom task subclasses :class:`Task` and overrides what differs.
"""

from __future__ import annotations

import ast
import copy
import re
from collections.abc import Mapping, Sequence
from fractions import Fraction

from langchain_core.prompts import PromptTemplate

from langchain_seed.tot.prompts import check_prompt_overrides, default_prompts, fill

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_LIST_MARKER = re.compile(
    r"^\s*(?:[-*\u2022>]+\s*|\(?\d{1,2}[.):](?=\s)\s*|\(\d{1,2}\)\s*|[a-hA-H][.)](?=\s)\s*"
    r"|(?:next\s+)?(?:step|option|choice|thought|idea|plan)\s*\d*"
    r"(?:\s*\(option\s*\d+\s*of\s*\d+\))?\s*(?:[:.)]|-(?=\s))\s*)",
    re.IGNORECASE,
)
_CHOICE = re.compile(r"choice\s*#?\s*(\d+)", re.IGNORECASE)
_INTEGER = re.compile(r"\d+")


# --------------------------------------------------------------------------- parsing


def clean_line(line: str) -> str:
    """Strip bullets, numbering and ``Step i:``-style prefixes from one line."""
    previous = None
    line = line.strip()
    while previous != line:
        previous = line
        line = _LIST_MARKER.sub("", line, count=1).strip()
    return line


def thought_key(thought: str) -> str:
    """Normalised text used to spot duplicate thoughts."""
    return " ".join(thought.split()).casefold()


def dedupe(thoughts: Sequence[str]) -> list[str]:
    """Drop empty and repeated thoughts, keeping the first of each."""
    seen: set[str] = set()
    unique = []
    for thought in thoughts:
        key = thought_key(thought)
        if key and key not in seen:
            seen.add(key)
            unique.append(thought)
    return unique


def to_number(text: str) -> Fraction | None:
    """Parse ``'1,234.5'``-style text into an exact number, or None."""
    try:
        return Fraction(text.replace(",", "").rstrip("."))
    except (ValueError, ZeroDivisionError):
        return None


def format_number(value: Fraction) -> str:
    """Write a number without a needless ``.0``: ``18``, ``2.5``, ``-3``."""
    if value.denominator == 1:
        return str(value.numerator)
    return f"{float(value):.10g}"


def first_number(text: str) -> Fraction | None:
    """The first number in ``text``, or None."""
    for match in _NUMBER.finditer(text):
        value = to_number(match.group())
        if value is not None:
            return value
    return None


def last_number(text: str) -> Fraction | None:
    """The last number in ``text``, or None."""
    for match in reversed(list(_NUMBER.finditer(text))):
        value = to_number(match.group())
        if value is not None:
            return value
    return None


def extract_answer_number(text: str) -> Fraction | None:
    """GSM8K answer extraction: the number after the last "answer is", else the last number."""
    marker = list(re.finditer(r"answer\s*(?:\(a number\)\s*)?(?:is|:)", text, re.I))
    if marker:
        value = first_number(text[marker[-1].end():])
        if value is not None:
            return value
    return last_number(text)


def gsm8k_reference_number(reference: str | int | float) -> Fraction | None:
    """The ``#### N`` number of a GSM8K reference answer (or the number given)."""
    if isinstance(reference, (int, float)) and not isinstance(reference, bool):
        return Fraction(str(reference))
    text = str(reference)
    if "####" in text:
        return first_number(text.split("####")[-1])
    return extract_answer_number(text)


# --------------------------------------------------------------- game24 safe checking


class UnsafeExpressionError(ValueError):
    """Raised when an arithmetic expression holds anything but numbers and + - * /."""


_OPERATORS = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
}
_MAX_EXPRESSION_CHARS = 200


def evaluate_arithmetic(expression: str) -> tuple[Fraction, list[Fraction]]:
    """Evaluate ``expression`` exactly, allowing only numbers and + - * /.

    Parses with :mod:`ast` and walks the tree itself (never ``eval``). Returns the value
    and the numbers used, in order. Raises :class:`UnsafeExpressionError` on anything
    else (names, calls, attributes, powers, unary signs...) and ``ZeroDivisionError``.
    """
    text = expression.replace("\u00d7", "*").replace("\u00f7", "/")
    text = re.sub(r"(?<=[\d)\s])x(?=[\d(\s])", "*", text)
    if len(text) > _MAX_EXPRESSION_CHARS:
        raise UnsafeExpressionError("expression too long")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as error:
        raise UnsafeExpressionError(f"not an arithmetic expression: {expression!r}") from error
    numbers: list[Fraction] = []
    return _evaluate_node(tree.body, numbers), numbers


def _evaluate_node(node: ast.AST, numbers: list[Fraction]) -> Fraction:
    """Recursive step of :func:`evaluate_arithmetic`."""
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        value = Fraction(str(node.value))
        numbers.append(value)
        return value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        left = _evaluate_node(node.left, numbers)
        right = _evaluate_node(node.right, numbers)
        return _OPERATORS[type(node.op)](left, right)
    raise UnsafeExpressionError(f"not allowed in a Game of 24 answer: {type(node).__name__}")


def check_game24(answer: str, question: str) -> bool:
    """True when ``answer`` uses the question's 4 numbers once each and equals 24.

    ``answer`` may be ``"(4 + 8) * (6 - 4) = 24"`` (a right-hand side must say 24) or
    just the expression; an ``Answer:`` prefix is ignored. Unsafe or malformed
    expressions give False.
    """
    expression = answer.strip().splitlines()[0] if answer.strip() else ""
    expression = re.sub(r"^\s*answer\s*:\s*", "", expression, flags=re.I)
    expression, *claims = expression.split("=")
    if any(first_number(claim) != 24 for claim in claims):
        return False
    try:
        value, used = evaluate_arithmetic(expression)
    except (UnsafeExpressionError, ZeroDivisionError):
        return False
    wanted = sorted(to_number(n) for n in _NUMBER.findall(question))
    return value == 24 and sorted(used) == wanted


# ------------------------------------------------------------------------------ tasks


class Task:
    """A reasoning task: prompts per role, parsing of replies, answer checking.

    This base class is the ``generic`` task (any question, 0-10 values). Subclasses
    set :attr:`name`, :attr:`default_depth`, :attr:`value_threshold` and override the
    parsing or checking that differs. ``prompts`` overrides any role's template.
    """

    name: str = "generic"
    """Registry name; also selects the built-in prompts."""
    default_depth: int = 2
    """Number of thought steps when the caller does not set ``depth``."""
    value_threshold: float = 5.0
    """DFS prunes states scored below this (0-10 scale) unless the caller sets one."""
    extra_variables: frozenset[str] = frozenset()
    """Prompt variables this task provides beyond the role's standard ones."""
    stops: Mapping[str, tuple[str, ...] | None] = {
        "propose": ("\n\n", "\nQuestion:"),
        "sample": ("\n",),
        "value": ("\n",),
        "vote": ("\n",),
        "answer": None,
    }
    """Stop sequences per role (sent when the caller keeps ``use_stop=True``)."""

    def __init__(self, prompts: Mapping[str, PromptTemplate | str] | None = None):
        self.prompts: dict[str, PromptTemplate] = self.default_prompts()
        self.prompts.update(check_prompt_overrides(prompts or {}, self.extra_variables))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"

    def default_prompts(self) -> dict[str, PromptTemplate]:
        """The built-in templates of this task."""
        return default_prompts(self.name)

    def with_prompts(self, prompts: Mapping[str, PromptTemplate | str]) -> Task:
        """A copy of this task with some roles' templates replaced."""
        clone = copy.copy(self)
        clone.prompts = {**self.prompts, **check_prompt_overrides(prompts, self.extra_variables)}
        return clone

    # ---------------------------------------------------------------- prompt building

    def format_steps(self, steps: Sequence[str]) -> str:
        """The state as text: each step on its own line as ``Step i: ...``."""
        return "".join(f"Step {i}: {step}\n" for i, step in enumerate(steps, 1))

    def state_key(self, question: str, steps: Sequence[str]) -> str:
        """Cache key of a state: the question and the state text."""
        return f"{question}\n{self.format_steps(steps)}"

    def variables(self, question: str, steps: Sequence[str]) -> dict[str, object]:
        """Variables shared by every role for one state."""
        return {"question": question, "steps": self.format_steps(steps)}

    def propose_prompt(self, question: str, steps: Sequence[str], k: int) -> str:
        """Prompt asking for ``k`` next steps, one per line."""
        return fill(self.prompts["propose"], {**self.variables(question, steps), "k": k})

    def sample_prompt(self, question: str, steps: Sequence[str], index: int, k: int) -> str:
        """Prompt asking for one next step, option ``index`` of ``k``."""
        variables = {**self.variables(question, steps), "index": index, "k": k}
        return fill(self.prompts["sample"], variables)

    def value_prompt(self, question: str, steps: Sequence[str]) -> str:
        """Prompt asking for a score of one state."""
        return fill(self.prompts["value"], self.variables(question, steps))

    def vote_prompt(self, question: str, candidates: Sequence[Sequence[str]]) -> str:
        """Prompt listing ``candidates`` numbered from 1, asking for the best."""
        choices = "".join(
            f"Choice {i}:\n{self.format_steps(steps)}" for i, steps in enumerate(candidates, 1)
        )
        variables = {**self.variables(question, ()), "choices": choices, "n": len(candidates)}
        return fill(self.prompts["vote"], variables)

    def answer_prompt(self, question: str, steps: Sequence[str]) -> str:
        """Prompt asking for the final answer from the best state."""
        return fill(self.prompts["answer"], self.variables(question, steps))

    def stop(self, role: str) -> tuple[str, ...] | None:
        """Stop sequences for ``role``."""
        return self.stops.get(role)

    # ---------------------------------------------------------------------- parsing

    def parse_thoughts(self, text: str, k: int) -> list[str]:
        """Propose reply -> at most ``k`` distinct thoughts, one per non-empty line."""
        lines = [clean_line(line) for line in text.splitlines()]
        return dedupe([line for line in lines if line])[:k]

    def parse_sample(self, text: str) -> str | None:
        """Sample reply -> one thought (its first non-empty line), or None."""
        for line in text.splitlines():
            thought = clean_line(line)
            if thought:
                return thought
        return None

    def parse_value(self, text: str) -> float | None:
        """Value reply -> score in [0, 10]: the first number, clipped; None if none."""
        value = first_number(text)
        if value is None:
            return None
        return float(min(max(value, 0), 10))

    def parse_vote(self, text: str, n_choices: int) -> int | None:
        """Vote reply -> 0-based index of the chosen candidate, or None."""
        match = _CHOICE.search(text) or _INTEGER.search(text)
        if match is None:
            return None
        number = int(match.group(1) if match.re is _CHOICE else match.group())
        return number - 1 if 1 <= number <= n_choices else None

    def build_answer(self, completion: str, question: str, steps: Sequence[str]) -> str:
        """Answer reply -> the answer string returned to the caller."""
        return completion.strip()

    # --------------------------------------------------------------------- checking

    def check(self, question: str, answer: str, ground_truth: object = None) -> bool | None:
        """Whether ``answer`` is right; None when it cannot be told.

        Generic rule: a numeric ground truth is compared as a number (the extracted
        answer number), any other text as normalised text (equal, or contained as
        whole words).
        """
        if ground_truth is None:
            return None
        truth = str(ground_truth).strip()
        truth_number = to_number(truth)
        if truth_number is not None:
            return extract_answer_number(answer) == truth_number
        wanted, got = _normalise(truth), _normalise(answer)
        return bool(wanted) and (wanted == got or f" {wanted} " in f" {got} ")


def _normalise(text: str) -> str:
    """Lower-case words without punctuation, single-spaced."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.casefold()).split())


class GenericTask(Task):
    """Any question: thoughts are reasoning steps, values 0-10, free-text answer."""

    name = "generic"


class GSM8KTask(Task):
    """GSM8K, SeeD setting: a thought is a sub-question and its answer; values 0-10.

    The answer is the number of the final-answer reply; :meth:`check` compares it with
    the ``#### N`` number of the GSM8K reference answer.
    """

    name = "gsm8k"
    stops = {**Task.stops, "answer": ("\n",)}

    def build_answer(self, completion: str, question: str, steps: Sequence[str]) -> str:
        """The number in the first line of the reply (``'18'``), else that line."""
        lines = [line.strip() for line in completion.strip().splitlines() if line.strip()]
        first_line = lines[0] if lines else ""
        value = first_number(first_line)
        return format_number(value) if value is not None else first_line

    def check(self, question: str, answer: str, ground_truth: object = None) -> bool | None:
        """Compare the answer's number with the reference's ``#### N`` number."""
        if ground_truth is None:
            return None
        predicted = extract_answer_number(answer)
        return predicted is not None and predicted == gsm8k_reference_number(ground_truth)


class Game24Task(Task):
    """Game of 24, princeton style: the question is 4 numbers, e.g. ``"4 9 10 13"``.

    A thought is ``a op b = c (left: ...)``; values are sure / likely / impossible,
    mapped to 10 / 1 / 0 (princeton weighs them 20 / 1 / 0.001); the answer is an
    expression checked safely by :func:`check_game24`.
    """

    name = "game24"
    default_depth = 3
    value_threshold = 1.0
    extra_variables = frozenset({"left"})
    stops = {**Task.stops, "propose": ("\n\n", "\nNumbers:"), "answer": ("\n",)}
    judgement_scores: Mapping[str, float] = {"sure": 10.0, "likely": 1.0, "impossible": 0.0}
    """Score of each judgement word."""

    def left_numbers(self, question: str, steps: Sequence[str]) -> str:
        """The numbers still to combine: the last step's ``(left: ...)``, else the question's."""
        for step in reversed(steps):
            match = re.search(r"left\s*:\s*([^)]*)", step, re.I)
            if match:
                return " ".join(_NUMBER.findall(match.group(1)))
        return " ".join(_NUMBER.findall(question))

    def variables(self, question: str, steps: Sequence[str]) -> dict[str, object]:
        """Adds ``{left}`` to the shared variables."""
        return {**super().variables(question, steps), "left": self.left_numbers(question, steps)}

    def parse_thoughts(self, text: str, k: int) -> list[str]:
        """Keep only lines that are equations (``a op b = c ...``)."""
        lines = [clean_line(line) for line in text.splitlines()]
        return dedupe([line for line in lines if "=" in line])[:k]

    def parse_value(self, text: str) -> float | None:
        """The last judgement word in the reply, mapped to a score; None if none."""
        words = re.findall(r"\b(sure|likely|impossible)\b", text.casefold())
        return self.judgement_scores[words[-1]] if words else None

    def build_answer(self, completion: str, question: str, steps: Sequence[str]) -> str:
        """The first non-empty line of the reply, without an ``Answer:`` prefix."""
        for line in completion.splitlines():
            line = re.sub(r"^\s*answer\s*:\s*", "", line.strip(), flags=re.I)
            if line:
                return line
        return ""

    def check(self, question: str, answer: str, ground_truth: object = None) -> bool | None:
        """True when the expression uses the 4 numbers once each and equals 24."""
        return check_game24(answer, question)


class WritingTask(Task):
    """Creative writing, princeton style: the question is 4 sentences; the passage's 4
    paragraphs must end with them in order. Thoughts are one-line plans.

    :meth:`check` verifies that constraint (coherence itself cannot be checked here).
    """

    name = "writing"
    default_depth = 1

    def check(self, question: str, answer: str, ground_truth: object = None) -> bool | None:
        """Each paragraph ends with the matching question sentence."""
        sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", question.strip()) if s.strip()]
        paragraphs = [p.strip() for p in re.split(r"\n\s*\n", answer.strip()) if p.strip()]
        if len(paragraphs) != len(sentences):
            return False
        return all(_normalise(p).endswith(_normalise(s)) for p, s in zip(paragraphs, sentences))


TASKS: Mapping[str, type[Task]] = {
    "gsm8k": GSM8KTask,
    "game24": Game24Task,
    "writing": WritingTask,
    "generic": GenericTask,
}


def get_task(task: str | Task, prompts: Mapping[str, PromptTemplate | str] | None = None) -> Task:
    """Resolve a task name or instance; ``prompts`` overrides any role's template."""
    if isinstance(task, Task):
        return task.with_prompts(prompts) if prompts else task
    if isinstance(task, str) and task.strip().lower() in TASKS:
        return TASKS[task.strip().lower()](prompts)
    raise ValueError(
        f"Unknown task {task!r}; valid tasks: {', '.join(sorted(TASKS))} (or a Task instance)"
    )
