"""The built-in Tree-of-Thoughts tasks, one module each, and :func:`get_task`.

Built-in tasks: ``gsm8k``, ``game24``, ``writing``, ``blocksworld`` and ``generic``. A custom task
subclasses :class:`Task` and overrides what differs.
"""

from __future__ import annotations

from collections.abc import Mapping

from langchain_core.prompts import PromptTemplate

from langchain_seed.tot.tasks.base import Task
from langchain_seed.tot.tasks.blocksworld import (
    Action,
    BlocksState,
    BlocksworldProblem,
    BlocksworldTask,
    IllegalActionError,
    apply_action,
    generate_problem,
    generate_problems,
    optimal_plan,
    parse_action,
    parse_problem,
    simulate,
)
from langchain_seed.tot.tasks.game24 import (
    Game24Task,
    UnsafeExpressionError,
    check_game24,
    evaluate_arithmetic,
)
from langchain_seed.tot.tasks.generic import GenericTask
from langchain_seed.tot.tasks.gsm8k import GSM8KTask, gsm8k_reference_number
from langchain_seed.tot.tasks.parsing import clean_line, dedupe, extract_answer_number
from langchain_seed.tot.tasks.writing import WritingTask, writing_inputs, writing_question

TASKS: Mapping[str, type[Task]] = {
    "gsm8k": GSM8KTask,
    "game24": Game24Task,
    "writing": WritingTask,
    "blocksworld": BlocksworldTask,
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


__all__ = [
    "TASKS",
    "Action",
    "BlocksState",
    "BlocksworldProblem",
    "BlocksworldTask",
    "IllegalActionError",
    "GSM8KTask",
    "Game24Task",
    "GenericTask",
    "Task",
    "UnsafeExpressionError",
    "WritingTask",
    "apply_action",
    "check_game24",
    "clean_line",
    "dedupe",
    "evaluate_arithmetic",
    "extract_answer_number",
    "generate_problem",
    "generate_problems",
    "get_task",
    "gsm8k_reference_number",
    "optimal_plan",
    "parse_action",
    "parse_problem",
    "simulate",
    "writing_inputs",
    "writing_question",
]
