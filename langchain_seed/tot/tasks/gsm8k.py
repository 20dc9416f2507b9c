"""GSM8K: grade-school math word problems with a numeric answer."""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

from langchain_seed.tot.tasks.base import Task
from langchain_seed.tot.tasks.parsing import (
    extract_answer_number,
    first_number,
    format_number,
)


def gsm8k_reference_number(reference: object) -> Fraction | None:
    """The ``#### N`` number of a GSM8K reference answer (or the number given)."""
    if isinstance(reference, (int, float)) and not isinstance(reference, bool):
        return Fraction(str(reference))
    text = str(reference)
    if "####" in text:
        return first_number(text.split("####")[-1])
    return extract_answer_number(text)


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
