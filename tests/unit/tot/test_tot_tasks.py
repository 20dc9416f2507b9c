"""Tasks: prompt shapes, parsing of small-model replies, answer checking."""

from __future__ import annotations

import builtins
from fractions import Fraction

import pytest
from langchain_core.prompts import PromptTemplate

from langchain_seed.tot import (
    Game24Task,
    GSM8KTask,
    Task,
    UnsafeExpressionError,
    WritingTask,
    check_game24,
    evaluate_arithmetic,
    extract_answer_number,
    get_task,
)
from langchain_seed.tot.tasks import clean_line

STEPS = ("How many apples? 12.", "How many left? 10.")


# ------------------------------------------------------------------ registry


@pytest.mark.parametrize("name, cls", [("gsm8k", GSM8KTask), ("game24", Game24Task),
                                       ("writing", WritingTask), ("generic", Task)])
def test_get_task_by_name(name, cls):
    task = get_task(name)
    assert isinstance(task, cls) and task.name == name


def test_get_task_keeps_an_instance():
    task = GSM8KTask()
    assert get_task(task) is task


def test_unknown_task_lists_the_valid_ones():
    with pytest.raises(ValueError) as error:
        get_task("chess")
    message = str(error.value)
    assert "'chess'" in message
    for name in ("gsm8k", "game24", "writing", "generic"):
        assert name in message


# -------------------------------------------------------------- GSM8K prompts


def test_gsm8k_prompt_shapes_are_exact():
    task = get_task("gsm8k")
    q = "Q?"
    steps = "Step 1: How many apples? 12.\nStep 2: How many left? 10.\n"
    assert task.propose_prompt(q, STEPS, 3) == (
        "Solve the math problem step by step.\nQuestion: Q?\n" + steps
        + "Propose 3 different next steps. Write each on its own line as a sub-question "
        "followed by its answer.\n")
    assert task.sample_prompt(q, (), 2, 3) == (
        "Solve the math problem step by step.\nQuestion: Q?\nNext step (option 2 of 3): ")
    assert task.value_prompt(q, STEPS) == (
        "Question: Q?\n" + steps + "How likely is this partial solution to lead to the "
        "correct answer? Give a score from 0 to 10.\nScore: ")
    assert task.answer_prompt(q, STEPS) == (
        "Question: Q?\n" + steps + "Therefore, the final answer (a number) is ")
    vote = task.vote_prompt(q, [STEPS[:1], STEPS])
    assert vote == ("Question: Q?\nChoice 1:\nStep 1: How many apples? 12.\nChoice 2:\n"
                    + steps + "Which choice is most promising? Answer with its number.\n"
                    "Best choice: ")


def test_prompt_override_and_validation():
    task = get_task("gsm8k", {"answer": "A: {question}|{steps}"})
    assert task.answer_prompt("Q", ("x",)) == "A: Q|Step 1: x\n"
    assert task.value_prompt("Q", ()).startswith("Question: Q")  # others untouched
    with pytest.raises(ValueError, match="Unknown prompt role 'judge'"):
        get_task("gsm8k", {"judge": "x"})
    with pytest.raises(ValueError, match=r"unknown variable\(s\) \['colour'\]"):
        get_task("gsm8k", {"value": PromptTemplate.from_template("{question} {colour}")})
    with pytest.raises(ValueError, match="must be a PromptTemplate"):
        get_task("gsm8k", {"value": 3})


# ----------------------------------------------------------------- parsing


@pytest.mark.parametrize("line, expected", [
    ("1. How many? 3.", "How many? 3."),
    ("  2) How many? 3.", "How many? 3."),
    ("- How many? 3.", "How many? 3."),
    ("Step 3: How many? 3.", "How many? 3."),
    ("Next step (option 2 of 3): How many? 3.", "How many? 3."),
    ("(1) Option 2: x", "x"),
    ("3.5 * 2 = 7 (left: 7 9)", "3.5 * 2 = 7 (left: 7 9)"),
    ("4 + 8 = 12 (left: 6 12)", "4 + 8 = 12 (left: 6 12)"),
])
def test_clean_line(line, expected):
    assert clean_line(line) == expected


def test_parse_thoughts_drops_junk_dupes_and_keeps_k():
    task = get_task("gsm8k")
    reply = "1. A? 1.\n\n2) A? 1.\n- B? 2.\n   \nStep 3: C? 3.\nD? 4.\n"
    assert task.parse_thoughts(reply, 3) == ["A? 1.", "B? 2.", "C? 3."]


def test_parse_sample_takes_the_first_line():
    assert get_task("gsm8k").parse_sample("\n  1. X? 2.\nrambling on") == "X? 2."
    assert get_task("gsm8k").parse_sample("  \n") is None


@pytest.mark.parametrize("reply, expected", [
    (" 7", 7.0), ("8/10, good", 8.0), ("15", 10.0), ("-3", 0.0), ("6.5.", 6.5),
    ("no idea", None), ("", None),
])
def test_parse_value_clips_to_0_10(reply, expected):
    assert get_task("gsm8k").parse_value(reply) == expected


@pytest.mark.parametrize("reply, n, expected", [
    ("2", 3, 1), (" Choice 3 because", 3, 2), ("The best choice is 1.", 2, 0),
    ("4", 3, None), ("none", 3, None), ("0", 3, None),
])
def test_parse_vote(reply, n, expected):
    assert get_task("gsm8k").parse_vote(reply, n) == expected


# ------------------------------------------------------------- GSM8K answers


def test_gsm8k_build_answer_reads_the_first_line():
    task = get_task("gsm8k")
    assert task.build_answer(" 10.\nQuestion: something 99", "q", ()) == "10"
    assert task.build_answer(" $1,250.50 in total", "q", ()) == "1250.5"
    assert task.build_answer(" unknown", "q", ()) == "unknown"


@pytest.mark.parametrize("text, expected", [
    ("So 3 + 4 = 7. The answer is 1,234.", Fraction(1234)),
    ("so 5 then 6 and finally 18", Fraction(18)),
    ("The answer is 7. Later 9.", Fraction(7)),
    ("nothing here", None),
])
def test_extract_answer_number(text, expected):
    assert extract_answer_number(text) == expected


def test_gsm8k_check_against_reference():
    task = get_task("gsm8k")
    reference = "Natalia sold 48/2 = 24 clips in May.\n#### 72"
    assert task.check("q", "72", reference) is True
    assert task.check("q", "72.0", reference) is True
    assert task.check("q", "The answer is 72.", reference) is True
    assert task.check("q", "71", reference) is False
    assert task.check("q", "no number", reference) is False
    assert task.check("q", "72", 72) is True
    assert task.check("q", "72", None) is None


# ------------------------------------------------------------------ game24


def test_game24_accepts_a_correct_expression():
    assert check_game24("(10 - 4) * (13 - 9) = 24", "4 9 10 13")
    assert check_game24("Answer: 4 * (9 - 13 + 10)", "4 9 10 13")
    assert check_game24("(1 + 1 / 3) * 18", "1 1 3 18")  # a repeated number, twice
    assert check_game24("(1 + 1 / 3) * 18", "1 2 3 18") is False  # 1 used twice, 2 unused
    assert check_game24("8 / (3 - 8 / 3) = 24", "3 3 8 8")  # exact fractions


@pytest.mark.parametrize("answer", [
    "(10 - 4) * (13 - 9) = 23",   # not 24
    "4 * 6 = 24",                 # wrong numbers
    "(10 - 4) * 4 = 24",          # a number missing, 4 used twice
    "4 / (9 - 9) + 10 + 13",      # division by zero
    "",
])
def test_game24_rejects_wrong_answers(answer):
    assert check_game24(answer, "4 9 10 13") is False


@pytest.mark.parametrize("expression", [
    "__import__('os').system('echo pwned')",
    "(lambda: 24)()",
    "2 ** 3",
    "-4 + 28",
    "x.y",
    "[24][0]",
    "open('f')",
    "24 if 1 else 0",
    "1" * 300,
])
def test_game24_refuses_unsafe_expressions(expression):
    with pytest.raises(UnsafeExpressionError):
        evaluate_arithmetic(expression)
    assert check_game24(expression + " = 24", "4 9 10 13") is False


def test_game24_never_calls_eval(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("eval was called")

    monkeypatch.setattr(builtins, "eval", forbidden)
    monkeypatch.setattr(builtins, "exec", forbidden)
    assert check_game24("(10 - 4) * (13 - 9) = 24", "4 9 10 13")


def test_game24_left_numbers_and_judgements():
    task = get_task("game24")
    assert task.left_numbers("4 9 10 13", ()) == "4 9 10 13"
    assert task.left_numbers("4 9 10 13", ("13 - 9 = 4 (left: 4 4 10)",)) == "4 4 10"
    assert "Numbers: 4 4 10\nJudgement: " in task.value_prompt("4 9 10 13", ("13 - 9 = 4 (left: 4 4 10)",))
    assert task.parse_value("maybe likely... sure") == 10.0
    assert task.parse_value("impossible") == 0.0
    assert task.parse_value("likely") == 1.0
    assert task.parse_value("I cannot tell") is None
    assert task.parse_thoughts("Numbers: 1 2\n1. 4 + 9 = 13 (left: 10 13 13)\njunk", 3) == [
        "4 + 9 = 13 (left: 10 13 13)"]


# ----------------------------------------------------------------- writing


def test_writing_checks_paragraph_endings():
    task = get_task("writing")
    question = "It was cold. The dog barked! Was it over? They left."
    good = "Winter came. It was cold.\n\nA noise. The dog barked!\n\nWe asked. Was it over?\n\nSo. They left."
    assert task.check(question, good) is True
    assert task.check(question, good.replace("They left.", "They stayed.")) is False
    assert task.check(question, "One paragraph. They left.") is False


def test_generic_check():
    task = get_task("generic")
    assert task.check("q", "The capital is Paris.", "Paris") is True
    assert task.check("q", "Lyon", "Paris") is False
    assert task.check("q", "about 42 of them", "42") is True
    assert task.check("q", "anything", None) is None
