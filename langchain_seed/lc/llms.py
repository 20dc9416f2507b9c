"""`SeedLLM`: a LangChain LLM over the SeeD engine (scheduled speculative decoding).

This module knows nothing of tensors: prompts become token ids, the engine decodes them
(`lc/run.py`), and the token ids that come back, chunk by chunk, become text. Streaming is
the single source of truth: `invoke`, `batch` and `generate` read the same chunks as
`stream`, so their text is exactly the concatenation of the streamed chunks.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseLLM, LanguageModelInput
from langchain_core.language_models.base import LangSmithParams
from langchain_core.outputs import Generation, GenerationChunk, LLMResult
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.runnables.config import get_config_list
from pydantic import ConfigDict

from langchain_seed.lc.base import SeedModelMixin
from langchain_seed.lc.options import CallOptions, call_fields
from langchain_seed.lc.run import SeedRun, check_prompt_fits
from langchain_seed.lc.structured import structured_llm
from langchain_seed.lc.text import check_text_prompt, check_text_prompts


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

    def with_structured_output(self, schema: dict | type | None = None, *, method: str = "json_schema",
                               include_raw: bool = False, strict: bool | None = None,
                               **kwargs: Any) -> Runnable[LanguageModelInput, Any]:
        """The prompt's completion decoded under `schema` (a Pydantic class, a TypedDict or a
        JSON schema dict) and parsed: method "json_schema", or "json_mode" (any JSON object).
        Objects admit only their listed keys unless `strict=False`. A completion cut by
        `max_tokens` raises `IncompleteStructuredOutput` (with `include_raw`, it is the
        `parsing_error`)."""
        if kwargs:
            raise ValueError(f"with_structured_output got unknown keyword argument(s) {sorted(kwargs)}")
        return structured_llm(self, schema, method, include_raw, strict)

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

    # ----- the cache key: per-call overrides are fields of a copy --------------------------
    def generate(self, prompts: list[str], stop: list[str] | None = None, callbacks: Any = None,
                 **kwargs: Any) -> LLMResult:
        """`BaseLLM.generate`. Per-call overrides (`max_tokens=4`, `constraint=...`) run on a
        shallow copy with those fields set, so that they are part of the LangChain cache key
        (the model's fields): an answer cached for other settings is never returned."""
        fields = call_fields(kwargs)
        if fields:
            rest = {name: value for name, value in kwargs.items() if name not in fields}
            return self.model_copy(update=fields).generate(prompts, stop, callbacks, **rest)
        return super().generate(prompts, stop, callbacks, **kwargs)

    async def agenerate(self, prompts: list[str], stop: list[str] | None = None, callbacks: Any = None,
                        **kwargs: Any) -> LLMResult:
        """`BaseLLM.agenerate`; per-call overrides are part of the cache key, as in `generate`."""
        fields = call_fields(kwargs)
        if fields:
            rest = {name: value for name, value in kwargs.items() if name not in fields}
            return await self.model_copy(update=fields).agenerate(prompts, stop, callbacks, **rest)
        return await super().agenerate(prompts, stop, callbacks, **kwargs)

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
        run.read_all(report)
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
        await run.aread_all(report)
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


def _merge_outcomes(count: int, errors: dict[int, Exception], outputs: list[Any]) -> list[Any]:
    """The outputs of the good inputs in order, with each bad input's error at its own index."""
    rest = iter(outputs)
    return [errors[index] if index in errors else next(rest) for index in range(count)]


__all__ = ["SeedLLM"]
