"""The decoding methods the benchmark compares, all on the same loaded target (and draft).

Each method decodes one `PromptGroup` per call, greedily, and says what it knows about
its own drafting; the harness times it and counts model forwards with hooks, the same
way for every method.

- ``hf_ar_serial``: transformers `generate`, one prompt after another (what
  `HuggingFacePipeline` does).
- ``hf_ar_batched``: one `generate` over the whole group, left-padded.
- ``hf_assisted_serial``: transformers assisted generation with the same draft
  (`generate(..., assistant_model=draft)`), one prompt after another, with transformers'
  default assistant settings (up to 20 draft tokens a round, cut by its confidence
  threshold) and the draft's full LM head.
- ``seed_sd_serial``: `SeedEngine` speculative decoding, one prompt after another.
- ``seed_rounds``: the scheduled engine, SeeD's policy (drafts batched, one target call
  per sequence per round, first come first served).
- ``seed_batched``: the scheduled engine, every pending draft verified in one target
  forward per round.
- ``llamacpp_serial`` (a peer, with the ``peers`` extra): llama.cpp on the target's own
  GGUF, one prompt after another, greedy, reusing the previous prompt's prefix as
  llama.cpp does (`langchain_seed.bench.peers`); it counts its own forwards.

The seed methods use `k_config` and the draft's restricted head (`draft_head_token_ids`).
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from langchain_seed.bench.hf_llm import HFGenerateLLM, eos_ids_of, hf_generate
from langchain_seed.engine.options import OPTIONS

if TYPE_CHECKING:  # the engine (torch) is imported when a seed method is built
    from langchain_seed.engine.config import VerifyPolicy

METHODS = ("hf_ar_serial", "hf_ar_batched", "hf_assisted_serial", "seed_sd_serial", "seed_rounds", "seed_batched")
SEED_METHODS = ("seed_sd_serial", "seed_rounds", "seed_batched")
HF_METHODS = ("hf_ar_serial", "hf_ar_batched", "hf_assisted_serial")
"""The methods that run transformers' own code (on a float32 target)."""
DRAFT_METHODS = ("hf_assisted_serial", *SEED_METHODS)
PEER_METHODS = ("llamacpp_serial",)
"""Other engines on the target's own weights; skipped (`PeerUnavailable`) where they cannot run."""
BENCH_METHODS = (*METHODS, *PEER_METHODS)


@dataclass
class BenchModels:
    """What every method shares: the loaded models and their settings.

    Attributes:
        target, draft, tokenizer: loaded transformers objects (draft may be None).
        draft_head_token_ids: the draft's restricted LM-head ids for the seed methods, or None.
        k_config: the seed methods' draft tree.
        target_name, draft_name: how the pair is named in reports.
        linear_kernel: the seed methods' engine kernels ("native", "onednn" or "torch", see
            `langchain_seed.engine.kernels`); the transformers methods always run torch's.
        draft_confidence: the seed methods' adaptive draft length (`SpeculativeConfig`).
        seed_draft, seed_draft_name: the seed methods' own draft when it is one transformers
            cannot use as an assistant (a feature draft); None: the seed methods use `draft`.
        seed_target, seed_weights: the seed methods' target when its weights are kept apart
            from `target`'s (e.g. the GGUF's Q4_1 blocks, with `target` its dequantised float32
            copy for the transformers methods), and how they are kept.
        draft_survival: the seed methods' learnt draft depth (`SpeculativeConfig`).
    """

    target: Any
    draft: Any
    tokenizer: Any
    draft_head_token_ids: list[int] | None = None
    k_config: tuple[int, ...] = (1, 1, 1, 1)
    target_name: str = "target"
    draft_name: str = "draft"
    linear_kernel: str = "native"
    draft_confidence: float = 0.0
    seed_draft: Any = None
    seed_draft_name: str | None = None
    seed_target: Any = None
    seed_weights: str = "float32"
    draft_survival: float = OPTIONS["draft_survival"].default

    @property
    def eos_token_ids(self) -> frozenset[int]:
        return eos_ids_of(self.target, self.tokenizer)

    @property
    def engine_target(self) -> Any:
        """The target the seed methods run: `seed_target` (e.g. kept in GGUF blocks) where
        there is one, else `target`. Both hold the same weights (`target` is then its
        dequantised float32 copy), so every method decodes the same model."""
        return self.seed_target if self.seed_target is not None else self.target

    @property
    def engine_draft(self) -> Any:
        """The draft the seed methods run."""
        return self.seed_draft if self.seed_draft is not None else self.draft


@dataclass
class GroupOutput:
    """One call's outputs and the method's own drafting statistics.

    Attributes:
        token_ids: new tokens per prompt, as the method returned them.
        drafted, accepted: draft positions offered and accepted (None: unknown here; the
            harness estimates them from forward counts for `hf_assisted_serial`).
        rounds: verification rounds measured, in the method's bound unit (see
            `SeedMethod.run_group`); None for non-seed methods.
        rounds_all_accepted: rounds the same output needs if every draft were accepted.
        target_calls: the method's own count of target forwards, for an engine the
            harness's hooks cannot see (llama.cpp: its decode calls); None: the hooks count.
    """

    token_ids: list[list[int]]
    drafted: int | None = None
    accepted: int | None = None
    rounds: int | None = None
    rounds_all_accepted: int | None = None
    target_calls: int | None = None


class Method(abc.ABC):
    """A named decoding method: `run_group` for fixed groups, `make_llm` for ``tot-full``."""

    name: str = ""
    uses_draft: bool = False
    acceptance_from_forward_counts: bool = False

    @abc.abstractmethod
    def run_group(self, prompt_ids: list[list[int]], max_tokens: int) -> GroupOutput:
        """Decode one group of prompts; outputs and counters."""

    @abc.abstractmethod
    def make_llm(self, max_tokens: int):
        """A LangChain LLM decoding the same way (for ``tot-full``)."""

    def forget_prompts(self) -> None:  # noqa: B027 - an optional hook: methods that keep no prompts keep the no-op
        """Drop what the method keeps of earlier prompts: the harness calls it before each
        timed call, so that no call starts from another method's or repetition's prompts."""

    def close(self) -> None:  # noqa: B027 - an optional hook: methods without threads or engines keep the no-op
        """Release threads or engines."""


class HFMethod(Method):
    """transformers `generate`: serial, batched, or assisted (serial) with the draft."""

    def __init__(self, name: str, models: BenchModels, batched: bool = False, assisted: bool = False) -> None:
        if assisted and models.draft is None:
            raise ValueError(f"{name} needs a draft model")
        self.name, self.models, self.batched = name, models, batched
        self.assistant = models.draft if assisted else None
        self.uses_draft = assisted
        self.acceptance_from_forward_counts = assisted

    def run_group(self, prompt_ids: list[list[int]], max_tokens: int) -> GroupOutput:
        target, tokenizer = self.models.target, self.models.tokenizer
        if self.batched:
            return GroupOutput(hf_generate(target, prompt_ids, max_tokens, tokenizer))
        outputs = [hf_generate(target, [ids], max_tokens, tokenizer, assistant_model=self.assistant)[0]
                   for ids in prompt_ids]
        return GroupOutput(outputs)

    def make_llm(self, max_tokens: int):
        return HFGenerateLLM(model=self.models.target, tokenizer=self.models.tokenizer, batched=self.batched,
                             assistant_model=self.assistant, max_tokens=max_tokens)


class SeedMethod(Method):
    """`SeedEngine` decoding: speculative one by one, or scheduled (rounds / batched)."""

    uses_draft = True

    def __init__(self, name: str, models: BenchModels, mode: str, verify: VerifyPolicy, engine_class=None) -> None:
        from langchain_seed.engine import SeedEngine, SpeculativeConfig

        if models.engine_draft is None:
            raise ValueError(f"{name} needs a draft model")
        self.name, self.models, self.mode, self.verify = name, models, mode, verify
        self.config = SpeculativeConfig(k_config=tuple(models.k_config), verify=verify,
                                        draft_confidence=models.draft_confidence,
                                        draft_survival=models.draft_survival)
        engine_class = engine_class or SeedEngine
        self.engine = engine_class(models.engine_target, models.engine_draft, models.tokenizer, config=self.config,
                                   draft_head_token_ids=models.draft_head_token_ids,
                                   linear_kernel=models.linear_kernel)

    @property
    def shares_rounds(self) -> bool:
        """True when one round verifies every sequence in one target forward (seed_batched)."""
        return self.mode == "scheduled" and self.verify == "batched"

    def run_group(self, prompt_ids: list[list[int]], max_tokens: int) -> GroupOutput:
        """Decode the group; rounds are counted for the all-accepted bound as follows.

        Each request commits at most depth + 1 tokens per verification, so it needs at
        least ceil(new_tokens / (depth + 1)) verifications. seed_batched verifies all
        sequences of a round in one forward: its unit is the round (the group needs
        max over requests). seed_sd_serial and seed_rounds make one target call per
        sequence per verification: their unit is the verification (sum over requests).
        """
        from langchain_seed.engine import SamplingParams

        batch = self.engine.generate(prompt_ids, SamplingParams(temperature=0.0, max_tokens=max_tokens),
                                     mode=self.mode)
        failed = [r for r in batch if r.finish_reason == "error"]
        if failed:
            raise RuntimeError(f"{self.name}: a request failed: {failed[0].error!r}") from failed[0].error
        per_token = len(self.config.k_config) + 1
        steps = [r.stats.verify_steps for r in batch]
        needed = [math.ceil(len(r.token_ids) / per_token) for r in batch]
        combine = max if self.shares_rounds else sum
        return GroupOutput([list(r.token_ids) for r in batch], batch.stats.drafted, batch.stats.accepted,
                           combine(steps), combine(needed))

    def make_llm(self, max_tokens: int):
        from langchain_seed.lc.llms import SeedLLM

        return SeedLLM.from_engine(self.engine, decoding=self.mode, verify=self.verify,
                                   k_config=tuple(self.config.k_config), max_tokens=max_tokens)

    def forget_prompts(self) -> None:
        self.engine.forget_prompts()

    def close(self) -> None:
        self.engine.close()


class LlamaCppMethod(Method):
    """llama.cpp on the target's GGUF, one prompt after another, greedy (`bench.peers`), in a
    worker process of its own (no torch threads beside it), kept warm for the whole run.

    Raises `PeerUnavailable` when llama-cpp-python is not installed or the target has no GGUF.
    """

    def __init__(self, name: str, models: BenchModels) -> None:
        import torch

        from langchain_seed.bench.peers import LlamaCppWorker, target_gguf

        self.name, self.models = name, models
        self.peer = LlamaCppWorker(target_gguf(models.target_name), threads=torch.get_num_threads())

    def run_group(self, prompt_ids: list[list[int]], max_tokens: int) -> GroupOutput:
        reply = self.peer.generate(prompt_ids, max_tokens, self.models.eos_token_ids)
        return GroupOutput(reply.outputs, target_calls=reply.forwards)

    def forget_prompts(self) -> None:
        """llama.cpp reuses the previous prompt's prefix (`cache_prompt`); the harness's rule
        for every method is that no timed call starts from another call's prompts. Within
        a call (a group's prompts, one after another) it still reuses them."""
        self.peer.forget_prompts()

    def make_llm(self, max_tokens: int):
        from langchain_seed.bench.peers import LlamaCppLLM

        return LlamaCppLLM(peer=self.peer, tokenizer=self.models.tokenizer,
                           eos_token_ids=self.models.eos_token_ids, max_tokens=max_tokens)

    def close(self) -> None:
        self.peer.close()


def make_method(name: str, models: BenchModels, engine_class=None) -> Method:
    """The method called `name` over `models` (see `BENCH_METHODS`)."""
    if name == "hf_ar_serial":
        return HFMethod(name, models)
    if name == "hf_ar_batched":
        return HFMethod(name, models, batched=True)
    if name == "hf_assisted_serial":
        return HFMethod(name, models, assisted=True)
    if name == "seed_sd_serial":
        return SeedMethod(name, models, "speculative", "rounds", engine_class)
    if name == "seed_rounds":
        return SeedMethod(name, models, "scheduled", "rounds", engine_class)
    if name == "seed_batched":
        return SeedMethod(name, models, "scheduled", "batched", engine_class)
    if name == "llamacpp_serial":
        return LlamaCppMethod(name, models)
    raise ValueError(f"unknown method {name!r}; choose from {', '.join(BENCH_METHODS)}")


def parse_methods(text: str | Sequence[str] | None) -> list[str]:
    """`"a,b,c"` -> validated method names in the canonical order (None: all, peers included)."""
    if text is None:
        return list(BENCH_METHODS)
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    unknown = [n for n in names if n not in BENCH_METHODS]
    if unknown or not names:
        raise ValueError(f"unknown method(s) {unknown or names}; choose from {', '.join(BENCH_METHODS)}")
    return [m for m in BENCH_METHODS if m in names]


def reference_outputs(models: BenchModels):
    """The target's greedy decoding, one prompt at a time (`hf_ar_serial`), as a workload
    reference: transformers' `generate` (on the same modules where the target is the engine's
    own Llama: `llama.as_transformers`)."""
    from langchain_seed.engine.llama import as_transformers

    target = as_transformers(models.target)

    def run(prompt_ids: list[list[int]], max_tokens: int) -> list[list[int]]:
        return [hf_generate(target, [ids], max_tokens, models.tokenizer)[0] for ids in prompt_ids]

    return run
