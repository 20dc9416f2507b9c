"""What a benchmark run records: per method, per repetition totals, and the run."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from langchain_seed.bench.probes import MemoryPeak


@dataclass
class RepTotals:
    """One method's totals over one repetition of the workload."""

    seconds: float = 0.0
    new_tokens: int = 0
    target_calls: int = 0
    draft_calls: int = 0
    drafted: int | None = None
    accepted: int | None = None
    bound_seconds: float | None = None
    peak_rss_mb: float = 0.0
    rss_delta_mb: float = 0.0
    peak_gpu_mb: float | None = None

    def add_optional(self, name: str, value: float | int | None) -> None:
        if value is not None:
            setattr(self, name, (getattr(self, name) or 0) + value)

    def add_call(self, seconds: float, new_tokens: int, target_calls: int, draft_calls: int,
                 memory: MemoryPeak) -> None:
        """Add one measured call: times and counts sum, memory peaks take the maximum."""
        self.seconds += seconds
        self.new_tokens += new_tokens
        self.target_calls += target_calls
        self.draft_calls += draft_calls
        self.peak_rss_mb = max(self.peak_rss_mb, memory.peak_rss_mb)
        self.rss_delta_mb = max(self.rss_delta_mb, memory.rss_delta_mb)
        if memory.peak_gpu_mb is not None:
            self.peak_gpu_mb = max(self.peak_gpu_mb or 0.0, memory.peak_gpu_mb)


def assisted_acceptance(draft_calls: int, target_calls: int, new_tokens: int) -> tuple[int, int]:
    """(drafted, accepted) of transformers assisted generation, from forward counts.

    Every assistant forward proposes one token and every target forward verifies one
    round, committing accepted + 1 tokens.
    """
    return draft_calls, min(draft_calls, max(0, new_tokens - target_calls))


@dataclass
class MethodRecord:
    """Everything measured for one method."""

    name: str
    reps: list[RepTotals] = field(default_factory=list)
    identical: bool | None = True
    """Every output equal to the reference's; None where nothing is compared (sampled runs)."""
    mismatches: list[str] = field(default_factory=list)
    outputs: list[list[list[int]]] = field(default_factory=list, repr=False)
    divergences: list[int | None] = field(default_factory=list)
    """Per prompt of the first repetition, in workload order: None where the output equals
    the target's, else the index of the first new token that differs."""

    def mismatch(self, item: str) -> None:
        """Record that the outputs for ``item`` (a group or question) differ from the reference."""
        self.identical = False
        if item not in self.mismatches:
            self.mismatches.append(item)

    def median(self, attribute: str) -> float | None:
        values = [getattr(rep, attribute) for rep in self.reps if getattr(rep, attribute) is not None]
        return statistics.median(values) if values else None

    def peak(self, attribute: str) -> float | None:
        values = [getattr(rep, attribute) for rep in self.reps if getattr(rep, attribute) is not None]
        return max(values) if values else None


def first_divergence(output: list[int], expected: list[int]) -> int | None:
    """The index of the first token where ``output`` and ``expected`` differ (a missing
    token counts as different); None when they are equal."""
    if output == expected:
        return None
    return next((i for i, (a, b) in enumerate(zip(output, expected)) if a != b), min(len(output), len(expected)))


@dataclass
class BenchRun:
    """A finished benchmark: workload settings and one record per method, in method order."""

    workload: str
    settings: dict
    records: list[MethodRecord]
    reps: int
    profile: dict | None = None
