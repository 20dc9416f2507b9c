"""How deep drafts are worth verifying, learnt from what verification kept.

The draft's own confidence (`SpeculativeConfig.draft_confidence`) cuts a chain where the
draft is unsure, but a draft can be sure and wrong: on text unlike what it was trained on
(the Blocksworld prompts of the paper table, a user's own app) the shipped draft's first
token was kept about half the time and its later ones far less, so most verified rows
were thrown away. `DraftDepth` keeps, per depth d, a running estimate of the chance
that the d-th drafted token is kept given that the ones before it were. Drafts are then
cut where the chance that a whole chain survives to the next depth falls under
`SpeculativeConfig.draft_survival`.

One instance serves an engine's drafters (every lane, and the per-request drafters of
the one-at-a-time modes), for greedy requests: it only decides how much to draft, never
what is emitted, so greedy outputs are unchanged whatever it learns. (A sampled request's
tokens depend on where its draft is cut; its depth must not depend on earlier requests.)
"""

from __future__ import annotations

import threading

PRIOR = 0.8
"""The conditional acceptance assumed before any evidence (and drifted back to): optimistic,
so a new engine drafts its whole tree (0.8 ** 5 = 0.33) until verification says otherwise."""
LEARNING_RATE = 0.05
"""Weight of one observation in a depth's running estimate (about the last 20 rounds)."""
RELAX_RATE = 0.01
"""How fast a depth that is no longer drafted drifts back to `PRIOR` (so it is tried again
after about a hundred rounds: the text may have changed)."""


class DraftDepth:
    """Running per-depth acceptance and the depth a draft may reach (module notes)."""

    def __init__(self, max_depth: int = 32) -> None:
        self._rates = [PRIOR] * max_depth
        self._lock = threading.Lock()

    def allowed(self, depth: int, min_survival: float) -> int:
        """How many of `depth` levels to draft: the deepest d whose chance of surviving
        whole (the product of the first d estimates) is at least `min_survival`; at least
        1 (the first level keeps being measured); `depth` when `min_survival` is 0."""
        if min_survival <= 0:
            return depth
        survival, allowed = 1.0, 0
        with self._lock:
            for rate in self._rates[:depth]:
                survival *= rate
                if survival < min_survival:
                    break
                allowed += 1
        return max(1, allowed)

    def record(self, offered: int, accepted: int) -> None:
        """One verified draft: `offered` levels drafted, the first `accepted` kept. Level
        d + 1 is observed when the first d were kept; levels not drafted relax to `PRIOR`."""
        with self._lock:
            for level, rate in enumerate(self._rates):
                if level < offered:
                    if accepted >= level:
                        kept = 1.0 if accepted > level else 0.0
                        self._rates[level] = rate + LEARNING_RATE * (kept - rate)
                else:
                    self._rates[level] = rate + RELAX_RATE * (PRIOR - rate)

    def rates(self) -> list[float]:
        """The current estimates, depth 1 first (a copy)."""
        with self._lock:
            return list(self._rates)
