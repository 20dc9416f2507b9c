"""Autoregressive and speculative requests, one at a time, on the engine's own worker thread.

`SerialRunner.submit` queues requests and returns at once; the worker runs each request
alone on a fresh `Scheduler` (`submit(..., start_thread=False)`, then `run_until_idle()`),
so its handle streams, cancels and fails exactly like a scheduled request's. The runner
holds no reference to the engine: an engine nobody holds is still collected and closed.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from langchain_seed.engine.cpu_share import CpuShare
from langchain_seed.engine.request import GenerationResult, Request
from langchain_seed.engine.scheduler import Scheduler
from langchain_seed.engine.stats import EngineStats, RequestStats, RunStats
from langchain_seed.engine.worker import Worker


@dataclass(eq=False)
class SerialJob:
    """The requests of one `submit`; `wait()` returns their forwards, rounds and memory peaks."""

    remaining: int
    stats: RunStats = field(default_factory=RunStats)
    _done: threading.Event = field(default_factory=threading.Event)

    def wait(self) -> RunStats:
        self._done.wait()
        return self.stats

    def _add(self, scheduler: Scheduler) -> None:
        target, draft = scheduler.forwards()
        self.stats.target_forwards += target
        self.stats.draft_forwards += draft
        self.stats.rounds += scheduler.stats.rounds
        self.stats.peak_kv_bytes = max(self.stats.peak_kv_bytes, scheduler.stats.peak_kv_bytes)
        self.stats.peak_rss_mb = max(self.stats.peak_rss_mb, scheduler.stats.peak_rss_mb)
        self.remaining -= 1
        if self.remaining == 0:
            self._done.set()


class SerialRunner(Worker):
    """Runs requests one after another on a worker thread, each on its own `Scheduler`.

    Args:
        make_scheduler: builds a scheduler given the `cpu_share` keyword (no engine reference).
        cpu_share: passed to every scheduler; the engine replaces it when its own changes.
    """

    thread_name = "langchain-seed-serial"

    def __init__(self, make_scheduler: Callable[..., Scheduler], cpu_share: CpuShare) -> None:
        super().__init__()
        self.make_scheduler = make_scheduler
        self.cpu_share = cpu_share
        self._waiting: deque[tuple[Request, SerialJob]] = deque()
        self._current: Scheduler | None = None
        self._finished = EngineStats()

    def submit(self, requests: list[Request]) -> SerialJob:
        """Queue requests (run in order, after those queued before); thread-safe."""
        job = SerialJob(len(requests))
        if not requests:
            job._done.set()
        with self._lock:
            self._check_open()
            self._waiting.extend((request, job) for request in requests)
            self._lock.notify_all()
            self._start_thread()
        return job

    def snapshot(self) -> EngineStats:
        """What the serial runs have done so far, the running request included; any thread."""
        with self._lock:
            running = self._current.snapshot() if self._current is not None else EngineStats()
            return self._finished + running + EngineStats(waiting=len(self._waiting))

    def _serve(self) -> None:
        while True:
            with self._lock:
                self._lock.wait_for(lambda: self._waiting or self._closed)
                if not self._waiting:
                    return
                request, job = self._waiting.popleft()
                scheduler = self._current = self.make_scheduler(cpu_share=self.cpu_share)
            self._run(scheduler, request)
            with self._lock:
                done = dataclasses.replace(scheduler.snapshot(), active=0, waiting=0, kv_bytes=0)
                self._finished += done
                self._current = None
                job._add(scheduler)

    @staticmethod
    def _run(scheduler: Scheduler, request: Request) -> None:
        scheduler.submit([request], start_thread=False)
        try:
            scheduler.run_until_idle()
        except Exception as error:
            stats = RequestStats(prompt_tokens=len(request.prompt_ids))
            request.handle._finish(GenerationResult([], "error", stats, error))
