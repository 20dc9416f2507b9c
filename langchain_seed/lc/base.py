"""`SeedModelMixin`: the fields, factories and engine plumbing `SeedLLM` and `ChatSeed` share.

The fields' defaults and checks are the engine's options (`engine/options.py`); a call's
keyword arguments override them (`CallOptions`). A model holds a `SeedEngine`, shared by
its shallow copies, and starts `SeedRun`s on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from langchain_core.language_models.base import LangSmithParams
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator

from langchain_seed.engine import Constraint, SeedEngine, load_models
from langchain_seed.engine.models import read_head_token_ids
from langchain_seed.engine.options import OPTIONS, is_int, is_number
from langchain_seed.lc.options import CHECKS, CallOptions, default_config
from langchain_seed.lc.run import SeedRun, start_run
from langchain_seed.lc.text import StopSequences, refuse_bytes

DecodingMode = Literal["autoregressive", "speculative", "scheduled"]
VerifyPolicy = Literal["rounds", "batched"]


class SeedModelMixin(BaseModel):
    """Fields, validation and engine plumbing shared by `SeedLLM` and `ChatSeed`."""

    model_config = ConfigDict(populate_by_name=True, protected_namespaces=(), extra="forbid",
                              arbitrary_types_allowed=True)

    model_name: str | None = Field(default=None, alias="model")
    """Name reported in traces, `llm_output` and `response_metadata`; defaults to the target's
    `name_or_path`. Also accepted as `model`."""

    decoding: DecodingMode = OPTIONS["decoding"].default
    """How the engine decodes: "autoregressive" (target alone, one prompt after another),
    "speculative" (draft + target, one prompt after another) or "scheduled" (SeeD: every
    prompt of a call, and every concurrent call, on one shared scheduler)."""

    verify: VerifyPolicy = OPTIONS["verify"].default
    """Scheduled mode's verification: "batched" (all pending drafts in one target forward)
    or "rounds" (SeeD's policy: one target call per sequence, first come first served)."""

    k_config: tuple[int, ...] = OPTIONS["k_config"].default
    """Draft tree: children per node at each depth. (1, 1, 1, 1) drafts a chain of 4 tokens,
    (2, 2, 1) a tree; () drafts nothing (plain decoding)."""

    draft_confidence: float = OPTIONS["draft_confidence"].default
    """Adaptive draft length: a sequence stops drafting deeper once the draft's top
    probability falls below this, so drafts are long where the draft is sure and short
    where it is not (lossless either way). 0 drafts the whole `k_config` every round."""

    draft_survival: float = OPTIONS["draft_survival"].default
    """Adaptive draft length from what verification kept (greedy calls): the engine learns,
    per depth, how often a drafted token was accepted, and drafts no deeper than where a
    whole draft's chance of surviving falls below this (lossless either way). 0 turns it off."""

    temperature: float = OPTIONS["temperature"].default
    """Sampling temperature; 0 is greedy (the target's own greedy output, token for token)."""

    top_p: float = OPTIONS["top_p"].default
    """Nucleus sampling mass in (0, 1]."""

    max_tokens: int = OPTIONS["max_tokens"].default
    """Most new tokens per generation."""

    seed: int | None = OPTIONS["seed"].default
    """Seed of the sampling generator (generation j of a prompt uses seed + j); None: random."""

    n: int = OPTIONS["n"].default
    """Generations per prompt; all are kept in the result (`generations[i]` has n entries)."""

    stop: list[str] | None = None
    """Default stop sequences, added to those of each call. Generation ends with the token that
    completes one, and the text ends before the earliest stop sequence in it (the same
    whatever the decoding mode or draft tree)."""

    streaming: bool = False
    """Report text chunks to callbacks (`on_llm_new_token`) as they are decoded, also in
    `invoke` / `generate` (`stream` always does)."""

    timeout: float | None = OPTIONS["timeout"].default
    """Seconds a call may take; past it the unfinished generations are cancelled and
    `TimeoutError` is raised. None: no limit."""

    constraint: Constraint | None = None
    """What every reply must match: a JSON schema (dict) or an engine `Constraint` (JSON schema,
    regex or grammar), decoded under the grammar's token mask (draft and target alike, so
    still speculative and lossless). Usually set per call (`invoke(..., constraint=...)`) or
    by `with_structured_output` / `bind_tools`; None: free text."""

    max_retries: int = OPTIONS["max_retries"].default
    """Accepted for LangChain's standard parameters. A local engine has no transient failures,
    so failed generations are never retried."""

    _engine: Any = PrivateAttr(default=None)

    def __init__(self, *, engine: SeedEngine | None = None, **data: Any) -> None:
        super().__init__(**data)
        self._engine = engine
        if self.model_name is None and engine is not None:
            self.model_name = _model_name_of(engine)

    @field_validator(*CHECKS, mode="before")
    @classmethod
    def _check_field(cls, value: Any, info) -> Any:
        return CHECKS[info.field_name](value)

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
        # a cooperative mixin: BaseLanguageModel, which defines it, follows in the concrete class's MRO
        return super()._convert_input(model_input)  # type: ignore[misc]

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
        if tokenizer is None:
            raise ValueError("tokenizer is required: pass the target's transformers tokenizer")
        config = default_config(fields)
        engine = SeedEngine(target_model, draft_model, tokenizer, config, draft_head_token_ids=draft_head_token_ids)
        return cls.from_engine(engine, **fields)

    @classmethod
    def from_pretrained(cls, target: str | Path, draft: str | Path | None = None, *, dtype: str = "float32",
                        device_map: str | dict | None = None, trust_remote_code: bool = False,
                        allow_pickle: bool = False, draft_head_token_ids: Sequence[int] | None = None,
                        weights: str = "auto", activations: str = "float32", draft_activations: str = "auto",
                        **fields: Any):
        """Load a target (and optional draft) from local directories, GGUF files or hub ids.

        Safetensors only unless `allow_pickle=True` (pickled weights can run code when
        loaded); remote model code only with `trust_remote_code=True`.
        `draft_head_token_ids` defaults to the draft directory's `head_token_ids.json`, if any.
        `weights`: "auto" (a GGUF as shipped, its Q4_1/Q8_0 weights kept in blocks; other
        models in `dtype`), "float32" (dense; a GGUF dequantised), or "int8" / "int4" (a float
        model quantised into Q8_0 / Q4_1 blocks on load; the quantised model is then the
        target whose greedy output every mode reproduces). `activations`: "float32" (the
        quantised weights' exact float32 model) or "int8" (a quantised target's linears take
        8-bit activations with integer dot products, llama.cpp's arithmetic: about twice as
        fast on the CPU; that model is then the target). `draft_activations`: "int8" runs the
        draft's layers that way (Q8_0 weights): cheaper draft steps, the output unchanged;
        "auto" (the default) does so wherever the native kernels run and the draft is a float32
        decoder on the CPU; "float32" never.
        See `engine.weights`.
        """
        loaded = load_models(target, draft, dtype=dtype, device_map=device_map, trust_remote_code=trust_remote_code,
                             allow_pickle=allow_pickle, weights=weights, activations=activations,
                             draft_activations=draft_activations)
        if draft_head_token_ids is None and draft is not None:
            draft_head_token_ids = read_head_token_ids(draft)
        if "model" not in fields and "model_name" not in fields:
            fields["model_name"] = str(target)
        return cls.from_models(loaded.target, loaded.draft, loaded.tokenizer,
                               draft_head_token_ids=draft_head_token_ids, **fields)

    @classmethod
    def from_default(cls, draft: str | Path | None = None, *, weights: str = "auto", activations: str = "float32",
                     draft_activations: str = "auto", **fields: Any):
        """The embedded default pair (SmolLM2-135M-Instruct and its distilled draft), fetched
        and built once into the cache (see `langchain-seed models`); `k_config` and
        `draft_confidence` default to those measured best for that draft
        (`pair.paths.DEFAULT_PAIR_OPTIONS`). `draft`: a draft directory that `langchain-seed
        distill --out` wrote for the default target (e.g. with `--prompts`, trained on your
        app's prompts), used instead of the shipped draft. `weights`: "auto" runs the target
        as shipped (its GGUF's Q4_1 and Q8_0 blocks), "float32" on the dequantised weights
        (the same numbers, four to six times the memory). `activations="int8"`: the target's
        linears take 8-bit activations as llama.cpp computes the GGUF (`from_pretrained`)."""
        # pair/ is a sibling layer (fetching and assembling files), needed only by this factory
        from langchain_seed.pair.assemble import ensure_default_draft, ensure_default_pair
        from langchain_seed.pair.paths import DEFAULT_PAIR_OPTIONS, default_seed_draft_dir

        target_dir, draft_dir = ensure_default_pair()
        draft_dir = default_seed_draft_dir() or draft_dir
        if draft is not None:
            draft_dir = ensure_default_draft(target_dir, asset_dir=draft)
        if "model" not in fields and "model_name" not in fields:
            fields["model_name"] = "SmolLM2-135M-Instruct"
        for name, value in DEFAULT_PAIR_OPTIONS.items():
            fields.setdefault(name, value)
        return cls.from_pretrained(target_dir, draft_dir, weights=weights, activations=activations,
                                   draft_activations=draft_activations, **fields)

    # ----- running ----------------------------------------------------------------------
    def _call_options(self, kwargs: dict[str, Any], ignored: Sequence[str] = ()) -> CallOptions:
        """This call's options: the fields, overridden by kwargs; unknown kwargs are refused."""
        return CallOptions.of(self, kwargs, ignored)

    def _stop_sequences(self, stop: Sequence[str] | None) -> StopSequences:
        return StopSequences([*(self.stop or []), *(stop or [])])

    def _start_run(self, prompt_ids: list[list[int]], options: CallOptions, stop: StopSequences) -> SeedRun:
        """Hand every prompt, n times each, to the engine at once (prompt-major order)."""
        return start_run(self.engine, self.tokenizer, prompt_ids, options, stop)

    # ----- LangChain plumbing -------------------------------------------------------------
    @property
    def _identifying_params(self) -> dict[str, Any]:
        names = ("model_name", "decoding", "verify", "k_config", "draft_confidence", "draft_survival", "temperature",
                 "top_p", "max_tokens", "seed", "n", "constraint")
        return {name: getattr(self, name) for name in names}

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
            ls_temperature=temperature if is_number(temperature) else None,
            ls_max_tokens=max_tokens if is_int(max_tokens) else None,
        )
        stops = [*(self.stop or []), *(stop or [])]
        if stops:
            params["ls_stop"] = stops
        return params


def _model_name_of(engine: Any) -> str:
    config = getattr(engine.target_model, "config", None)
    name = getattr(config, "name_or_path", None) or getattr(config, "_name_or_path", None)
    return str(name) if name else type(engine.target_model).__name__
