"""A LlamaIndex LLM over the SeeD engine: `SeedLlamaIndexLLM`, a `CustomLLM` that wraps `SeedLLM`.

Completions go through `SeedLLM` (so the text, stop sequences and streaming are exactly
LangChain's), and every call - concurrent ones included - runs on the one scheduler of
the wrapped engine. Chat goes through `messages_to_prompt`, which by default renders the
tokenizer's chat template.

    from langchain_seed import SeedLLM
    from seed_llamaindex import SeedLlamaIndexLLM

    llm = SeedLlamaIndexLLM(SeedLLM.from_default(max_tokens=128))
    llm.complete("Q: What is 12 + 30?\\nA:", stop=["\\n"]).text
    for response in llm.stream_complete("Once upon a time"):
        print(response.delta, end="")
    await llm.acomplete("...")
    llm.chat([ChatMessage(role="user", content="Hi")])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llama_index.core.base.llms.types import (
    ChatMessage,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
)
from llama_index.core.llms.callbacks import llm_completion_callback
from llama_index.core.llms.custom import CustomLLM
from pydantic import Field, PrivateAttr

DEFAULT_CONTEXT_WINDOW = 2048
"""Used when the target's config does not say (no `max_position_embeddings`)."""


class SeedLlamaIndexLLM(CustomLLM):
    """LlamaIndex `CustomLLM` over a `SeedLLM` (scheduled speculative decoding, lossless greedy).

    Args:
        llm: the `SeedLLM` to run on (its engine is shared, never copied).
        **fields: `context_window`, `num_output`, `model_name`, and LlamaIndex's own
            (`messages_to_prompt`, `completion_to_prompt`, `callback_manager`, ...).
    """

    context_window: int = Field(default=DEFAULT_CONTEXT_WINDOW, gt=0,
                                description="Tokens of prompt plus completion the target accepts.")
    num_output: int = Field(default=256, gt=0,
                            description="Default new tokens per completion (default: the SeedLLM's max_tokens).")
    model_name: str = Field(default="langchain-seed", description="Name reported in `metadata`.")

    _llm: Any = PrivateAttr()

    def __init__(self, llm: Any, **fields: Any) -> None:
        engine = llm.engine
        fields.setdefault("context_window", engine.context_window or DEFAULT_CONTEXT_WINDOW)
        fields.setdefault("num_output", llm.max_tokens)
        fields.setdefault("model_name", llm.model_name or "langchain-seed")
        if fields.get("messages_to_prompt") is None and getattr(llm.tokenizer, "chat_template", None):
            fields["messages_to_prompt"] = _chat_template_renderer(llm.tokenizer)
        super().__init__(**fields)
        self._llm = llm

    @classmethod
    def from_default(cls, **seed_fields: Any) -> SeedLlamaIndexLLM:
        """Over `SeedLLM.from_default(**seed_fields)` (the embedded default pair)."""
        from langchain_seed import SeedLLM

        return cls(SeedLLM.from_default(**seed_fields))

    @classmethod
    def from_pretrained(cls, target: str, draft: str | None = None, **seed_fields: Any) -> SeedLlamaIndexLLM:
        """Over `SeedLLM.from_pretrained(target, draft, **seed_fields)`."""
        from langchain_seed import SeedLLM

        return cls(SeedLLM.from_pretrained(target, draft, **seed_fields))

    @classmethod
    def class_name(cls) -> str:
        return "SeedLlamaIndexLLM"

    @property
    def seed_llm(self) -> Any:
        """The wrapped `SeedLLM`."""
        return self._llm

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(context_window=self.context_window, num_output=self.num_output,
                           model_name=self.model_name, is_chat_model=False)

    # ----- completion ---------------------------------------------------------------
    def _prompt(self, prompt: str, formatted: bool) -> str:
        return prompt if formatted else self.completion_to_prompt(prompt)

    def _options(self, kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        """(stop, SeedLLM per-call options): `num_output` is the default `max_tokens`."""
        options = dict(kwargs)
        stop = options.pop("stop", None)
        options.setdefault("max_tokens", self.num_output)
        return stop, options

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        """The completion; `kwargs` are SeedLLM per-call options (max_tokens, temperature, stop, ...)."""
        stop, options = self._options(kwargs)
        result = self._llm.generate([self._prompt(prompt, formatted)], stop=stop, **options)
        generation = result.generations[0][0]
        return CompletionResponse(text=generation.text, additional_kwargs=dict(generation.generation_info or {}),
                                  raw=result.llm_output)

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        """Responses as tokens are committed: `.delta` the new text, `.text` all text so far."""
        stop, options = self._options(kwargs)
        pieces = self._llm.stream(self._prompt(prompt, formatted), stop=stop, **options)

        def gen() -> CompletionResponseGen:
            text = ""
            for piece in pieces:
                if piece:
                    text += piece
                    yield CompletionResponse(text=text, delta=piece)

        return gen()

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        """Async `complete`: awaits the engine without blocking the event loop."""
        stop, options = self._options(kwargs)
        result = await self._llm.agenerate([self._prompt(prompt, formatted)], stop=stop, **options)
        generation = result.generations[0][0]
        return CompletionResponse(text=generation.text, additional_kwargs=dict(generation.generation_info or {}),
                                  raw=result.llm_output)

    @llm_completion_callback()
    async def astream_complete(self, prompt: str, formatted: bool = False,
                               **kwargs: Any) -> CompletionResponseAsyncGen:
        """Async `stream_complete`."""
        stop, options = self._options(kwargs)
        pieces = self._llm.astream(self._prompt(prompt, formatted), stop=stop, **options)

        async def gen() -> CompletionResponseAsyncGen:
            text = ""
            async for piece in pieces:
                if piece:
                    text += piece
                    yield CompletionResponse(text=text, delta=piece)

        return gen()


def _chat_template_renderer(tokenizer: Any):
    """`messages_to_prompt` that renders LlamaIndex messages with the tokenizer's chat template."""

    def messages_to_prompt(messages: Sequence[ChatMessage]) -> str:
        conversation = [{"role": _role(m), "content": m.content or ""} for m in messages]
        return tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)

    return messages_to_prompt


def _role(message: ChatMessage) -> str:
    role = getattr(message.role, "value", message.role)
    return "assistant" if role in ("assistant", "model", "chatbot") else str(role)


__all__ = ["SeedLlamaIndexLLM"]
