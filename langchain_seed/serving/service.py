"""The server's logic, free of HTTP framework types: parse, check, admit, stream.

Every request runs through the one engine's scheduler, so concurrent clients are drafted
and verified in the same rounds. Tokenizing and submitting run in one admission thread
(in arrival order); tokens arrive through the engine's async request handles. The text of
a choice is `SeedRun`'s stream (the same detokenizer and stop-string logic as
`SeedLLM.stream`), so the server and the LangChain classes cannot drift apart.

A `/v1/completions` request with a list of prompts is checked prompt by prompt: when some
prompts are bad (empty, too long for the context window) and others good, the good ones
are decoded as usual and each choice of a bad one carries `"text": ""`,
`"finish_reason": "error"` and an `"error"` object in OpenAI's error shape (`message`,
`type`, `param`, `code`), also as one chunk when streaming. OpenAI itself refuses the whole
request instead, so clients that ignore the extra field see an empty text with an unusual
finish reason. When every prompt is bad, the request is refused with the first one's 400.

Prompt and completion text are never logged unless `ServerSettings.log_prompts` is set.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from langchain_seed.engine.options import tree_size
from langchain_seed.lc.chat_models import ChatSeed
from langchain_seed.lc.llms import SeedLLM
from langchain_seed.lc.run import SeedRun
from langchain_seed.lc.text import check_text_prompt
from langchain_seed.serving.protocol import (
    CHUNK_OBJECTS,
    COMPLETIONS_DEFAULT_MAX_TOKENS,
    NEUTRAL_VALUES,
    OBJECTS,
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    GenerationParams,
    requested_max_tokens,
    sse_data,
    stop_list,
    to_messages,
)
from langchain_seed.serving.settings import ServerMetrics, ServerSettings

logger = logging.getLogger("langchain_seed.serving")


@dataclass
class Job:
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

    async def admit_async(self, kind: str, params: GenerationParams) -> Job:
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

    def parse(self, kind: str, data: dict[str, Any]) -> GenerationParams:
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

    def _check_limits(self, params: GenerationParams) -> None:
        if params.model != self.model_name:
            raise APIError(404, f"The model '{params.model}' does not exist here; this server serves "
                                f"'{self.model_name}' (GET /v1/models).", param="model", code="model_not_found")
        limits = self.settings
        if params.n > limits.max_n:
            raise APIError(400, f"n={params.n} is over this server's limit of {limits.max_n} choices per prompt "
                                f"(--max-n).", param="n", code="limit_exceeded")
        max_tokens = requested_max_tokens(params)
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
    def admit(self, kind: str, params: GenerationParams) -> Job:
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
        job = Job(kind, run, request_id, prompt_tokens, params.stream, include_usage, refused)
        self._log_start(job, params)
        return job

    def _call_kwargs(self, params: GenerationParams, max_tokens: int) -> dict[str, Any]:
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
        run = self.llm.start_run(good, stop_list(params.stop), **self._call_kwargs(params, max_tokens))
        return run, sum(count for count, _ in fits.values()), refused

    def _fit_prompt(self, index: int, prompt: str, requested: int | None) -> tuple[int, int]:
        """(token count, max_tokens) of one completion prompt; APIError (400) if it cannot run."""
        try:
            count = len(self.llm.prompt_token_ids(check_text_prompt(index, prompt), index))
        except ValueError as error:
            raise APIError(400, str(error), param="prompt") from None
        return count, self._fit_max_tokens(requested, COMPLETIONS_DEFAULT_MAX_TOKENS, count, "prompt")

    def _start_chat(self, params: ChatCompletionRequest) -> tuple[SeedRun, int]:
        messages = to_messages(params.messages)
        prompt_tokens = self.chat.get_num_tokens_from_messages(messages)
        default = self.settings.default_max_tokens or self.chat.max_tokens
        max_tokens = self._fit_max_tokens(requested_max_tokens(params), default, prompt_tokens, "messages")
        run = self.chat.start_run(messages, stop_list(params.stop), **self._call_kwargs(params, max_tokens))
        return run, prompt_tokens

    # ----- running ----------------------------------------------------------------------
    async def events(self, job: Job) -> AsyncIterator[tuple[int, str | None]]:
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
            except Exception as error:
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

    async def respond(self, job: Job) -> dict[str, Any]:
        """The whole (non-streamed) response body."""
        texts = [""] * len(job.run)
        async for index, piece in self.events(job):
            if piece:
                texts[index] += piece
        choices = [self._error_choice(choice, slot) if isinstance(slot, APIError)
                   else self._choice(job, choice, slot, texts[slot]) for choice, slot in enumerate(job.slots)]
        body = {"id": job.request_id, "object": OBJECTS[job.kind], "created": job.created,
                "model": self.model_name, "choices": choices, "usage": self.usage(job)}
        self._log_end(job, texts)
        return body

    async def stream(self, job: Job) -> AsyncIterator[bytes]:
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
        except Exception as error:
            self.metrics.failed += 1
            logger.error("%s failed while streaming: %s", job.request_id, type(error).__name__)
            yield sse_data(APIError(500, f"generation failed: {error}", type="server_error").body())
            finished = True
        finally:
            if not finished:
                self.note_disconnect(job)
        yield b"data: [DONE]\n\n"

    def note_disconnect(self, job: Job) -> None:
        self.metrics.cancelled += 1
        logger.info("%s: client disconnected after %.2f s; its generations were cancelled", job.request_id,
                    time.perf_counter() - job.started)

    # ----- response pieces --------------------------------------------------------------
    def usage(self, job: Job) -> dict[str, int]:
        completion = sum(int(job.run.generation_info(i).get("new_tokens", 0)) for i in range(len(job.run)))
        return {"prompt_tokens": job.prompt_tokens, "completion_tokens": completion,
                "total_tokens": job.prompt_tokens + completion}

    def _finish_reason(self, job: Job, index: int) -> str:
        reason = job.run.finish_reason(index)
        return reason if reason in ("stop", "length") else "stop"

    def _choice(self, job: Job, choice: int, index: int, text: str) -> dict[str, Any]:
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

    def _stream_choice(self, job: Job, index: int, piece: str, reason: str | None) -> dict[str, Any]:
        if job.kind == "completions":
            return {"index": index, "text": piece, "logprobs": None, "finish_reason": reason}
        return self._delta(index, {"content": piece} if piece or reason is None else {}, reason)

    @staticmethod
    def _delta(index: int, delta: dict[str, Any], reason: str | None) -> dict[str, Any]:
        return {"index": index, "delta": delta, "logprobs": None, "finish_reason": reason}

    def _sse(self, job: Job, choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> bytes:
        chunk: dict[str, Any] = {"id": job.request_id, "object": CHUNK_OBJECTS[job.kind], "created": job.created,
                                 "model": self.model_name, "choices": choices}
        if job.include_usage:
            chunk["usage"] = usage
        return sse_data(chunk)

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
    def _log_start(self, job: Job, params: GenerationParams) -> None:
        logger.info("%s %s: %d prompt tokens, n=%d, stream=%s", job.request_id, job.kind, job.prompt_tokens,
                    params.n, params.stream)
        if self.settings.log_prompts:
            prompt = params.prompt if isinstance(params, CompletionRequest) else params.messages  # type: ignore
            logger.info("%s prompt: %r", job.request_id, prompt)

    def _log_end(self, job: Job, texts: list[str]) -> None:
        self.metrics.completed += 1
        usage = self.usage(job)
        logger.info("%s done in %.2f s: %d completion tokens, finish %s", job.request_id,
                    time.perf_counter() - job.started, usage["completion_tokens"],
                    ",".join(self._finish_reason(job, i) for i in range(len(job.run))))
        if self.settings.log_prompts:
            logger.info("%s completion: %r", job.request_id, texts)
