"""How good and how cheap a draft is: greedy chain acceptance replayed against the
target's own continuations, and the per-token cost of one cached forward.

Costs are timed alternately against the target's, medians of a few runs, with both
models' linears on the engine's kernels, so a change in the machine's load hits both.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from transformers import DynamicCache

from langchain_seed.engine import kernels, routing
from langchain_seed.engine.kernels import linear


def teacher_forced_acceptance(
    draft_tokens: Sequence[int], target_tokens: Sequence[int], chain: int = 4,
    count_past_end: bool = False,
) -> tuple[int, int]:
    """Greedy chain-of-``chain`` speculative decoding, replayed by teacher forcing.

    ``target_tokens[i]`` is the target's greedy continuation and ``draft_tokens[i]`` the
    draft's argmax for position i given the target's tokens before it. A round starting
    at j drafts ``min(chain, n - j)`` tokens, accepts the longest prefix where the draft
    matches the target, and advances by accepted + 1 (the recovered or bonus token).
    With ``count_past_end`` every round counts ``chain`` drafted tokens, also where fewer
    are left before the end (the strict count of `scripts/draft_acceptance.py`).
    Returns (accepted, drafted) summed over all rounds.
    """
    n = len(target_tokens)
    if len(draft_tokens) != n:
        raise ValueError("draft_tokens and target_tokens must have the same length")
    accepted = drafted = 0
    j = 0
    while j < n:
        width = min(chain, n - j)
        matched = 0
        while matched < width and draft_tokens[j + matched] == target_tokens[j + matched]:
            matched += 1
        accepted += matched
        drafted += chain if count_past_end else width
        j += matched + 1
    return accepted, drafted


class AcceptanceTally:
    """Accepted and drafted tokens, in all and per prompt shape."""

    def __init__(self) -> None:
        self.accepted = self.drafted = 0
        self.by_shape: dict[str, list[int]] = {}

    def add(self, shape: str, accepted: int, drafted: int) -> None:
        self.accepted, self.drafted = self.accepted + accepted, self.drafted + drafted
        counts = self.by_shape.setdefault(shape, [0, 0])
        counts[0], counts[1] = counts[0] + accepted, counts[1] + drafted

    def summary(self) -> dict:
        """The report's acceptance fields."""
        return {"acceptance_rate": self.accepted / max(1, self.drafted), "accepted": self.accepted,
                "drafted": self.drafted}

    def by_shape_rates(self) -> dict:
        return {k: v[0] / max(1, v[1]) for k, v in sorted(self.by_shape.items())}


def head_logits(hidden: torch.Tensor, head_weight: torch.Tensor) -> torch.Tensor:
    """Draft logits over the restricted head. hidden [..., H], head_weight [head, H]."""
    return linear(hidden, head_weight)


def alternating_costs(draft: Any, target: Any, draft_step_ms: Callable[[], float],
                      repeats: int = 5) -> tuple[float, float]:
    """(draft ms, target ms): `draft_step_ms()` and the target's `step_ms` timed alternately
    ``repeats`` times, medians, so that a change in the machine's load hits both. The
    models' linears run on the engine's kernels (`engine.kernels`: the native C kernel where it builds).
    """
    draft_times, target_times = [], []
    with routing.install(draft), routing.install(target), kernels.engine_kernels():
        for _ in range(repeats):
            draft_times.append(draft_step_ms())
            target_times.append(step_ms(target))
    return statistics.median(draft_times), statistics.median(target_times)


def median_step_ms(step: Callable[[int], None], steps: int = 30, warmup: int = 3) -> float:
    """Median ms of `step(i)` over `steps` calls after `warmup` untimed ones."""
    times = []
    for i in range(steps + warmup):
        start = time.perf_counter()
        step(i)
        if i >= warmup:
            times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def random_context(vocab_size: int, context: int) -> torch.Tensor:
    """`[1, context]` token ids drawn from a fixed seed: the cost runs' prompt."""
    generator = torch.Generator().manual_seed(0)
    return torch.randint(3, vocab_size, (1, context), generator=generator)


def step_ms(model: Any, head_ids: Any | None = None, context: int = 64, steps: int = 30) -> float:
    """Median ms of one cached single-token forward (restricted head if ``head_ids``)."""
    ids = random_context(model.config.vocab_size, context)
    with torch.no_grad():
        cache = DynamicCache(config=model.config)
        model.model(input_ids=ids, cache=cache, use_cache=True)
        token = ids[:, -1:]
        head_weight = model.get_input_embeddings().weight[head_ids] if head_ids is not None else None

        def step(i: int) -> None:
            nonlocal token
            position = torch.tensor([[context + i]])
            if head_ids is not None and head_weight is not None:  # both set, or neither
                hidden = model.model(input_ids=token, cache=cache, use_cache=True,
                                     position_ids=position).last_hidden_state
                token = head_ids[head_logits(hidden[:, -1], head_weight).argmax(-1)][:, None]
            else:
                logits = model(input_ids=token, cache=cache, use_cache=True,
                               position_ids=position, logits_to_keep=1).logits
                token = logits[:, -1].argmax(-1)[:, None]

        return median_step_ms(step, steps)
