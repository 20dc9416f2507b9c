"""`HFGenerateLLM`: a minimal LangChain LLM over plain transformers `generate`.

It is the baseline side of the ``tot-full`` benchmark: `TreeOfThoughts` drives it
exactly as it drives `SeedLLM`. Text handling (detokenization, cutting at stop strings)
uses the same helpers as `SeedLLM`, so that at temperature 0 both return the same text
when they decode the same tokens. Greedy by default; ``temperature`` above 0 samples
from the full distribution (no top-k or top-p), as `SeedLLM` does. A benchmark baseline,
not a general-purpose LLM.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

from langchain_core.language_models.llms import BaseLLM
from langchain_core.outputs import Generation, LLMResult


class HFGenerateLLM(BaseLLM):
    """Greedy transformers `generate` behind LangChain's `BaseLLM`.

    Instantiate:
        .. code-block:: python

            llm = HFGenerateLLM(model=target, tokenizer=tokenizer, batched=True, max_tokens=48)
            llm.invoke("Question: 2 + 3?\\nAnswer:")
    """

    model: Any
    """The transformers causal LM (in eval mode)."""
    tokenizer: Any
    """Its tokenizer."""
    batched: bool = False
    """One `generate` over all prompts of a call (left-padded); False: one call per prompt,
    as `HuggingFacePipeline` does."""
    assistant_model: Any = None
    """A draft model for transformers assisted generation (forces one prompt per call)."""
    max_tokens: int = 256
    """New tokens per prompt, at most (a per-call ``max_tokens=`` overrides it)."""
    temperature: float = 0.0
    """0: greedy; above 0: sample at this temperature."""

    @property
    def _llm_type(self) -> str:
        return "hf-generate"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        name = getattr(self.model.config, "name_or_path", type(self.model).__name__)
        return {"model": name, "batched": self.batched, "assisted": self.assistant_model is not None}

    def _generate(self, prompts: list[str], stop: list[str] | None = None, run_manager: Any = None,
                  **kwargs: Any) -> LLMResult:
        max_tokens = int(kwargs.get("max_tokens", self.max_tokens))
        prompt_ids = [list(self.tokenizer.encode(p, add_special_tokens=False)) for p in prompts]
        if self.batched and self.assistant_model is None:
            outputs = hf_generate(self.model, prompt_ids, max_tokens, self.tokenizer, stop=stop,
                                  temperature=self.temperature)
        else:
            outputs = [hf_generate(self.model, [ids], max_tokens, self.tokenizer, stop=stop,
                                   assistant_model=self.assistant_model, temperature=self.temperature)[0]
                       for ids in prompt_ids]
        eos = eos_ids_of(self.model, self.tokenizer)
        outputs = [_cut_at_eos(new_ids, eos) for new_ids in outputs]
        generations = [[self._generation(ids, new_ids, stop)] for ids, new_ids in zip(prompt_ids, outputs)]
        return LLMResult(generations=generations, llm_output={"model": self._identifying_params["model"]})

    def _generation(self, prompt_ids: list[int], new_ids: list[int], stop: list[str] | None) -> Generation:
        from langchain_seed.lc.text import StreamingText

        eos = eos_ids_of(self.model, self.tokenizer)
        text = StreamingText(self.tokenizer, prompt_ids, stop, eos)
        output = text.push(new_ids) + text.finish()
        finish = "stop" if text.stopped or (new_ids and new_ids[-1] in eos) else "length"
        return Generation(text=output, generation_info={"new_tokens": len(new_ids), "finish_reason": finish})


def _cut_at_eos(token_ids: list[int], eos: frozenset[int]) -> list[int]:
    for index, token in enumerate(token_ids):
        if token in eos:
            return token_ids[: index + 1]
    return token_ids


def eos_ids_of(model, tokenizer) -> frozenset[int]:
    from langchain_seed.engine.models import eos_token_ids

    return eos_token_ids(model, tokenizer)


def pad_id_of(model, tokenizer) -> int:
    """The pad token id for left padding: the tokenizer's, else the model's, else an EOS id."""
    for value in (getattr(tokenizer, "pad_token_id", None), getattr(model.generation_config, "pad_token_id", None)):
        if isinstance(value, int):
            return value
    return min(eos_ids_of(model, tokenizer))


def hf_generate(model, prompt_ids: Sequence[Sequence[int]], max_tokens: int, tokenizer=None, *,
                stop: Sequence[str] | None = None, assistant_model=None,
                temperature: float = 0.0) -> list[list[int]]:
    """Greedy `model.generate` over the prompts in one call (left-padded); new ids per prompt.

    ``temperature`` above 0 samples instead, from the whole distribution (top-k and top-p off).

    Rows that end early are padded by transformers; callers cut at the first EOS.
    """
    import torch

    device = next(model.parameters()).device
    pad_id = pad_id_of(model, tokenizer)
    width = max(len(ids) for ids in prompt_ids)
    input_ids = torch.full((len(prompt_ids), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros(len(prompt_ids), width, dtype=torch.long)
    for row, ids in enumerate(prompt_ids):
        input_ids[row, width - len(ids):] = torch.tensor(list(ids), dtype=torch.long)
        attention_mask[row, width - len(ids):] = 1
    kwargs: dict[str, Any] = {}
    if stop:
        kwargs["stopping_criteria"] = _stop_criteria(tokenizer, prompt_ids, width, stop, eos_ids_of(model, tokenizer))
    if assistant_model is not None:
        kwargs["assistant_model"] = assistant_model
    if temperature > 0:
        kwargs.update(do_sample=True, temperature=temperature, top_k=0, top_p=1.0)
    else:
        kwargs["do_sample"] = False
    from langchain_seed.engine.routing import engine_forward, needs_engine_forward

    # A model in blocks or with 8-bit activations is defined by the engine's kernels (`engine_forward`).
    computed_as_defined = engine_forward(model) if needs_engine_forward(model) else contextlib.nullcontext()
    with torch.inference_mode(), computed_as_defined:
        output = model.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                                max_new_tokens=max_tokens, pad_token_id=pad_id,
                                eos_token_id=sorted(eos_ids_of(model, tokenizer)), **kwargs)
    outputs = [row[width:].tolist() for row in output.cpu()]
    if stop:
        outputs = [_cut_at_stop(tokenizer, ids, new_ids, stop, eos_ids_of(model, tokenizer))
                   for ids, new_ids in zip(prompt_ids, outputs)]
    return outputs


def _cut_at_stop(tokenizer, prompt_ids, new_ids: list[int], stop: Sequence[str], eos: frozenset[int]) -> list[int]:
    """The tokens up to the one that completed a stop string (transformers pads the rest of the row)."""
    from langchain_seed.lc.text import StopChecker

    checker = StopChecker(tokenizer, list(prompt_ids), list(stop), eos)
    for length in range(1, len(new_ids) + 1):
        if new_ids[length - 1] in eos or checker(new_ids[:length]):
            return new_ids[:length]
    return new_ids


def _stop_criteria(tokenizer, prompt_ids, width: int, stop: Sequence[str], eos: frozenset[int]):
    """A transformers `StoppingCriteriaList` ending each row when its text holds a stop string."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    from langchain_seed.lc.text import StopChecker

    checkers = [StopChecker(tokenizer, ids, list(stop), eos) for ids in prompt_ids]

    class _StopStrings(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):  # [batch, width + new]
            new = input_ids[:, width:].tolist()
            done = [checker(row) for checker, row in zip(checkers, new)]
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([_StopStrings()])
