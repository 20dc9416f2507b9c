"""Game of 24: combine 4 numbers with + - * / into 24; answers checked safely (no eval)."""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping, Sequence
from fractions import Fraction

from langchain_seed.tot.tasks.base import Task
from langchain_seed.tot.tasks.parsing import (
    NUMBER,
    clean_line,
    dedupe,
    first_number,
    to_number,
)


class UnsafeExpressionError(ValueError):
    """Raised when an arithmetic expression holds anything but numbers and + - * /."""


_OPERATORS = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
}
_MAX_EXPRESSION_CHARS = 200


def evaluate_arithmetic(expression: str) -> tuple[Fraction, list[Fraction]]:
    """Evaluate ``expression`` exactly, allowing only numbers and + - * /.

    Parses with :mod:`ast` and walks the tree itself (never ``eval``). Returns the value
    and the numbers used, in order. Raises :class:`UnsafeExpressionError` on anything
    else (names, calls, attributes, powers, unary signs...) and ``ZeroDivisionError``.
    """
    text = expression.replace("\u00d7", "*").replace("\u00f7", "/")
    text = re.sub(r"(?<=[\d)\s])x(?=[\d(\s])", "*", text)
    if len(text) > _MAX_EXPRESSION_CHARS:
        raise UnsafeExpressionError("expression too long")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as error:
        raise UnsafeExpressionError(f"not an arithmetic expression: {expression!r}") from error
    numbers: list[Fraction] = []
    return _evaluate_node(tree.body, numbers), numbers


def _evaluate_node(node: ast.AST, numbers: list[Fraction]) -> Fraction:
    """Recursive step of :func:`evaluate_arithmetic`."""
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        value = Fraction(str(node.value))
        numbers.append(value)
        return value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        left = _evaluate_node(node.left, numbers)
        right = _evaluate_node(node.right, numbers)
        return _OPERATORS[type(node.op)](left, right)
    raise UnsafeExpressionError(f"not allowed in a Game of 24 answer: {type(node).__name__}")


def check_game24(answer: str, question: str) -> bool:
    """True when ``answer`` uses the question's 4 numbers once each and equals 24.

    ``answer`` may be ``"(4 + 8) * (6 - 4) = 24"`` (a right-hand side must say 24) or
    just the expression; an ``Answer:`` prefix is ignored. Unsafe or malformed
    expressions give False.
    """
    expression = answer.strip().splitlines()[0] if answer.strip() else ""
    expression = re.sub(r"^\s*answer\s*:\s*", "", expression, flags=re.I)
    expression, *claims = expression.split("=")
    if any(first_number(claim) != 24 for claim in claims):
        return False
    try:
        value, used = evaluate_arithmetic(expression)
    except (UnsafeExpressionError, ZeroDivisionError):
        return False
    # every NUMBER match parses, so nothing is dropped
    wanted = sorted(n for n in map(to_number, NUMBER.findall(question)) if n is not None)
    return value == 24 and sorted(used) == wanted


class Game24Task(Task):
    """Game of 24, princeton style: the question is 4 numbers, e.g. ``"4 9 10 13"``.

    A thought is ``a op b = c (left: ...)``; values are sure / likely / impossible,
    mapped to 10 / 1 / 0 (princeton weighs them 20 / 1 / 0.001); the answer is an
    expression checked safely by :func:`check_game24`.
    """

    name = "game24"
    default_depth = 3
    value_threshold = 1.0
    extra_variables = frozenset({"left"})
    stops = {**Task.stops, "propose": ("\n\n", "\nNumbers:"), "answer": ("\n",)}
    judgement_scores: Mapping[str, float] = {"sure": 10.0, "likely": 1.0, "impossible": 0.0}
    """Score of each judgement word."""

    def left_numbers(self, question: str, steps: Sequence[str]) -> str:
        """The numbers still to combine: the last step's ``(left: ...)``, else the question's."""
        for step in reversed(steps):
            match = re.search(r"left\s*:\s*([^)]*)", step, re.I)
            if match:
                return " ".join(NUMBER.findall(match.group(1)))
        return " ".join(NUMBER.findall(question))

    def variables(self, question: str, steps: Sequence[str]) -> dict[str, object]:
        """Adds ``{left}`` to the shared variables."""
        return {**super().variables(question, steps), "left": self.left_numbers(question, steps)}

    def parse_thoughts(self, text: str, k: int) -> list[str]:
        """Keep only lines that are equations (``a op b = c ...``)."""
        lines = [clean_line(line) for line in text.splitlines()]
        return dedupe([line for line in lines if "=" in line])[:k]

    def parse_value(self, text: str) -> float | None:
        """The last judgement word in the reply, mapped to a score; None if none."""
        words = re.findall(r"\b(sure|likely|impossible)\b", text.casefold())
        return self.judgement_scores[words[-1]] if words else None

    def build_answer(self, completion: str, question: str, steps: Sequence[str]) -> str:
        """The first non-empty line of the reply, without an ``Answer:`` prefix."""
        for line in completion.splitlines():
            line = re.sub(r"^\s*answer\s*:\s*", "", line.strip(), flags=re.I)
            if line:
                return line
        return ""

    def check(self, question: str, answer: str, ground_truth: object = None) -> bool | None:
        """True when the expression uses the 4 numbers once each and equals 24."""
        return check_game24(answer, question)
