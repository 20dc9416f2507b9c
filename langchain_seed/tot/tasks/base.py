"""Tasks own their prompts and their parsing (princeton ToT style).

A :class:`Task` turns a question and a state (the steps so far) into the prompt for
each role, parses what the LLM writes back (thoughts, values, votes, the final answer)
robustly against small-model junk, and checks an answer when it can. The built-in
tasks subclass it in their own modules; a custom task overrides what differs.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence

from langchain_core.prompts import PromptTemplate

from langchain_seed.tot.prompts import check_prompt_overrides, default_prompts, fill
from langchain_seed.tot.tasks.parsing import (
    clean_line,
    dedupe,
    extract_answer_number,
    first_number,
    normalise,
    to_number,
)

_CHOICE = re.compile(r"choice\s*#?\s*(\d+)", re.IGNORECASE)
_INTEGER = re.compile(r"\d+")


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
        return min(max(float(value), 0.0), 10.0)

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
        wanted, got = normalise(truth), normalise(answer)
        return bool(wanted) and (wanted == got or f" {wanted} " in f" {got} ")
