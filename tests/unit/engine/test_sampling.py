"""Sampled output follows the target's distribution, whatever the draft.

A target and a clearly different draft over a vocabulary of 8 tokens; the first two new
tokens of thousands of seeded requests are compared by a chi-square test with the exact
joint distribution of the target, computed by enumeration.
"""

import math
from collections import Counter

import pytest
import torch

from langchain_seed.engine import SamplingParams, SeedEngine, SpeculativeConfig

SMALL_VOCAB = 8
PROMPT = [1, 5, 2]
SAMPLES = 4000


def small_model(seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=SMALL_VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                         initializer_range=0.4, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    model = LlamaForCausalLM(config).eval()
    model.generation_config.eos_token_id = None
    return model


def joint_two_tokens(model, temperature: float) -> torch.Tensor:
    """`[vocab, vocab]` probability of the first two new tokens."""
    with torch.inference_mode():
        first = torch.softmax(model(torch.tensor([PROMPT])).logits[0, -1] / temperature, -1)
        seconds = torch.stack([
            torch.softmax(model(torch.tensor([PROMPT + [t]])).logits[0, -1] / temperature, -1)
            for t in range(SMALL_VOCAB)
        ])
    return first[:, None] * seconds


def chi_square(counts: Counter, expected_probs: torch.Tensor, total: int) -> tuple[float, int]:
    """Statistic and degrees of freedom, cells with expected count < 5 pooled."""
    statistic, dof, pooled_observed, pooled_expected = 0.0, 0, 0, 0.0
    for (a, b), p in ((ab, float(expected_probs[ab])) for ab in _cells()):
        expected = p * total
        observed = counts.get((a, b), 0)
        if expected < 5:
            pooled_observed += observed
            pooled_expected += expected
            continue
        statistic += (observed - expected) ** 2 / expected
        dof += 1
    if pooled_expected > 0:
        statistic += (pooled_observed - pooled_expected) ** 2 / max(pooled_expected, 1e-9)
        dof += 1
    return statistic, dof - 1


def _cells():
    return [(a, b) for a in range(SMALL_VOCAB) for b in range(SMALL_VOCAB)]


def critical_value(dof: int, z: float = 3.29) -> float:
    """Chi-square quantile at p = 0.0005 (Wilson-Hilferty)."""
    return dof * (1 - 2 / (9 * dof) + z * math.sqrt(2 / (9 * dof))) ** 3


@pytest.fixture(scope="module")
def sampling_pair():
    return small_model(0), small_model(7)


@pytest.mark.parametrize(
    "k_config,acceptance,draft_confidence",
    [((1, 1, 1), "auto", 0.0), ((2, 2), "mcsd", 0.0), ((3, 1), "mcsd_without_replacement", 0.0),
     ((1, 1, 1), "auto", 0.5), ((2, 2), "mcsd", 0.5)],
)
def test_sampled_tokens_follow_target_distribution(sampling_pair, k_config, acceptance, draft_confidence):
    target, draft = sampling_pair
    temperature = 1.0
    target_joint = joint_two_tokens(target, temperature)
    draft_joint = joint_two_tokens(draft, temperature)
    # The draft must differ clearly, or a wrong rule could pass.
    assert 0.5 * float((target_joint - draft_joint).abs().sum()) > 0.3

    config = SpeculativeConfig(k_config=k_config, acceptance=acceptance, draft_confidence=draft_confidence)
    engine = SeedEngine(target, draft, config=config)
    params = [SamplingParams(temperature=temperature, max_tokens=2, seed=seed) for seed in range(SAMPLES)]
    results = engine.generate([PROMPT] * SAMPLES, params, mode="scheduled")
    counts = Counter(tuple(r.token_ids[:2]) for r in results)
    assert sum(counts.values()) == SAMPLES
    statistic, dof = chi_square(counts, target_joint, SAMPLES)
    assert statistic < critical_value(dof), f"chi2={statistic:.1f} dof={dof}: not the target's distribution"
    draft_statistic, _ = chi_square(counts, draft_joint, SAMPLES)
    assert draft_statistic > critical_value(dof), "the test cannot tell the draft from the target"
    assert 0 < results.stats.acceptance_rate < 1
    if draft_confidence:  # some drafts must have been cut for the cut path to be tested
        steps = sum(r.stats.verify_steps for r in results)
        assert results.stats.drafted < steps * len(k_config)


def test_fixed_seed_gives_same_tokens_whatever_else_runs(sampling_pair):
    target, draft = sampling_pair
    engine = SeedEngine(target, draft, config=SpeculativeConfig(k_config=(2, 1)))
    params = SamplingParams(temperature=0.8, top_p=0.9, max_tokens=12, seed=1234)
    [alone] = engine.generate([PROMPT], params, mode="scheduled")
    others = [SamplingParams(temperature=1.0, max_tokens=n, seed=n) for n in range(3, 9)]
    crowd = engine.generate([[2, 3]] * 3 + [PROMPT] + [[4]] * 3, others[:3] + [params] + others[3:], mode="scheduled")
    assert crowd[3].token_ids == alone.token_ids
    [again] = engine.generate([PROMPT], params, mode="speculative")
    assert again.token_ids == alone.token_ids
