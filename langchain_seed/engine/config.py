"""Validated settings of the engine: the draft tree and acceptance rule, and sampling.

Both are frozen dataclasses that check themselves on construction, so that a bad value
fails where the user wrote it, with a message naming the field, never deep in a round.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from langchain_seed.engine.constraints import Constraint
from langchain_seed.engine.options import (
    OPTIONS,
    SAMPLING_OPTIONS,
    SPECULATIVE_OPTIONS,
    require,
    tree_size,
)

AcceptanceRule = Literal["auto", "greedy", "speculative", "mcsd", "mcsd_without_replacement"]
VerifyPolicy = Literal["rounds", "batched"]
DecodingMode = Literal["autoregressive", "speculative", "scheduled"]


def _check_fields(config: Any, names: tuple[str, ...]) -> None:
    """Check each option field of a frozen dataclass through `OPTIONS`, keeping its normalized value."""
    for name in names:
        object.__setattr__(config, name, OPTIONS[name].check(getattr(config, name)))


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
            match (measured on the default pair's held-out replay: docs/BENCHMARKS.md).
        draft_confidence: adaptive draft length. A sequence stops drafting deeper once the
            draft's probability of its best candidate at the deepest level falls below this
            (that level is still verified; a prompt-lookup hit counts as confident), so
            each sequence drafts between 1 and `len(k_config)` levels a round: long drafts
            where the draft is sure, short ones where it is not. 0 always drafts the
            whole tree. Lossless either way: the length depends on the draft alone.
        draft_survival: adaptive draft length from what verification kept
            (`drafters.depth`): the engine keeps, per depth, how often a drafted token there
            was accepted after its predecessors were, and drafts no deeper than where a
            whole draft's chance of surviving falls below this (at least one level). For a
            draft that is sure and wrong (text unlike its training) it stops drafting rows
            that verification would throw away. Greedy requests only (a sampled request's
            tokens depend on how its draft is cut, and a seed must give the same tokens
            whatever ran before). 0 turns it off. Lossless either way.
    """

    k_config: tuple[int, ...] = OPTIONS["k_config"].default
    acceptance: AcceptanceRule = OPTIONS["acceptance"].default
    verify: VerifyPolicy = OPTIONS["verify"].default
    max_batch_tokens: int = OPTIONS["max_batch_tokens"].default
    compact_slack: int = OPTIONS["compact_slack"].default
    prompt_lookup: int = OPTIONS["prompt_lookup"].default
    prompt_lookup_below: float = OPTIONS["prompt_lookup_below"].default
    draft_confidence: float = OPTIONS["draft_confidence"].default
    draft_survival: float = OPTIONS["draft_survival"].default

    def __post_init__(self) -> None:
        _check_fields(self, SPECULATIVE_OPTIONS)
        require(self.max_batch_tokens >= 1 + tree_size(self.k_config),
                f"max_batch_tokens={self.max_batch_tokens} cannot hold one sequence's draft tree "
                f"({1 + tree_size(self.k_config)} tokens for k_config={self.k_config})")

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
        constraint: what the output must match (a JSON schema, a regex or a grammar,
            `engine.constraints.Constraint`); every token the target commits and every
            token the draft proposes is drawn under its mask, and the request ends
            ("stop") once the output completes it. None: free text.
    """

    temperature: float = OPTIONS["temperature"].default
    top_p: float = OPTIONS["top_p"].default
    max_tokens: int = 128  # the engine's own default; the LangChain field's is OPTIONS["max_tokens"].default
    seed: int | None = OPTIONS["seed"].default
    stop_token_ids: tuple[int, ...] = OPTIONS["stop_token_ids"].default
    ignore_eos: bool = OPTIONS["ignore_eos"].default
    stop_callback: StopCallback | None = field(default=None, compare=False)
    constraint: Constraint | None = None

    def __post_init__(self) -> None:
        _check_fields(self, SAMPLING_OPTIONS)
        require(self.stop_callback is None or callable(self.stop_callback),
                f"stop_callback must be callable or None; got {self.stop_callback!r}")
        require(self.constraint is None or isinstance(self.constraint, Constraint),
                f"constraint must be None or an engine.constraints.Constraint (Constraint.json_schema(...), "
                f".regex(...), .grammar(...)); got {self.constraint!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0
