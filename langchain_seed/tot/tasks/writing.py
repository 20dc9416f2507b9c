"""Creative writing: a 4-paragraph passage whose paragraphs end with given sentences."""

from __future__ import annotations

import re

from langchain_seed.tot.tasks.base import Task
from langchain_seed.tot.tasks.parsing import normalise


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
        return all(normalise(p).endswith(normalise(s)) for p, s in zip(paragraphs, sentences))
