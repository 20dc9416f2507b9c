"""Validated settings of the engine: the draft tree and acceptance rule, and sampling.

Both are frozen dataclasses that check themselves on construction, so that a bad value
fails where the user wrote it, with a message naming the field, never deep in a round.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Literal, Sequence

AcceptanceRule = Literal["auto", "greedy", "speculative", "mcsd", "mcsd_without_replacement"]
VerifyPolicy = Literal["rounds", "batched"]
DecodingMode = Literal["autoregressive", "speculative", "scheduled"]

ACCEPTANCE_RULES: tuple[str, ...] = ("auto", "greedy", "speculative", "mcsd", "mcsd_without_replacement")
VERIFY_POLICIES: tuple[str, ...] = ("rounds", "batched")
DECODING_MODES: tuple[str, ...] = ("autoregressive", "speculative", "scheduled")

MAX_TREE_NODES = 256
MAX_LOOKUP_NGRAM = 4
MAX_TREE_DEPTH = 32


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_choice(name: str, value: object, choices: Sequence[str]) -> None:
    """Raise a ValueError naming `name` when `value` is not one of `choices`."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")


def normalize_k_config(k_config: object) -> tuple[int, ...]:
    """Validate a draft-tree shape: children per node at each depth, e.g. (1, 1, 1, 1) or (2, 2, 1).

    An empty tuple means no draft (plain autoregressive decoding).
    """
    if isinstance(k_config, (str, bytes)) or not isinstance(k_config, Sequence):
        raise ValueError(f"k_config must be a sequence of positive ints such as (1, 1, 1, 1); got {k_config!r}")
    values = tuple(k_config)
    _require(all(_is_int(k) and k >= 1 for k in values),
             f"k_config entries must be positive ints (children per node at each depth); got {k_config!r}")
    _require(len(values) <= MAX_TREE_DEPTH, f"k_config is deeper than {MAX_TREE_DEPTH}: {k_config!r}")
    _require(tree_size(values) <= MAX_TREE_NODES,
             f"k_config {values!r} makes a tree of {tree_size(values)} nodes; at most {MAX_TREE_NODES} are allowed")
    return values


def check_draft_confidence(value: object) -> float:
    """Validate an adaptive-draft threshold (`SpeculativeConfig.draft_confidence`): a number in [0, 1)."""
    _require(_is_number(value) and 0 <= value < 1,  # type: ignore[operator]
             f"draft_confidence must be a number in [0, 1) (0 drafts the whole tree); got {value!r}")
    return float(value)  # type: ignore[arg-type]


def tree_size(k_config: Sequence[int]) -> int:
    """Number of draft nodes in the tree of `k_config` (the root, the last committed token, excluded)."""
    total, width = 0, 1
    for k in k_config:
        width *= k
        total += width
    return total


@dataclass(frozen=True)
class SpeculativeConfig:
    """How drafts are shaped, accepted and verified.

    Attributes:
        k_config: children per node at each draft depth; `(1, 1, 1, 1)` drafts a chain of 4
            tokens, `(2, 2, 1)` a tree of 2 + 4 + 4 nodes. Empty: no draft.
        acceptance: the acceptance rule. "auto" picks "greedy" at temperature 0 and
            "mcsd" (multi-candidate speculative sampling, candidates drawn with
            replacement; plain speculative sampling on a chain) above it.
        verify: "batched" verifies every pending draft of a round in one target forward
            (split under `max_batch_tokens`); "rounds" is SeeD's policy: one target call per
            sequence, first come first served, every active sequence once per round.
        max_batch_tokens: token budget of one batched target forward (draft nodes plus
            pending tokens of every sequence in it).
        compact_slack: cache slots left behind by rejected drafts, per batch, before the
            cache is compacted.
        prompt_lookup: greedy drafting also looks up the sequence's own text (prompt and
            output): when its last n tokens (n from 4 down to `prompt_lookup`) occurred
            before, the token that followed is the first candidate, ahead of the draft
            model's. 0 turns it off. Lossless either way; sampled requests use the draft
            model alone.
        prompt_lookup_below: prompt lookup overrides the draft model's best candidate only
            where the model's top probability is below this; 1.0 lets every lookup hit
            override it. A good draft that is sure is more often right than an n-gram
            match: on the default pair's held-out replay, lookup everywhere gives a
            chain-of-4 acceptance of 0.535 and lookup below 0.7 gives 0.605 (the draft
            alone 0.480; docs/BENCHMARKS.md).
        draft_confidence: adaptive draft length. A sequence stops drafting deeper once the
            draft's probability of its best candidate at the deepest level falls below this
            (that level is still verified; a prompt-lookup hit counts as confident), so
            each sequence drafts between 1 and `len(k_config)` levels a round: long drafts
            where the draft is sure, short ones where it is not. 0 always drafts the
            whole tree. Lossless either way: the length depends on the draft alone.
    """

    k_config: tuple[int, ...] = (1, 1, 1, 1)
    acceptance: AcceptanceRule = "auto"
    verify: VerifyPolicy = "batched"
    max_batch_tokens: int = 512
    compact_slack: int = 64
    prompt_lookup: int = 3
    prompt_lookup_below: float = 0.7
    draft_confidence: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "k_config", normalize_k_config(self.k_config))
        check_choice("acceptance", self.acceptance, ACCEPTANCE_RULES)
        check_choice("verify", self.verify, VERIFY_POLICIES)
        _require(_is_int(self.max_batch_tokens) and self.max_batch_tokens >= 1,
                 f"max_batch_tokens must be a positive int; got {self.max_batch_tokens!r}")
        _require(self.max_batch_tokens >= 1 + tree_size(self.k_config),
                 f"max_batch_tokens={self.max_batch_tokens} cannot hold one sequence's draft tree "
                 f"({1 + tree_size(self.k_config)} tokens for k_config={self.k_config})")
        _require(_is_int(self.compact_slack) and self.compact_slack >= 0,
                 f"compact_slack must be a non-negative int; got {self.compact_slack!r}")
        _require(_is_int(self.prompt_lookup) and 0 <= self.prompt_lookup <= MAX_LOOKUP_NGRAM,
                 f"prompt_lookup must be an int in [0, {MAX_LOOKUP_NGRAM}] (0 turns it off); got {self.prompt_lookup!r}")
        _require(_is_number(self.prompt_lookup_below) and 0 < self.prompt_lookup_below <= 1,
                 f"prompt_lookup_below must be a number in (0, 1] (1 lets every lookup hit override the "
                 f"draft); got {self.prompt_lookup_below!r}")
        check_draft_confidence(self.draft_confidence)

    @property
    def is_tree(self) -> bool:
        """True when some depth drafts more than one candidate (needs tree attention)."""
        return any(k > 1 for k in self.k_config)

    @property
    def tokens_per_sequence(self) -> int:
        """Tokens one sequence puts in a verification forward: the pending token plus the tree."""
        return 1 + tree_size(self.k_config)


StopCallback = Callable[[list[int]], bool]


@dataclass(frozen=True)
class SamplingParams:
    """How one request samples and when it stops.

    Attributes:
        temperature: 0 is greedy; above 0 samples from softmax(logits / temperature).
        top_p: nucleus sampling mass in (0, 1]; 1 keeps the whole distribution.
        max_tokens: most new tokens to generate.
        seed: seed of this request's own `torch.Generator`; None draws a fresh one.
        stop_token_ids: tokens that end the request (kept in the output, like EOS).
        ignore_eos: when False the model's EOS token ids also end the request.
        stop_callback: called with all new token ids after each commit; returning True
            ends the request. An exception it raises fails this request alone.
    """

    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 128
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    stop_callback: StopCallback | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        _require(_is_number(self.temperature) and math.isfinite(self.temperature) and 0 <= self.temperature <= 100,
                 f"temperature must be a finite number in [0, 100]; got {self.temperature!r}")
        _require(_is_number(self.top_p) and 0 < self.top_p <= 1, f"top_p must be in (0, 1]; got {self.top_p!r}")
        _require(_is_int(self.max_tokens) and self.max_tokens >= 1,
                 f"max_tokens must be a positive int; got {self.max_tokens!r}")
        _require(self.seed is None or (_is_int(self.seed) and 0 <= self.seed < 2**63),
                 f"seed must be None or an int in [0, 2**63); got {self.seed!r}")
        stop = self.stop_token_ids
        _require(not isinstance(stop, (str, bytes)) and isinstance(stop, Sequence)
                 and all(_is_int(t) and t >= 0 for t in stop),
                 f"stop_token_ids must be a sequence of non-negative ints; got {stop!r}")
        object.__setattr__(self, "stop_token_ids", tuple(stop))
        _require(isinstance(self.ignore_eos, bool), f"ignore_eos must be a bool; got {self.ignore_eos!r}")
        _require(self.stop_callback is None or callable(self.stop_callback),
                 f"stop_callback must be callable or None; got {self.stop_callback!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0
