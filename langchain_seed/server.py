"""`langchain-seed serve`: an OpenAI-compatible HTTP server over `SeedLLM` and `ChatSeed`.

Routes: `POST /v1/completions`, `POST /v1/chat/completions` (both stream over server-sent
events when `"stream": true`), `GET /v1/models`, and `GET /health`. Every request runs
through the one engine's scheduler, so concurrent clients are drafted and verified in the
same rounds. Handlers are async and never block the event loop: tokenizing and submitting
run in one admission thread (in arrival order), and tokens arrive through the engine's
async request handles. The text of a choice is `SeedRun`'s stream (the same detokenizer
and stop-string logic as `SeedLLM.stream`), so the server and the LangChain classes cannot
drift apart. A client that disconnects cancels its generations at the scheduler's next round.

A `/v1/completions` request with a list of prompts is checked prompt by prompt: when some
prompts are bad (empty, too long for the context window) and others good, the good ones
are decoded as usual and each choice of a bad one carries `"text": ""`,
`"finish_reason": "error"` and an `"error"` object in OpenAI's error shape (`message`,
`type`, `param`, `code`), also as one chunk when streaming. OpenAI itself refuses the whole
request instead, so clients that ignore the extra field see an empty text with an unusual
finish reason. When every prompt is bad, the request is refused with the first one's 400.

Needs the `server` extra (starlette, uvicorn): `pip install "langchain-seed[server]"`.
Prompt and completion text are never logged unless `log_prompts` (`--log-prompts`) is set.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import json
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from langchain_seed.cli import parse_k_config, positive_int

if TYPE_CHECKING:
    from langchain_seed.lc.chat_models import ChatSeed
    from langchain_seed.lc.llms import SeedLLM
    from langchain_seed.lc.run import SeedRun

logger = logging.getLogger("langchain_seed.server")

API_KEY_ENV = "LANGCHAIN_SEED_API_KEY"
"""Environment variable read for the API key when `--api-key` is not given."""

COMPLETIONS_DEFAULT_MAX_TOKENS = 16
"""OpenAI's default `max_tokens` for `/v1/completions` (chat defaults to the server's)."""

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")

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


# ---------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class ServerSettings:
    """What the server serves and the limits it enforces on each request."""

    model_name: str | None = None
    """The model id clients must send (`GET /v1/models` lists it); None: the LLM's `model_name`."""
    api_key: str | None = None
    """Clients must send `Authorization: Bearer <api_key>`; None: no key needed."""
    max_body_bytes: int = 1 << 20
    """Largest request body; larger ones get 413."""
    max_tokens_limit: int = 4096
    """Largest `max_tokens` a request may ask for."""
    max_n: int = 16
    """Largest `n` (choices per prompt)."""
    max_prompts: int = 32
    """Most prompts in one `/v1/completions` request."""
    default_max_tokens: int | None = None
    """Chat `max_tokens` when the request gives none; None: the LLM's `max_tokens`. Always
    clipped to what fits in the context window."""
    log_prompts: bool = False
    """Log prompt and completion text (off: only counts and timings are logged)."""

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_tokens_limit", "max_n", "max_prompts"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int; got {value!r}")
        if self.api_key is not None and not self.api_key:
            raise ValueError("api_key must be a non-empty string or None")


@dataclass
class ServerMetrics:
    """Counters of a running server (read by tests and `GET /health`)."""

    requests: int = 0
    completed: int = 0
    cancelled: int = 0
    """Requests whose client went away before the end; their generations were cancelled."""
    refused: int = 0
    failed: int = 0


# ------------------------------------------------------------------------------ errors


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


class _GenerationParams(BaseModel):
    """Parameters common to completions and chat completions (unknown keys are ignored)."""

    model_config = ConfigDict(extra="ignore")
    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0)
    top_p: float | None = None
    n: int = Field(default=1, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=0)
    stream: bool = False
    stream_options: StreamOptions | None = None


class CompletionRequest(_GenerationParams):
    prompt: str | list[str]


class ChatCompletionRequest(_GenerationParams):
    messages: list[dict[str, Any]] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)


# ------------------------------------------------------------------------------ service


@dataclass
class _Job:
    """One admitted request: its run on the engine and what the response needs."""

    kind: str  # "completions" | "chat"
    run: SeedRun
    request_id: str
    prompt_tokens: int
    stream: bool
    include_usage: bool
    refused: dict[int, APIError] = field(default_factory=dict)
    """Prompts of a multi-prompt completion refused on their own, by prompt index."""
    started: float = field(default_factory=time.perf_counter)
    created: int = field(default_factory=lambda: int(time.time()))
    slots: list[int | APIError] = field(init=False)
    """Per choice (prompt-major, n each): its generation's index in `run`, or its prompt's error."""
    choice_of: dict[int, int] = field(init=False)
    """The choice index of each generation of `run`."""

    def __post_init__(self) -> None:
        n = self.run.options.n
        generations = iter(range(len(self.run)))
        prompts = len(self.run) // n + len(self.refused)
        self.slots = [self.refused[p] if p in self.refused else next(generations)
                      for p in range(prompts) for _ in range(n)]
        self.choice_of = {slot: choice for choice, slot in enumerate(self.slots) if isinstance(slot, int)}


class SeedService:
    """The server's logic, free of HTTP framework types: parse, check, admit, stream."""

    def __init__(self, llm: SeedLLM, settings: ServerSettings, chat: ChatSeed | None = None) -> None:
        from langchain_seed.lc.chat_models import ChatSeed
        from langchain_seed.engine.config import tree_size

        self.llm = llm
        self.chat = chat if chat is not None else ChatSeed.from_llm(llm)
        self.settings = settings
        self.model_name = settings.model_name or llm.model_name or "langchain-seed"
        self.metrics = ServerMetrics()
        engine = llm.engine
        self.context_window: int | None = engine.context_window
        drafting = llm.decoding != "autoregressive" and engine.draft_model is not None
        self.draft_positions = tree_size(llm.k_config) if drafting else 0
        self.created = int(time.time())
        self._admission = ThreadPoolExecutor(max_workers=1, thread_name_prefix="langchain-seed-admit")
        """Tokenizing and submitting, one request at a time in arrival order, off the event loop."""

    async def admit_async(self, kind: str, params: _GenerationParams) -> _Job:
        """`admit` in the admission thread (the event loop keeps serving other clients)."""
        return await asyncio.get_running_loop().run_in_executor(self._admission, self.admit, kind, params)

    # ----- checks ---------------------------------------------------------------------
    def authorize(self, headers: Mapping[str, str]) -> None:
        expected = self.settings.api_key
        if expected is None:
            return
        scheme, _, given = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise APIError(401, "Missing API key: send the header 'Authorization: Bearer <key>'.",
                           code="invalid_api_key")
        if not hmac.compare_digest(given.strip().encode(), expected.encode()):
            raise APIError(401, "Incorrect API key provided.", code="invalid_api_key")

    def parse(self, kind: str, data: dict[str, Any]) -> _GenerationParams:
        for name, neutral in NEUTRAL_VALUES[kind].items():
            if name in data and data[name] not in neutral:
                raise APIError(400, f"'{name}' is not supported by this server (only its default is accepted; "
                                    f"got {data[name]!r})", param=name, code="unsupported_parameter")
        model = CompletionRequest if kind == "completions" else ChatCompletionRequest
        try:
            params = model.model_validate(data)
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "body"
            raise APIError(400, f"{where}: {first['msg']}", param=str(first["loc"][0]) if first["loc"] else None,
                           code="invalid_value") from None
        self._check_limits(params)
        return params

    def _check_limits(self, params: _GenerationParams) -> None:
        if params.model != self.model_name:
            raise APIError(404, f"The model '{params.model}' does not exist here; this server serves "
                                f"'{self.model_name}' (GET /v1/models).", param="model", code="model_not_found")
        limits = self.settings
        if params.n > limits.max_n:
            raise APIError(400, f"n={params.n} is over this server's limit of {limits.max_n} choices per prompt "
                                f"(--max-n).", param="n", code="limit_exceeded")
        max_tokens = _requested_max_tokens(params)
        if max_tokens is not None and max_tokens > limits.max_tokens_limit:
            raise APIError(400, f"max_tokens={max_tokens} is over this server's limit of {limits.max_tokens_limit} "
                                f"(--max-tokens-limit).", param="max_tokens", code="limit_exceeded")
        if isinstance(params, CompletionRequest) and isinstance(params.prompt, list):
            if not params.prompt:
                raise APIError(400, "prompt is an empty list", param="prompt")
            if len(params.prompt) > limits.max_prompts:
                raise APIError(400, f"{len(params.prompt)} prompts is over this server's limit of "
                                    f"{limits.max_prompts} per request (--max-prompts).", param="prompt",
                               code="limit_exceeded")

    def _fit_max_tokens(self, requested: int | None, default: int, prompt_tokens: int, param: str) -> int:
        """`max_tokens` for a prompt of `prompt_tokens`: the request's if it fits the context
        window (400 if not), else the default clipped to the room left."""
        window = self.context_window
        if window is None:
            return requested or default
        room = window - prompt_tokens - self.draft_positions
        if requested is not None and requested > room or room < 1:
            asked = requested if requested is not None else 1
            raise APIError(
                400,
                f"This model's maximum context length is {window} tokens. However, you requested "
                f"{prompt_tokens + asked + self.draft_positions} tokens ({prompt_tokens} in the {param}, "
                f"{asked} for the completion, {self.draft_positions} draft positions). Please reduce the "
                f"length of the {param} or max_tokens.",
                param=param, code="context_length_exceeded")
        return requested if requested is not None else min(default, room)

    # ----- admission (runs in the admission thread: tokenizes and submits) -------------
    def admit(self, kind: str, params: _GenerationParams) -> _Job:
        request_id = ("cmpl-" if kind == "completions" else "chatcmpl-") + uuid.uuid4().hex[:24]
        try:
            if kind == "completions":
                run, prompt_tokens, refused = self._start_completion(params)  # type: ignore[arg-type]
            else:
                (run, prompt_tokens), refused = self._start_chat(params), {}  # type: ignore[arg-type]
        except APIError:
            raise
        except (ValueError, TypeError, KeyError, NotImplementedError) as error:
            raise APIError(400, str(error)) from None
        include_usage = bool(params.stream_options and params.stream_options.include_usage)
        job = _Job(kind, run, request_id, prompt_tokens, params.stream, include_usage, refused)
        self._log_start(job, params)
        return job

    def _call_kwargs(self, params: _GenerationParams, max_tokens: int) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"max_tokens": max_tokens, "n": params.n}
        for name in ("temperature", "top_p", "seed"):
            value = getattr(params, name)
            if value is not None:
                kwargs[name] = value
        return kwargs

    def _start_completion(self, params: CompletionRequest) -> tuple[SeedRun, int, dict[int, APIError]]:
        """The run of the good prompts, their token count, and the error of each bad prompt."""
        prompts = [params.prompt] if isinstance(params.prompt, str) else list(params.prompt)
        fits, refused = {}, {}
        for index, prompt in enumerate(prompts):
            try:
                fits[index] = self._fit_prompt(index, prompt, params.max_tokens)
            except APIError as error:
                refused[index] = error
        if not fits:
            raise next(iter(refused.values()))
        max_tokens = min(fit for _, fit in fits.values())
        good = [prompts[index] for index in fits]
        run = self.llm.start_run(good, _stop_list(params.stop), **self._call_kwargs(params, max_tokens))
        return run, sum(count for count, _ in fits.values()), refused

    def _fit_prompt(self, index: int, prompt: str, requested: int | None) -> tuple[int, int]:
        """(token count, max_tokens) of one completion prompt; APIError (400) if it cannot run."""
        from langchain_seed.lc.text import check_text_prompt

        try:
            count = len(self.llm.prompt_token_ids(check_text_prompt(index, prompt), index))
        except ValueError as error:
            raise APIError(400, str(error), param="prompt") from None
        return count, self._fit_max_tokens(requested, COMPLETIONS_DEFAULT_MAX_TOKENS, count, "prompt")

    def _start_chat(self, params: ChatCompletionRequest) -> tuple[SeedRun, int]:
        messages = _to_messages(params.messages)
        prompt_tokens = self.chat.get_num_tokens_from_messages(messages)
        default = self.settings.default_max_tokens or self.chat.max_tokens
        max_tokens = self._fit_max_tokens(_requested_max_tokens(params), default, prompt_tokens, "messages")
        run = self.chat.start_run(messages, _stop_list(params.stop), **self._call_kwargs(params, max_tokens))
        return run, prompt_tokens

    # ----- running ----------------------------------------------------------------------
    async def events(self, job: _Job) -> AsyncIterator[tuple[int, str | None]]:
        """(choice, text piece) as tokens are committed, and (choice, None) when a choice ends.

        Closing this iterator early (or cancelling its reader) cancels every unfinished
        generation of the job.
        """
        queue: asyncio.Queue = asyncio.Queue()

        async def read(index: int) -> None:
            try:
                async for piece in job.run.aiter_text(index):
                    queue.put_nowait((index, piece, None))
                queue.put_nowait((index, None, None))
            except Exception as error:  # noqa: BLE001 - handed to the response
                queue.put_nowait((index, None, error))

        readers = [asyncio.create_task(read(index)) for index in range(len(job.run))]
        remaining = len(readers)
        try:
            while remaining:
                index, piece, error = await queue.get()
                if error is not None:
                    raise error
                if piece is None:
                    remaining -= 1
                yield index, piece
        finally:
            for reader in readers:
                reader.cancel()
            job.run.close()

    async def respond(self, job: _Job) -> dict[str, Any]:
        """The whole (non-streamed) response body."""
        texts = [""] * len(job.run)
        async for index, piece in self.events(job):
            if piece:
                texts[index] += piece
        choices = [self._error_choice(choice, slot) if isinstance(slot, APIError)
                   else self._choice(job, choice, slot, texts[slot]) for choice, slot in enumerate(job.slots)]
        body = {"id": job.request_id, "object": _OBJECTS[job.kind], "created": job.created,
                "model": self.model_name, "choices": choices, "usage": self.usage(job)}
        self._log_end(job, texts)
        return body

    async def stream(self, job: _Job) -> AsyncIterator[bytes]:
        """Server-sent events: OpenAI chunks, then `data: [DONE]`."""
        texts = [""] * len(job.run)
        finished = False
        try:
            if job.kind == "chat":
                for index in range(len(job.run)):
                    yield self._sse(job, [self._delta(index, {"role": "assistant", "content": ""}, None)])
            for choice, slot in enumerate(job.slots):
                if isinstance(slot, APIError):
                    yield self._sse(job, [self._error_choice(choice, slot)])
            async for index, piece in self.events(job):
                choice = job.choice_of[index]
                if piece is None:
                    yield self._sse(job, [self._stream_choice(job, choice, "", self._finish_reason(job, index))])
                elif piece:
                    texts[index] += piece
                    yield self._sse(job, [self._stream_choice(job, choice, piece, None)])
            if job.include_usage:
                yield self._sse(job, [], usage=self.usage(job))
            finished = True
            self._log_end(job, texts)
        except Exception as error:  # noqa: BLE001 - the status line is gone: report in the stream
            self.metrics.failed += 1
            logger.error("%s failed while streaming: %s", job.request_id, type(error).__name__)
            yield _sse_data(APIError(500, f"generation failed: {error}", type="server_error").body())
            finished = True
        finally:
            if not finished:
                self.note_disconnect(job)
        yield b"data: [DONE]\n\n"

    def note_disconnect(self, job: _Job) -> None:
        self.metrics.cancelled += 1
        logger.info("%s: client disconnected after %.2f s; its generations were cancelled", job.request_id,
                    time.perf_counter() - job.started)

    # ----- response pieces --------------------------------------------------------------
    def usage(self, job: _Job) -> dict[str, int]:
        completion = sum(int(job.run.generation_info(i).get("new_tokens", 0)) for i in range(len(job.run)))
        return {"prompt_tokens": job.prompt_tokens, "completion_tokens": completion,
                "total_tokens": job.prompt_tokens + completion}

    def _finish_reason(self, job: _Job, index: int) -> str:
        reason = job.run.finish_reason(index)
        return reason if reason in ("stop", "length") else "stop"

    def _choice(self, job: _Job, choice: int, index: int, text: str) -> dict[str, Any]:
        """Choice `choice` of the response, made of the run's generation `index`."""
        reason = self._finish_reason(job, index)
        if job.kind == "completions":
            return {"index": choice, "text": text, "logprobs": None, "finish_reason": reason}
        return {"index": choice, "message": {"role": "assistant", "content": text}, "logprobs": None,
                "finish_reason": reason}

    @staticmethod
    def _error_choice(choice: int, error: APIError) -> dict[str, Any]:
        """A completion choice whose prompt was refused: no text, finish_reason "error", the error."""
        return {"index": choice, "text": "", "logprobs": None, "finish_reason": "error", **error.body()}

    def _stream_choice(self, job: _Job, index: int, piece: str, reason: str | None) -> dict[str, Any]:
        if job.kind == "completions":
            return {"index": index, "text": piece, "logprobs": None, "finish_reason": reason}
        return self._delta(index, {"content": piece} if piece or reason is None else {}, reason)

    @staticmethod
    def _delta(index: int, delta: dict[str, Any], reason: str | None) -> dict[str, Any]:
        return {"index": index, "delta": delta, "logprobs": None, "finish_reason": reason}

    def _sse(self, job: _Job, choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> bytes:
        chunk: dict[str, Any] = {"id": job.request_id, "object": _CHUNK_OBJECTS[job.kind], "created": job.created,
                                 "model": self.model_name, "choices": choices}
        if job.include_usage:
            chunk["usage"] = usage
        return _sse_data(chunk)

    def models(self) -> dict[str, Any]:
        entry = {"id": self.model_name, "object": "model", "created": self.created, "owned_by": "langchain-seed"}
        if self.context_window is not None:
            entry["max_model_len"] = self.context_window
        return {"object": "list", "data": [entry]}

    def health(self) -> dict[str, Any]:
        stats = self.llm.engine.stats()
        return {"status": "ok", "model": self.model_name, "active_sequences": stats.active,
                "rounds": stats.rounds, **vars(self.metrics)}

    # ----- logging (no text unless log_prompts) -----------------------------------------
    def _log_start(self, job: _Job, params: _GenerationParams) -> None:
        logger.info("%s %s: %d prompt tokens, n=%d, stream=%s", job.request_id, job.kind, job.prompt_tokens,
                    params.n, params.stream)
        if self.settings.log_prompts:
            prompt = params.prompt if isinstance(params, CompletionRequest) else params.messages  # type: ignore
            logger.info("%s prompt: %r", job.request_id, prompt)

    def _log_end(self, job: _Job, texts: list[str]) -> None:
        self.metrics.completed += 1
        usage = self.usage(job)
        logger.info("%s done in %.2f s: %d completion tokens, finish %s", job.request_id,
                    time.perf_counter() - job.started, usage["completion_tokens"],
                    ",".join(self._finish_reason(job, i) for i in range(len(job.run))))
        if self.settings.log_prompts:
            logger.info("%s completion: %r", job.request_id, texts)


_OBJECTS = {"completions": "text_completion", "chat": "chat.completion"}
_CHUNK_OBJECTS = {"completions": "text_completion", "chat": "chat.completion.chunk"}


def _requested_max_tokens(params: _GenerationParams) -> int | None:
    if isinstance(params, ChatCompletionRequest) and params.max_completion_tokens is not None:
        return params.max_completion_tokens
    return params.max_tokens


def _stop_list(stop: str | list[str] | None) -> list[str] | None:
    if stop is None:
        return None
    return [stop] if isinstance(stop, str) else list(stop)


def _to_messages(raw: list[dict[str, Any]]) -> list[Any]:
    """OpenAI chat messages as LangChain messages (text content only)."""
    from langchain_core.messages import convert_to_messages

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


def _sse_data(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, ensure_ascii=False).encode() + b"\n\n"


# -------------------------------------------------------------------------------- HTTP


async def _read_json(request: Any, limit: int) -> dict[str, Any]:
    """The JSON object of the request body, refusing bodies over `limit` bytes (413)."""
    declared = request.headers.get("content-length", "")
    too_large = APIError(413, f"The request body is over this server's limit of {limit} bytes (--max-body-bytes).",
                         code="request_too_large")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise APIError(400, "The request body is not valid JSON.") from None
    if not isinstance(data, dict):
        raise APIError(400, "The request body must be a JSON object.")
    return data


async def _wait_for_disconnect(request: Any) -> None:
    """Return once the client has gone (the request body must have been read)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _unless_disconnected(request: Any, work: Any) -> Any:
    """Await `work`, cancelling it (and raising ClientDisconnected) if the client goes away."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task  # runs the generations' clean-up: they are cancelled at the engine
        raise ClientDisconnected()
    finally:
        watcher.cancel()
        task.cancel()


def create_app(llm: SeedLLM, settings: ServerSettings | None = None, *, chat: ChatSeed | None = None) -> Any:
    """A Starlette (ASGI) application serving `llm` (and `chat`, default `ChatSeed.from_llm(llm)`).

    `app.state.service` is the `SeedService` (its `metrics` count requests and disconnects).
    """
    try:
        from starlette.applications import Starlette
        from starlette.background import BackgroundTask
        from starlette.exceptions import HTTPException
        from starlette.responses import JSONResponse, StreamingResponse
        from starlette.routing import Route
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(f"the server needs starlette and uvicorn: pip install 'langchain-seed[server]' "
                                  f"({error})", name=error.name) from error

    service = SeedService(llm, settings or ServerSettings(), chat)

    def error_response(error: APIError) -> Any:
        if error.status != 500:
            service.metrics.refused += 1
        return JSONResponse(error.body(), status_code=error.status)

    async def generate(request: Any, kind: str) -> Any:
        service.metrics.requests += 1
        try:
            service.authorize(request.headers)
            params = service.parse(kind, await _read_json(request, service.settings.max_body_bytes))
            job = await service.admit_async(kind, params)
        except APIError as error:
            return error_response(error)
        if job.stream:
            # The background close also covers a client gone before the stream's first step.
            return StreamingResponse(service.stream(job), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
                                     background=BackgroundTask(job.run.close))
        try:
            body = await _unless_disconnected(request, service.respond(job))
        except ClientDisconnected:
            service.note_disconnect(job)
            return JSONResponse({"error": "client disconnected"}, status_code=499)
        except Exception as error:  # noqa: BLE001 - answered as an OpenAI-style 500
            service.metrics.failed += 1
            logger.error("%s failed: %s", job.request_id, type(error).__name__)
            return JSONResponse(APIError(500, f"generation failed: {error}", type="server_error").body(),
                                status_code=500)
        return JSONResponse(body)

    async def completions(request: Any) -> Any:
        return await generate(request, "completions")

    async def chat_completions(request: Any) -> Any:
        return await generate(request, "chat")

    async def models(request: Any) -> Any:
        try:
            service.authorize(request.headers)
        except APIError as error:
            return error_response(error)
        return JSONResponse(service.models())

    async def health(request: Any) -> Any:
        return JSONResponse(service.health())

    async def http_error(request: Any, error: Any) -> Any:
        return JSONResponse(APIError(error.status_code, f"{request.method} {request.url.path}: {error.detail}",
                                     code=str(error.status_code)).body(), status_code=error.status_code)

    routes = [
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error})
    app.state.service = service
    return app


def serve(llm: SeedLLM, host: str = "127.0.0.1", port: int = 8000, *, log_level: str = "info",
          **settings: Any) -> None:
    """Serve `llm` over HTTP until interrupted (blocking). `settings`: `ServerSettings` fields."""
    import uvicorn

    if host not in LOOPBACK_HOSTS and not settings.get("api_key"):
        logger.warning("serving on %s without an API key: anyone who can reach this port can use the model", host)
    uvicorn.run(create_app(llm, ServerSettings(**settings)), host=host, port=port, log_level=log_level)


# ------------------------------------------------------------------------------ command


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `serve` on the `langchain-seed` command."""
    parser = subparsers.add_parser(
        "serve", help="OpenAI-compatible HTTP server (completions, chat, streaming) over the engine",
        description="Serve a target/draft pair (default: the embedded default pair) at /v1/completions, "
                    "/v1/chat/completions and /v1/models. Needs: pip install 'langchain-seed[server]'.")
    parser.add_argument("--target", default=None, help="target model dir or hub id (default: the default pair)")
    parser.add_argument("--draft", default=None, help="draft model dir or hub id (default: the default pair's)")
    parser.add_argument("--model-name", default=None, help="model id clients send (default: the target's name)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, loopback only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key", default=None,
                        help=f"require 'Authorization: Bearer KEY' (default: ${API_KEY_ENV}, else no key)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    parser.add_argument("--device-map", default=None, help="accelerate device map for the target, e.g. auto")
    parser.add_argument("--decoding", choices=("autoregressive", "speculative", "scheduled"), default="scheduled")
    parser.add_argument("--verify", choices=("rounds", "batched"), default="batched")
    parser.add_argument("--k-config", type=parse_k_config, default=(1, 1, 1, 1),
                        help="draft tree per depth, e.g. 1,1,1,1 or 2,2,1")
    parser.add_argument("--temperature", type=float, default=0.0,
                        help="temperature when a request gives none (default 0: greedy)")
    parser.add_argument("--default-max-tokens", type=positive_int, default=256,
                        help="chat max_tokens when a request gives none (default 256)")
    parser.add_argument("--max-tokens-limit", type=positive_int, default=4096, help="largest max_tokens accepted")
    parser.add_argument("--max-n", type=positive_int, default=16, help="largest n accepted")
    parser.add_argument("--max-prompts", type=positive_int, default=32, help="most prompts per completions request")
    parser.add_argument("--max-body-bytes", type=positive_int, default=1 << 20, help="largest request body (413 above)")
    parser.add_argument("--log-prompts", action="store_true", help="log prompt and completion text (off by default)")
    parser.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    parser.set_defaults(func=serve_command)
    return parser


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    return ServerSettings(
        model_name=args.model_name, api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
        max_body_bytes=args.max_body_bytes, max_tokens_limit=args.max_tokens_limit, max_n=args.max_n,
        max_prompts=args.max_prompts, default_max_tokens=args.default_max_tokens, log_prompts=args.log_prompts)


def serve_command(args: argparse.Namespace) -> int:
    try:
        import starlette  # noqa: F401
        import uvicorn
    except ModuleNotFoundError as error:
        raise SystemExit(f"`langchain-seed serve` needs the server extra: pip install 'langchain-seed[server]' "
                         f"(missing {error.name})") from None
    from langchain_seed.lc.llms import SeedLLM

    settings = settings_from_args(args)
    fields = dict(decoding=args.decoding, verify=args.verify, k_config=args.k_config,
                  temperature=args.temperature, max_tokens=args.default_max_tokens)
    if args.target is None:
        llm = SeedLLM.from_default(**fields)
    else:
        llm = SeedLLM.from_pretrained(args.target, args.draft, dtype=args.dtype, device_map=args.device_map,
                                      **fields)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.host not in LOOPBACK_HOSTS and settings.api_key is None:
        logger.warning("serving on %s without an API key: anyone who can reach it can use the model", args.host)
    service_name = settings.model_name or llm.model_name
    print(f"Serving {service_name!r} at http://{args.host}:{args.port}/v1 (Ctrl-C to stop)", flush=True)
    uvicorn.run(create_app(llm, settings), host=args.host, port=args.port, log_level=args.log_level)
    return 0


