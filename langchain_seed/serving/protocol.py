"""The OpenAI wire format this server speaks: request models, errors, response pieces.

Request options are checked through `engine/options.py`, the same checks (and messages)
as `SeedLLM`'s fields and the command line's.
"""

from __future__ import annotations

import json
from typing import Any

from langchain_core.messages import convert_to_messages
from pydantic import BaseModel, ConfigDict, Field, field_validator

from langchain_seed.engine.options import OPTIONS

API_KEY_ENV = "LANGCHAIN_SEED_API_KEY"
"""Environment variable read for the API key when `--api-key` is not given."""

COMPLETIONS_DEFAULT_MAX_TOKENS = 16
"""OpenAI's default `max_tokens` for `/v1/completions` (chat defaults to the server's)."""

NEUTRAL_VALUES: dict[str, dict[str, tuple]] = {
    "completions": {
        "presence_penalty": (None, 0), "frequency_penalty": (None, 0), "logit_bias": (None, {}),
        "logprobs": (None,), "echo": (None, False), "best_of": (None, 1), "suffix": (None, ""),
    },
    "chat": {
        "presence_penalty": (None, 0), "frequency_penalty": (None, 0), "logit_bias": (None, {}),
        "logprobs": (None, False), "top_logprobs": (None, 0), "tools": (None, []), "functions": (None, []),
        "tool_choice": (None, "none", "auto"), "response_format": (None, {"type": "text"}),
    },
}
"""Request parameters this server does not implement, and the values that mean "off" (accepted)."""


class APIError(Exception):
    """An error answered in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class ClientDisconnected(Exception):
    """The client closed the connection before its answer was complete."""


# ------------------------------------------------------------------------- request models


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class GenerationParams(BaseModel):
    """Parameters common to completions and chat completions (unknown keys are ignored)."""

    model_config = ConfigDict(extra="ignore")
    model: str
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: int = 1
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None

    @field_validator("max_tokens", "temperature", "top_p", "n", "seed")
    @classmethod
    def _check_option(cls, value: Any, info: Any) -> Any:
        return value if value is None else OPTIONS[info.field_name].check(value)


class CompletionRequest(GenerationParams):
    prompt: str | list[str]


class ChatCompletionRequest(GenerationParams):
    messages: list[dict[str, Any]] = Field(min_length=1)
    max_completion_tokens: int | None = None

    @field_validator("max_completion_tokens")
    @classmethod
    def _check_max_completion_tokens(cls, value: int | None) -> int | None:
        return value if value is None else OPTIONS["max_tokens"].check(value)


OBJECTS = {"completions": "text_completion", "chat": "chat.completion"}
CHUNK_OBJECTS = {"completions": "text_completion", "chat": "chat.completion.chunk"}


def requested_max_tokens(params: GenerationParams) -> int | None:
    if isinstance(params, ChatCompletionRequest) and params.max_completion_tokens is not None:
        return params.max_completion_tokens
    return params.max_tokens


def stop_list(stop: str | list[str] | None) -> list[str] | None:
    if stop is None:
        return None
    return [stop] if isinstance(stop, str) else list(stop)


def to_messages(raw: list[dict[str, Any]]) -> list[Any]:
    """OpenAI chat messages as LangChain messages (text content only)."""
    messages = []
    for index, message in enumerate(raw):
        if not isinstance(message.get("role"), str) or "content" not in message:
            raise APIError(400, f"messages[{index}] needs a 'role' and a 'content'", param="messages")
        if message["role"] == "tool" and "tool_call_id" not in message:
            message = {**message, "tool_call_id": ""}
        messages.append(message)
    try:
        return convert_to_messages(messages)
    except (ValueError, TypeError, KeyError, NotImplementedError) as error:
        raise APIError(400, f"messages: {error}", param="messages") from None


def sse_data(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, ensure_ascii=False).encode() + b"\n\n"
