"""`ChatSeed`: a LangChain chat model over the SeeD engine, through the tokenizer's chat template.

Same engine, fields and statistics as `SeedLLM`; messages become token ids with
`tokenizer.apply_chat_template(..., add_generation_prompt=True)`. Tool calling is best
effort, in the Hermes / Qwen format (`<tool_call>{"name": ..., "arguments": {...}}</tool_call>`)
that many open chat templates use: tools go to the template when it renders them, or into
a system message when it does not, and the reply is parsed for those blocks.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.language_models.base import LangSmithParams
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.messages.tool import invalid_tool_call, tool_call, tool_call_chunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import ConfigDict

from langchain_seed.llms import SeedLLM, SeedModelMixin, SeedRun, check_utf8

TOOL_KWARGS = ("tools", "tool_choice")
IGNORED_KWARGS = ("stream",)
"""Passed by LangChain's streaming machinery; the answer is the same either way."""

TOOL_CALL_PATTERN = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)
TOOL_SYSTEM_PROMPT = (
    "You can call these tools:\n{tools}\n\n"
    "To call a tool, reply with one block per call, exactly like this:\n"
    '<tool_call>\n{{"name": "tool_name", "arguments": {{"arg": "value"}}}}\n</tool_call>'
)
ROLES = {HumanMessage: "user", AIMessage: "assistant", SystemMessage: "system", ToolMessage: "tool",
         FunctionMessage: "tool"}


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
        """A chat model over `llm`'s engine, with its fields (overridden by `overrides`)."""
        fields = {name: getattr(llm, name) for name in SeedModelMixin.model_fields}
        return cls(engine=llm.engine, **{**fields, **overrides})

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
        return super().bind(tools=formatted, tool_choice=_normalize_tool_choice(tool_choice, names), **kwargs)

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
        conversation = [_to_chat_dict(m, index, native_tools) for index, m in enumerate(messages)]
        for index, entry in enumerate(conversation):
            if isinstance(entry.get("content"), str):
                check_utf8(entry["content"], f"message {index}")
        options: dict[str, Any] = {}
        if tools and native_tools:
            options["tools"] = tools
        elif tools:
            conversation = _with_tool_system_prompt(conversation, tools)
        encoded = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True, **options)
        ids = _input_ids(encoded)
        prefill = _forced_prefix(tool_choice) if tools else ""
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
                 streaming: bool = False) -> tuple[SeedRun, _ToolContext]:
        tools = [convert_to_openai_tool(tool) for tool in kwargs.get("tools") or []]
        tool_choice = _normalize_tool_choice(kwargs.get("tool_choice"), [t["function"]["name"] for t in tools])
        if tool_choice == "none":
            tools = []
        options = self._call_options(kwargs, ignored=TOOL_KWARGS + IGNORED_KWARGS)
        if streaming and options.n != 1:
            raise ValueError(f"n={options.n}: stream() yields one generation; use generate() for several")
        ids, prefill = self._prompt_ids(messages, tools, tool_choice)
        run = self._start_run([ids], options, self._stop_sequences(stop))
        names = [tool["function"]["name"] for tool in tools or []]
        return run, _ToolContext(names, prefill)

    # ----- results ----------------------------------------------------------------------
    def _metadata(self, run: SeedRun, index: int) -> tuple[dict[str, Any], dict[str, int]]:
        info = run.generation_info(index)
        metadata = {"model_name": self.model_name, **info}
        generation = run.generations[index]
        output_tokens = generation.result.stats.new_tokens if generation.result is not None else 0
        usage = {"input_tokens": generation.prompt_tokens, "output_tokens": output_tokens,
                 "total_tokens": generation.prompt_tokens + output_tokens}
        return metadata, usage

    def _message(self, run: SeedRun, index: int, tools: _ToolContext) -> AIMessage:
        metadata, usage = self._metadata(run, index)
        content, calls, invalid = tools.parse(run.generations[index].text.text)
        return AIMessage(content=content, tool_calls=calls, invalid_tool_calls=invalid,
                         response_metadata=metadata, usage_metadata=usage)  # type: ignore[arg-type]

    def _result(self, run: SeedRun, tools: _ToolContext) -> ChatResult:
        generations = [
            ChatGeneration(message=self._message(run, i, tools), generation_info=run.generation_info(i))
            for i in range(len(run))
        ]
        return ChatResult(generations=generations,
                          llm_output={**run.run_stats().to_dict(), "model_name": self.model_name})

    def _last_chunk(self, run: SeedRun, tools: _ToolContext, buffered: bool) -> ChatGenerationChunk:
        metadata, usage = self._metadata(run, 0)
        content, chunks = "", []
        if buffered:
            content, calls, invalid = tools.parse(run.generations[0].text.text)
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
        self._run_sync(run, report)
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
        await self._run_async(run, report)
        return self._result(run, tools)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        """Reply chunks as tokens are committed; with tools bound, one chunk once parsed."""
        run, tools = self._prepare(messages, stop, kwargs, streaming=True)
        try:
            for piece in run.iter_text(0):
                if tools:
                    continue
                chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece))
                if run_manager is not None:
                    run_manager.on_llm_new_token(piece, chunk=chunk)
                yield chunk
        finally:
            run.close()
        chunk = self._last_chunk(run, tools, buffered=bool(tools))
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
        try:
            async for piece in run.aiter_text(0):
                if tools:
                    continue
                chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece))
                if run_manager is not None:
                    await run_manager.on_llm_new_token(piece, chunk=chunk)
                yield chunk
        finally:
            run.close()
        chunk = self._last_chunk(run, tools, buffered=bool(tools))
        if run_manager is not None:
            await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
        yield chunk


# ------------------------------------------------------------------------------ helpers


class _ToolContext:
    """The tools of one call: their names, the forced reply prefix, and reply parsing."""

    def __init__(self, names: list[str], prefill: str) -> None:
        self.names = names
        self.prefill = prefill

    def __bool__(self) -> bool:
        return bool(self.names)

    def parse(self, text: str) -> tuple[str, list, list]:
        """(content, tool_calls, invalid_tool_calls) of a reply."""
        if not self.names:
            return text, [], []
        text = self.prefill + text
        calls, invalid = [], []
        for match in TOOL_CALL_PATTERN.finditer(text):
            _parse_call(match.group(1), calls, invalid)
        content = TOOL_CALL_PATTERN.sub("", text).strip()
        if not calls and not invalid and content.startswith("{"):
            parsed = _json_object(content)
            if parsed is not None and parsed.get("name") in self.names:
                _parse_call(content, calls, invalid)
                content = ""
        return content, calls, invalid


def _parse_call(raw: str, calls: list, invalid: list) -> None:
    call_id = f"call_{uuid.uuid4().hex[:24]}"
    parsed = _json_object(raw)
    if parsed is None or not isinstance(parsed.get("name"), str):
        invalid.append(invalid_tool_call(name=None, args=raw, id=call_id, error="not a JSON tool call"))
        return
    args = parsed.get("arguments", parsed.get("parameters", {}))
    if isinstance(args, str):
        args = _json_object(args)
    if not isinstance(args, dict):
        invalid.append(invalid_tool_call(name=parsed["name"], args=raw, id=call_id, error="arguments not an object"))
        return
    calls.append(tool_call(name=parsed["name"], args=args, id=call_id))


def _json_object(text: str) -> dict | None:
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return None
    return value if isinstance(value, dict) else None


def _normalize_tool_choice(tool_choice: Any, names: list[str]) -> str | None:
    """None (auto), "none", "required", or a tool name."""
    if tool_choice in (None, "auto"):
        return None
    if tool_choice in (False, "none"):
        return "none"
    if tool_choice in (True, "any", "required"):
        return "required"
    if isinstance(tool_choice, Mapping):
        tool_choice = tool_choice.get("function", {}).get("name", tool_choice.get("name"))
    if isinstance(tool_choice, str) and tool_choice in names:
        return tool_choice
    raise ValueError(
        f"tool_choice must be None, 'auto', 'none', 'any', 'required', True, False or one of the bound tool "
        f"names {names}; got {tool_choice!r}"
    )


def _forced_prefix(tool_choice: str | None) -> str:
    if tool_choice in (None, "none"):
        return ""
    if tool_choice == "required":
        return "<tool_call>\n"
    return f'<tool_call>\n{{"name": {json.dumps(tool_choice)}, "arguments": '


def _with_tool_system_prompt(conversation: list[dict], tools: list[dict]) -> list[dict]:
    described = "\n".join(json.dumps(tool["function"]) for tool in tools)
    instructions = TOOL_SYSTEM_PROMPT.format(tools=described)
    if conversation and conversation[0]["role"] == "system":
        first = {**conversation[0], "content": f"{conversation[0]['content']}\n\n{instructions}"}
        return [first, *conversation[1:]]
    return [{"role": "system", "content": instructions}, *conversation]


def _text_content(message: BaseMessage, index: int) -> str:
    content = message.content
    if isinstance(content, str):
        return content
    parts = []
    for block in content:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, dict) and block.get("type") == "text":
            parts.append(str(block.get("text", "")))
        elif isinstance(block, dict) and block.get("type") in ("tool_use", "tool_call", "reasoning", "thinking"):
            continue
        else:
            kind = block.get("type") if isinstance(block, dict) else type(block).__name__
            raise ValueError(f"message {index} has a {kind!r} content block; ChatSeed reads text only")
    return "".join(parts)


def _to_chat_dict(message: BaseMessage, index: int, native_tools: bool) -> dict[str, Any]:
    """A LangChain message as the {"role", "content"} dict chat templates take."""
    if isinstance(message, ChatMessage):
        role = message.role
    else:
        role = next((r for cls, r in ROLES.items() if isinstance(message, cls)), None)
    if role is None:
        raise ValueError(f"message {index} has unsupported type {type(message).__name__}")
    content = _text_content(message, index)
    if isinstance(message, AIMessage) and message.tool_calls:
        if native_tools:
            calls = [{"type": "function", "id": c.get("id"),
                      "function": {"name": c["name"], "arguments": c["args"]}} for c in message.tool_calls]
            return {"role": "assistant", "content": content, "tool_calls": calls}
        blocks = "\n".join(
            f"<tool_call>\n{json.dumps({'name': c['name'], 'arguments': c['args']})}\n</tool_call>"
            for c in message.tool_calls
        )
        return {"role": "assistant", "content": f"{content}\n{blocks}".strip()}
    if role == "tool":
        if native_tools:
            return {"role": "tool", "content": content, "tool_call_id": getattr(message, "tool_call_id", None)}
        return {"role": "user", "content": f"<tool_response>\n{content}\n</tool_response>"}
    return {"role": role, "content": content}


def _input_ids(encoded: Any) -> list[int]:
    """`apply_chat_template(tokenize=True)` output (a list, or a BatchEncoding in transformers 5) as ids."""
    if isinstance(encoded, Mapping) or hasattr(encoded, "keys"):
        encoded = encoded["input_ids"]
    if hasattr(encoded, "tolist"):
        encoded = encoded.tolist()
    encoded = list(encoded)
    if encoded and isinstance(encoded[0], (list, tuple)):
        encoded = list(encoded[0])
    return [int(token) for token in encoded]


__all__ = ["ChatSeed"]
