"""`SeedRun`: the generations of one call, as text streamed over the engine's request handles.

`start_run` hands every prompt (n times each) to `engine.submit_many` in the call's
decoding mode and returns at once; each generation's handle yields its new token ids as
the engine commits them, and `StreamingText` turns them into text that never changes once
released. Every mode streams the same way: scheduled requests share the running
scheduler, serial ones run one at a time on the engine's worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from langchain_seed.engine import EngineStats, GenerationResult, RequestHandle, RunStats, SeedEngine
from langchain_seed.lc.options import CallOptions
from langchain_seed.lc.text import StopChecker, StopSequences, StreamingText


@dataclass
class Generation:
    """One generation of a run: the engine's handle and the text made of its tokens."""

    handle: RequestHandle
    text: StreamingText
    prompt_tokens: int
    result: GenerationResult | None = None


@dataclass
class SeedRun:
    """The generations of one call, running on the engine; their text, statistics, timeout."""

    engine: SeedEngine
    options: CallOptions
    generations: list[Generation]
    started: float
    stats_before: EngineStats
    timed_out: bool = False
    _timer: threading.Timer | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.generations)

    # ----- text, chunk by chunk ---------------------------------------------------------
    def iter_text(self, index: int) -> Iterator[str]:
        """Text pieces of generation `index` as its tokens are committed (blocking)."""
        generation = self.generations[index]
        with self._timeout_errors():
            for token_ids in generation.handle:
                yield from _piece(generation.text.push(token_ids))
        yield from self._finish(generation)

    async def aiter_text(self, index: int) -> AsyncIterator[str]:
        """Text pieces of generation `index`, without ever blocking the event loop."""
        generation = self.generations[index]
        with self._timeout_errors():
            async for token_ids in generation.handle:
                for piece in _piece(generation.text.push(token_ids)):
                    yield piece
        for piece in self._finish(generation):
            yield piece

    def _finish(self, generation: Generation) -> Iterator[str]:
        """The text's last piece, then the request's error (or the timeout), if any."""
        yield from _piece(generation.text.finish())
        generation.result = generation.handle.wait()
        self._raise_if_timed_out()
        if generation.result.error is not None:
            raise generation.result.error

    @contextlib.contextmanager
    def _timeout_errors(self) -> Iterator[None]:
        """A request that failed because the run timed out raises `TimeoutError` instead."""
        try:
            yield
        except Exception:
            self._raise_if_timed_out()
            raise

    def _raise_if_timed_out(self) -> None:
        if self.timed_out:
            raise TimeoutError(f"generation did not finish within timeout={self.options.timeout} s; it was cancelled")

    # ----- control ----------------------------------------------------------------------
    def start_timer(self) -> None:
        if self.options.timeout is not None:
            self._timer = threading.Timer(self.options.timeout, self._expire)
            self._timer.daemon = True
            self._timer.start()

    def _expire(self) -> None:
        if any(not g.handle.done for g in self.generations):
            self.timed_out = True
            self.cancel()

    def cancel(self) -> None:
        """Stop every generation that is still running (its tokens so far are kept)."""
        for generation in self.generations:
            if not generation.handle.done:
                generation.handle.cancel()

    def close(self) -> None:
        """Cancel what is unfinished and stop the timer (call when the caller is done)."""
        if self._timer is not None:
            self._timer.cancel()
        self.cancel()

    # ----- reading every generation -----------------------------------------------------
    def read_all(self, on_piece: Callable[[int, str], None] | None = None) -> None:
        """Read every generation to its end (in order; the engine runs them all at once)."""
        try:
            for index in range(len(self)):
                for piece in self.iter_text(index):
                    if on_piece is not None:
                        on_piece(index, piece)
        finally:
            self.close()

    async def aread_all(self, on_piece: Callable[[int, str], Awaitable[None]] | None = None) -> None:
        """Read every generation concurrently on the event loop; cancelling this cancels the requests."""

        async def read(index: int) -> None:
            async for piece in self.aiter_text(index):
                if on_piece is not None:
                    await on_piece(index, piece)

        try:
            await asyncio.gather(*(read(index) for index in range(len(self))))
        finally:
            self.close()

    # ----- statistics -------------------------------------------------------------------
    def finish_reason(self, index: int) -> str:
        generation = self.generations[index]
        if generation.text.stopped:
            return "stop"
        return generation.result.finish_reason if generation.result is not None else "cancelled"

    def generation_info(self, index: int) -> dict[str, Any]:
        """Speculative statistics of generation `index` (it must have finished)."""
        generation = self.generations[index]
        info: dict[str, Any] = {"finish_reason": self.finish_reason(index), "decoding": self.options.decoding}
        if generation.result is None:
            return info
        stats = generation.result.stats
        info.update(
            prompt_tokens=stats.prompt_tokens,
            new_tokens=generation.text.token_count if generation.text.stopped else stats.new_tokens,
            drafted=stats.drafted,
            accepted=stats.accepted,
            acceptance_rate=stats.acceptance_rate,
            mean_accepted_length=stats.mean_accepted_length,
            target_calls=stats.target_calls,
            draft_calls=stats.draft_calls,
            verify_steps=stats.verify_steps,
            seconds=stats.seconds,
        )
        return info

    def run_stats(self) -> RunStats:
        """Totals of the run. Forwards and rounds are the engine's during the run
        (`engine.stats()`), which it shares with any concurrent call."""
        stats = RunStats()
        for generation in self.generations:
            if generation.result is not None:
                stats.add_request(generation.result.stats)
        stats.seconds = time.perf_counter() - self.started
        now, before = self.engine.stats(), self.stats_before
        stats.target_forwards = now.target_forwards - before.target_forwards
        stats.draft_forwards = now.draft_forwards - before.draft_forwards
        stats.rounds = now.rounds - before.rounds
        stats.peak_kv_bytes, stats.peak_rss_mb = now.peak_kv_bytes, now.peak_rss_mb
        return stats


def _piece(text: str) -> tuple[str, ...]:
    """A text piece to yield, or none for the empty string."""
    return (text,) if text else ()


def start_run(engine: SeedEngine, tokenizer: Any, prompt_ids: list[list[int]], options: CallOptions,
              stop: StopSequences) -> SeedRun:
    """Hand every prompt, n times each, to the engine at once (prompt-major order)."""
    skip_ids = engine.eos_token_ids
    all_ids, params, texts = [], [], []
    for ids in prompt_ids:
        for sample in range(options.n):
            checker = StopChecker(tokenizer, ids, stop, skip_ids) if stop else None
            all_ids.append(ids)
            params.append(options.sampling_params(sample, checker))
            texts.append(StreamingText(tokenizer, ids, stop, skip_ids))
    before, started = engine.stats(), time.perf_counter()
    handles = engine.submit_many(all_ids, params, config=options.speculative_config(), mode=options.decoding)
    generations = [Generation(h, t, len(ids)) for h, t, ids in zip(handles, texts, all_ids)]
    run = SeedRun(engine, options, generations, started, before)
    run.start_timer()
    return run


def check_prompt_fits(engine: SeedEngine, index: int, prompt_ids: list[int], options: CallOptions) -> None:
    """The engine's own vocabulary and context-window check of one prompt under `options`,
    run before submitting so that a batch can tell its bad prompts from its good ones."""
    engine.check_request(prompt_ids, options.sampling_params(0), options.decoding, options.speculative_config(),
                         index=index)
