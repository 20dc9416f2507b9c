"""Requests, their handles, and their results.

A `RequestHandle` is what `SeedEngine.submit` gives back, in every decoding mode: it can
be waited on (`result()`, `await handle`), iterated for the new tokens as they are
committed (sync and async), and cancelled. The engine's thread (the scheduler's or the
serial worker's) writes to it; any other thread or event loop reads from it. Nothing here
touches a model.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from langchain_seed.engine.config import SamplingParams, SpeculativeConfig
from langchain_seed.engine.constraints import TokenMasks
from langchain_seed.engine.stats import RequestStats

FinishReason = Literal["stop", "length", "cancelled", "error"]

_request_ids = itertools.count()


class RequestCancelled(Exception):
    """Raised by `RequestHandle.result()` for a request that was cancelled, when asked to raise."""


@dataclass
class GenerationResult:
    """One request's output.

    Attributes:
        token_ids: new tokens only (a stop or EOS token that ended the request included).
        finish_reason: "stop" (EOS, stop token or stop callback), "length" (max_tokens),
            "cancelled" or "error".
        stats: what decoding it cost.
        error: the exception that failed it, for finish_reason "error".
    """

    token_ids: list[int]
    finish_reason: FinishReason
    stats: RequestStats
    error: BaseException | None = None


class RequestHandle:
    """A submitted request: wait for it, stream its tokens, or cancel it."""

    def __init__(self, request_id: int) -> None:
        self.request_id = request_id
        self._condition = threading.Condition()
        self._chunks: list[list[int]] = []
        self._result: GenerationResult | None = None
        self._cancel_requested = False
        self._listeners: list[tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = []

    # ----- engine side -------------------------------------------------------------
    def _emit(self, token_ids: list[int]) -> None:
        with self._condition:
            self._chunks.append(token_ids)
            self._condition.notify_all()
            listeners = list(self._listeners)
        for loop, queue in listeners:
            _post(loop, queue, ("chunk", token_ids))

    def _finish(self, result: GenerationResult) -> None:
        with self._condition:
            if self._result is not None:
                return
            self._result = result
            self._condition.notify_all()
            listeners = list(self._listeners)
        for loop, queue in listeners:
            _post(loop, queue, ("done", result))

    @property
    def cancel_requested(self) -> bool:
        return self._cancel_requested

    # ----- user side ---------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self._result is not None

    def cancel(self) -> None:
        """Ask the engine to stop this request at the next round; its tokens so far are kept."""
        self._cancel_requested = True

    def wait(self, timeout: float | None = None) -> GenerationResult:
        """Block until the request ends and return its result, failed or not."""
        with self._condition:
            self._condition.wait_for(lambda: self._result is not None, timeout)
            if self._result is None:
                raise TimeoutError(f"request {self.request_id} did not finish within {timeout} s")
            return self._result

    def result(self, timeout: float | None = None) -> GenerationResult:
        """Block until the request ends; re-raise its error if it failed."""
        result = self.wait(timeout)
        if result.error is not None:
            raise result.error
        return result

    def _has_news(self, seen: int) -> bool:
        """Whether chunks past the first `seen` arrived or the request ended (under the condition)."""
        return len(self._chunks) > seen or self._result is not None

    def __iter__(self) -> Iterator[list[int]]:
        """New token ids as they are committed, chunk by chunk; re-raises a failure at the end."""
        index = 0
        while True:
            with self._condition:
                self._condition.wait_for(functools.partial(self._has_news, index))
                chunks = self._chunks[index:]
                finished = self._result
            index += len(chunks)
            yield from chunks
            if finished is not None and index >= len(self._chunks):
                if finished.error is not None:
                    raise finished.error
                return

    async def __aiter__(self) -> AsyncIterator[list[int]]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        with self._condition:
            for chunk in self._chunks:
                queue.put_nowait(("chunk", chunk))
            if self._result is not None:
                queue.put_nowait(("done", self._result))
            else:
                self._listeners.append((loop, queue))
        try:
            while True:
                kind, payload = await queue.get()
                if kind == "chunk":
                    yield payload
                    continue
                if payload.error is not None:
                    raise payload.error
                return
        finally:
            with self._condition:
                if (loop, queue) in self._listeners:
                    self._listeners.remove((loop, queue))

    def __await__(self):
        return self._wait_async().__await__()

    async def _wait_async(self) -> GenerationResult:
        async for _ in self:
            pass
        return self.result(timeout=0)


def _post(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue, item) -> None:
    try:
        loop.call_soon_threadsafe(queue.put_nowait, item)
    except RuntimeError:  # the listener's loop is closed: nobody is waiting any more
        pass


@dataclass(eq=False)
class Request:
    """A request as the scheduler sees it.

    Attributes:
        matcher: the grammar matcher of `params.constraint`, compiled (and checked) when the
            request was made; None for free text.
    """

    prompt_ids: list[int]
    params: SamplingParams
    config: SpeculativeConfig
    handle: RequestHandle
    submitted_at: float = field(default_factory=time.perf_counter)
    matcher: Any = None

    @classmethod
    def create(cls, prompt_ids: list[int], params: SamplingParams, config: SpeculativeConfig,
               matcher: Any = None) -> Request:
        return cls(list(prompt_ids), params, config, RequestHandle(next(_request_ids)), matcher=matcher)


@dataclass(eq=False)
class SequenceState:
    """The live decoding state of one admitted request.

    Attributes:
        tokens: prompt followed by the tokens committed so far.
        target_pending: how many trailing tokens are not yet in the target's cache.
        draft_pending: how many trailing tokens are not yet in the draft's cache.
        target_features: the target's features (last hidden states, `[k, hidden]` chunks) at
            the positions it cached since a feature-conditioned drafter last took them; kept
            only in lanes whose drafter asks for them.
        finish_reason: set once the sequence is done.
        masks: the grammar state of a constrained request (`constraints.TokenMasks`), at
            the committed text; None for free text.
    """

    request: Request
    generator: torch.Generator
    tokens: list[int]
    stop_token_ids: frozenset[int]
    stats: RequestStats
    admitted_at: float
    target_pending: int = 1
    draft_pending: int = 1
    finish_reason: FinishReason | None = None
    error: BaseException | None = None
    target_features: list[torch.Tensor] = field(default_factory=list)
    masks: TokenMasks | None = None

    @property
    def params(self) -> SamplingParams:
        return self.request.params

    @property
    def prompt_len(self) -> int:
        return len(self.request.prompt_ids)

    @property
    def output_ids(self) -> list[int]:
        return self.tokens[self.prompt_len:]

    @property
    def remaining(self) -> int:
        return self.params.max_tokens - (len(self.tokens) - self.prompt_len)

    def pending_tokens(self, count: int) -> tuple[list[int], int]:
        """The last `count` tokens and the position of the first of them."""
        return self.tokens[len(self.tokens) - count:], len(self.tokens) - count

    def take_target_features(self) -> torch.Tensor | None:
        """The target features not yet taken, `[k, hidden]` in position order (None if none)."""
        if not self.target_features:
            return None
        features = torch.cat(self.target_features) if len(self.target_features) > 1 else self.target_features[0]
        self.target_features = []
        return features
