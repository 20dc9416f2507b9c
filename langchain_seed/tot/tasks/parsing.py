"""Reading what a small model writes: list markers, duplicate thoughts, numbers, answers.

Every task's parsing is built from these, robust against small-model junk.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from fractions import Fraction

NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_LIST_MARKER = re.compile(
    r"^\s*(?:[-*\u2022>]+\s*|\(?\d{1,2}[.):](?=\s)\s*|\(\d{1,2}\)\s*|[a-hA-H][.)](?=\s)\s*"
    r"|(?:next\s+)?(?:step|option|choice|thought|idea|plan)\s*\d*"
    r"(?:\s*\(option\s*\d+\s*of\s*\d+\))?\s*(?:[:.)]|-(?=\s))\s*)",
    re.IGNORECASE,
)


def clean_line(line: str) -> str:
    """Strip bullets, numbering and ``Step i:``-style prefixes from one line."""
    previous = None
    line = line.strip()
    while previous != line:
        previous = line
        line = _LIST_MARKER.sub("", line, count=1).strip()
    return line


def thought_key(thought: str) -> str:
    """Normalised text used to spot duplicate thoughts."""
    return " ".join(thought.split()).casefold()


def dedupe(thoughts: Sequence[str]) -> list[str]:
    """Drop empty and repeated thoughts, keeping the first of each."""
    seen: set[str] = set()
    unique = []
    for thought in thoughts:
        key = thought_key(thought)
        if key and key not in seen:
            seen.add(key)
            unique.append(thought)
    return unique


def to_number(text: str) -> Fraction | None:
    """Parse ``'1,234.5'``-style text into an exact number, or None."""
    try:
        return Fraction(text.replace(",", "").rstrip("."))
    except (ValueError, ZeroDivisionError):
        return None


def format_number(value: Fraction) -> str:
    """Write a number without a needless ``.0``: ``18``, ``2.5``, ``-3``."""
    if value.denominator == 1:
        return str(value.numerator)
    return f"{float(value):.10g}"


def first_number(text: str) -> Fraction | None:
    """The first number in ``text``, or None."""
    for match in NUMBER.finditer(text):
        value = to_number(match.group())
        if value is not None:
            return value
    return None


def last_number(text: str) -> Fraction | None:
    """The last number in ``text``, or None."""
    for match in reversed(list(NUMBER.finditer(text))):
        value = to_number(match.group())
        if value is not None:
            return value
    return None


def extract_answer_number(text: str) -> Fraction | None:
    """GSM8K answer extraction: the number after the last "answer is", else the last number."""
    marker = list(re.finditer(r"answer\s*(?:\(a number\)\s*)?(?:is|:)", text, re.I))
    if marker:
        value = first_number(text[marker[-1].end():])
        if value is not None:
            return value
    return last_number(text)


def normalise(text: str) -> str:
    """Lower-case words without punctuation, single-spaced."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.casefold()).split())
