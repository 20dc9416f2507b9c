"""The generic task: any question, reasoning steps, 0-10 values, a free-text answer."""

from __future__ import annotations

from langchain_seed.tot.tasks.base import Task


class GenericTask(Task):
    """Any question: thoughts are reasoning steps, values 0-10, free-text answer."""

    name = "generic"
