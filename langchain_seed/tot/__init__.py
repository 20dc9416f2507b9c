"""Tree of Thoughts over any LangChain LLM, as a Runnable drop-in for an LLM.

>>> tot = TreeOfThoughts(llm=llm, task="gsm8k", breadth=3, depth=2)   # doctest: +SKIP
>>> tot.invoke("question")                                             # doctest: +SKIP
"""

from langchain_seed.tot.chain import TreeOfThoughts
from langchain_seed.tot.client import LLMClient, LLMReply
from langchain_seed.tot.driver import (
    LLMRequest,
    arun_plan,
    arun_plans,
    run_plan,
    run_plans,
)
from langchain_seed.tot.evaluator import Evaluation, StateEvaluator
from langchain_seed.tot.generator import ThoughtGenerator
from langchain_seed.tot.inputs import parse_input
from langchain_seed.tot.prompts import ROLES, default_prompts
from langchain_seed.tot.result import ToTResult
from langchain_seed.tot.search import (
    SearchResult,
    abfs,
    adfs,
    bfs,
    bfs_plan,
    dfs,
    dfs_plan,
)
from langchain_seed.tot.stats import ToTStats
from langchain_seed.tot.tasks import (
    TASKS,
    Game24Task,
    GenericTask,
    GSM8KTask,
    Task,
    UnsafeExpressionError,
    WritingTask,
    check_game24,
    evaluate_arithmetic,
    extract_answer_number,
    get_task,
)
from langchain_seed.tot.tree import ThoughtNode, ThoughtTree

__all__ = [
    "ROLES",
    "TASKS",
    "Evaluation",
    "GSM8KTask",
    "Game24Task",
    "GenericTask",
    "LLMClient",
    "LLMReply",
    "LLMRequest",
    "SearchResult",
    "StateEvaluator",
    "Task",
    "ThoughtGenerator",
    "ThoughtNode",
    "ThoughtTree",
    "ToTResult",
    "ToTStats",
    "TreeOfThoughts",
    "UnsafeExpressionError",
    "WritingTask",
    "abfs",
    "adfs",
    "arun_plan",
    "arun_plans",
    "bfs",
    "bfs_plan",
    "check_game24",
    "default_prompts",
    "dfs",
    "dfs_plan",
    "evaluate_arithmetic",
    "extract_answer_number",
    "get_task",
    "parse_input",
    "run_plan",
    "run_plans",
]
