"""Text from token ids as they arrive: an incremental detokenizer and stop-string matching.

Nothing here touches a model. `IncrementalDetokenizer` turns a growing list of new token
ids into text pieces that never change once released; `StopSequences` finds stop strings
and says how much of a text could still be the start of one; `StreamingText` combines
them into what one generation streams; `StopChecker` is the engine-side twin that tells
the engine to end a request as soon as a stop string appears. The checks at the end refuse
prompts that are not text, naming the bad one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

REPLACEMENT_CHAR = "\ufffd"
"""What a decoder writes for bytes that are not (yet) a whole UTF-8 character."""

CONTEXT_TOKENS = 4
"""Prompt tokens decoded in front of the output so that its first word keeps its space."""


class IncrementalDetokenizer:
    """Text of a growing list of new token ids, released only once it is final.

    Every `push` decodes *all* ids so far and releases the part of the text that is new
    and can no longer change. Held back until more ids arrive (or `finish`): a trailing
    incomplete UTF-8 character (decoded as U+FFFD) and, for tokenizers that clean up
    spaces before punctuation, trailing whitespace. The pieces returned by `push` and
    `finish` add up to `text`.

    A few prompt tokens are decoded in front of the output and their text cut off again,
    so that tokenizers that drop the leading space of a sequence (SentencePiece) still
    give the first output word its space. The prompt's text itself never appears.

    Args:
        tokenizer: a transformers tokenizer (anything with `decode`).
        prompt_ids: the prompt; only its last `CONTEXT_TOKENS` ids are used.
        skip_ids: ids left out of the text (EOS: the engine keeps it in the output).
    """

    def __init__(self, tokenizer: Any, prompt_ids: Sequence[int] = (), skip_ids: Iterable[int] = ()) -> None:
        self._tokenizer = tokenizer
        self._skip_ids = frozenset(skip_ids)
        self._ids: list[int] = []
        self._context, self._context_text = self._choose_context(list(prompt_ids)[-CONTEXT_TOKENS:])
        self._strip_whitespace = bool(getattr(tokenizer, "clean_up_tokenization_spaces", False))
        self.text = ""
        """Text released so far."""

    def _choose_context(self, context: list[int]) -> tuple[list[int], str]:
        context_text = self._decode(context)
        if not context or not context_text or context_text.endswith(REPLACEMENT_CHAR):
            return [], ""
        return context, context_text

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=True)

    def decode(self, new_ids: Sequence[int]) -> str:
        """The whole text of these new ids (skip ids dropped), context-aware, nothing held back."""
        ids = [token for token in new_ids if token not in self._skip_ids]
        if not ids:
            return ""
        if self._context:
            full = self._decode(self._context + ids)
            if full.startswith(self._context_text):
                return full[len(self._context_text):]
        return self._decode(ids)

    def push(self, token_ids: Sequence[int]) -> str:
        """Add new ids; return the text that became final (possibly empty)."""
        self._ids.extend(token_ids)
        full = self.decode(self._ids)
        stable = len(full) - _unstable_tail(full, self._strip_whitespace)
        return self._release(full, stable)

    def finish(self) -> str:
        """Release everything that is left."""
        full = self.decode(self._ids)
        return self._release(full, len(full))

    def _release(self, full: str, end: int) -> str:
        # Released text is never taken back: should a decoder ever rewrite text it already
        # produced (not seen with byte-level or SentencePiece decoders), continue after it.
        piece = full[len(self.text):end]
        self.text += piece
        return piece


def _unstable_tail(text: str, strip_whitespace: bool) -> int:
    """How many trailing characters may still change when more tokens arrive."""
    end = len(text)
    while end and text[end - 1] == REPLACEMENT_CHAR:
        end -= 1
    if strip_whitespace:
        while end and text[end - 1].isspace():
            end -= 1
    return len(text) - end


class StopSequences:
    """Stop strings: where the first one starts, and how much text may begin one.

    Raises:
        ValueError: when `stop` is not a list of non-empty strings.
    """

    def __init__(self, stop: Sequence[str] | str | None) -> None:
        self.strings: tuple[str, ...] = normalize_stop(stop)
        self.longest = max((len(s) for s in self.strings), default=0)

    def __bool__(self) -> bool:
        return bool(self.strings)

    def find(self, text: str, start: int = 0) -> int:
        """Index of the earliest stop string in `text` beginning at or after `start`; -1 if none."""
        hits = [i for i in (text.find(s, start) for s in self.strings) if i >= 0]
        return min(hits, default=-1)

    def partial_tail(self, text: str) -> int:
        """Length of the longest suffix of `text` that is a proper prefix of a stop string."""
        for size in range(min(len(text), self.longest - 1), 0, -1):
            tail = text[-size:]
            if any(len(s) > size and s.startswith(tail) for s in self.strings):
                return size
        return 0


def normalize_stop(stop: Sequence[str] | str | None) -> tuple[str, ...]:
    """Validate stop sequences: None, one string, or a list of non-empty strings."""
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, Sequence) or not all(isinstance(s, str) for s in stop):
        raise ValueError(f"stop must be a string or a list of strings; got {stop!r}")
    if any(s == "" for s in stop):
        raise ValueError(f"stop sequences must be non-empty strings; got {list(stop)!r}")
    return tuple(dict.fromkeys(stop))


class StreamingText:
    """What one generation streams: final text only, cut before the first stop string.

    `push` takes the new token ids of one engine commit and returns the text that may be
    shown now: never text that later changes, never a stop string or the part of the
    text that could still turn into one. `finish` returns the rest. The pieces add up to
    `text`, the generation's output.
    """

    def __init__(self, tokenizer: Any, prompt_ids: Sequence[int] = (),
                 stop: Sequence[str] | StopSequences | None = None, skip_ids: Iterable[int] = ()) -> None:
        self._detokenizer = IncrementalDetokenizer(tokenizer, prompt_ids, skip_ids)
        self._stops = stop if isinstance(stop, StopSequences) else StopSequences(stop)
        self._final = ""
        self._searched = 0
        self.text = ""
        """Text released so far."""
        self.stopped = False
        """True once a stop string was found (the text ends before it)."""
        self.token_count = 0
        """Tokens that made the text: all pushed ones, or up to the one completing the stop string."""

    def push(self, token_ids: Sequence[int]) -> str:
        """Add new ids; return the text that may be released now (possibly empty).

        With stop strings the ids are decoded one at a time, so that the tokens after the
        one completing a stop string (decoded in the same engine round) are not counted.
        """
        if self.stopped:
            return ""
        if not self._stops:
            self._final += self._detokenizer.push(token_ids)
            self.token_count += len(token_ids)
            return self._release(at_end=False)
        for token in token_ids:
            self._final += self._detokenizer.push([token])
            self.token_count += 1
            if self._stops.find(self._final, max(0, self._searched - self._stops.longest + 1)) >= 0:
                break
        return self._release(at_end=False)

    def finish(self) -> str:
        """The rest of the text, once the generation has ended."""
        if self.stopped:
            return ""
        self._final += self._detokenizer.finish()
        return self._release(at_end=True)

    def _release(self, at_end: bool) -> str:
        end = len(self._final)
        if self._stops:
            hit = self._stops.find(self._final, max(0, self._searched - self._stops.longest + 1))
            self._searched = len(self._final)
            if hit >= 0:
                self.stopped, end = True, hit
            elif not at_end:
                end -= self._stops.partial_tail(self._final)
        piece = self._final[len(self.text):end]
        self.text += piece
        return piece


class StopChecker:
    """The engine's `stop_callback`: True once the output's text contains a stop string.

    Called in the engine thread with all new ids after each commit; it decodes them the
    same way `StreamingText` does, and searches only the text not searched before.
    """

    def __init__(self, tokenizer: Any, prompt_ids: Sequence[int], stop: Sequence[str] | StopSequences,
                 skip_ids: Iterable[int] = ()) -> None:
        self._detokenizer = IncrementalDetokenizer(tokenizer, prompt_ids, skip_ids)
        self._stops = stop if isinstance(stop, StopSequences) else StopSequences(stop)
        self._searched = 0

    def __call__(self, new_ids: list[int]) -> bool:
        text = self._detokenizer.decode(new_ids)
        hit = self._stops.find(text, max(0, self._searched - self._stops.longest + 1))
        self._searched = len(text) - _unstable_tail(text, strip_whitespace=True)
        return hit >= 0


# ------------------------------------------------------------------------------ input checks


def check_text_prompts(prompts: Sequence[Any]) -> list[str]:
    """Refuse prompts that are not non-empty strings, naming the first bad one."""
    return [check_text_prompt(index, prompt) for index, prompt in enumerate(prompts)]


def check_text_prompt(index: int, prompt: Any) -> str:
    """Refuse a prompt that is not a non-empty UTF-8 string, naming it by `index`."""
    if not isinstance(prompt, str):
        raise ValueError(f"prompt {index} must be a string; got {type(prompt).__name__}")
    if not prompt:
        raise ValueError(f"prompt {index} is empty: give the model some text to continue")
    check_utf8(prompt, f"prompt {index}")
    return prompt


def check_utf8(text: str, what: str) -> None:
    """Refuse text that cannot be encoded as UTF-8 (lone surrogates from a bad decode)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(
            f"{what} is not valid UTF-8 text: {error.reason} at position {error.start} "
            f"(decode your bytes with errors='replace' first)"
        ) from None


def refuse_bytes(value: Any) -> None:
    """LangChain would read bytes as a list of ints; say what is wrong instead."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(
            f"prompt must be str, not {type(value).__name__}: decode it first, e.g. data.decode('utf-8', "
            f"errors='replace')"
        )
