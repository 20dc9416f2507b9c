"""The question (and any ground truth) in whatever a LangChain LLM accepts as input."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.messages import BaseMessage, convert_to_messages, get_buffer_string
from langchain_core.prompt_values import PromptValue

from langchain_seed.tot.client import message_text

GROUND_TRUTH_KEYS = ("answer", "ground_truth")


def parse_input(value: Any) -> tuple[str, Any]:
    """The question and ground truth (or None) from any accepted input.

    Accepts a string; a dict with ``question`` (ground truth under ``answer`` or
    ``ground_truth``, other keys ignored); a ``PromptValue`` (``.to_string()``); a list
    of messages (a single message gives its text, several their buffer string).
    """
    if isinstance(value, dict):
        if "question" not in value:
            raise ValueError(
                f"TreeOfThoughts input dict needs a 'question' key, got keys {sorted(value)}"
            )
        question, _ = parse_input(value["question"])
        truth = next((value[k] for k in GROUND_TRUTH_KEYS if value.get(k) is not None), None)
        return question, truth
    if isinstance(value, PromptValue):
        messages = value.to_messages()
        return _question_text(messages if len(messages) == 1 else value.to_string()), None
    if isinstance(value, BaseMessage):
        return _question_text([value]), None
    if isinstance(value, (list, tuple)):
        return _question_text(convert_to_messages(value)), None
    if isinstance(value, str):
        return _question_text(value), None
    raise ValueError(
        "TreeOfThoughts input must be a str, a dict with 'question', a PromptValue or a "
        f"list of messages, got {type(value).__name__}"
    )


def _question_text(value: str | Sequence[BaseMessage]) -> str:
    """Text of a question; a single message gives its content alone."""
    if not isinstance(value, str):
        value = message_text(value[0]) if len(value) == 1 else get_buffer_string(value)
    if not value.strip():
        raise ValueError("TreeOfThoughts got an empty question")
    return value.strip()
