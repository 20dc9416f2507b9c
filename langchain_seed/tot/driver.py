"""Plans and the drivers that run them, sync or async, one or many in lockstep.

The search is written once, as a *plan*: a generator that yields an
:class:`LLMRequest` (a list of prompts) whenever it needs the LLM and receives the
completions back (``list[list[str]]``, per prompt its completions). It never calls the
LLM itself, so the same plan runs:

- synchronously (:func:`run_plan`), or asynchronously on the LLM's async API
  (:func:`arun_plan`), without duplicating the search logic;
- many at once (:func:`run_plans` / :func:`arun_plans`): plans advance in lockstep and
  the requests that are pending together are merged into one batched LLM call per
  (client, stop sequences, ``n``), so a scheduling LLM serves every question's level at
  once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from langchain_seed.tot.client import LLMClient, LLMReply
from langchain_seed.tot.stats import ToTStats

T = TypeVar("T")
Completions = list[list[str]]


@dataclass(frozen=True)
class LLMRequest:
    """A batch of prompts a plan needs answered, all in one call."""

    client: LLMClient
    """The LLM to ask."""
    prompts: tuple[str, ...]
    """The prompts; the reply holds, per prompt, its ``n`` completions."""
    role: str
    """What the prompts are for: propose, sample, value, vote, answer."""
    stop: tuple[str, ...] | None = None
    """Stop sequences."""
    n: int = 1
    """Completions per prompt."""

    def merge_key(self) -> tuple[Any, ...]:
        """Requests with equal keys can share one LLM call: same LLM, kwargs, stop, n."""
        kwargs = repr(sorted(self.client.llm_kwargs.items()))
        return (id(self.client.llm), kwargs, self.stop, self.n)


Plan = Generator[LLMRequest, Completions, T]


def regroup(flat: Completions, size: int) -> Completions:
    """Completions of prompts each sent ``size`` times in a row -> per original prompt."""
    return [
        [text for texts in flat[start:start + size] for text in texts]
        for start in range(0, len(flat), size)
    ]


def run_plan(plan: Plan[T], stats: ToTStats | None = None, callbacks: Any = None) -> T:
    """Run one plan synchronously; exceptions propagate."""
    return _unwrap(run_plans([plan], [stats or ToTStats()], [callbacks])[0])


async def arun_plan(plan: Plan[T], stats: ToTStats | None = None, callbacks: Any = None) -> T:
    """Run one plan on the LLM's async API; exceptions propagate."""
    return _unwrap((await arun_plans([plan], [stats or ToTStats()], [callbacks]))[0])


def run_plans(
    plans: Sequence[Plan[Any]],
    stats: Sequence[ToTStats],
    callbacks: Sequence[Any] | None = None,
) -> list[Any]:
    """Run plans in lockstep, merging their pending requests; returns results or exceptions."""
    lockstep = _Lockstep(plans, stats, callbacks)
    while lockstep.pending:
        for group in lockstep.groups():
            lockstep.deliver(group, _call(group, lockstep))
    return lockstep.results


async def arun_plans(
    plans: Sequence[Plan[Any]],
    stats: Sequence[ToTStats],
    callbacks: Sequence[Any] | None = None,
) -> list[Any]:
    """Async :func:`run_plans`: each round's merged calls run concurrently."""
    lockstep = _Lockstep(plans, stats, callbacks)
    while lockstep.pending:
        groups = lockstep.groups()
        replies = await asyncio.gather(*(_acall(group, lockstep) for group in groups))
        for group, reply in zip(groups, replies):
            lockstep.deliver(group, reply)
    return lockstep.results


class _Lockstep:
    """Book-keeping for plans advancing together: pending requests and results."""

    def __init__(self, plans: Sequence[Plan[Any]], stats: Sequence[ToTStats], callbacks: Any):
        self.plans = list(plans)
        self.stats = list(stats)
        self.callbacks = list(callbacks) if callbacks else [None] * len(self.plans)
        self.results: list[Any] = [None] * len(self.plans)
        self.pending: dict[int, LLMRequest] = {}
        for index in range(len(self.plans)):
            self.advance(index, None)

    def advance(self, index: int, completions: Completions | None) -> None:
        """Send completions to plan ``index``; record its next request or its result."""
        plan = self.plans[index]
        self.pending.pop(index, None)
        try:
            while True:
                request = plan.send(completions) if completions is not None else next(plan)
                if request.prompts:
                    self.pending[index] = request
                    return
                completions = []
        except StopIteration as done:
            self.results[index] = done.value
        except Exception as error:
            self.results[index] = error

    def groups(self) -> list[list[int]]:
        """Pending plans grouped by the call they can share, in plan order."""
        grouped: dict[tuple[Any, ...], list[int]] = {}
        for index in sorted(self.pending):
            grouped.setdefault(self.pending[index].merge_key(), []).append(index)
        return list(grouped.values())

    def merged_call(self, group: list[int]) -> tuple[LLMRequest, list[str], list[Any]]:
        """The first request of ``group``, every prompt of the group, per-prompt callbacks."""
        prompts: list[str] = []
        callbacks: list[Any] = []
        for index in group:
            request = self.pending[index]
            prompts.extend(request.prompts)
            callbacks.extend([self.callbacks[index]] * len(request.prompts))
        return self.pending[group[0]], prompts, callbacks

    def deliver(self, group: list[int], reply: LLMReply | BaseException) -> None:
        """Hand each plan of ``group`` its slice of the reply (or the call's error)."""
        requests = [self.pending[index] for index in group]
        prompts = [prompt for request in requests for prompt in request.prompts]
        if not isinstance(reply, BaseException) and len(reply.texts) != len(prompts):
            reply = ValueError(
                f"the LLM returned {len(reply.texts)} results for {len(prompts)} prompts"
            )
        offset = 0
        for index, request in zip(group, requests):
            if isinstance(reply, BaseException):
                self.pending.pop(index)
                self.results[index] = reply
                continue
            positions = range(offset, offset + len(request.prompts))
            offset += len(request.prompts)
            self.stats[index].add_call(
                request.role, reply, prompts, positions, request.n,
                share=len(positions) / len(prompts),
            )
            self.advance(index, [reply.texts[p] for p in positions])


def _call(group: list[int], lockstep: _Lockstep) -> LLMReply | Exception:
    """One synchronous merged call; an error is returned, to fail only this group."""
    request, prompts, callbacks = lockstep.merged_call(group)
    try:
        return request.client.generate(
            prompts, stop=request.stop, n=request.n, callbacks=callbacks
        )
    except Exception as error:
        return error


async def _acall(group: list[int], lockstep: _Lockstep) -> LLMReply | Exception:
    """One async merged call; an error is returned, to fail only this group."""
    request, prompts, callbacks = lockstep.merged_call(group)
    try:
        return await request.client.agenerate(
            prompts, stop=request.stop, n=request.n, callbacks=callbacks
        )
    except Exception as error:
        return error


def _unwrap(result: Any) -> Any:
    """Raise a captured exception, else return the result."""
    if isinstance(result, BaseException):
        raise result
    return result
