"""What a Tree-of-Thoughts run returns with ``return_tree=True``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from langchain_seed.tot.stats import ToTStats
from langchain_seed.tot.tasks import Task
from langchain_seed.tot.tree import ThoughtTree


@dataclass
class ToTResult:
    """What ``tot.invoke(x, return_tree=True)`` returns."""

    answer: str
    """The final answer (what ``invoke`` returns without ``return_tree``)."""
    tree: ThoughtTree
    """Every state explored, with scores and kept flags."""
    stats: ToTStats
    """LLM calls, batches, tokens or characters, seconds, LLM-reported statistics."""
    question: str
    """The question asked."""
    ground_truth: Any = None
    """The reference answer, when the input dict carried one (``answer`` key)."""
    trace: list[dict[str, Any]] = field(default_factory=list)
    """The search's generation -> evaluation -> selection records."""
    task: Task | None = field(default=None, repr=False)
    """The task that checks answers."""

    def check(self, answer: str | None = None) -> bool | None:
        """Whether ``answer`` (default: this result's) is right; None if it can't be told."""
        if self.task is None:
            return None
        return self.task.check(self.question, self.answer if answer is None else answer,
                               self.ground_truth)

    @property
    def is_correct(self) -> bool | None:
        """:meth:`check` of this result's answer."""
        return self.check()

    def to_dict(self) -> dict[str, Any]:
        """Plain-data view (JSON-ready if the ground truth is)."""
        return {
            "question": self.question,
            "answer": self.answer,
            "ground_truth": self.ground_truth,
            "is_correct": self.is_correct,
            "stats": self.stats.to_dict(),
            "tree": self.tree.to_dict(),
            "trace": self.trace,
        }
