"""Creative writing: a 4-paragraph passage whose paragraphs end with 4 given sentences.

As the Tree-of-Thoughts paper poses it (and SeeD after it): the input is 4 sentences;
the passage's paragraphs must end with them, in order. The tree plans then writes: a
thought is a one-line plan, plans are compared by vote, and the answer is the passage
written from the chosen plan. :func:`writing_inputs` draws inputs reproducibly from any
list of texts (the benchmark uses GSM8K questions).
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

from langchain_seed.tot.tasks.base import Task
from langchain_seed.tot.tasks.parsing import normalise

SENTENCES_PER_INPUT = 4
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_NUMBERED = re.compile(r"^\s*(\d+)[.)]\s+(.+?)\s*$")


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text``: split after ``.``, ``!`` or ``?`` followed by white space."""
    return [sentence.strip() for sentence in _SENTENCE_END.split(text.strip()) if sentence.strip()]


def writing_question(sentences: Sequence[str]) -> str:
    """The task's question: the sentences as numbered lines (``1. ...``)."""
    return "\n".join(f"{index}. {sentence.strip()}" for index, sentence in enumerate(sentences, 1))


def question_sentences(question: str) -> list[str]:
    """The sentences of a question: its numbered lines, else its sentences split by punctuation."""
    numbered = [_NUMBERED.match(line) for line in question.splitlines()]
    if numbered and all(numbered):
        return [match.group(2) for match in numbered if match]
    return split_sentences(question)


def _usable(sentence: str) -> bool:
    """A plain statement of 5-20 words, ending with a full stop."""
    return sentence.endswith(".") and 5 <= len(sentence.split()) <= 20 and not _NUMBERED.match(sentence)


def writing_inputs(texts: Sequence[str], count: int, seed: int = 0) -> list[str]:
    """``count`` questions of 4 sentences each, drawn with ``random.Random(seed)``.

    The pool is every statement of 5-20 words ending with a full stop in ``texts``, in
    order, without repeats; each question samples 4 of them (without replacement within
    a question), so the same texts and seed always give the same questions.
    """
    pool = list(dict.fromkeys(s for text in texts for s in split_sentences(text) if _usable(s)))
    if len(pool) < SENTENCES_PER_INPUT:
        raise ValueError(f"the texts hold {len(pool)} usable sentences; {SENTENCES_PER_INPUT} are needed")
    rng = random.Random(seed)
    return [writing_question(rng.sample(pool, SENTENCES_PER_INPUT)) for _ in range(count)]


def paragraphs_of(passage: str) -> list[str]:
    """Paragraphs: blocks of text separated by blank lines."""
    return [p.strip() for p in re.split(r"\n\s*\n", passage.strip()) if p.strip()]


class WritingTask(Task):
    """Creative writing, princeton style: the question is 4 sentences (numbered lines, or
    plain text); the passage's 4 paragraphs must end with them in order. Thoughts are
    one-line plans; use ``evaluator="vote"`` as the paper does.

    :meth:`check` verifies that constraint (coherence itself cannot be checked here).
    """

    name = "writing"
    default_depth = 1

    def build_answer(self, completion: str, question: str, steps: Sequence[str]) -> str:
        """The passage, without a leading ``Passage:`` label."""
        return re.sub(r"^\s*passage\s*:\s*", "", completion, flags=re.IGNORECASE).strip()

    def check(self, question: str, answer: str, ground_truth: object = None) -> bool | None:
        """As many paragraphs as sentences, each ending with its sentence in whole words
        (case and punctuation aside)."""
        sentences = question_sentences(question)
        paragraphs = paragraphs_of(answer)
        if len(paragraphs) != len(sentences):
            return False
        return all(f" {normalise(p)}".endswith(f" {normalise(s)}") for p, s in zip(paragraphs, sentences))
