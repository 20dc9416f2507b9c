"""TreeOfThoughts: Tree-of-Thoughts reasoning as a LangChain Runnable, a drop-in for an LLM.

``prompt | llm | StrOutputParser()`` becomes ``prompt | TreeOfThoughts(llm=llm) |
StrOutputParser()``: the input is what an LLM takes (a string, a ``PromptValue``, a
list of messages) or a dict with a ``question``, and the output is the answer string.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Union

from langchain_core.callbacks import AsyncCallbackManagerForChainRun, CallbackManagerForChainRun
from langchain_core.prompt_values import PromptValue
from langchain_core.runnables import RunnableConfig, RunnableSerializable
from langchain_core.tools import BaseTool, StructuredTool
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    field_validator,
    model_validator,
)

from langchain_seed.tot.client import LLMClient, llm_kind
from langchain_seed.tot.driver import LLMRequest, Plan, arun_plans, run_plans
from langchain_seed.tot.evaluator import EVALUATOR_METHODS, StateEvaluator
from langchain_seed.tot.generator import GENERATOR_METHODS, ThoughtGenerator
from langchain_seed.tot.inputs import parse_input
from langchain_seed.tot.result import ToTResult
from langchain_seed.tot.search import SearchResult, bfs_plan, dfs_plan
from langchain_seed.tot.stats import ToTStats
from langchain_seed.tot.tasks import Task, get_task

SEARCH_METHODS = ("bfs", "dfs")
DEFAULT_TOOL_DESCRIPTION = (
    "Answers a question by Tree-of-Thoughts reasoning: explores several lines of "
    "reasoning, scores them and answers from the best one. Input: the question."
)


class ToTQuestion(BaseModel):
    """Arguments of the Tree-of-Thoughts tool."""

    question: str = Field(description="The question to reason about and answer.")


def answer_plan(
    client: LLMClient, task: Task, question: str, steps: Sequence[str], use_stop: bool = True
) -> Plan[str]:
    """Ask for the final answer from the chosen state (one call)."""
    prompt = task.answer_prompt(question, steps)
    stop = task.stop("answer") if use_stop else None
    completions = yield LLMRequest(client, (prompt,), "answer", stop)
    text = completions[0][0] if completions and completions[0] else ""
    return task.build_answer(text, question, steps)


class TreeOfThoughts(RunnableSerializable[Any, Any]):
    """Tree-of-Thoughts reasoning over any LangChain LLM, usable wherever an LLM is.

    Every level's thoughts go to the LLM in ONE batched call, and every level's
    evaluations in ONE more, so a scheduling LLM (``SeedLLM``) serves them together.
    ``batch`` / ``abatch`` go further: the questions advance in lockstep and their
    requests share those calls.

    Setup:
        ``pip install langchain-seed``; any LangChain ``BaseLLM`` or
        ``BaseChatModel`` works (chat models get each prompt as one human message).

    Instantiate:
        .. code-block:: python

            from langchain_seed import SeedLLM, TreeOfThoughts

            llm = SeedLLM.from_default()
            tot = TreeOfThoughts(llm=llm, task="gsm8k", breadth=3, depth=2,
                                 generator="propose", evaluator="value", search="bfs")

    Invoke:
        .. code-block:: python

            tot.invoke("Janet has 3 apples and buys 2 more. How many apples?")  # "5"
            result = tot.invoke({"question": q, "answer": "... #### 5"}, return_tree=True)
            result.is_correct, print(result.tree.render()), result.stats.llm_batches

    Drop-in:
        .. code-block:: python

            chain = prompt | TreeOfThoughts(llm=llm) | StrOutputParser()

    Stream:
        ``stream`` yields the answer as one chunk (the tree must be complete first).

    Async:
        .. code-block:: python

            await tot.ainvoke(question)            # the LLM's agenerate / abatch
            await tot.abatch([q1, q2])

    Tool:
        ``tot.as_tool(name="math_solver", description="...")`` takes ``question: str``.
    """

    llm: Any
    """The LLM: a ``BaseLLM``, a ``BaseChatModel`` or any Runnable taking a string."""
    task: Any = "gsm8k"
    """``"gsm8k"``, ``"game24"``, ``"writing"``, ``"blocksworld"``, ``"generic"`` or a ``Task`` instance."""
    breadth: int = 3
    """Thoughts grown from each state (k)."""
    depth: int | None = None
    """Thought steps before the answer; None means the task's (gsm8k 2, game24 3, writing 1,
    blocksworld 4)."""
    n_select: int | None = None
    """BFS: states kept per level (b); None means ``breadth``."""
    generator: str = "propose"
    """``"propose"`` (one prompt lists k steps) or ``"sample"`` (k indexed prompts)."""
    evaluator: str = "value"
    """``"value"`` (score each state) or ``"vote"`` (compare them in one prompt)."""
    search: str = "bfs"
    """``"bfs"`` or ``"dfs"``."""
    n_evaluate: int = 1
    """Value samples averaged per state, or votes cast."""
    value_threshold: float | None = None
    """DFS prunes states scored below this (0-10); None means the task's (gsm8k 5)."""
    max_states: int = 20
    """DFS: most states visited before giving up."""
    prompts: dict[str, Any] | None = None
    """Templates overriding the task's, by role: propose, sample, value, vote, answer."""
    use_n: bool = False
    """Sample (and value) through the LLM's ``n=`` keyword instead of k prompts."""
    use_stop: bool = True
    """Send the task's stop sequences (e.g. one line for a sampled step)."""
    llm_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Extra keyword arguments for every LLM call (e.g. ``max_tokens``)."""

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")
    _task: Task = PrivateAttr()

    @field_validator("llm", mode="before")
    @classmethod
    def _check_llm(cls, value: Any) -> Any:
        """A LangChain LLM, chat model or Runnable."""
        llm_kind(value)
        return value

    @field_validator("task", mode="before")
    @classmethod
    def _check_task(cls, value: Any) -> Any:
        """A known task name or a Task."""
        get_task(value)
        return value

    @field_validator("breadth", "n_evaluate", "max_states", "depth", "n_select", mode="before")
    @classmethod
    def _check_count(cls, value: Any, info: Any) -> Any:
        """Counts are integers >= 1 (depth and n_select may be None)."""
        optional = info.field_name in ("depth", "n_select")
        if value is None and optional:
            return value
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            allowed = "an integer >= 1" + (" or None" if optional else "")
            raise ValueError(f"{info.field_name} must be {allowed}, got {value!r}")
        return value

    @field_validator("generator", "evaluator", "search", mode="before")
    @classmethod
    def _check_choice(cls, value: Any, info: Any) -> Any:
        """generator, evaluator and search take one of their named methods."""
        allowed = {"generator": GENERATOR_METHODS, "evaluator": EVALUATOR_METHODS,
                   "search": SEARCH_METHODS}[info.field_name]
        if value not in allowed:
            raise ValueError(f"{info.field_name} must be one of {list(allowed)}, got {value!r}")
        return value

    @field_validator("value_threshold", mode="before")
    @classmethod
    def _check_threshold(cls, value: Any) -> Any:
        """A number or None."""
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ValueError(f"value_threshold must be a number (0-10) or None, got {value!r}")
        return value

    @model_validator(mode="after")
    def _resolve_task(self) -> TreeOfThoughts:
        """Build the task with the prompt overrides (validating them)."""
        if self.prompts is not None and not isinstance(self.prompts, dict):
            raise ValueError("prompts must be a dict {role: PromptTemplate}")
        self._task = get_task(self.task, self.prompts)
        return self

    # ------------------------------------------------------------ configuration

    @property
    def resolved_task(self) -> Task:
        """The task object, with any prompt overrides."""
        return self._task

    @property
    def resolved_depth(self) -> int:
        """``depth``, or the task's default."""
        return self.depth or self._task.default_depth

    @property
    def resolved_threshold(self) -> float:
        """``value_threshold``, or the task's default."""
        return self._task.value_threshold if self.value_threshold is None else self.value_threshold

    @property
    def InputType(self) -> Any:
        """Accepted inputs."""
        # A runtime value, not an annotation: typing.Union keeps get_origin() what langchain expects.
        return Union[str, dict[str, Any], PromptValue, list[Any]]  # noqa: UP007

    @property
    def OutputType(self) -> Any:
        """The answer string (a ``ToTResult`` with ``return_tree=True``)."""
        return str

    # ------------------------------------------------------------------ running

    def plan(self, question: str, ground_truth: Any, stats: ToTStats) -> Plan[ToTResult]:
        """The whole run as a plan: search, then the final answer."""
        started = time.perf_counter()
        client = LLMClient(self.llm, self.llm_kwargs)
        generator = ThoughtGenerator(client, self._task, self.generator, self.breadth,
                                     self.use_n, self.use_stop)
        evaluator = StateEvaluator(client, self._task, self.evaluator, self.n_evaluate,
                                   self.use_n, self.use_stop)
        found = yield from self._search_plan(question, generator, evaluator)
        answer = yield from answer_plan(client, self._task, question, found.best.steps,
                                        self.use_stop)
        found.tree.answer = answer
        _finish_stats(stats, found, evaluator, time.perf_counter() - started)
        return ToTResult(answer, found.tree, stats, question, ground_truth, found.trace,
                         self._task)

    def _search_plan(
        self, question: str, generator: ThoughtGenerator, evaluator: StateEvaluator
    ) -> Plan[SearchResult]:
        """The configured search."""
        if self.search == "dfs":
            return dfs_plan(question, generator, evaluator, self.resolved_depth,
                            self.resolved_threshold, self.max_states)
        return bfs_plan(question, generator, evaluator, self.resolved_depth,
                        self.n_select or self.breadth)

    def invoke(
        self, input: Any, config: RunnableConfig | None = None, *,
        return_tree: bool = False, **kwargs: Any,
    ) -> Any:
        """The answer string; a :class:`ToTResult` with ``return_tree=True``.

        Other keyword arguments (e.g. ``stop`` from ``bind``) are ignored.
        """
        return self.batch([input], config, return_tree=return_tree)[0]

    async def ainvoke(
        self, input: Any, config: RunnableConfig | None = None, *,
        return_tree: bool = False, **kwargs: Any,
    ) -> Any:
        """Async :meth:`invoke` through the LLM's async API."""
        return (await self.abatch([input], config, return_tree=return_tree))[0]

    def batch(
        self, inputs: list[Any], config: RunnableConfig | list[RunnableConfig] | None = None,
        *, return_exceptions: bool = False, return_tree: bool | None = False, **kwargs: Any,
    ) -> list[Any]:
        """Answer every input; their levels share batched LLM calls."""
        return self._batch_with_config(
            self._run_many, inputs, config, return_exceptions=return_exceptions,
            run_type="chain", return_tree=bool(return_tree),
        )

    async def abatch(
        self, inputs: list[Any], config: RunnableConfig | list[RunnableConfig] | None = None,
        *, return_exceptions: bool = False, return_tree: bool | None = False, **kwargs: Any,
    ) -> list[Any]:
        """Async :meth:`batch` through the LLM's async API."""
        return await self._abatch_with_config(
            self._arun_many, inputs, config, return_exceptions=return_exceptions,
            run_type="chain", return_tree=bool(return_tree),
        )

    def _run_many(
        self, inputs: list[Any], run_manager: list[CallbackManagerForChainRun], *, return_tree: bool = False
    ) -> list[Any]:
        """Run every input's plan in lockstep."""
        runs = _Runs(self, inputs, run_manager)
        return runs.outputs(run_plans(runs.plans, runs.stats, runs.callbacks), return_tree)

    async def _arun_many(
        self, inputs: list[Any], run_manager: list[AsyncCallbackManagerForChainRun], *, return_tree: bool = False
    ) -> list[Any]:
        """Async :meth:`_run_many`."""
        runs = _Runs(self, inputs, run_manager)
        results = await arun_plans(runs.plans, runs.stats, runs.callbacks)
        return runs.outputs(results, return_tree)

    # --------------------------------------------------------------------- tool

    def as_tool(
        self, args_schema: type[BaseModel] | None = None, *, name: str | None = None,
        description: str | None = None, arg_types: dict[str, type] | None = None,
    ) -> BaseTool:
        """A LangChain tool taking ``question: str`` and returning the answer string.

        ``args_schema`` may replace the schema if it has a ``question`` field;
        ``arg_types`` is not supported.
        """
        if arg_types is not None:
            raise ValueError("arg_types is not supported; the tool takes question: str")
        schema = args_schema or ToTQuestion
        if "question" not in schema.model_fields:
            raise ValueError("args_schema must have a 'question' field")

        def answer(question: str, **_: Any) -> str:
            """Answer the question by Tree-of-Thoughts."""
            return self.invoke(question)

        async def aanswer(question: str, **_: Any) -> str:
            """Answer the question by Tree-of-Thoughts, asynchronously."""
            return await self.ainvoke(question)

        return StructuredTool.from_function(
            func=answer, coroutine=aanswer, name=name or "tree_of_thoughts",
            description=description or DEFAULT_TOOL_DESCRIPTION, args_schema=schema,
        )


class _Runs:
    """The plans of a batch of inputs; inputs that fail to parse keep their error."""

    def __init__(self, tot: TreeOfThoughts, inputs: list[Any], run_managers: list[Any]):
        self.errors: dict[int, Exception] = {}
        self.positions: list[int] = []
        self.plans: list[Plan[ToTResult]] = []
        self.stats: list[ToTStats] = []
        self.callbacks: list[Any] = []
        for position, (value, manager) in enumerate(zip(inputs, run_managers)):
            try:
                question, truth = parse_input(value)
            except ValueError as error:
                self.errors[position] = error
                continue
            self.positions.append(position)
            self.stats.append(ToTStats())
            self.plans.append(tot.plan(question, truth, self.stats[-1]))
            self.callbacks.append(manager.get_child() if manager is not None else None)
        self.size = len(inputs)

    def outputs(self, results: list[Any], return_tree: bool) -> list[Any]:
        """Answers (or results, or errors) in input order."""
        outputs: list[Any] = [self.errors.get(position) for position in range(self.size)]
        for position, result in zip(self.positions, results):
            keep_whole = return_tree or isinstance(result, BaseException)
            outputs[position] = result if keep_whole else result.answer
        return outputs


def _finish_stats(
    stats: ToTStats, found: SearchResult, evaluator: StateEvaluator, seconds: float
) -> None:
    """Copy the search's and the evaluator's counters into ``stats``."""
    stats.seconds = seconds
    stats.states = len(found.tree) - 1
    stats.unparsed_values = evaluator.unparsed_values
    stats.unparsed_votes = evaluator.unparsed_votes
    stats.cache_hits = evaluator.cache_hits
