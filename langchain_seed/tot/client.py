"""One batched call to any LangChain LLM, chat model or Runnable.

:class:`LLMClient` sends a list of prompts in ONE call so that a scheduling LLM (our
``SeedLLM``) serves them together:

- ``BaseLLM``: ``llm.generate(prompts)`` / ``await llm.agenerate(prompts)`` - one
  ``_generate`` call with every prompt; ``n > 1`` is passed as the ``n=`` keyword.
- ``BaseChatModel``: ``llm.batch(...)`` / ``await llm.abatch(...)``, each prompt as a
  single ``HumanMessage``, the reply's text used; ``n > 1`` repeats the prompt.
- any other ``Runnable`` (e.g. ``llm.bind(...)``): ``batch`` / ``abatch`` of the prompt
  strings; replies may be strings or messages. Stop sequences are not sent to it (a
  plain Runnable may not accept them).

It returns the texts with what the LLM reported (``generation_info``, ``llm_output``,
token usage) for the statistics.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain_core.language_models import BaseChatModel, BaseLLM
from langchain_core.messages import BaseMessage, HumanMessage
from langchain_core.outputs import LLMResult
from langchain_core.runnables import Runnable


@dataclass(frozen=True)
class Usage:
    """Token counts reported by an LLM."""

    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class LLMReply:
    """What one batched call returned; lists are aligned with the prompts sent."""

    texts: list[list[str]]
    """Per prompt, its completions (``n`` of them, or fewer if the LLM ignored ``n``)."""
    generation_infos: list[list[dict[str, Any]]]
    """Per prompt, each completion's ``generation_info`` (chat: ``response_metadata``)."""
    usages: list[Usage | None]
    """Per prompt, token usage when reported per prompt (chat ``usage_metadata``)."""
    llm_output: dict[str, Any] = field(default_factory=dict)
    """The call's ``llm_output`` (``BaseLLM`` only)."""
    call_usage: Usage | None = None
    """Token usage reported for the whole call (``llm_output['token_usage']``)."""
    seconds: float = 0.0
    """Wall time of the call."""


def usage_from_mapping(data: Mapping[str, Any] | None) -> Usage | None:
    """Read OpenAI-style (prompt/completion) or LangChain-style (input/output) tokens."""
    if not data:
        return None
    prompt = data.get("prompt_tokens", data.get("input_tokens"))
    completion = data.get("completion_tokens", data.get("output_tokens"))
    if prompt is None and completion is None:
        return None
    return Usage(int(prompt or 0), int(completion or 0))


def call_usage_from_llm_output(llm_output: Mapping[str, Any]) -> Usage | None:
    """Token usage of a ``BaseLLM`` call, from ``token_usage`` / ``usage`` if present."""
    for key in ("token_usage", "usage"):
        usage = usage_from_mapping(llm_output.get(key))
        if usage is not None:
            return usage
    return None


def message_text(output: Any) -> str:
    """The text of a model output: a string, or a message's text content."""
    if isinstance(output, BaseMessage):
        return str(output.text)
    return str(output)


class LLMClient:
    """Sends a list of prompts to one LLM in a single batched call.

    Args:
        llm: a ``BaseLLM``, a ``BaseChatModel`` or any ``Runnable`` taking a string.
        llm_kwargs: extra keyword arguments for every call (e.g. ``max_tokens``).
    """

    def __init__(self, llm: Any, llm_kwargs: Mapping[str, Any] | None = None):
        self.llm = llm
        self.llm_kwargs = dict(llm_kwargs or {})
        self.kind = llm_kind(llm)

    def __repr__(self) -> str:
        return f"LLMClient({type(self.llm).__name__}, kind={self.kind!r})"

    def generate(
        self,
        prompts: Sequence[str],
        *,
        stop: Sequence[str] | None = None,
        n: int = 1,
        callbacks: Sequence[Any] | None = None,
    ) -> LLMReply:
        """Send ``prompts`` in one call; ``callbacks`` holds one entry per prompt."""
        started = time.perf_counter()
        if self.kind == "llm":
            result = self.llm.generate(
                list(prompts), stop=_list(stop), callbacks=_callbacks(callbacks),
                **self._kwargs(n),
            )
            reply = reply_from_llm_result(result)
        else:
            inputs, configs = self._batch_inputs(prompts, n, callbacks)
            outputs = self.llm.batch(inputs, config=configs, **self._batch_kwargs(stop))
            reply = reply_from_outputs(outputs, len(prompts), n)
        reply.seconds = time.perf_counter() - started
        return reply

    async def agenerate(
        self,
        prompts: Sequence[str],
        *,
        stop: Sequence[str] | None = None,
        n: int = 1,
        callbacks: Sequence[Any] | None = None,
    ) -> LLMReply:
        """Async :meth:`generate` through the LLM's own async API."""
        started = time.perf_counter()
        if self.kind == "llm":
            result = await self.llm.agenerate(
                list(prompts), stop=_list(stop), callbacks=_callbacks(callbacks),
                **self._kwargs(n),
            )
            reply = reply_from_llm_result(result)
        else:
            inputs, configs = self._batch_inputs(prompts, n, callbacks)
            outputs = await self.llm.abatch(inputs, config=configs, **self._batch_kwargs(stop))
            reply = reply_from_outputs(outputs, len(prompts), n)
        reply.seconds = time.perf_counter() - started
        return reply

    def _kwargs(self, n: int) -> dict[str, Any]:
        """Keyword arguments of a ``BaseLLM.generate`` call."""
        return {**self.llm_kwargs, "n": n} if n > 1 else dict(self.llm_kwargs)

    def _batch_kwargs(self, stop: Sequence[str] | None) -> dict[str, Any]:
        """Keyword arguments of a ``batch`` call (stop only for chat models)."""
        if self.kind == "chat" and stop:
            return {**self.llm_kwargs, "stop": list(stop)}
        return dict(self.llm_kwargs)

    def _batch_inputs(
        self, prompts: Sequence[str], n: int, callbacks: Sequence[Any] | None
    ) -> tuple[list[Any], list[dict[str, Any]] | None]:
        """Inputs (each prompt ``n`` times) and per-input configs for ``batch``."""
        inputs: list[Any] = []
        configs: list[dict[str, Any]] = []
        for position, prompt in enumerate(prompts):
            message = [HumanMessage(content=prompt)] if self.kind == "chat" else prompt
            callback = callbacks[position] if callbacks else None
            inputs.extend([message] * n)
            configs.extend([{"callbacks": callback} if callback else {}] * n)
        return inputs, (configs if any(configs) else None)


def llm_kind(llm: Any) -> str:
    """``'llm'``, ``'chat'`` or ``'runnable'``; ValueError for anything else."""
    if isinstance(llm, BaseLLM):
        return "llm"
    if isinstance(llm, BaseChatModel):
        return "chat"
    if isinstance(llm, Runnable):
        return "runnable"
    raise ValueError(
        "llm must be a LangChain LLM (BaseLLM), chat model (BaseChatModel) or Runnable, "
        f"got {type(llm).__name__}"
    )


def reply_from_llm_result(result: LLMResult) -> LLMReply:
    """Unpack an ``LLMResult`` into an :class:`LLMReply`."""
    llm_output = dict(result.llm_output or {})
    return LLMReply(
        texts=[[g.text for g in gens] for gens in result.generations],
        generation_infos=[[dict(g.generation_info or {}) for g in gens] for gens in result.generations],
        usages=[None] * len(result.generations),
        llm_output=llm_output,
        call_usage=call_usage_from_llm_output(llm_output),
    )


def reply_from_outputs(outputs: Sequence[Any], n_prompts: int, n: int) -> LLMReply:
    """Regroup ``batch`` outputs (each prompt ``n`` times) per prompt."""
    texts, infos, usages = [], [], []
    for position in range(n_prompts):
        group = outputs[position * n:(position + 1) * n]
        texts.append([message_text(output) for output in group])
        infos.append([dict(getattr(output, "response_metadata", None) or {}) for output in group])
        usages.append(_sum_usage(usage_from_mapping(getattr(o, "usage_metadata", None)) for o in group))
    return LLMReply(texts=texts, generation_infos=infos, usages=usages)


def _sum_usage(usages: Any) -> Usage | None:
    """Add token usages, None when none was reported."""
    reported = [usage for usage in usages if usage is not None]
    if not reported:
        return None
    return Usage(
        sum(u.prompt_tokens for u in reported), sum(u.completion_tokens for u in reported)
    )


def _list(stop: Sequence[str] | None) -> list[str] | None:
    """Stop sequences as the list LangChain expects."""
    return list(stop) if stop else None


def _callbacks(callbacks: Sequence[Any] | None) -> list[Any] | None:
    """Per-prompt callbacks, or None when no prompt has any."""
    if not callbacks or all(callback is None for callback in callbacks):
        return None
    return list(callbacks)
