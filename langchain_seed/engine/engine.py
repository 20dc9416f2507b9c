"""`SeedEngine`: the public entry to autoregressive, speculative and scheduled decoding."""

from __future__ import annotations

import dataclasses
import functools
import threading
import time
import weakref
from collections.abc import Callable, Sequence

import torch

from langchain_seed.engine import calibration, kernels, native, prefix_cache, routing
from langchain_seed.engine.calibration import RowLimits
from langchain_seed.engine.config import SamplingParams, SpeculativeConfig
from langchain_seed.engine.constraints import GrammarVocabulary
from langchain_seed.engine.cpu_share import CpuShare
from langchain_seed.engine.drafters import DraftDepth, FeatureDrafter, ModelDrafter
from langchain_seed.engine.feature_draft import FeatureDraftModel, check_feature_draft
from langchain_seed.engine.kernels import LINEAR_KERNELS
from langchain_seed.engine.models import check_pair, context_window, eos_token_ids, supports_tree_mask
from langchain_seed.engine.options import DECODING_MODES, check_choice
from langchain_seed.engine.request import Request, RequestHandle
from langchain_seed.engine.scheduler import Scheduler
from langchain_seed.engine.serial import SerialRunner
from langchain_seed.engine.stats import EngineStats, RunStats


class GenerationBatch(list):
    """The results of one `generate` call, in prompt order, with the run's totals in `.stats`."""

    stats: RunStats


class SeedEngine:
    """Lossless decoding of many prompts on one target model, optionally with a draft model.

    Args:
        target_model: a transformers causal LM (its greedy output is reproduced exactly).
        draft_model: a smaller causal LM with the same vocabulary, a `FeatureDraftModel`
            assembled with this target (drafts from the target's hidden states), or None.
        tokenizer: the target's tokenizer (for EOS ids and pair checks); optional.
        config: default `SpeculativeConfig` (draft tree, acceptance rule, verify policy).
        draft_head_token_ids: token ids the draft may propose; its LM head is computed over
            these only (cheaper drafting). None: the whole vocabulary.
        linear_kernel: "native" (default): on CPU in float32 the engine's forwards use its
            own kernels (`engine.kernels`): a C matmul kernel for decoding-sized inputs
            (`engine.native`, built on first use; where it cannot be, as "onednn"), and
            masked grouped-query attention without copied keys; other callers of the same
            models are unaffected. "onednn": the same with oneDNN and weight-major MKL
            matmuls instead of the C kernel. "torch": torch's and transformers' defaults.
    """

    def __init__(
        self,
        target_model,
        draft_model=None,
        tokenizer=None,
        config: SpeculativeConfig | None = None,
        *,
        draft_tokenizer=None,
        draft_head_token_ids: Sequence[int] | None = None,
        linear_kernel: str = "native",
    ) -> None:
        check_choice("linear_kernel", linear_kernel, LINEAR_KERNELS)
        if isinstance(draft_model, FeatureDraftModel):
            check_feature_draft(target_model, draft_model)
        elif draft_model is not None:
            check_pair(target_model, draft_model, tokenizer, draft_tokenizer)
        self.target_model = target_model.eval()
        self.draft_model = draft_model.eval() if draft_model is not None else None
        self.tokenizer = tokenizer
        self.config = config or SpeculativeConfig()
        self.draft_head_token_ids = list(draft_head_token_ids) if draft_head_token_ids is not None else None
        self._draft_depth = DraftDepth()  # what verification kept, per depth, for every drafter
        self.eos_token_ids = eos_token_ids(target_model, tokenizer)
        self.context_window = context_window(target_model)
        self._mask_support: dict[int, bool] = {}
        self.linear_kernel = linear_kernel
        self._routings = self._install_kernels()
        self.row_limits = self._row_limits()
        """How many rows each matmul route takes on this CPU (`engine.calibration`)."""
        if self.row_limits.float_tile_bits:  # measured, so the kernels run here; the same bits, only speed moves
            native.set_float_tile_bits(self.row_limits.float_tile_bits)
        self._cpu_share = CpuShare()
        self._grammar_vocabulary: GrammarVocabulary | None = None
        self._grammar_lock = threading.Lock()
        self.scheduler = self._new_scheduler()
        self._serial = SerialRunner(self._scheduler_factory(), self._cpu_share)
        self._closer = weakref.finalize(self, _shut_down, self.scheduler, self._serial, self._routings)

    # ----- public API ----------------------------------------------------------------
    def generate(
        self,
        prompt_ids: list[list[int]],
        params: SamplingParams | Sequence[SamplingParams] | None = None,
        mode: str = "scheduled",
        config: SpeculativeConfig | None = None,
    ) -> GenerationBatch:
        """Decode every prompt; one `GenerationResult` per prompt, in order.

        mode: "autoregressive" (target alone, one prompt after another), "speculative"
        (draft + target, one prompt after another, on the engine's serial worker) or
        "scheduled" (all prompts at once on the shared scheduler, verified by
        `config.verify`). A request that fails comes back with finish_reason "error" and its
        exception in `.error`; the others are unaffected.
        """
        requests = self._make_requests(prompt_ids, params, mode, config)
        started = time.perf_counter()
        if mode == "scheduled":
            stats = self._run_scheduled(requests)
        else:
            stats = self._run_serially(requests)
        stats.seconds = time.perf_counter() - started
        batch = GenerationBatch(request.handle.wait() for request in requests)
        batch.stats = stats
        return batch

    def submit(
        self,
        prompt_ids: list[int],
        params: SamplingParams | None = None,
        config: SpeculativeConfig | None = None,
        mode: str = "scheduled",
    ) -> RequestHandle:
        """Start one request without waiting (thread-safe); returns its handle.

        mode "scheduled" joins the running scheduler; "autoregressive" and "speculative"
        queue it on the engine's serial worker, which runs one request at a time. Either
        way the handle streams, cancels and reports errors alike.
        """
        [handle] = self.submit_many([prompt_ids], params, config, mode)
        return handle

    def submit_many(
        self,
        prompt_ids: list[list[int]],
        params: SamplingParams | Sequence[SamplingParams] | None = None,
        config: SpeculativeConfig | None = None,
        mode: str = "scheduled",
    ) -> list[RequestHandle]:
        """Start several requests atomically: scheduled ones are admitted in the same round,
        serial ones run in order."""
        requests = self._make_requests(prompt_ids, params, mode, config)
        if mode == "scheduled":
            self.scheduler.submit(requests)
        else:
            self._serial.submit(requests)
        return [request.handle for request in requests]

    def stats(self) -> EngineStats:
        """Rounds, forwards, requests and memory so far, scheduled and serial runs together,
        and the requests active or waiting now; safe to call from any thread."""
        return self.scheduler.snapshot() + self._serial.snapshot()

    def check_request(self, prompt_ids: list[int], params: SamplingParams | None = None, mode: str = "scheduled",
                      config: SpeculativeConfig | None = None, index: int = 0) -> None:
        """Raise the ValueError `generate` would raise for this one prompt (token ids outside
        the vocabulary, or past the context window with its `max_tokens` and draft tokens),
        naming it `prompt {index}`; lets a caller tell a batch's bad prompts from its good ones."""
        check_choice("mode", mode, DECODING_MODES)
        [prompt] = _check_prompts([prompt_ids])
        params = params or SamplingParams()
        self._check_fits(index, prompt, params, self._config_for(mode, config))
        self._matcher(params)

    def forget_prompts(self) -> None:
        """Empty the target's and the draft's stores of prompt prefixes (`engine.prefix_cache`),
        shared with other engines on the same models: the next prompts are prefilled whole."""
        for model in (self.target_model, self.draft_model):
            if model is not None:
                prefix_cache.forget_prompts(model)

    def close(self) -> None:
        """Let the scheduler and the serial worker finish the requests they have, stop their
        threads, and take the engine's kernels off its models (they run transformers' own code
        again). Also done when the engine is garbage-collected; closing twice is harmless."""
        self._closer()

    @property
    def cpu_share(self) -> CpuShare:
        """How much of the CPU this process gets (`engine.cpu_share`): every round of every
        mode samples it, and its kernels run on one thread while other processes hold the CPUs."""
        return self._cpu_share

    @cpu_share.setter
    def cpu_share(self, cpu_share: CpuShare) -> None:
        self._cpu_share = self.scheduler.cpu_share = self._serial.cpu_share = cpu_share

    @property
    def closed(self) -> bool:
        """Whether `close` has run: no new request is accepted."""
        return not self._closer.alive

    def _row_limits(self) -> RowLimits:
        """The matmul routes' row limits for the target on this CPU, measured once per CPU."""
        if self.linear_kernel not in kernels.ENGINE_KERNELS:
            return RowLimits()
        return calibration.row_limits(self.target_model)

    def _install_kernels(self) -> list[routing.KernelRouting]:
        """Route the engine's own model instances to its kernels (`routing.install`)."""
        if self.linear_kernel not in kernels.ENGINE_KERNELS:
            return []
        routings = [routing.install(model) for model in (self.target_model, self.draft_model) if model is not None]
        if any(routing.linears for routing in routings) and self.linear_kernel == "native":
            native.available()  # build (or find) the C kernel now rather than in the first round
        return routings

    # ----- requests -----------------------------------------------------------------
    def _config_for(self, mode: str, config: SpeculativeConfig | None) -> SpeculativeConfig:
        config = config or self.config
        if mode == "autoregressive" or self.draft_model is None:
            if mode == "speculative":
                raise ValueError("mode='speculative' needs a draft model; this engine has none")
            return SpeculativeConfig(k_config=(), verify=config.verify, max_batch_tokens=config.max_batch_tokens)
        if mode == "speculative":
            config = dataclasses.replace(config, verify="rounds")
        self._check_tree_support(config, mode)
        return config

    def _check_tree_support(self, config: SpeculativeConfig, mode: str) -> None:
        needs_mask = config.is_tree or mode == "scheduled"
        if not needs_mask:
            return
        # A feature draft's decoder is the target's architecture: the target's answer is its answer.
        plain_draft = None if isinstance(self.draft_model, FeatureDraftModel) else self.draft_model
        for model in (self.target_model, plain_draft):
            if model is None:
                continue
            key = id(model)
            if key not in self._mask_support:
                # on the kernels the engine's forwards use: off them a model in blocks would
                # dequantise every weight and its whole head for three tokens (186 MB at once)
                with kernels.engine_kernels(self.linear_kernel, self.row_limits):
                    self._mask_support[key] = supports_tree_mask(model)
            if not self._mask_support[key]:
                name = type(model).__name__
                what = f"a tree k_config {config.k_config}" if config.is_tree else "scheduled decoding"
                raise ValueError(
                    f"{name} does not accept a 4-D attention mask, so it cannot run {what}; "
                    f"use a chain k_config such as (1, 1, 1, 1) with mode='speculative' or 'autoregressive'"
                )

    def _make_requests(self, prompt_ids, params, mode: str, config: SpeculativeConfig | None) -> list[Request]:
        check_choice("mode", mode, DECODING_MODES)
        config = self._config_for(mode, config)
        if self.closed:
            raise RuntimeError("the engine is closed")
        prompts = _check_prompts(prompt_ids)
        per_prompt = _per_prompt_params(params, len(prompts))
        requests = []
        for index, (prompt, sampling) in enumerate(zip(prompts, per_prompt)):
            self._check_fits(index, prompt, sampling, config)
            requests.append(Request.create(prompt, sampling, config, self._matcher(sampling)))
        return requests

    def _matcher(self, params: SamplingParams):
        """The compiled grammar matcher of a constrained request (None for free text); a bad or
        unsatisfiable constraint is refused here, on the caller's thread."""
        if params.constraint is None:
            return None
        return self.grammar_vocabulary().compile(params.constraint)

    def grammar_vocabulary(self) -> GrammarVocabulary:
        """The target's tokenizer as the grammar library reads it (built on first use)."""
        with self._grammar_lock:
            if self._grammar_vocabulary is None:
                if self.tokenizer is None:
                    raise ValueError("constrained decoding needs the target's tokenizer: build the engine with "
                                     "SeedEngine(target, draft, tokenizer)")
                self._grammar_vocabulary = GrammarVocabulary(
                    self.tokenizer, int(self.target_model.config.vocab_size), self.eos_token_ids)
            return self._grammar_vocabulary

    def _check_fits(self, index: int, prompt: list[int], params: SamplingParams, config: SpeculativeConfig) -> None:
        vocab = int(self.target_model.config.vocab_size)
        if any(token < 0 or token >= vocab for token in prompt):
            bad = next(t for t in prompt if t < 0 or t >= vocab)
            raise ValueError(f"prompt {index} has token id {bad} outside the vocabulary [0, {vocab})")
        limit = self.context_window
        needed = len(prompt) + params.max_tokens + config.tokens_per_sequence - 1
        if limit is not None and needed > limit:
            raise ValueError(
                f"prompt {index} has {len(prompt)} tokens; with max_tokens={params.max_tokens} (and "
                f"{config.tokens_per_sequence - 1} draft tokens) it needs {needed} positions, "
                f"past the model's context window of {limit}"
            )

    # ----- running ------------------------------------------------------------------
    def _run_scheduled(self, requests: list[Request]) -> RunStats:
        """Submit together, wait for all; forwards and memory peaks are counted over the call
        (requests of concurrent callers served in the same rounds are included)."""
        before = self.scheduler.forwards()
        self.scheduler.call_peaks = peaks = RunStats()
        self.scheduler.submit(requests)
        for request in requests:
            request.handle.wait()
        after = self.scheduler.forwards()
        stats = _collect(requests)
        stats.target_forwards, stats.draft_forwards = after[0] - before[0], after[1] - before[1]
        stats.peak_kv_bytes, stats.peak_rss_mb = peaks.peak_kv_bytes, peaks.peak_rss_mb
        return stats

    def _run_serially(self, requests: list[Request]) -> RunStats:
        """One request after another on the serial worker; forwards, rounds and memory peaks
        are this call's own."""
        job = self._serial.submit(requests).wait()
        stats = _collect(requests)
        stats.target_forwards, stats.draft_forwards, stats.rounds = job.target_forwards, job.draft_forwards, job.rounds
        stats.peak_kv_bytes, stats.peak_rss_mb = job.peak_kv_bytes, job.peak_rss_mb
        return stats

    def _new_scheduler(self) -> Scheduler:
        return self._scheduler_factory()(cpu_share=self._cpu_share)

    def _scheduler_factory(self) -> Callable[..., Scheduler]:
        """What builds a scheduler (given `cpu_share=`); like `_drafter_factory`, it holds no
        reference to the engine."""
        return functools.partial(Scheduler, self.target_model, self._drafter_factory(), self.eos_token_ids,
                                 kernel=self.linear_kernel, row_limits=self.row_limits)

    def _drafter_factory(self) -> Callable[[], ModelDrafter | FeatureDrafter]:
        """What builds a new lane's drafter. It holds no reference to the engine, so that an
        engine nobody holds any more is collected (and its kernels removed)."""
        return functools.partial(_make_drafter, self.draft_model, self.draft_head_token_ids, self._draft_depth)


def _make_drafter(draft_model, draft_head_token_ids: list[int] | None,
                  depth: DraftDepth) -> ModelDrafter | FeatureDrafter:
    if isinstance(draft_model, FeatureDraftModel):
        return FeatureDrafter(draft_model, depth)
    return ModelDrafter(draft_model, draft_head_token_ids, depth)


def _shut_down(scheduler: Scheduler, serial: SerialRunner, routings: list[routing.KernelRouting]) -> None:
    """`SeedEngine.close`: no new requests, the queued ones finished, the threads gone (unless
    this is one of them), then the kernels removed from the models."""
    scheduler.close()
    serial.close()
    scheduler.join()
    serial.join()
    for kernel_routing in routings:
        kernel_routing.remove()


def _collect(requests: list[Request]) -> RunStats:
    stats = RunStats()
    for request in requests:
        stats.add_request(request.handle.wait().stats)
    return stats


def _check_prompts(prompt_ids) -> list[list[int]]:
    if isinstance(prompt_ids, (str, bytes)) or not isinstance(prompt_ids, Sequence):
        raise ValueError(f"prompt_ids must be a list of token-id lists; got {type(prompt_ids).__name__}")
    prompts = []
    for index, prompt in enumerate(prompt_ids):
        if torch.is_tensor(prompt):
            prompt = prompt.tolist()
        if isinstance(prompt, (str, bytes)) or not isinstance(prompt, Sequence):
            raise ValueError(f"prompt {index} must be a list of token ids; got {type(prompt).__name__}")
        if len(prompt) == 0:
            raise ValueError(f"prompt {index} is empty: a prompt needs at least one token")
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            raise ValueError(f"prompt {index} must contain only int token ids")
        prompts.append(list(prompt))
    return prompts


def _per_prompt_params(params, count: int) -> list[SamplingParams]:
    if params is None:
        return [SamplingParams()] * count
    if isinstance(params, SamplingParams):
        return [params] * count
    params = list(params)
    if len(params) != count or not all(isinstance(p, SamplingParams) for p in params):
        raise ValueError(f"params must be one SamplingParams or one per prompt ({count}); got {len(params)} items")
    return params
