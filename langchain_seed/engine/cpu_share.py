"""Whether this process gets the CPUs its kernels would use: the engine's thread count on a
shared machine.

A forward of a small model at decoding sizes is a few hundred short OpenMP parallel regions,
each ending in a barrier that waits for every thread of the team. When other processes hold
the cores, one of the team's threads is often waiting for a CPU, and every region waits a
scheduler time slice for it: the forward slows down ten times rather than in proportion to
the CPU share the process gets. One thread has no barrier to wait at.

`CpuShare` reads how long this process's threads waited for a CPU (the kernel's run-queue
delay, ``/proc/self/task/*/schedstat``) against the wall time between rounds, smoothed over
rounds, and limits the engine's kernels to one thread while that share of waiting is high,
back to all of them once it is low again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)

CONTENDED_ABOVE = 0.25
"""Run-queue wait per second of wall time (all threads summed) above which the CPU is shared."""
FREE_BELOW = 0.10
"""... and below which, on one thread, the next round tries every thread again."""
MIN_INTERVAL_S = 0.005
"""Rounds closer together than this are pooled with the next one."""
FIRST_HOLD_ROUNDS, MAX_HOLD_ROUNDS = 4, 64
"""Rounds on one thread before trying every thread again; doubled after each try that
found the CPU still shared (a round of waiting barriers costs many rounds on one thread)."""


def process_wait_seconds(tasks: Path = Path("/proc/self/task")) -> float | None:
    """Seconds this process's threads have spent runnable but waiting for a CPU, summed; None
    where the kernel does not report it."""
    total = 0
    try:
        for task in tasks.iterdir():
            try:
                total += int((task / "schedstat").read_text().split()[1])
            except (FileNotFoundError, ProcessLookupError):
                continue  # the thread ended meanwhile
    except (OSError, ValueError, IndexError):
        return None
    return total / 1e9


class CpuShare:
    """Tracks the process's run-queue wait between calls of `sample` (once a round) and
    says how many threads the next round may use (`thread_limit`).

    On every thread, one round with a high wait switches to one thread at once. On one
    thread, after a hold of some rounds with a low wait, one round tries every thread again;
    a try that finds the CPU still shared doubles the hold (up to `MAX_HOLD_ROUNDS`).
    """

    def __init__(self, read_wait: Callable[[], float | None] = process_wait_seconds,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._read_wait, self._clock = read_wait, clock
        self._last = self._reading()
        self.waiting_share = 0.0
        """Run-queue wait per second of wall time over the last sampled round."""
        self.contended = False
        """Whether the kernels are held to one thread because others hold the CPUs."""
        self._hold = FIRST_HOLD_ROUNDS
        self._held = 0
        self._trying = False

    def thread_limit(self) -> int | None:
        """1 while the CPU is contended, else None (no limit)."""
        return 1 if self.contended else None

    def sample(self) -> None:
        """Measure the round since the last sample and decide the next round's threads."""
        if self._last is None:
            return
        now = self._reading()
        if now is None:
            self._last = None
            return
        elapsed = now[0] - self._last[0]
        if elapsed < MIN_INTERVAL_S:
            return
        self.waiting_share = max(0.0, now[1] - self._last[1]) / elapsed
        self._last = now
        if self.contended:
            self._on_one_thread()
        else:
            self._on_every_thread()

    def _on_every_thread(self) -> None:
        if self.waiting_share <= CONTENDED_ABOVE:
            if self._trying:
                self._hold, self._trying = FIRST_HOLD_ROUNDS, False
            return
        if self._trying:
            self._hold = min(2 * self._hold, MAX_HOLD_ROUNDS)
        self._switch(contended=True)

    def _on_one_thread(self) -> None:
        self._held += 1
        if self._held >= self._hold and self.waiting_share < FREE_BELOW:
            self._trying = True
            self._switch(contended=False)

    def _switch(self, contended: bool) -> None:
        logger.info("run-queue wait %.2f s/s: the engine's kernels use %s", self.waiting_share,
                    "one thread" if contended else "every thread")
        self.contended, self._held = contended, 0

    def _reading(self) -> tuple[float, float] | None:
        wait = self._read_wait()
        return None if wait is None else (self._clock(), wait)
