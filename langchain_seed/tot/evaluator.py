"""StateEvaluator: scores for many states, in ONE batched LLM call.

- ``value``: each state is scored alone, ``n_evaluate`` samples averaged; the task
  parses the reply (0-10 for GSM8K, SeeD style; sure / likely / impossible for game24,
  princeton style). A reply without a score counts 0 and is counted as unparsed.
  Scores are cached on the state text: a state seen again costs no LLM call.
- ``vote``: all states are listed, numbered, in one prompt; ``n_evaluate`` votes are
  cast and a state's score is its vote share x 10 (the majority wins). Vote ``j``
  lists the states rotated by ``j`` positions, so greedy votes are different prompts
  and position bias averages out. A single state gets 10 without a call. Votes are
  relative to the set of states, so they are not cached.

Every score is on a 0-10 scale, so one ``value_threshold`` fits both.

With ``constrained_replies=True`` and an LLM that takes a ``constraint`` (``SeedLLM`` and
``ChatSeed`` do: their replies are decoded under a regex), value replies are one of the
task's judgement words or a whole number 0-10, and vote replies a candidate's number, so a
reply always parses. Only patterns the task's own parser reads back are used; otherwise,
and for any other LLM, replies stay free text.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain_seed.tot.client import LLMClient
from langchain_seed.tot.driver import LLMRequest, Plan, arun_plan, regroup, run_plan
from langchain_seed.tot.generator import States, as_client
from langchain_seed.tot.tasks import Task, get_task

EVALUATOR_METHODS = ("value", "vote")


@dataclass(frozen=True)
class Evaluation:
    """The score of one state."""

    score: float
    """0-10: mean of the value samples, or vote share x 10."""
    samples: tuple[float, ...] = ()
    """The value samples (unparsed ones as 0), or ``(votes,)``."""
    cached: bool = False
    """Answered from the cache, without an LLM call."""


@dataclass
class StateEvaluator:
    """Scores states, one batched LLM call per level.

    Args:
        llm: a LangChain LLM, chat model, Runnable or ``LLMClient``.
        task: a task name or :class:`Task`.
        method: ``"value"`` or ``"vote"`` (used by :meth:`evaluate`).
        n_evaluate: value samples per state, or number of votes.
        use_n: ask for the samples through the LLM's ``n=`` keyword instead of
            repeating the prompt (votes then all use the same order).
        use_stop: send the task's stop sequences.
        constrained_replies: ask the LLM for replies its task parser always reads (a value
            in the task's range, a vote index) where the LLM supports constraints.
    """

    llm: Any
    task: str | Task = "generic"
    method: str = "value"
    n_evaluate: int = 1
    use_n: bool = False
    use_stop: bool = True
    constrained_replies: bool = False
    cache: dict[str, Evaluation] = field(default_factory=dict)
    """Value scores keyed on the state text (question + steps)."""
    cache_hits: int = 0
    """States answered from the cache."""
    unparsed_values: int = 0
    """Value replies without a score."""
    unparsed_votes: int = 0
    """Vote replies without a valid choice."""

    def __post_init__(self) -> None:
        if self.method not in EVALUATOR_METHODS:
            raise ValueError(f"method must be one of {EVALUATOR_METHODS}, got {self.method!r}")
        if not isinstance(self.n_evaluate, int) or self.n_evaluate < 1:
            raise ValueError(f"n_evaluate must be an integer >= 1, got {self.n_evaluate!r}")
        self.client = as_client(self.llm)
        self.task = get_task(self.task)

    @property
    def _task(self) -> Task:
        """``task`` as :meth:`__post_init__` resolved it (a name becomes its :class:`Task`)."""
        assert isinstance(self.task, Task)
        return self.task

    def plan(self, question: str, states: States) -> Plan[list[Evaluation]]:
        """Plan of the configured method: one :class:`Evaluation` per state."""
        if self.method == "vote":
            return self.plan_vote(question, states)
        return self.plan_value(question, states)

    def plan_value(self, question: str, states: States) -> Plan[list[Evaluation]]:
        """Value every uncached state, ``n_evaluate`` samples each, in one call."""
        keys = [self._task.state_key(question, steps) for steps in states]
        missing = {key: steps for key, steps in zip(keys, states) if key not in self.cache}
        self.cache_hits += len(keys) - len(missing)
        if missing:
            completions = yield from self._ask_values(question, list(missing.values()))
            for key, texts in zip(missing, completions):
                self.cache[key] = self._average(texts)
        return [
            self.cache[key] if key in missing else _as_cached(self.cache[key]) for key in keys
        ]

    def _ask_values(self, question: str, states: States) -> Plan[list[list[str]]]:
        """Per state, its ``n_evaluate`` value replies (prompt repeated, or ``n=``)."""
        prompts = tuple(self._task.value_prompt(question, steps) for steps in states)
        pattern = self._reply_pattern(value_pattern(self._task))
        if self.use_n:
            return (yield self._request(prompts, "value", self.n_evaluate, pattern))
        repeated = tuple(p for p in prompts for _ in range(self.n_evaluate))
        flat = yield self._request(repeated, "value", 1, pattern)
        return regroup(flat, self.n_evaluate)

    def _average(self, texts: Sequence[str]) -> Evaluation:
        """Parse value replies of one state and average them (unparsed -> 0)."""
        parsed = [self._task.parse_value(text) for text in texts]
        self.unparsed_values += sum(value is None for value in parsed)
        samples = tuple(0.0 if value is None else value for value in parsed)
        return Evaluation(sum(samples) / len(samples) if samples else 0.0, samples)

    def plan_vote(self, question: str, states: States) -> Plan[list[Evaluation]]:
        """Cast ``n_evaluate`` votes over all states in one call; score = share x 10."""
        count = len(states)
        if count <= 1:
            return [Evaluation(10.0, (float(self.n_evaluate),))] * count
        rotations = [0] if self.use_n else [j % count for j in range(self.n_evaluate)]
        prompts = tuple(
            self._task.vote_prompt(question, [*states[r:], *states[:r]]) for r in rotations
        )
        n = self.n_evaluate if self.use_n else 1
        completions = yield self._request(prompts, "vote", n, self._reply_pattern(vote_pattern(self._task, count)))
        votes = [0] * count
        for rotation, texts in zip(rotations, completions):
            for text in texts:
                choice = self._task.parse_vote(text, count)
                if choice is None:
                    self.unparsed_votes += 1
                else:
                    votes[(choice + rotation) % count] += 1
        cast = max(sum(len(texts) for texts in completions), 1)
        return [Evaluation(10.0 * v / cast, (float(v),)) for v in votes]

    def _reply_pattern(self, pattern: str | None) -> str | None:
        """`pattern` when replies are to be constrained and the LLM can be, else None."""
        if not self.constrained_replies or pattern is None or not supports_constraints(self.client.llm):
            return None
        return pattern

    def _request(self, prompts: tuple[str, ...], role: str, n: int, pattern: str | None = None) -> LLMRequest:
        """A request for this evaluator's client, with the task's stop sequences; with a
        `pattern`, through a client whose calls ask for replies that match it."""
        stop = self._task.stop(role) if self.use_stop else None
        client = self.client
        if pattern is not None:
            client = LLMClient(client.llm, {**client.llm_kwargs, "constraint": {"regex": pattern}})
        return LLMRequest(client, prompts, role, stop, n)

    # -------------------------------------------------------------- direct use

    def value(self, question: str, states: States) -> list[Evaluation]:
        """Value scores of ``states`` (one LLM call, none for cached states)."""
        return run_plan(self.plan_value(question, states))

    def vote(self, question: str, states: States) -> list[Evaluation]:
        """Vote scores of ``states`` (one LLM call)."""
        return run_plan(self.plan_vote(question, states))

    def evaluate(self, question: str, states: States) -> list[Evaluation]:
        """Scores by the configured method."""
        return run_plan(self.plan(question, states))

    async def avalue(self, question: str, states: States) -> list[Evaluation]:
        """Async :meth:`value`."""
        return await arun_plan(self.plan_value(question, states))

    async def avote(self, question: str, states: States) -> list[Evaluation]:
        """Async :meth:`vote`."""
        return await arun_plan(self.plan_vote(question, states))

    async def aevaluate(self, question: str, states: States) -> list[Evaluation]:
        """Async :meth:`evaluate`."""
        return await arun_plan(self.plan(question, states))


def supports_constraints(llm: Any) -> bool:
    """Whether `llm` (or the model a binding wraps) takes a ``constraint`` keyword: a
    ``SeedLLM`` or ``ChatSeed``, recognised by its field, without importing them."""
    model = getattr(llm, "bound", llm)
    return "constraint" in (getattr(type(model), "model_fields", None) or {})


def value_pattern(task: Task) -> str | None:
    """A regex for value replies that the task's ``parse_value`` reads back whole: its
    judgement words, else a whole number 0-10; None when the parser reads neither."""
    words = sorted(getattr(task, "judgement_scores", None) or {})
    if words and all(task.parse_value(word) is not None for word in words):
        return "(" + "|".join(re.escape(word) for word in words) + ")"
    if all(task.parse_value(str(value)) == float(value) for value in range(11)):
        return "(10|[0-9])"
    return None


def vote_pattern(task: Task, count: int) -> str | None:
    """A regex for vote replies naming one of `count` candidates (1-based), when the task's
    ``parse_vote`` reads each back as its index; else None."""
    if not all(task.parse_vote(str(number), count) == number - 1 for number in range(1, count + 1)):
        return None
    return "(" + "|".join(str(number) for number in range(count, 0, -1)) + ")"


def _as_cached(evaluation: Evaluation) -> Evaluation:
    """The same evaluation, marked as a cache hit."""
    return Evaluation(evaluation.score, evaluation.samples, cached=True)
