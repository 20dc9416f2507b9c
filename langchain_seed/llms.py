"""`SeedLLM`: a LangChain LLM over the SeeD engine (scheduled speculative decoding).

This module knows nothing of tensors: prompts become token ids, the engine decodes them,
and the token ids that come back, chunk by chunk, become text. Streaming is the single
source of truth: `invoke`, `batch` and `generate` read the same chunks as `stream`, so
their text is exactly the concatenation of the streamed chunks.
"""

from __future__ import annotations

import asyncio
import json
import math
import queue
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseLLM
from langchain_core.language_models.base import LangSmithParams
from langchain_core.outputs import Generation, GenerationChunk, LLMResult
from langchain_core.runnables import RunnableConfig
from langchain_core.runnables.config import get_config_list
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator

from langchain_seed._text import StopChecker, StopSequences, StreamingText

if TYPE_CHECKING:
    from langchain_seed.engine import GenerationResult, RunStats, SamplingParams, SeedEngine, SpeculativeConfig

DecodingMode = Literal["autoregressive", "speculative", "scheduled"]
VerifyPolicy = Literal["rounds", "batched"]

DECODING_MODES = ("autoregressive", "speculative", "scheduled")
VERIFY_POLICIES = ("rounds", "batched")
CALL_OPTIONS = ("decoding", "verify", "k_config", "draft_confidence", "temperature", "top_p", "max_tokens", "seed", "n", "timeout")
"""Fields that may be overridden per call through keyword arguments."""
MAX_N = 64


# ----------------------------------------------------------------------------- checks
# One check per option, shared by the pydantic field validators and per-call kwargs, so
# that a bad value gets the same message wherever it was written.


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _choice(name: str, choices: Sequence[str]):
    def check(value: object) -> str:
        if value not in choices:
            raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
        return value  # type: ignore[return-value]

    return check


def _check_k_config(value: object) -> tuple[int, ...]:
    from langchain_seed.engine.config import normalize_k_config

    return normalize_k_config(value)


def _check_draft_confidence(value: object) -> float:
    from langchain_seed.engine.config import check_draft_confidence

    return check_draft_confidence(value)


def _check_temperature(value: object) -> float:
    if not (_is_number(value) and math.isfinite(value) and 0 <= value <= 100):  # type: ignore[arg-type]
        raise ValueError(f"temperature must be a finite number in [0, 100] (0 is greedy); got {value!r}")
    return float(value)  # type: ignore[arg-type]


def _check_top_p(value: object) -> float:
    if not (_is_number(value) and 0 < value <= 1):  # type: ignore[operator]
        raise ValueError(f"top_p must be a number in (0, 1]; got {value!r}")
    return float(value)  # type: ignore[arg-type]


def _check_max_tokens(value: object) -> int:
    if not (_is_int(value) and value >= 1):  # type: ignore[operator]
        raise ValueError(f"max_tokens must be a positive int; got {value!r}")
    return value  # type: ignore[return-value]


def _check_seed(value: object) -> int | None:
    if value is not None and not (_is_int(value) and 0 <= value < 2**63):  # type: ignore[operator]
        raise ValueError(f"seed must be None or an int in [0, 2**63); got {value!r}")
    return value  # type: ignore[return-value]


def _check_n(value: object) -> int:
    if not (_is_int(value) and 1 <= value <= MAX_N):  # type: ignore[operator]
        raise ValueError(f"n (generations per prompt) must be an int in [1, {MAX_N}]; got {value!r}")
    return value  # type: ignore[return-value]


def _check_timeout(value: object) -> float | None:
    if value is not None and not (_is_number(value) and value > 0):  # type: ignore[operator]
        raise ValueError(f"timeout must be None or a positive number of seconds; got {value!r}")
    return None if value is None else float(value)  # type: ignore[arg-type]


def _check_max_retries(value: object) -> int:
    if not (_is_int(value) and value >= 0):  # type: ignore[operator]
        raise ValueError(f"max_retries must be a non-negative int; got {value!r}")
    return value  # type: ignore[return-value]


def _check_stop(value: object) -> list[str] | None:
    from langchain_seed._text import normalize_stop

    if value is None:
        return None
    return list(normalize_stop(value))  # type: ignore[arg-type]


_CHECKS = {
    "decoding": _choice("decoding", DECODING_MODES),
    "verify": _choice("verify", VERIFY_POLICIES),
    "k_config": _check_k_config,
    "draft_confidence": _check_draft_confidence,
    "temperature": _check_temperature,
    "top_p": _check_top_p,
    "max_tokens": _check_max_tokens,
    "seed": _check_seed,
    "n": _check_n,
    "timeout": _check_timeout,
    "max_retries": _check_max_retries,
    "stop": _check_stop,
}


# --------------------------------------------------------------------- per-call options


@dataclass(frozen=True)
class CallOptions:
    """The options of one call: the model's fields, overridden by the call's kwargs."""

    decoding: str
    verify: str
    k_config: tuple[int, ...]
    draft_confidence: float
    temperature: float
    top_p: float
    max_tokens: int
    seed: int | None
    n: int
    timeout: float | None

    def speculative_config(self) -> SpeculativeConfig:
        from langchain_seed.engine import SpeculativeConfig

        return SpeculativeConfig(k_config=self.k_config, verify=self.verify, draft_confidence=self.draft_confidence)

    def sampling_params(self, sample_index: int, stop_callback=None) -> SamplingParams:
        """Sampling of generation `sample_index` of a prompt: seeds differ between samples."""
        from langchain_seed.engine import SamplingParams

        seed = None if self.seed is None else (self.seed + sample_index) % 2**63
        return SamplingParams(temperature=self.temperature, top_p=self.top_p, max_tokens=self.max_tokens, seed=seed,
                              stop_callback=stop_callback)


# ------------------------------------------------------------------------ token sources


class _SerialHandle:
    """A request of a serial (autoregressive / speculative) `engine.generate` run, seen
    like a scheduler handle: iterate its new token ids as they are committed, `wait`, `cancel`.

    The engine reports progress through the request's stop callback (called after each
    commit with all new ids); the final chunk comes with the result.
    """

    def __init__(self, stop_check=None) -> None:
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._stop_check = stop_check
        self._seen = 0
        self._cancelled = False
        self._engine_done = False
        self._result: GenerationResult | None = None
        self._error: BaseException | None = None

    # engine side (the run's thread)
    def observe(self, new_ids: list[int]) -> bool:
        self._put_new(new_ids)
        if self._cancelled:
            return True
        return bool(self._stop_check(new_ids)) if self._stop_check is not None else False

    def _put_new(self, new_ids: list[int]) -> None:
        if len(new_ids) > self._seen:
            self._queue.put(("chunk", list(new_ids[self._seen:])))
            self._seen = len(new_ids)

    def finish(self, result: GenerationResult) -> None:
        self._put_new(result.token_ids)
        self._engine_done = True
        self._queue.put(("done", result))

    def fail(self, error: BaseException) -> None:
        self._engine_done = True
        self._queue.put(("error", error))

    # consumer side
    def cancel(self) -> None:
        self._cancelled = True

    @property
    def done(self) -> bool:
        """True once the engine has finished this request (read or not)."""
        return self._engine_done

    def wait(self) -> GenerationResult:
        """The result, once the stream has been read to its end."""
        for _ in self:
            pass
        assert self._result is not None
        return self._result

    def _take(self, item) -> list[int] | None:
        kind, payload = item
        if kind == "chunk":
            return payload
        if kind == "error":
            self._error = payload
        else:
            self._result = payload
            self._error = payload.error
        return None

    def _ended(self) -> bool:
        if self._error is not None:
            raise self._error
        return self._result is not None

    def __iter__(self) -> Iterator[list[int]]:
        while not self._ended():
            chunk = self._take(self._queue.get())
            if chunk is not None:
                yield chunk

    async def __aiter__(self) -> AsyncIterator[list[int]]:
        loop = asyncio.get_running_loop()
        while not self._ended():
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                item = await loop.run_in_executor(None, self._queue.get)
            chunk = self._take(item)
            if chunk is not None:
                yield chunk


def _start_serial(engine: SeedEngine, prompt_ids: list[list[int]], params: list[SamplingParams], mode: str,
                  config: SpeculativeConfig) -> tuple[list[_SerialHandle], dict]:
    """Run `engine.generate` (one prompt after another) in a thread; handles stream its tokens."""
    from dataclasses import replace

    handles = [_SerialHandle(p.stop_callback) for p in params]
    observed = [replace(p, stop_callback=h.observe) for p, h in zip(params, handles)]
    totals: dict = {}

    def run() -> None:
        try:
            batch = engine.generate(prompt_ids, observed, mode=mode, config=config)
        except BaseException as error:  # noqa: BLE001 - handed to every consumer
            for handle in handles:
                handle.fail(error)
            return
        totals["stats"] = batch.stats
        for handle, result in zip(handles, batch):
            handle.finish(result)

    threading.Thread(target=run, name=f"langchain-seed-{mode}", daemon=True).start()
    return handles, totals


@dataclass
class _Generation:
    """One generation of a run: where its tokens come from and the text made of them."""

    source: Any
    text: StreamingText
    prompt_tokens: int
    result: GenerationResult | None = None


@dataclass
class SeedRun:
    """The generations of one call, running on the engine; their text, statistics, timeout."""

    engine: Any
    options: CallOptions
    generations: list[_Generation]
    started: float
    forwards_before: tuple[int, int] | None = None
    rounds_before: int = 0
    serial_totals: dict | None = None
    timed_out: bool = False
    _timer: threading.Timer | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.generations)

    # ----- text, chunk by chunk ---------------------------------------------------------
    def iter_text(self, index: int) -> Iterator[str]:
        """Text pieces of generation `index` as its tokens are committed (blocking)."""
        generation = self.generations[index]
        try:
            for token_ids in generation.source:
                piece = generation.text.push(token_ids)
                if piece:
                    yield piece
        except Exception:
            self._raise_if_timed_out()
            raise
        piece = generation.text.finish()
        if piece:
            yield piece
        self._finish(generation)

    async def aiter_text(self, index: int) -> AsyncIterator[str]:
        """Text pieces of generation `index`, without ever blocking the event loop."""
        generation = self.generations[index]
        try:
            async for token_ids in generation.source:
                piece = generation.text.push(token_ids)
                if piece:
                    yield piece
        except Exception:
            self._raise_if_timed_out()
            raise
        piece = generation.text.finish()
        if piece:
            yield piece
        self._finish(generation)

    def _finish(self, generation: _Generation) -> None:
        generation.result = generation.source.wait()
        self._raise_if_timed_out()
        if generation.result.error is not None:
            raise generation.result.error

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
        if any(not g.source.done for g in self.generations):
            self.timed_out = True
            self.cancel()

    def cancel(self) -> None:
        """Stop every generation that is still running (its tokens so far are kept)."""
        for generation in self.generations:
            if not generation.source.done:
                generation.source.cancel()

    def close(self) -> None:
        """Cancel what is unfinished and stop the timer (call when the caller is done)."""
        if self._timer is not None:
            self._timer.cancel()
        self.cancel()

    # ----- statistics -------------------------------------------------------------------
    def finish_reason(self, index: int) -> str:
        generation = self.generations[index]
        if generation.text.stopped:
            return "stop"
        return generation.result.finish_reason if generation.result is not None else "cancelled"

    def generation_info(self, index: int) -> dict[str, Any]:
        """Speculative statistics of generation `index` (it must have finished)."""
        generation = self.generations[index]
        stats = generation.result.stats if generation.result is not None else None
        info: dict[str, Any] = {"finish_reason": self.finish_reason(index), "decoding": self.options.decoding}
        if stats is not None:
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
        """Totals of the run. In scheduled mode the forward counts are the scheduler's during
        the run, which it shares with any concurrent call."""
        from langchain_seed.engine import RunStats

        if self.serial_totals and "stats" in self.serial_totals:
            return self.serial_totals["stats"]
        stats = RunStats()
        for generation in self.generations:
            if generation.result is not None:
                stats.add_request(generation.result.stats)
        stats.seconds = time.perf_counter() - self.started
        scheduler = self.engine.scheduler
        if self.forwards_before is not None:
            target, draft = scheduler_forwards(self.engine)
            stats.target_forwards = target - self.forwards_before[0]
            stats.draft_forwards = draft - self.forwards_before[1]
            stats.rounds = scheduler.stats.rounds - self.rounds_before
        stats.peak_kv_bytes = scheduler.stats.peak_kv_bytes
        stats.peak_rss_mb = scheduler.stats.peak_rss_mb
        return stats


def scheduler_forwards(engine: Any) -> tuple[int, int]:
    """(target, draft) forwards the engine's scheduler has made so far.

    Read from another thread while the scheduler may be adding a lane: retry then.
    """
    for _ in range(100):
        try:
            return engine.scheduler.forwards()
        except RuntimeError:  # dictionary changed size during iteration
            time.sleep(0.001)
    return engine.scheduler.forwards()


# ------------------------------------------------------------------------- shared core


class SeedModelMixin(BaseModel):
    """Fields, validation and engine plumbing shared by `SeedLLM` and `ChatSeed`."""

    model_config = ConfigDict(populate_by_name=True, protected_namespaces=(), extra="forbid",
                              arbitrary_types_allowed=True)

    model_name: str | None = Field(default=None, alias="model")
    """Name reported in traces, `llm_output` and `response_metadata`; defaults to the target's
    `name_or_path`. Also accepted as `model`."""

    decoding: DecodingMode = "scheduled"
    """How the engine decodes: "autoregressive" (target alone, one prompt after another),
    "speculative" (draft + target, one prompt after another) or "scheduled" (SeeD: every
    prompt of a call, and every concurrent call, on one shared scheduler)."""

    verify: VerifyPolicy = "batched"
    """Scheduled mode's verification: "batched" (all pending drafts in one target forward)
    or "rounds" (SeeD's policy: one target call per sequence, first come first served)."""

    k_config: tuple[int, ...] = (1, 1, 1, 1)
    """Draft tree: children per node at each depth. (1, 1, 1, 1) drafts a chain of 4 tokens,
    (2, 2, 1) a tree; () drafts nothing (plain decoding)."""

    draft_confidence: float = 0.0
    """Adaptive draft length: a sequence stops drafting deeper once the draft's top
    probability falls below this, so drafts are long where the draft is sure and short
    where it is not (lossless either way). 0 drafts the whole `k_config` every round."""

    temperature: float = 0.0
    """Sampling temperature; 0 is greedy (the target's own greedy output, token for token)."""

    top_p: float = 1.0
    """Nucleus sampling mass in (0, 1]."""

    max_tokens: int = 256
    """Most new tokens per generation."""

    seed: int | None = None
    """Seed of the sampling generator (generation j of a prompt uses seed + j); None: random."""

    n: int = 1
    """Generations per prompt; all are kept in the result (`generations[i]` has n entries)."""

    stop: list[str] | None = None
    """Default stop sequences, added to those of each call. Generation ends with the token that
    completes one, and the text ends before the earliest stop sequence in it (the same
    whatever the decoding mode or draft tree)."""

    streaming: bool = False
    """Report text chunks to callbacks (`on_llm_new_token`) as they are decoded, also in
    `invoke` / `generate` (`stream` always does)."""

    timeout: float | None = None
    """Seconds a call may take; past it the unfinished generations are cancelled and
    `TimeoutError` is raised. None: no limit."""

    max_retries: int = 0
    """Accepted for LangChain's standard parameters. A local engine has no transient failures,
    so failed generations are never retried."""

    _engine: Any = PrivateAttr(default=None)

    def __init__(self, *, engine: SeedEngine | None = None, **data: Any) -> None:
        super().__init__(**data)
        self._engine = engine
        if self.model_name is None and engine is not None:
            self.model_name = _model_name_of(engine)

    @field_validator(*_CHECKS, mode="before")
    @classmethod
    def _check_field(cls, value: Any, info) -> Any:
        return _CHECKS[info.field_name](value)

    # ----- copies -----------------------------------------------------------------------
    def __deepcopy__(self, memo: dict[int, Any] | None = None):
        """A deep copy, refused while an engine is attached (shallow copies share the engine)."""
        self._refuse_copy("deep-copied")
        return super().__deepcopy__(memo)

    def __getstate__(self) -> dict[Any, Any]:
        """The pickled state, refused while an engine is attached."""
        self._refuse_copy("pickled")
        return super().__getstate__()

    def _refuse_copy(self, what: str) -> None:
        if self._engine is None:
            return
        name = type(self).__name__
        raise TypeError(
            f"{name} cannot be {what}: it holds a live SeeD engine (loaded models and a running scheduler "
            f"thread) that cannot be copied or pickled. Share this one object between threads instead (concurrent "
            f"calls are decoded together), or build the model inside each worker process with "
            f"{name}.from_default(...) or {name}.from_pretrained(target, draft, ...). "
            f"Shallow copies (model_copy(), bind(), with_config()) share the engine and work."
        )

    def _convert_input(self, model_input: Any):
        refuse_bytes(model_input)
        return super()._convert_input(model_input)

    # ----- engine -----------------------------------------------------------------------
    @property
    def engine(self) -> SeedEngine:
        """The `SeedEngine` this model runs on (shared by copies and by `ChatSeed.from_llm`)."""
        if self._engine is None:
            raise ValueError(
                f"this {type(self).__name__} has no engine: build it with {type(self).__name__}.from_default(), "
                f".from_pretrained(target, draft), .from_models(target_model, draft_model, tokenizer) or "
                f".from_engine(engine)"
            )
        return self._engine

    @property
    def tokenizer(self) -> Any:
        """The target's tokenizer."""
        tokenizer = self.engine.tokenizer
        if tokenizer is None:
            raise ValueError("the engine has no tokenizer; build the model with one (from_models(..., tokenizer))")
        return tokenizer

    @classmethod
    def from_engine(cls, engine: SeedEngine, **fields: Any):
        """Wrap an existing `SeedEngine` (it must have a tokenizer)."""
        if getattr(engine, "tokenizer", None) is None:
            raise ValueError("the engine has no tokenizer; SeedEngine(target, draft, tokenizer=...) is needed for text")
        return cls(engine=engine, **fields)

    @classmethod
    def from_models(cls, target_model: Any, draft_model: Any = None, tokenizer: Any = None, *,
                    draft_head_token_ids: Sequence[int] | None = None, **fields: Any):
        """Build over loaded transformers objects: a causal LM, an optional draft, the tokenizer."""
        from langchain_seed.engine import SeedEngine

        if tokenizer is None:
            raise ValueError("tokenizer is required: pass the target's transformers tokenizer")
        config = _default_config(fields)
        engine = SeedEngine(target_model, draft_model, tokenizer, config, draft_head_token_ids=draft_head_token_ids)
        return cls.from_engine(engine, **fields)

    @classmethod
    def from_pretrained(cls, target: str | Path, draft: str | Path | None = None, *, dtype: str = "float32",
                        device_map: str | dict | None = None, trust_remote_code: bool = False,
                        allow_pickle: bool = False, draft_head_token_ids: Sequence[int] | None = None,
                        **fields: Any):
        """Load a target (and optional draft) from local directories or hub ids.

        Safetensors only unless `allow_pickle=True` (pickled weights can run code when
        loaded); remote model code only with `trust_remote_code=True`.
        `draft_head_token_ids` defaults to the draft directory's `head_token_ids.json`, if any.
        """
        from langchain_seed.engine import load_models

        loaded = load_models(target, draft, dtype=dtype, device_map=device_map, trust_remote_code=trust_remote_code,
                             allow_pickle=allow_pickle)
        if draft_head_token_ids is None and draft is not None:
            draft_head_token_ids = read_head_token_ids(draft)
        if "model" not in fields and "model_name" not in fields:
            fields["model_name"] = str(target)
        return cls.from_models(loaded.target, loaded.draft, loaded.tokenizer,
                               draft_head_token_ids=draft_head_token_ids, **fields)

    @classmethod
    def from_default(cls, **fields: Any):
        """The embedded default pair (SmolLM2-135M-Instruct and its distilled draft), fetched
        and built once into the cache (see `langchain-seed models`); `k_config` defaults to
        the tree measured best for that draft (`defaults.DEFAULT_PAIR_K_CONFIG`) and
        `draft_confidence` to `defaults.DEFAULT_PAIR_DRAFT_CONFIDENCE`."""
        from langchain_seed.defaults import (DEFAULT_PAIR_DRAFT_CONFIDENCE, DEFAULT_PAIR_K_CONFIG,
                                             default_seed_draft_dir, ensure_default_pair)

        target_dir, draft_dir = ensure_default_pair()
        draft_dir = default_seed_draft_dir() or draft_dir
        if "model" not in fields and "model_name" not in fields:
            fields["model_name"] = "SmolLM2-135M-Instruct"
        fields.setdefault("k_config", DEFAULT_PAIR_K_CONFIG)
        fields.setdefault("draft_confidence", DEFAULT_PAIR_DRAFT_CONFIDENCE)
        return cls.from_pretrained(target_dir, draft_dir, **fields)

    # ----- options ----------------------------------------------------------------------
    def _call_options(self, kwargs: dict[str, Any], ignored: Sequence[str] = ()) -> CallOptions:
        """This call's options: the fields, overridden by kwargs; unknown kwargs are refused."""
        unknown = sorted(k for k in kwargs if k not in CALL_OPTIONS and k not in ignored)
        if unknown:
            raise ValueError(
                f"{type(self).__name__} got unknown keyword argument(s) {', '.join(map(repr, unknown))}; "
                f"per-call options are: {', '.join(CALL_OPTIONS)}"
            )
        values = {name: getattr(self, name) for name in CALL_OPTIONS}
        for name in CALL_OPTIONS:
            if name in kwargs:
                values[name] = _CHECKS[name](kwargs[name])
        return CallOptions(**values)

    def _stop_sequences(self, stop: Sequence[str] | None) -> StopSequences:
        return StopSequences([*(self.stop or []), *(stop or [])])

    # ----- running ----------------------------------------------------------------------
    def _start_run(self, prompt_ids: list[list[int]], options: CallOptions, stop: StopSequences) -> SeedRun:
        """Hand every prompt, n times each, to the engine at once (prompt-major order)."""
        engine, tokenizer = self.engine, self.tokenizer
        skip_ids = engine.eos_token_ids
        all_ids, params, texts = [], [], []
        for ids in prompt_ids:
            for sample in range(options.n):
                checker = StopChecker(tokenizer, ids, stop, skip_ids) if stop else None
                all_ids.append(ids)
                params.append(options.sampling_params(sample, checker))
                texts.append(StreamingText(tokenizer, ids, stop, skip_ids))
        config = options.speculative_config()
        started, rounds = time.perf_counter(), engine.scheduler.stats.rounds
        if options.decoding == "scheduled":
            before = scheduler_forwards(engine)
            sources, totals = engine.submit_many(all_ids, params, config=config), None
        else:
            before = None
            sources, totals = _start_serial(engine, all_ids, params, options.decoding, config)
        generations = [_Generation(s, t, len(ids)) for s, t, ids in zip(sources, texts, all_ids)]
        run = SeedRun(engine, options, generations, started, before, rounds, totals)
        run.start_timer()
        return run

    def _run_sync(self, run: SeedRun, on_piece=None) -> None:
        """Read every generation to its end (in order; the engine runs them all at once)."""
        try:
            for index in range(len(run)):
                for piece in run.iter_text(index):
                    if on_piece is not None:
                        on_piece(index, piece)
        finally:
            run.close()

    async def _run_async(self, run: SeedRun, on_piece=None) -> None:
        """Read every generation concurrently on the event loop."""

        async def read(index: int) -> None:
            async for piece in run.aiter_text(index):
                if on_piece is not None:
                    await on_piece(index, piece)

        try:
            await asyncio.gather(*(read(index) for index in range(len(run))))
        finally:
            run.close()

    # ----- LangChain plumbing -------------------------------------------------------------
    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "decoding": self.decoding,
            "verify": self.verify,
            "k_config": self.k_config,
            "draft_confidence": self.draft_confidence,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
            "n": self.n,
        }

    def get_token_ids(self, text: str) -> list[int]:
        """Token ids of `text` under the target's own tokenizer (no special tokens added)."""
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def get_num_tokens(self, text: str) -> int:
        """Number of tokens of `text` under the target's own tokenizer."""
        return len(self.get_token_ids(text))

    def _ls_params(self, model_type: str, stop: list[str] | None, kwargs: dict[str, Any]) -> LangSmithParams:
        temperature = kwargs.get("temperature", self.temperature)
        max_tokens = kwargs.get("max_tokens", self.max_tokens)
        model = kwargs.get("model")
        params = LangSmithParams(
            ls_provider="langchain-seed",
            ls_model_name=model if isinstance(model, str) else (self.model_name or "unknown"),
            ls_model_type=model_type,  # type: ignore[typeddict-item]
            ls_temperature=temperature if _is_number(temperature) else None,
            ls_max_tokens=max_tokens if _is_int(max_tokens) else None,
        )
        stops = [*(self.stop or []), *(stop or [])]
        if stops:
            params["ls_stop"] = stops
        return params


def _default_config(fields: dict[str, Any]) -> SpeculativeConfig:
    from langchain_seed.engine import SpeculativeConfig

    k_config = _check_k_config(fields.get("k_config", (1, 1, 1, 1)))
    verify = _CHECKS["verify"](fields.get("verify", "batched"))
    draft_confidence = _check_draft_confidence(fields.get("draft_confidence", 0.0))
    return SpeculativeConfig(k_config=k_config, verify=verify, draft_confidence=draft_confidence)


def _model_name_of(engine: Any) -> str:
    config = getattr(engine.target_model, "config", None)
    name = getattr(config, "name_or_path", None) or getattr(config, "_name_or_path", None)
    return str(name) if name else type(engine.target_model).__name__


def read_head_token_ids(draft: str | Path) -> list[int] | None:
    """The draft's restricted LM-head ids from `head_token_ids.json` in its directory, if present."""
    path = Path(draft) / "head_token_ids.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    if isinstance(data, dict):
        data = data.get("head_token_ids", data.get("token_ids"))
    if not isinstance(data, list) or not all(_is_int(t) and t >= 0 for t in data):
        raise ValueError(f"{path} must hold a JSON list of token ids")
    return data


def check_text_prompts(prompts: Sequence[Any]) -> list[str]:
    """Refuse prompts that are not non-empty strings, naming the first bad one."""
    return [check_text_prompt(index, prompt) for index, prompt in enumerate(prompts)]


def check_text_prompt(index: int, prompt: Any) -> str:
    """Refuse a prompt that is not a non-empty UTF-8 string, naming it by `index`."""
    if not isinstance(prompt, str):
        raise ValueError(f"prompt {index} must be a string; got {type(prompt).__name__}")
    if not prompt:
        raise ValueError(f"prompt {index} is empty: give the model some text to continue")
    check_utf8(prompt, f"prompt {index}")
    return prompt


def check_prompt_fits(engine: SeedEngine, index: int, prompt_ids: list[int], options: CallOptions) -> None:
    """The engine's own vocabulary and context-window check of one prompt under `options`,
    run before submitting so that a batch can tell its bad prompts from its good ones."""
    engine.check_request(prompt_ids, options.sampling_params(0), options.decoding, options.speculative_config(),
                         index=index)


def _merge_outcomes(count: int, errors: dict[int, Exception], outputs: list[Any]) -> list[Any]:
    """The outputs of the good inputs in order, with each bad input's error at its own index."""
    rest = iter(outputs)
    return [errors[index] if index in errors else next(rest) for index in range(count)]


def check_utf8(text: str, what: str) -> None:
    """Refuse text that cannot be encoded as UTF-8 (lone surrogates from a bad decode)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(
            f"{what} is not valid UTF-8 text: {error.reason} at position {error.start} "
            f"(decode your bytes with errors='replace' first)"
        ) from None


def refuse_bytes(value: Any) -> None:
    """LangChain would read bytes as a list of ints; say what is wrong instead."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(
            f"prompt must be str, not {type(value).__name__}: decode it first, e.g. data.decode('utf-8', "
            f"errors='replace')"
        )


# ------------------------------------------------------------------------------ SeedLLM


class SeedLLM(SeedModelMixin, BaseLLM):
    """Local Hugging Face LLM with scheduled speculative decoding (SeeD).

    Every prompt of a call (and every concurrent call) runs on one shared scheduler: small
    draft models propose tokens for all of them, one target model verifies them together.
    At temperature 0 the text is exactly the target's greedy output.

    Setup:
        ```bash
        pip install langchain-seed
        langchain-seed models   # fetch and build the default pair once
        ```

    Instantiate:
        ```python
        from langchain_seed import SeedLLM

        llm = SeedLLM.from_default(max_tokens=128)
        llm = SeedLLM.from_pretrained(target="HuggingFaceTB/SmolLM2-360M-Instruct",
                                      draft="HuggingFaceTB/SmolLM2-135M-Instruct", k_config=(2, 2, 1))
        llm = SeedLLM.from_models(target_model, draft_model, tokenizer)
        ```

    Invoke:
        ```python
        llm.invoke("Q: What is 12 + 30?\\nA:", stop=["\\n"])
        llm.invoke(prompt, temperature=0.7, seed=1, max_tokens=20)   # per-call overrides
        llm.batch(["Sub-question 1 ...", "Sub-question 2 ..."])      # one scheduled run
        result = llm.generate(["..."])
        result.generations[0][0].generation_info["acceptance_rate"]
        ```

    Stream:
        ```python
        for chunk in llm.stream("Once upon a time"):
            print(chunk, end="", flush=True)
        ```

    Async:
        ```python
        await llm.ainvoke("...")
        async for chunk in llm.astream("..."):
            ...
        await asyncio.gather(*(llm.ainvoke(p) for p in prompts))   # verified together
        ```
    """

    model_config = ConfigDict(populate_by_name=True, protected_namespaces=(), extra="forbid",
                              arbitrary_types_allowed=True)

    @property
    def _llm_type(self) -> str:
        return "seed"

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        return self._ls_params("llm", stop, kwargs)

    # ----- generation ---------------------------------------------------------------------
    def start_run(self, prompts: list[str], stop: list[str] | None = None, **kwargs: Any) -> SeedRun:
        """Submit the prompts to the engine and return the live run without waiting for it.

        Generation i (``n`` per prompt, prompt-major) streams through
        ``run.iter_text(i)`` / ``run.aiter_text(i)``; ``run.generation_info(i)``,
        ``run.run_stats()``, ``run.cancel()`` and ``run.close()`` do the rest. This is what
        `generate` and `stream` use; servers and custom streaming build on it. ``kwargs``
        are the per-call overrides `invoke` accepts (unknown ones are refused).
        """
        options = self._call_options(kwargs)
        stops = self._stop_sequences(stop)
        prompts = check_text_prompts(prompts)
        prompt_ids = [self.prompt_token_ids(prompt, index) for index, prompt in enumerate(prompts)]
        return self._start_run(prompt_ids, options, stops)

    def prompt_token_ids(self, prompt: str, index: int = 0) -> list[int]:
        """Token ids of prompt `index` as the engine reads it; refuses a prompt with no tokens."""
        ids = list(self.tokenizer(prompt)["input_ids"])
        if not ids:
            raise ValueError(f"prompt {index} ({prompt!r}) has no tokens under the model's tokenizer")
        return ids

    # ----- batches: one bad prompt does not cost the good ones ----------------------------
    def batch(self, inputs: list[Any], config: RunnableConfig | list[RunnableConfig] | None = None, *,
              return_exceptions: bool = False, **kwargs: Any) -> list[str]:
        """`BaseLLM.batch`; with `return_exceptions=True` each bad prompt gets its own error and
        the good ones are still decoded together in one run (refused prompts start no run, so
        their callbacks see nothing)."""
        errors = self._bad_inputs(inputs, return_exceptions, kwargs)
        if not errors:
            return super().batch(inputs, config, return_exceptions=return_exceptions, **kwargs)
        good, configs = self._good_inputs(inputs, config, errors)
        outputs = super().batch(good, configs, return_exceptions=True, **kwargs) if good else []
        return _merge_outcomes(len(inputs), errors, outputs)

    async def abatch(self, inputs: list[Any], config: RunnableConfig | list[RunnableConfig] | None = None, *,
                     return_exceptions: bool = False, **kwargs: Any) -> list[str]:
        """`batch` on the event loop: the good prompts share one run, the bad get their errors."""
        errors = self._bad_inputs(inputs, return_exceptions, kwargs)
        if not errors:
            return await super().abatch(inputs, config, return_exceptions=return_exceptions, **kwargs)
        good, configs = self._good_inputs(inputs, config, errors)
        outputs = await super().abatch(good, configs, return_exceptions=True, **kwargs) if good else []
        return _merge_outcomes(len(inputs), errors, outputs)

    def _bad_inputs(self, inputs: list[Any], return_exceptions: bool, kwargs: dict[str, Any]) -> dict[int, Exception]:
        """The error each input of a batch would raise on its own, by index (with return_exceptions).

        A bad option fails every input alike, so it is left to `BaseLLM.batch` to raise.
        """
        if not return_exceptions or len(inputs) < 2:
            return {}
        try:
            options = self._call_options({name: value for name, value in kwargs.items() if name != "stop"})
        except ValueError:
            return {}
        errors = {index: self._input_error(index, value, options) for index, value in enumerate(inputs)}
        return {index: error for index, error in errors.items() if error is not None}

    def _input_error(self, index: int, value: Any, options: CallOptions) -> Exception | None:
        """What input `index` would raise on its own (its type, text, tokens, fit), or None."""
        try:
            prompt = check_text_prompt(index, self._convert_input(value).to_string())
            check_prompt_fits(self.engine, index, self.prompt_token_ids(prompt, index), options)
        except (TypeError, ValueError) as error:
            return error
        return None

    @staticmethod
    def _good_inputs(inputs: list[Any], config: RunnableConfig | list[RunnableConfig] | None,
                     errors: dict[int, Exception]) -> tuple[list[Any], list[RunnableConfig]]:
        """The inputs without errors and their own configs (callbacks, tags, run names stay aligned)."""
        configs = get_config_list(config, len(inputs))
        kept = [index for index in range(len(inputs)) if index not in errors]
        return [inputs[index] for index in kept], [configs[index] for index in kept]

    def _generate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        """All prompts (n generations each) go to the engine at once; one scheduled run."""
        run = self.start_run(prompts, stop, **kwargs)
        report = None
        if self.streaming and run_manager is not None:
            def report(index: int, piece: str) -> None:
                run_manager.on_llm_new_token(piece, chunk=GenerationChunk(text=piece))
        self._run_sync(run, report)
        return self._result(run, len(prompts))

    async def _agenerate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        """Like `_generate`, reading the engine's chunks on the event loop (never blocking it)."""
        run = self.start_run(prompts, stop, **kwargs)
        report = None
        if self.streaming and run_manager is not None:
            async def report(index: int, piece: str) -> None:
                await run_manager.on_llm_new_token(piece, chunk=GenerationChunk(text=piece))
        await self._run_async(run, report)
        return self._result(run, len(prompts))

    def _result(self, run: SeedRun, prompt_count: int) -> LLMResult:
        n = run.options.n
        generations = [
            [
                Generation(text=run.generations[i].text.text, generation_info=run.generation_info(i))
                for i in range(p * n, (p + 1) * n)
            ]
            for p in range(prompt_count)
        ]
        llm_output = {**run.run_stats().to_dict(), "model_name": self.model_name}
        return LLMResult(generations=generations, llm_output=llm_output)

    def _stream_run(self, prompt: str, stop: list[str] | None, kwargs: dict[str, Any]) -> SeedRun:
        options = self._call_options(kwargs)
        if options.n != 1:
            raise ValueError(f"n={options.n}: stream() yields one generation; use generate() for several per prompt")
        return self.start_run([prompt], stop, **kwargs)

    def _stream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[GenerationChunk]:
        """Text chunks as the engine commits tokens; the last chunk carries the statistics."""
        run = self._stream_run(prompt, stop, kwargs)
        try:
            for piece in run.iter_text(0):
                chunk = GenerationChunk(text=piece)
                if run_manager is not None:
                    run_manager.on_llm_new_token(piece, chunk=chunk)
                yield chunk
        finally:
            run.close()
        chunk = GenerationChunk(text="", generation_info=run.generation_info(0))
        if run_manager is not None:
            run_manager.on_llm_new_token("", chunk=chunk)
        yield chunk

    async def _astream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[GenerationChunk]:
        """Async text chunks; concurrent streams share the running scheduler."""
        run = self._stream_run(prompt, stop, kwargs)
        try:
            async for piece in run.aiter_text(0):
                chunk = GenerationChunk(text=piece)
                if run_manager is not None:
                    await run_manager.on_llm_new_token(piece, chunk=chunk)
                yield chunk
        finally:
            run.close()
        chunk = GenerationChunk(text="", generation_info=run.generation_info(0))
        if run_manager is not None:
            await run_manager.on_llm_new_token("", chunk=chunk)
        yield chunk


__all__ = ["CallOptions", "SeedLLM", "SeedModelMixin", "SeedRun", "read_head_token_ids"]
