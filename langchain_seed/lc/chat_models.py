"""`ChatSeed`: a LangChain chat model over the SeeD engine, through the tokenizer's chat template.

Same engine, fields and statistics as `SeedLLM`; messages become token ids with
`tokenizer.apply_chat_template(..., add_generation_prompt=True)`. Tool calling is best
effort, in the Hermes / Qwen format (`<tool_call>{"name": ..., "arguments": {...}}</tool_call>`)
that many open chat templates use: tools go to the template when it renders them, or into
a system message when it does not, and the reply is parsed for those blocks (`lc/messages.py`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.language_models.base import LangSmithParams
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.tool import tool_call_chunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import ConfigDict

from langchain_seed.lc.base import SeedModelMixin
from langchain_seed.lc.llms import SeedLLM
from langchain_seed.lc.messages import (
    ToolContext,
    forced_prefix,
    input_ids_of,
    normalize_tool_choice,
    to_chat_dict,
    with_tool_system_prompt,
)
from langchain_seed.lc.run import SeedRun
from langchain_seed.lc.structured import may_be_tool_call, structured_chat, tool_call_constraint
from langchain_seed.lc.text import check_utf8

TOOL_KWARGS = ("tools", "tool_choice")
IGNORED_KWARGS = ("stream", "ls_structured_output_format")
"""Passed by LangChain's streaming and structured-output machinery; the answer is the same either way."""


class ChatSeed(SeedModelMixin, BaseChatModel):
    """Local Hugging Face chat model with scheduled speculative decoding (SeeD).

    The messages are rendered with the tokenizer's chat template; the reply is decoded on
    the shared SeeD scheduler, exactly the target's greedy reply at temperature 0.

    Setup:
        ```bash
        pip install langchain-seed
        langchain-seed models   # fetch and build the default pair once
        ```

    Instantiate:
        ```python
        from langchain_seed import ChatSeed, SeedLLM

        chat = ChatSeed.from_default(max_tokens=128)
        chat = ChatSeed.from_pretrained(target="dir-or-hub-id", draft="dir-or-hub-id")
        chat = ChatSeed.from_llm(SeedLLM.from_default())   # share one engine
        ```

    Invoke:
        ```python
        chat.invoke([("system", "Be brief."), ("human", "What is 12 + 30?")])
        msg = chat.invoke("Hi", temperature=0.7, seed=1)
        msg.usage_metadata                      # input / output tokens
        msg.response_metadata["acceptance_rate"]
        ```

    Stream:
        ```python
        for chunk in chat.stream("Tell me a story"):
            print(chunk.content, end="", flush=True)
        ```

    Async:
        ```python
        await chat.ainvoke("Hi")
        async for chunk in chat.astream("Hi"):
            ...
        ```

    Tool calling (best effort, Hermes format):
        ```python
        chat.bind_tools([get_weather]).invoke("Weather in Paris?").tool_calls
        ```
    """

    model_config = ConfigDict(populate_by_name=True, protected_namespaces=(), extra="forbid",
                              arbitrary_types_allowed=True)

    @classmethod
    def from_llm(cls, llm: SeedLLM, **overrides: Any) -> ChatSeed:
        """A chat model over `llm`'s engine, with its fields (overridden by `overrides`).

        Only the fields set on `llm` are passed on (the rest are the same defaults), and
        `streaming` only when True: `SeedLLM.stream()` streams whatever `streaming` says, but
        a chat model with `streaming=False` set would answer `stream()` in one message.
        """
        fields = {name: getattr(llm, name) for name in SeedModelMixin.model_fields if name in llm.model_fields_set}
        if fields.get("streaming") is False:  # SeedLLM streams anyway; a chat model set False would not
            del fields["streaming"]
        # pydantic's synthesized __init__ (dataclass_transform) hides SeedModelMixin.__init__'s `engine`
        return cls(engine=llm.engine, **{**fields, **overrides})  # type: ignore[call-arg]

    @property
    def _llm_type(self) -> str:
        return "seed-chat"

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        return self._ls_params("chat", stop, kwargs)

    # ----- tools ------------------------------------------------------------------------
    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable | BaseTool],
        *,
        tool_choice: dict | str | bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools (best effort: the model must know the Hermes `<tool_call>` format).

        tool_choice: None / "auto" (the model decides), "none", "any" / "required" / True
        (a call is forced by starting the reply with `<tool_call>`), or a tool name (forced
        to that tool).
        """
        formatted = [convert_to_openai_tool(tool) for tool in tools]
        names = [tool["function"]["name"] for tool in formatted]
        return super().bind(tools=formatted, tool_choice=normalize_tool_choice(tool_choice, names), **kwargs)

    def with_structured_output(
        self,
        schema: dict | type | None = None,
        *,
        method: str = "json_schema",
        include_raw: bool = False,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, Any]:
        """Replies parsed into `schema` (a Pydantic class, a TypedDict or a JSON schema dict).

        method: "json_schema" (the reply is decoded under the schema), "function_calling"
        (a forced tool call whose arguments are decoded under it) or "json_mode" (any JSON
        object; `schema` only picks the parser). The grammar makes every complete reply
        valid; objects admit only their listed keys unless `strict=False` (with it, the
        schema's own `additionalProperties` rule, open by default). A reply cut by `max_tokens`
        raises `IncompleteStructuredOutput`; with `include_raw` it is the `parsing_error`.
        """
        if kwargs:
            raise ValueError(f"with_structured_output got unknown keyword argument(s) {sorted(kwargs)}")
        return structured_chat(self, schema, method, include_raw, strict)

    # ----- prompt -------------------------------------------------------------------------
    def _prompt_ids(self, messages: list[BaseMessage], tools: list[dict] | None, tool_choice: str | None
                    ) -> tuple[list[int], str]:
        """Token ids of the rendered conversation, and the text the reply is forced to start with."""
        tokenizer = self.tokenizer
        template = getattr(tokenizer, "chat_template", None)
        if not template:
            raise ValueError(
                "the tokenizer has no chat template, so ChatSeed cannot render messages; use SeedLLM for plain "
                "text, or set tokenizer.chat_template"
            )
        if not messages:
            raise ValueError("messages is empty: give the chat model at least one message")
        native_tools = bool(tools) and "tools" in str(template)
        conversation = [to_chat_dict(m, index, native_tools) for index, m in enumerate(messages)]
        for index, entry in enumerate(conversation):
            if isinstance(entry.get("content"), str):
                check_utf8(entry["content"], f"message {index}")
        options: dict[str, Any] = {}
        if tools and native_tools:
            options["tools"] = tools
        elif tools:
            conversation = with_tool_system_prompt(conversation, tools)
        encoded = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True, **options)
        ids = input_ids_of(encoded)
        prefill = forced_prefix(tool_choice) if tools else ""
        if prefill:
            ids += list(tokenizer.encode(prefill, add_special_tokens=False))
        if not ids:
            raise ValueError("the chat template rendered the messages to no tokens")
        return ids, prefill

    def get_num_tokens_from_messages(self, messages: list[BaseMessage], tools: Sequence | None = None) -> int:
        """Tokens of the conversation as the model reads it: rendered with its chat template
        (with the tool definitions when given), the assistant's generation prompt included."""
        converted = [convert_to_openai_tool(tool) for tool in tools or []]
        return len(self._prompt_ids(list(messages), converted, None)[0])

    def start_run(self, messages: list[BaseMessage], stop: list[str] | None = None, **kwargs: Any) -> SeedRun:
        """Submit the conversation to the engine and return the live run without waiting.

        The chat counterpart of `SeedLLM.start_run`: ``run.iter_text(i)`` streams the raw
        reply text of generation i (tool-call parsing is `invoke`'s job).
        """
        return self._prepare(list(messages), stop, kwargs)[0]

    def _prepare(self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any],
                 streaming: bool = False) -> tuple[SeedRun, ToolContext]:
        tools = [convert_to_openai_tool(tool) for tool in kwargs.get("tools") or []]
        tool_choice = normalize_tool_choice(kwargs.get("tool_choice"), [t["function"]["name"] for t in tools])
        if tool_choice == "none":
            tools = []
        options = self._call_options(kwargs, ignored=TOOL_KWARGS + IGNORED_KWARGS)
        if options.constraint is None and tools:
            options = dataclasses.replace(options, constraint=tool_call_constraint(tools, tool_choice))
        if streaming and options.n != 1:
            raise ValueError(f"n={options.n}: stream() yields one generation; use generate() for several")
        ids, prefill = self._prompt_ids(messages, tools, tool_choice)
        run = self._start_run([ids], options, self._stop_sequences(stop))
        names = [tool["function"]["name"] for tool in tools or []]
        return run, ToolContext(names, prefill)

    # ----- results ----------------------------------------------------------------------
    def _metadata(self, run: SeedRun, index: int) -> tuple[dict[str, Any], dict[str, int]]:
        info = run.generation_info(index)
        metadata = {"model_name": self.model_name, **info}
        generation = run.generations[index]
        output_tokens = generation.result.stats.new_tokens if generation.result is not None else 0
        usage = {"input_tokens": generation.prompt_tokens, "output_tokens": output_tokens,
                 "total_tokens": generation.prompt_tokens + output_tokens}
        return metadata, usage

    def _message(self, run: SeedRun, index: int, tools: ToolContext) -> AIMessage:
        metadata, usage = self._metadata(run, index)
        content, calls, invalid = self._parse(run, index, tools)
        return AIMessage(content=content, tool_calls=calls, invalid_tool_calls=invalid,
                         response_metadata=metadata, usage_metadata=usage)

    @staticmethod
    def _parse(run: SeedRun, index: int, tools: ToolContext) -> tuple[str, list, list]:
        """(content, tool_calls, invalid_tool_calls) of generation `index`; a call that
        `max_tokens` cut says so in its error."""
        content, calls, invalid = tools.parse(run.generations[index].text.text)
        if invalid and run.finish_reason(index) == "length":
            cut = (f"the tool call was cut off at max_tokens={run.options.max_tokens} before it was complete; "
                   f"raise max_tokens")
            invalid = [{**call, "error": cut} for call in invalid]
        return content, calls, invalid

    def _result(self, run: SeedRun, tools: ToolContext) -> ChatResult:
        generations = [
            ChatGeneration(message=self._message(run, i, tools), generation_info=run.generation_info(i))
            for i in range(len(run))
        ]
        return ChatResult(generations=generations,
                          llm_output={**run.run_stats().to_dict(), "model_name": self.model_name})

    def _last_chunk(self, run: SeedRun, tools: ToolContext, buffered: bool) -> ChatGenerationChunk:
        metadata, usage = self._metadata(run, 0)
        content, chunks = "", []
        if buffered:
            content, calls, invalid = self._parse(run, 0, tools)
            chunks = [tool_call_chunk(name=c["name"], args=json.dumps(c["args"]), id=c["id"], index=i)
                      for i, c in enumerate(calls)]
            chunks += [tool_call_chunk(name=c["name"], args=c["args"], id=c["id"], index=len(chunks) + i)
                       for i, c in enumerate(invalid)]
        message = AIMessageChunk(content=content, tool_call_chunks=chunks, response_metadata=metadata,
                                 usage_metadata=usage, chunk_position="last")  # type: ignore[arg-type]
        return ChatGenerationChunk(message=message, generation_info=run.generation_info(0))

    def _combine_llm_outputs(self, llm_outputs: list[dict | None]) -> dict:
        """Totals over the conversations of one `generate` call (each ran as its own engine run)."""
        outputs = [o for o in llm_outputs if o]
        if len(outputs) <= 1:
            return dict(outputs[0]) if outputs else {}
        combined: dict[str, Any] = {"model_name": self.model_name}
        for key in ("requests", "new_tokens", "drafted", "accepted", "target_forwards", "draft_forwards", "rounds",
                    "seconds"):
            combined[key] = sum(o.get(key, 0) for o in outputs)
        for key in ("peak_kv_bytes", "peak_rss_mb"):
            combined[key] = max(o.get(key, 0) for o in outputs)
        combined["acceptance_rate"] = combined["accepted"] / combined["drafted"] if combined["drafted"] else 0.0
        combined["tokens_per_second"] = combined["new_tokens"] / combined["seconds"] if combined["seconds"] else 0.0
        return combined

    # ----- generation ---------------------------------------------------------------------
    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        """The reply (n of them) to one conversation, read from the engine's stream."""
        run, tools = self._prepare(messages, stop, kwargs)
        report = None
        if self.streaming and run_manager is not None and not tools:
            def report(index: int, piece: str) -> None:
                run_manager.on_llm_new_token(piece, chunk=ChatGenerationChunk(message=AIMessageChunk(content=piece)))
        run.read_all(report)
        return self._result(run, tools)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        """Like `_generate`, reading the engine's chunks on the event loop (never blocking it)."""
        run, tools = self._prepare(messages, stop, kwargs)
        report = None
        if self.streaming and run_manager is not None and not tools:
            async def report(index: int, piece: str) -> None:
                chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece))
                await run_manager.on_llm_new_token(piece, chunk=chunk)
        await run.aread_all(report)
        return self._result(run, tools)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        """Reply chunks as tokens are committed. With tools bound, text streams as it comes
        (once it can no longer be a tool call) and a call comes in the last chunk, complete."""
        run, tools = self._prepare(messages, stop, kwargs, streaming=True)
        text = TextOrCall(tools)
        try:
            for piece in run.iter_text(0):
                piece = text.release(piece)
                if not piece:
                    continue
                chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece))
                if run_manager is not None:
                    run_manager.on_llm_new_token(piece, chunk=chunk)
                yield chunk
        finally:
            run.close()
        chunk = self._last_chunk(run, tools, buffered=text.buffered)
        if run_manager is not None:
            run_manager.on_llm_new_token(chunk.text, chunk=chunk)
        yield chunk

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        """Async reply chunks; concurrent streams share the running scheduler."""
        run, tools = self._prepare(messages, stop, kwargs, streaming=True)
        text = TextOrCall(tools)
        try:
            async for piece in run.aiter_text(0):
                piece = text.release(piece)
                if not piece:
                    continue
                chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece))
                if run_manager is not None:
                    await run_manager.on_llm_new_token(piece, chunk=chunk)
                yield chunk
        finally:
            run.close()
        chunk = self._last_chunk(run, tools, buffered=text.buffered)
        if run_manager is not None:
            await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
        yield chunk


class TextOrCall:
    """Streams a reply with tools bound: held back while it may still be a tool call (a
    forced call always is), released as text once it cannot be."""

    def __init__(self, tools: ToolContext) -> None:
        self.tools = tools
        self.held = ""
        self.buffered = bool(tools)
        """Whether the reply is (still) held back for parsing: True until it is known to be text."""

    def release(self, piece: str) -> str:
        """The text to stream now for `piece` ("" while held back)."""
        if not self.buffered:
            return piece
        self.held += piece
        if self.tools.prefill or may_be_tool_call(self.held):
            return ""
        self.buffered = False
        released, self.held = self.held, ""
        return released


__all__ = ["ChatSeed"]
