"""Prompt lookup: a model-free proposer that drafts the token which followed the latest
earlier occurrence of the text's last few tokens (in the prompt or the output so far).
"""

from __future__ import annotations

from langchain_seed.engine.options import MAX_LOOKUP_NGRAM
from langchain_seed.engine.request import SequenceState


class NGramIndex:
    """Which token followed the last occurrence of every short n-gram of a sequence's text.

    Updated incrementally as tokens are committed; a lookup is a few dict probes.
    """

    def __init__(self, max_n: int = MAX_LOOKUP_NGRAM) -> None:
        self.max_n = max_n
        self.next_token: dict[tuple[int, ...], int] = {}
        self.indexed = 0

    def update(self, tokens: list[int]) -> None:
        """Index the tokens appended since the last update."""
        for position in range(max(self.indexed, 1), len(tokens)):
            for n in range(1, min(self.max_n, position) + 1):
                self.next_token[tuple(tokens[position - n : position])] = tokens[position]
        self.indexed = len(tokens)

    def lookup(self, tail: list[int], min_n: int) -> int | None:
        """The token that followed the longest (n >= min_n) earlier occurrence of `tail`'s end."""
        for n in range(min(self.max_n, len(tail)), min_n - 1, -1):
            token = self.next_token.get(tuple(tail[-n:]))
            if token is not None:
                return token
        return None


class PromptLookup:
    """Prompt lookup over every sequence of a lane: one `NGramIndex` per sequence, kept
    up to date with its committed tokens."""

    def __init__(self) -> None:
        self._indexes: dict[int, NGramIndex] = {}

    def propose(self, sequence: SequenceState, path: list[int], min_n: int) -> int | None:
        """The token after `sequence`'s committed text plus the drafted `path`, when an
        n-gram (n >= `min_n`) of its end occurred before; else None."""
        index = self._indexes.get(id(sequence))
        if index is None:
            index = self._indexes[id(sequence)] = NGramIndex()
        index.update(sequence.tokens)
        tail = sequence.tokens[-MAX_LOOKUP_NGRAM:] + path
        return index.lookup(tail, min_n)

    def forget(self, sequence: SequenceState) -> None:
        """Drop a finished sequence's index."""
        self._indexes.pop(id(sequence), None)
