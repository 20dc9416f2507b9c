"""Constrained decoding: a request's JSON schema, regex or grammar as a token mask.

The grammar work is llguidance's (a maintained library made for exactly this: an
Earley parser over the tokenizer's vocabulary that computes the mask of allowed next
tokens lazily, in tens of microseconds, and rolls back tokens, which speculative
decoding needs). This module is the small interface the engine sees:

- `Constraint`: what a request asks for (`SamplingParams.constraint`), checked once;
- `GrammarVocabulary`: the target tokenizer as llguidance reads it; `compile` turns a
  constraint into a matcher, refusing bad schemas and grammars that no text satisfies;
- `TokenMasks`: one sequence's matcher during decoding. It stands at the committed text;
  `allowed(path)` is the mask after the committed text plus a drafted path (the matcher
  walks there and rolls back), cached for the round, so the drafter and the verification
  share each mask; `commit(tokens)` moves the matcher on by what verification kept.

The engine applies a mask to every distribution it draws from or accepts under: the
draft's proposals and the target's logits at the root and at every drafted node. So the
committed text is exactly what constrained autoregressive decoding of the target gives
(its greedy output token for token; sampled output from the masked, renormalised
distribution).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

ConstraintKind = Literal["json_schema", "regex", "grammar"]
CONSTRAINT_KINDS: tuple[str, ...] = ("json_schema", "regex", "grammar")

JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
"""JSON is written as `json.dumps` writes it (`{"a": 1, "b": [2, 3]}`): no free whitespace, so
a small model cannot wander into blank lines, and the separators are the ones models saw most."""

_BIT_SHIFTS = torch.arange(8, dtype=torch.uint8)


def _llguidance():
    import llguidance

    return llguidance


@dataclass(frozen=True)
class Constraint:
    """What a request's output must match.

    Attributes:
        kind: "json_schema" (a JSON Schema, as JSON text), "regex" (Rust regex syntax, the
            whole output must match) or "grammar" (a Lark grammar, llguidance's dialect; GBNF
            is accepted too).
        source: the schema, pattern or grammar text.
    """

    kind: ConstraintKind
    source: str

    def __post_init__(self) -> None:
        if self.kind not in CONSTRAINT_KINDS:
            raise ValueError(f"constraint kind must be one of {', '.join(map(repr, CONSTRAINT_KINDS))}; "
                             f"got {self.kind!r}")
        if not isinstance(self.source, str) or not self.source.strip():
            raise ValueError(f"a {self.kind} constraint needs a non-empty text; got {self.source!r}")

    @classmethod
    def json_schema(cls, schema: Mapping[str, Any] | str) -> Constraint:
        """Output that is one JSON value valid under `schema` (a dict or its JSON text)."""
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except json.JSONDecodeError as error:
                raise ValueError(f"json_schema is not valid JSON: {error}") from None
        if not isinstance(schema, Mapping):
            raise ValueError(f"json_schema must be a JSON object (a dict); got {type(schema).__name__}")
        return cls("json_schema", json.dumps(schema))

    @classmethod
    def regex(cls, pattern: str) -> Constraint:
        """Output that matches `pattern` as a whole."""
        return cls("regex", pattern)

    @classmethod
    def grammar(cls, grammar: str) -> Constraint:
        """Output in the language of a Lark (or GBNF) grammar whose start rule is `start`
        (GBNF: `root`)."""
        return cls("grammar", grammar)

    @property
    def name(self) -> str:
        """A short description for error messages."""
        text = self.source if len(self.source) <= 80 else self.source[:77] + "..."
        return f"{self.kind} {text}"

    def llguidance_grammar(self) -> str:
        """The constraint as an llguidance grammar definition (not yet checked)."""
        llguidance = _llguidance()
        if self.kind == "json_schema":
            return llguidance.LLMatcher.grammar_from_json_schema(self.source, defaults=JSON_LAYOUT)
        if self.kind == "regex":
            return llguidance.LLMatcher.grammar_from_regex(self.source)
        try:
            return llguidance.grammar_from("grammar", self.source)
        except ValueError as error:
            raise ValueError(f"grammar cannot be read: {error}") from None


class GrammarVocabulary:
    """The target's tokenizer as llguidance sees it (built once per engine, about a second
    for a 50k vocabulary).

    Args:
        tokenizer: a fast Hugging Face tokenizer (`PreTrainedTokenizerFast`).
        vocab_size: the target's logit width (may exceed the tokenizer's length).
        eos_token_ids: the tokens that end a request; a grammar allows them once complete.
    """

    def __init__(self, tokenizer: Any, vocab_size: int, eos_token_ids: Iterable[int]) -> None:
        from transformers import PreTrainedTokenizerFast

        if not isinstance(tokenizer, PreTrainedTokenizerFast):
            raise ValueError(f"constrained decoding needs a fast Hugging Face tokenizer; the engine has "
                             f"{type(tokenizer).__name__}")
        import llguidance.hf

        eos = sorted(eos_token_ids) or None
        self.vocab_size = vocab_size
        self.tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size, eos_token=eos)

    def compile(self, constraint: Constraint) -> Any:
        """A fresh llguidance `LLMatcher` for `constraint` at the start of the output.

        Raises a ValueError naming the problem for a bad schema, pattern or grammar, and
        for one that no output can satisfy (nothing is allowed as the first token).
        """
        llguidance = _llguidance()
        grammar = constraint.llguidance_grammar()
        failed, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, self.tokenizer)
        if failed:
            raise ValueError(f"the {constraint.kind} constraint is invalid: {messages[0].strip()}")
        matcher = llguidance.LLMatcher(self.tokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise ValueError(f"the {constraint.kind} constraint is invalid: {matcher.get_error().strip()}")
        first = bitmask_to_allowed(matcher.compute_bitmask(), self.vocab_size)
        if matcher.is_error() or not bool(first.any()) or (matcher.is_stopped() and not matcher.is_accepting()):
            raise ValueError(f"the {constraint.kind} constraint cannot be satisfied: no output matches it "
                             f"({constraint.name})")
        return matcher


def bitmask_to_allowed(bitmask: bytes, vocab_size: int) -> torch.Tensor:
    """llguidance's packed mask (one bit per token, little-endian) as a bool tensor `[vocab_size]`."""
    packed = torch.frombuffer(bytearray(bitmask), dtype=torch.uint8)
    bits = (packed[:, None] >> _BIT_SHIFTS) & 1  # [bytes, 8]
    return bits.flatten()[:vocab_size].bool()


class ConstraintViolation(RuntimeError):
    """A committed token the grammar does not allow (an engine bug, never the model's fault)."""


class TokenMasks:
    """One sequence's grammar state during decoding: masks after drafted paths, commits.

    The matcher stands at the committed text plus `_path` (the drafted tokens it last
    walked through). Masks are cached per path (relative to the committed text) until
    the next commit, which keeps the ones that still apply.

    Args:
        matcher: an llguidance `LLMatcher` at the start of the output (`GrammarVocabulary.compile`).
        vocab_size: the mask width, the target's logit width.
    """

    def __init__(self, matcher: Any, vocab_size: int) -> None:
        self.matcher = matcher
        self.vocab_size = vocab_size
        self._path: tuple[int, ...] = ()
        self._masks: dict[tuple[int, ...], torch.Tensor | None] = {}
        self.mask_seconds = 0.0
        """Time spent computing masks (for the benchmark's overhead figure)."""
        self.masks_computed = 0

    def allowed(self, path: Sequence[int] = ()) -> torch.Tensor | None:
        """Bool mask `[vocab]` of the tokens allowed after the committed text plus `path`;
        None when `path` itself leaves the grammar (no such node is ever accepted)."""
        key = tuple(path)
        if key not in self._masks:
            self._masks[key] = self._compute(key)
        return self._masks[key]

    def commit(self, tokens: Sequence[int]) -> None:
        """Move the committed text on by `tokens` (each must be allowed)."""
        key = tuple(tokens)
        if not self._walk_to(key):
            raise ConstraintViolation(f"committed tokens {list(tokens)} are not allowed by the grammar: "
                                      f"{self.matcher.get_error() or 'rejected'}")
        self._path = ()
        self._masks = {path[len(key):]: mask for path, mask in self._masks.items() if path[: len(key)] == key}

    @property
    def finished(self) -> bool:
        """The committed text completes the grammar and nothing may follow (but EOS)."""
        self._walk_to(())
        return bool(self.matcher.is_stopped())

    def _compute(self, path: tuple[int, ...]) -> torch.Tensor | None:
        if not self._walk_to(path):
            return None
        started = time.perf_counter()
        mask = bitmask_to_allowed(self.matcher.compute_bitmask(), self.vocab_size)
        self.mask_seconds += time.perf_counter() - started
        self.masks_computed += 1
        return mask

    def _walk_to(self, path: tuple[int, ...]) -> bool:
        """Put the matcher at the committed text plus `path`; False (matcher unmoved past the
        common prefix) when `path` leaves the grammar."""
        common = 0
        for walked, wanted in zip(self._path, path):
            if walked != wanted:
                break
            common += 1
        if common < len(self._path):
            self.matcher.rollback(len(self._path) - common)
            self._path = self._path[:common]
        rest = list(path[common:])
        if not rest:
            return True
        if self.matcher.validate_tokens(rest) < len(rest):
            return False
        if not self.matcher.consume_tokens(rest):
            raise ConstraintViolation(f"the grammar matcher failed on tokens it validated: {self.matcher.get_error()}")
        self._path = path
        return True


def mask_logits(logits: torch.Tensor, masks: Sequence[torch.Tensor | None]) -> torch.Tensor:
    """`logits` `[rows, vocab]` with the tokens each row's mask forbids at -inf (a row whose
    mask is None is left as it is). Returns a new tensor."""
    allowed = torch.stack([mask if mask is not None else torch.ones(logits.shape[-1], dtype=torch.bool)
                           for mask in masks]).to(logits.device)
    return logits.masked_fill(~allowed, float("-inf"))
