"""Shared offline fixtures: a tiny byte-level BPE tokenizer, a tiny random Llama target, a
noisy copy of it as the draft, and a `SeedLLM` over them.

Everything is built in code (no downloads) and is deterministic. The models are
session-scoped (read-only in use); `tiny_llm` is a fresh `SeedLLM` per test over the
one shared engine, so tests may build variants with `SeedLLM.from_engine(tiny_engine, ...)`.

The builders are plain functions too (`build_tiny_tokenizer`, `build_tiny_target`,
`build_tiny_draft`, `tiny_models`) for code that cannot take fixtures, such as the
properties of the langchain-tests standard suites.
"""

from __future__ import annotations

import copy
import functools

import pytest

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""A ChatML-style template (the shape SmolLM2 and Qwen use)."""

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Tree of thoughts: propose three steps, evaluate each one, keep the best.",
    "Question: what is 12 + 30? Answer: 42. Let's think step by step.",
    "Speculative decoding drafts tokens with a small model and verifies them with a large one.",
    "Unicode: café naïve résumé – 日本語のテキスト – emoji 🙂🚀 – Ελληνικά – Привет мир.",
    "def add(a, b):\n    return a + b\n",
]
TINY_SEED = 1234
DRAFT_NOISE = 0.02


@functools.lru_cache(maxsize=1)
def build_tiny_tokenizer():
    """A byte-level BPE tokenizer (about 400 tokens) trained in code, with EOS and a chat template.

    Byte-level, so multi-byte characters are split across tokens: random outputs exercise
    incomplete UTF-8 handling in the detokenizer.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(CORPUS * 4, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>",
                                        pad_token="<|endoftext|>", clean_up_tokenization_spaces=False)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


@functools.lru_cache(maxsize=1)
def build_tiny_target():
    """A random 2-layer Llama (hidden 32) over the tiny tokenizer, in eval mode.

    The rows of the end-of-text and end-of-turn tokens in the LM head are zeroed, so that
    random greedy outputs do not end after a token or two (tests want some text).
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tiny_tokenizer()
    eos_ids = tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>"])
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         initializer_range=0.3, eos_token_id=eos_ids, bos_token_id=None, pad_token_id=eos_ids[0])
    torch.manual_seed(TINY_SEED)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight[eos_ids] = 0.0
    model.generation_config.eos_token_id = eos_ids
    model.config.name_or_path = "tiny-random-llama"
    return model.eval()


@functools.lru_cache(maxsize=1)
def build_tiny_draft():
    """A copy of the target with Gaussian noise (std 0.02) on every weight: acceptance is partial."""
    import torch

    target = build_tiny_target()
    draft = copy.deepcopy(target)
    generator = torch.Generator().manual_seed(TINY_SEED + 1)
    with torch.no_grad():
        for parameter in draft.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * DRAFT_NOISE)
    draft.config.name_or_path = "tiny-random-llama-draft"
    return draft.eval()


@functools.lru_cache(maxsize=1)
def tiny_models():
    """(target, draft, tokenizer), built once per process."""
    return build_tiny_target(), build_tiny_draft(), build_tiny_tokenizer()


@functools.lru_cache(maxsize=1)
def build_tiny_engine():
    """One `SeedEngine` over the tiny pair, shared by every test of the process."""
    from langchain_seed.engine import SeedEngine

    target, draft, tokenizer = tiny_models()
    return SeedEngine(target, draft, tokenizer)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """The tiny byte-level BPE tokenizer (EOS `<|endoftext|>`, ChatML chat template)."""
    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_target():
    """The tiny random Llama target (do not modify it in a test)."""
    return build_tiny_target()


@pytest.fixture(scope="session")
def tiny_draft():
    """The noisy copy of the target used as draft (do not modify it in a test)."""
    return build_tiny_draft()


@pytest.fixture(scope="session")
def tiny_engine():
    """The shared `SeedEngine` over the tiny target and draft (its scheduler thread runs per session)."""
    return build_tiny_engine()


@pytest.fixture
def tiny_llm(tiny_engine):
    """A `SeedLLM` over the shared tiny engine: scheduled decoding, greedy, 24 new tokens."""
    from langchain_seed.lc.llms import SeedLLM

    return SeedLLM.from_engine(tiny_engine, max_tokens=24, model_name="tiny-random-llama")
