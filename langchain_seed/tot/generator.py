"""ThoughtGenerator: the next thoughts of many states, in ONE batched LLM call.

Two methods (princeton ToT):

- ``propose``: one prompt per state asks for ``k`` different next steps; the reply's
  lines become the thoughts (numbering and bullets stripped, at most ``k`` kept).
- ``sample``: ``k`` independent samples per state. By default ``k`` *indexed* prompts
  ("option 1 of 3", "option 2 of 3", ...) go in one batch: at temperature 0, k copies
  of one prompt would give k copies of one text, while k different prompts give k
  different greedy thoughts, and this works with every LLM. With ``use_n=True`` each
  state sends one prompt (option 1) with ``n=k`` instead: for LLMs whose ``_generate``
  accepts ``n`` (our ``SeedLLM`` does) and a temperature above 0.

Identical thoughts of one state are dropped either way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from langchain_seed.tot.client import LLMClient
from langchain_seed.tot.driver import LLMRequest, Plan, arun_plan, regroup, run_plan
from langchain_seed.tot.tasks import Task, dedupe, get_task

GENERATOR_METHODS = ("propose", "sample")
States = Sequence[Sequence[str]]


def as_client(llm: Any, llm_kwargs: Mapping[str, Any] | None = None) -> LLMClient:
    """Wrap an LLM in an :class:`LLMClient` (an existing client is kept)."""
    return llm if isinstance(llm, LLMClient) else LLMClient(llm, llm_kwargs)


class ThoughtGenerator:
    """Grows thoughts from states, one batched LLM call per level.

    Args:
        llm: a LangChain LLM, chat model, Runnable or :class:`LLMClient`.
        task: a task name or :class:`Task`.
        method: ``"propose"`` or ``"sample"`` (used by :meth:`generate`).
        k: thoughts per state.
        use_n: ``sample`` through the LLM's ``n=`` keyword (see the module docstring).
        use_stop: send the task's stop sequences.
    """

    def __init__(
        self,
        llm: Any,
        task: str | Task = "generic",
        method: str = "propose",
        k: int = 3,
        use_n: bool = False,
        use_stop: bool = True,
    ):
        if method not in GENERATOR_METHODS:
            raise ValueError(f"method must be one of {GENERATOR_METHODS}, got {method!r}")
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be an integer >= 1, got {k!r}")
        self.client = as_client(llm)
        self.task = get_task(task)
        self.method = method
        self.k = k
        self.use_n = use_n
        self.use_stop = use_stop

    def plan(self, question: str, states: States) -> Plan[list[list[str]]]:
        """Plan of the configured method: per state, its new thoughts."""
        if self.method == "sample":
            return self.plan_sample(question, states)
        return self.plan_propose(question, states)

    def plan_propose(self, question: str, states: States) -> Plan[list[list[str]]]:
        """One propose prompt per state, all in one call."""
        prompts = tuple(self.task.propose_prompt(question, steps, self.k) for steps in states)
        completions = yield self._request(prompts, "propose", 1)
        return [self.task.parse_thoughts(texts[0] if texts else "", self.k) for texts in completions]

    def plan_sample(self, question: str, states: States) -> Plan[list[list[str]]]:
        """``k`` samples per state, all in one call (indexed prompts, or ``n=k``)."""
        if self.use_n:
            prompts = tuple(self.task.sample_prompt(question, s, 1, self.k) for s in states)
            completions = yield self._request(prompts, "sample", self.k)
        else:
            prompts = tuple(
                self.task.sample_prompt(question, steps, index, self.k)
                for steps in states
                for index in range(1, self.k + 1)
            )
            flat = yield self._request(prompts, "sample", 1)
            completions = regroup(flat, self.k)
        return [self._parse_samples(texts) for texts in completions]

    def _parse_samples(self, texts: Sequence[str]) -> list[str]:
        """Sample replies of one state -> distinct thoughts."""
        thoughts = [self.task.parse_sample(text) for text in texts]
        return dedupe([thought for thought in thoughts if thought])

    def _request(self, prompts: tuple[str, ...], role: str, n: int) -> LLMRequest:
        """A request for this generator's client, with the task's stop sequences."""
        stop = self.task.stop(role) if self.use_stop else None
        return LLMRequest(self.client, prompts, role, stop, n)

    # -------------------------------------------------------------- direct use

    def propose(self, question: str, states: States) -> list[list[str]]:
        """Per state, up to ``k`` proposed thoughts (one LLM call)."""
        return run_plan(self.plan_propose(question, states))

    def sample(self, question: str, states: States) -> list[list[str]]:
        """Per state, up to ``k`` sampled thoughts (one LLM call)."""
        return run_plan(self.plan_sample(question, states))

    def generate(self, question: str, states: States) -> list[list[str]]:
        """Per state, its thoughts by the configured method (one LLM call)."""
        return run_plan(self.plan(question, states))

    async def apropose(self, question: str, states: States) -> list[list[str]]:
        """Async :meth:`propose`."""
        return await arun_plan(self.plan_propose(question, states))

    async def asample(self, question: str, states: States) -> list[list[str]]:
        """Async :meth:`sample`."""
        return await arun_plan(self.plan_sample(question, states))

    async def agenerate(self, question: str, states: States) -> list[list[str]]:
        """Async :meth:`generate`."""
        return await arun_plan(self.plan(question, states))

