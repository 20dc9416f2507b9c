"""Statistics of one Tree-of-Thoughts run: LLM calls, tokens, time, LLM-reported info.

What the LLM reports in ``generation_info`` (per completion) and ``llm_output`` (per
call) is aggregated separately: numbers are summed, except rates and averages (keys
with ``rate``, ``ratio``, ``mean``, ``avg``, ``average``, ``per_``, ``temperature``,
``top_p``, ``top_k``), which are averaged; nested dicts are flattened with dots
(``token_usage.prompt_tokens``); non-numbers are dropped. When ``drafted`` and
``accepted`` are both present, ``acceptance_rate`` is recomputed as accepted / drafted
(SeedLLM's speculative statistics).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain_seed.tot.client import LLMReply, Usage

_MEAN_MARKERS = ("rate", "ratio", "mean", "avg", "average", "per_", "temperature", "top_p", "top_k")


def flatten_numbers(data: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a nested mapping, keyed by dotted path."""
    flat: dict[str, float] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_numbers(value, f"{path}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[path] = value
    return flat


def is_mean_key(path: str) -> bool:
    """Whether a statistic is a rate or average (averaged, not summed)."""
    name = path.rsplit(".", 1)[-1].lower()
    return any(marker in name for marker in _MEAN_MARKERS)


@dataclass
class InfoAggregate:
    """Accumulates numeric LLM-reported statistics; see the module docstring."""

    values: dict[str, list[float]] = field(default_factory=dict)

    def add(self, data: Mapping[str, Any] | None, scale: float = 1.0) -> None:
        """Add one report; additive numbers are multiplied by ``scale``."""
        for path, value in flatten_numbers(data or {}).items():
            scaled = value if is_mean_key(path) else value * scale
            self.values.setdefault(path, []).append(scaled)

    def result(self) -> dict[str, float]:
        """The aggregated statistics."""
        summary = {
            path: (sum(vals) / len(vals) if is_mean_key(path) else _tidy(sum(vals)))
            for path, vals in self.values.items()
        }
        for prefix in {path.rpartition(".")[0] for path in summary}:
            _recompute_acceptance(summary, f"{prefix}." if prefix else "")
        return summary


def _tidy(total: float) -> float:
    """Sums of integers stay integers."""
    return int(total) if float(total).is_integer() else total


def _recompute_acceptance(summary: dict[str, float], prefix: str) -> None:
    """Set ``acceptance_rate`` = accepted / drafted when both are known."""
    drafted = summary.get(f"{prefix}drafted")
    accepted = summary.get(f"{prefix}accepted")
    if drafted and accepted is not None:
        summary[f"{prefix}acceptance_rate"] = accepted / drafted


@dataclass
class ToTStats:
    """Counters of one Tree-of-Thoughts run.

    In ``TreeOfThoughts.batch`` one LLM call may serve several questions: per-prompt
    data (texts, ``generation_info``, chat token usage) is attributed exactly, while a
    call's ``llm_output`` and call-level token usage are split in proportion to each
    question's share of the prompts; ``llm_seconds`` counts the whole call for each.
    """

    llm_calls: int = 0
    """Completions requested (prompts x ``n``)."""
    llm_batches: int = 0
    """Batched calls to the LLM (one per level for thoughts, one for evaluations...)."""
    batches_by_role: dict[str, int] = field(default_factory=dict)
    """Batched calls per role: propose, sample, value, vote, answer."""
    prompt_tokens: int | None = None
    """Prompt tokens, when the LLM reports them (else None; see ``prompt_chars``)."""
    completion_tokens: int | None = None
    """Completion tokens, when the LLM reports them (else None; see ``completion_chars``)."""
    prompt_chars: int = 0
    """Characters sent (each prompt counted ``n`` times)."""
    completion_chars: int = 0
    """Characters received."""
    seconds: float = 0.0
    """Wall time of the whole run."""
    llm_seconds: float = 0.0
    """Wall time spent waiting for the LLM."""
    states: int = 0
    """States created (root excluded)."""
    unparsed_values: int = 0
    """Value replies without a score (counted as 0)."""
    unparsed_votes: int = 0
    """Vote replies without a valid choice."""
    cache_hits: int = 0
    """State evaluations answered from the score cache."""
    generation_info_aggregate: InfoAggregate = field(default_factory=InfoAggregate, repr=False)
    llm_output_aggregate: InfoAggregate = field(default_factory=InfoAggregate, repr=False)

    @property
    def generation_info(self) -> dict[str, float]:
        """Aggregated ``generation_info`` of every completion (speculative statistics)."""
        return self.generation_info_aggregate.result()

    @property
    def llm_output(self) -> dict[str, float]:
        """Aggregated ``llm_output`` of every call."""
        return self.llm_output_aggregate.result()

    def add_call(
        self,
        role: str,
        reply: LLMReply,
        prompts: Sequence[str],
        positions: range,
        n: int,
        share: float = 1.0,
    ) -> None:
        """Record the part of one batched call that served this run.

        ``positions`` are this run's prompts inside the call, ``share`` its fraction
        of the call's prompts.
        """
        self.llm_batches += 1
        self.batches_by_role[role] = self.batches_by_role.get(role, 0) + 1
        self.llm_calls += len(positions) * n
        self.llm_seconds += reply.seconds
        self.prompt_chars += sum(len(prompts[p]) for p in positions) * n
        for position in positions:
            self.completion_chars += sum(len(text) for text in reply.texts[position])
            for info in reply.generation_infos[position]:
                self.generation_info_aggregate.add(info)
            self._add_usage(reply.usages[position], 1.0)
        self.llm_output_aggregate.add(reply.llm_output, share)
        self._add_usage(reply.call_usage, share)

    def _add_usage(self, usage: Usage | None, share: float) -> None:
        """Add reported token usage, scaled by ``share``."""
        if usage is None:
            return
        self.prompt_tokens = (self.prompt_tokens or 0) + round(usage.prompt_tokens * share)
        self.completion_tokens = (self.completion_tokens or 0) + round(
            usage.completion_tokens * share
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain-data view (JSON-ready)."""
        return {
            "llm_calls": self.llm_calls,
            "llm_batches": self.llm_batches,
            "batches_by_role": dict(self.batches_by_role),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "prompt_chars": self.prompt_chars,
            "completion_chars": self.completion_chars,
            "seconds": self.seconds,
            "llm_seconds": self.llm_seconds,
            "states": self.states,
            "unparsed_values": self.unparsed_values,
            "unparsed_votes": self.unparsed_votes,
            "cache_hits": self.cache_hits,
            "generation_info": self.generation_info,
            "llm_output": self.llm_output,
        }
