"""Sampled output follows the target's distribution, whatever the draft, at every draft level.

A tiny target over a vocabulary of 8 tokens and two drafts: a noisy copy of it (most
drafted tokens are accepted, so the deepest level is verified and accepted often) and an
unrelated model (most are rejected, so the residual is sampled often). For each case the
first three new tokens of thousands of seeded requests are compared by a chi-square test
with the exact joint distribution of the target, enumerated from its logits with
temperature and top-p applied as `SamplingParams` defines them (written out here, not
taken from the engine). Three tokens cover a depth-2 draft completely: the depth-1 and
depth-2 candidates and the bonus token after them.

Each case also shows that it could fail (its power): the same counts must reject the
draft's joint distribution, and the target's at temperature 1 (when the case samples at
another temperature) and without top-p (when it uses top-p). A spy on the verification
stage checks that drafts ran to the tree's full depth, so that every level was verified.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from dataclasses import dataclass

import pytest
import torch

from langchain_seed.engine import SamplingParams, SeedEngine, SpeculativeConfig, decoding

from engine_fixtures import engine_llama_copy, noisy_copy

SMALL_VOCAB = 8
PROMPT = [1, 5, 2]
TOKENS = 3
"""New tokens whose joint distribution is checked."""


def small_model(seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=SMALL_VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                         initializer_range=0.4, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    model = LlamaForCausalLM(config).eval()
    model.generation_config.eos_token_id = None
    return model


# ------------------------------------------------------------------ exact distributions


def prefix_logits(model, tokens: int = TOKENS) -> dict[tuple[int, ...], torch.Tensor]:
    """The model's next-token logits (float64 `[vocab]`) after PROMPT + every prefix shorter than `tokens`."""
    logits = {}
    with torch.inference_mode():
        for length in range(tokens):
            prefixes = list(itertools.product(range(SMALL_VOCAB), repeat=length))
            rows = model(torch.tensor([PROMPT + list(p) for p in prefixes])).logits[:, -1].double()
            logits.update(zip(prefixes, rows))
    return logits


def sampling_distribution(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """softmax(logits / temperature) restricted to the nucleus: the most probable tokens, in
    order, while the mass before each is below top_p; renormalised. Float64 `[vocab]`."""
    probs = torch.softmax(logits.double() / temperature, dim=-1)
    kept = torch.zeros_like(probs)
    mass = 0.0
    for token in probs.argsort(descending=True).tolist():
        if mass >= top_p:
            break
        kept[token] = probs[token]
        mass += float(probs[token])
    return kept / kept.sum()


def exact_joint(logits: dict, temperature: float, top_p: float, tokens: int = TOKENS) -> torch.Tensor:
    """`[vocab] * tokens` probability of the first `tokens` new tokens."""
    step = {prefix: sampling_distribution(row, temperature, top_p) for prefix, row in logits.items()}
    joint = torch.zeros([SMALL_VOCAB] * tokens, dtype=torch.float64)
    for cell in itertools.product(range(SMALL_VOCAB), repeat=tokens):
        joint[cell] = math.prod(float(step[cell[:i]][cell[i]]) for i in range(tokens))
    return joint


def chi_square(counts: Counter, expected_probs: torch.Tensor, total: int) -> tuple[float, int]:
    """Statistic and degrees of freedom, cells with expected count < 5 pooled into one."""
    statistic, cells, pooled_observed, pooled_expected = 0.0, 0, 0, 0.0
    for cell in itertools.product(range(SMALL_VOCAB), repeat=expected_probs.dim()):
        expected = float(expected_probs[cell]) * total
        observed = counts.get(cell, 0)
        if expected < 5:
            pooled_observed += observed
            pooled_expected += expected
            continue
        statistic += (observed - expected) ** 2 / expected
        cells += 1
    if pooled_observed or pooled_expected:
        statistic += (pooled_observed - pooled_expected) ** 2 / max(pooled_expected, 1e-9)
        cells += 1
    return statistic, cells - 1


def critical_value(dof: int, z: float = 3.72) -> float:
    """Chi-square quantile at p = 0.0001 (Wilson-Hilferty): the cases' seeds are fixed, so a
    correct engine fails one of them with probability about 0.001 after a change of rounding."""
    return dof * (1 - 2 / (9 * dof) + z * math.sqrt(2 / (9 * dof))) ** 3


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny forwards gain nothing from threads, and lose much when other processes hold the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def models():
    target = small_model(0)
    near = noisy_copy(target, 0.06)
    return {"target": target, "near": near, "far": small_model(7),
            "engine target": engine_llama_copy(target), "engine near": engine_llama_copy(near)}


@pytest.fixture(scope="module")
def logits(models):
    return {name: prefix_logits(model) for name, model in models.items()}


@pytest.fixture
def verifications(monkeypatch):
    """Every verification the engine makes: (request id, verified tree depth, accepted nodes)."""
    seen: list[tuple[int, int, int]] = []
    keep_alive = []  # ids stay unique while the requests are referenced
    record = decoding.record_verification

    def spy(sequence, tree, acceptance):
        keep_alive.append(sequence.request)
        seen.append((id(sequence.request), tree.depth, len(acceptance.path)))
        record(sequence, tree, acceptance)

    monkeypatch.setattr(decoding, "record_verification", spy)
    return seen


def first_rounds(seen: list[tuple[int, int, int]]) -> list[tuple[int, int]]:
    """(depth, accepted) of each request's first verification."""
    first: dict[int, tuple[int, int]] = {}
    for request, depth, accepted in seen:
        first.setdefault(request, (depth, accepted))
    return list(first.values())


# --------------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    mode: str
    k_config: tuple[int, ...]
    temperature: float
    top_p: float = 1.0
    acceptance: str = "auto"
    verify: str = "batched"
    draft: str = "near"
    draft_confidence: float = 0.0
    samples: int = 4000
    target: str = "target"

    @property
    def depth(self) -> int:
        return len(self.k_config)


CASES = {
    "chain2-scheduled-t1": Case("scheduled", (1, 1), 1.0),
    "tree22-scheduled-t0.5-top_p0.9": Case("scheduled", (2, 2), 0.5, top_p=0.9, acceptance="mcsd"),
    "tree32-without-replacement-scheduled-t1.5-far": Case("scheduled", (3, 2), 1.5, draft="far",
                                                          acceptance="mcsd_without_replacement"),
    "chain3-rounds-t1.5-top_p0.8": Case("scheduled", (1, 1, 1), 1.5, top_p=0.8, verify="rounds", samples=2000),
    # At temperature 1 the draft's top probability is 0.43 at the root, and after the first
    # token 0.35-0.65: a threshold of 0.4 cuts about a fifth of the drafts after depth 2.
    "chain3-scheduled-t1-confidence0.4": Case("scheduled", (1, 1, 1), 1.0, draft_confidence=0.4),
    "tree21-speculative-t1-top_p0.8": Case("speculative", (2, 1), 1.0, top_p=0.8, samples=1000),
    "chain2-speculative-t0.5-far": Case("speculative", (1, 1), 0.5, draft="far", samples=1000),
    "autoregressive-t0.5": Case("autoregressive", (), 0.5, samples=1000),
    "autoregressive-t1.5-top_p0.8": Case("autoregressive", (), 1.5, top_p=0.8, samples=1000),
    # the same model in the engine's own Llama modules (`engine.llama`), its logits the ones above
    "tree22-scheduled-t1-engine-llama": Case("scheduled", (2, 2), 1.0, target="engine target", draft="engine near",
                                             samples=2000),
}


@pytest.mark.parametrize("name", list(CASES))
def test_sampled_tokens_follow_target_distribution(models, logits, verifications, name):
    case = CASES[name]
    target_joint = exact_joint(logits[case.target], case.temperature, case.top_p)
    wrong = {}  # distributions the samples must be told apart from
    if case.depth:
        wrong["the draft's"] = exact_joint(logits[case.draft], case.temperature, case.top_p)
    if case.temperature != 1.0:
        wrong["the target's at temperature 1"] = exact_joint(logits[case.target], 1.0, case.top_p)
    if case.top_p < 1.0:
        wrong["the target's without top_p"] = exact_joint(logits[case.target], case.temperature, 1.0)

    config = SpeculativeConfig(k_config=case.k_config or (1,), acceptance=case.acceptance, verify=case.verify,
                               draft_confidence=case.draft_confidence)
    engine = SeedEngine(models[case.target], models[case.draft], config=config)
    # A round commits at most depth + 1 tokens: with fewer left the drafter shortens the draft.
    max_tokens = max(TOKENS, case.depth + 1)
    params = [SamplingParams(temperature=case.temperature, top_p=case.top_p, max_tokens=max_tokens, seed=seed)
              for seed in range(case.samples)]
    results = engine.generate([PROMPT] * case.samples, params, mode=case.mode)
    counts = Counter(tuple(r.token_ids[:TOKENS]) for r in results)
    assert sum(counts.values()) == case.samples and all(len(cell) == TOKENS for cell in counts)

    statistic, dof = chi_square(counts, target_joint, case.samples)
    assert statistic < critical_value(dof), f"chi2={statistic:.1f} dof={dof}: not the target's distribution"
    for what, joint in wrong.items():
        wrong_statistic, wrong_dof = chi_square(counts, joint, case.samples)
        assert wrong_statistic > critical_value(wrong_dof), f"the test cannot tell {what} distribution from the target's"

    first = first_rounds(verifications)
    assert len(first) == case.samples
    if not case.depth:
        assert {depth for depth, _ in first} == {0}
        return
    full = [accepted for depth, accepted in first if depth == case.depth]
    if case.draft_confidence:  # the adaptive cut must have happened, and not everywhere
        assert 0.05 * case.samples < len(full) < 0.95 * case.samples
        assert all(depth >= 2 for depth, _ in first)  # every cut draft still reaches past depth 1
    else:
        assert len(full) == case.samples, "every first draft should run to the tree's full depth"
    # The deepest level was verified and accepted often enough to matter.
    assert full.count(case.depth) > 0.03 * case.samples
    assert 0 < results.stats.acceptance_rate < 1


def sibling_pair_distribution(probs: torch.Tensor, without_replacement: bool) -> torch.Tensor:
    """`[vocab, vocab]` probability of the first two of a node's candidates drawn from `probs`."""
    pairs = probs[:, None] * probs[None, :]
    if without_replacement:  # the second from the rest, renormalised
        pairs = (pairs / (1 - probs[:, None])).fill_diagonal_(0.0)
    return pairs


@pytest.mark.parametrize("acceptance", ["mcsd", "mcsd_without_replacement"])
def test_candidates_are_drawn_as_the_rule_expects(models, logits, monkeypatch, acceptance):
    """The root's candidates follow the draft's distribution, drawn independently for "mcsd" and
    one after another without replacement for "mcsd_without_replacement", and the rule is told
    which. A mismatch biases the output only slightly on these tiny models: checked here directly."""
    samples, temperature = 2000, 0.5  # a peaked draft: repeated candidates are common with replacement
    seen: list[tuple[tuple[int, int], bool]] = []
    accept_sampling = decoding.accept_sampling

    def spy(tree, node_tokens, draft_probs, target_probs, generator, without_replacement=False):
        if len(seen) < samples:  # each request's first round
            first, second = list(tree.children(-1))[:2]
            seen.append(((node_tokens[first], node_tokens[second]), without_replacement))
        return accept_sampling(tree, node_tokens, draft_probs, target_probs, generator, without_replacement)

    monkeypatch.setattr(decoding, "accept_sampling", spy)
    engine = SeedEngine(models["target"], models["far"], config=SpeculativeConfig(k_config=(3, 1), acceptance=acceptance))
    params = [SamplingParams(temperature=temperature, max_tokens=TOKENS, seed=seed) for seed in range(samples)]
    engine.generate([PROMPT] * samples, params, mode="scheduled")
    without = acceptance == "mcsd_without_replacement"
    assert len(seen) == samples and {flag for _, flag in seen} == {without}
    counts = Counter(pair for pair, _ in seen)
    draft_root = sampling_distribution(logits["far"][()], temperature, 1.0)
    statistic, dof = chi_square(counts, sibling_pair_distribution(draft_root, without), samples)
    assert statistic < critical_value(dof), f"chi2={statistic:.1f} dof={dof}: candidates not drawn as expected"
    other, other_dof = chi_square(counts, sibling_pair_distribution(draft_root, not without), samples)
    assert other > critical_value(other_dof), "the test cannot tell the two ways of drawing apart"


def test_fixed_seed_gives_same_tokens_whatever_else_runs(models):
    target, draft = models["target"], models["far"]
    engine = SeedEngine(target, draft, config=SpeculativeConfig(k_config=(2, 1)))
    params = SamplingParams(temperature=0.8, top_p=0.9, max_tokens=12, seed=1234)
    [alone] = engine.generate([PROMPT], params, mode="scheduled")
    others = [SamplingParams(temperature=1.0, max_tokens=n, seed=n) for n in range(3, 9)]
    crowd = engine.generate([[2, 3]] * 3 + [PROMPT] + [[4]] * 3, others[:3] + [params] + others[3:], mode="scheduled")
    assert crowd[3].token_ids == alone.token_ids
    [again] = engine.generate([PROMPT], params, mode="speculative")
    assert again.token_ids == alone.token_ids


# ------------------------------------------------------------- under a grammar's mask

LETTERS = "abcdefgh"
LETTER_PATTERN = "[a-e][aceg][bdfg][a-g]*"
"""The first three tokens each come from their own set, so the mask changes at every position."""
ALLOWED_AT = [{0, 1, 2, 3, 4}, {0, 2, 4, 6}, {1, 3, 5, 6}]


def letter_tokenizer():
    """A fast tokenizer of the eight single letters a-h (token i is letter i; "h" is EOS)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(vocab={letter: i for i, letter in enumerate(LETTERS)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="h")


def masked(logits: dict[tuple[int, ...], torch.Tensor]) -> dict[tuple[int, ...], torch.Tensor]:
    """Each prefix's logits with the tokens the pattern forbids after it at -inf."""
    out = {}
    for prefix, row in logits.items():
        forbidden = [t for t in range(SMALL_VOCAB) if t not in ALLOWED_AT[len(prefix)]]
        out[prefix] = row.clone().index_fill_(0, torch.tensor(forbidden), float("-inf"))
    return out


CONSTRAINED_CASES = {
    "chain2-scheduled-t1": Case("scheduled", (1, 1), 1.0),
    "tree22-scheduled-t0.7-top_p0.9": Case("scheduled", (2, 2), 0.7, top_p=0.9, acceptance="mcsd"),
    "tree21-without-replacement-rounds-t1.5-far": Case("scheduled", (2, 1), 1.5, draft="far", verify="rounds",
                                                       acceptance="mcsd_without_replacement", samples=2000),
    "chain2-speculative-t1-far": Case("speculative", (1, 1), 1.0, draft="far", samples=1000),
    "autoregressive-t1-top_p0.8": Case("autoregressive", (), 1.0, top_p=0.8, samples=1000),
}


@pytest.mark.parametrize("name", list(CONSTRAINED_CASES))
def test_constrained_samples_follow_the_masked_renormalised_target(models, logits, name):
    """Under a constraint the output follows the target's distribution with the forbidden
    tokens removed and the rest renormalised (temperature and top-p applied after the mask),
    whatever the draft and the tree: the distribution constrained autoregressive decoding
    samples from. The counts must also reject the draft's masked distribution, the target's
    at another temperature, and the target's without the mask."""
    from langchain_seed.engine import Constraint

    case = CONSTRAINED_CASES[name]
    target_joint = exact_joint(masked(logits["target"]), case.temperature, case.top_p)
    wrong = {"the unmasked target's": exact_joint(logits["target"], case.temperature, case.top_p)}
    if case.depth:
        wrong["the draft's masked"] = exact_joint(masked(logits[case.draft]), case.temperature, case.top_p)
    wrong["the masked target's at another temperature"] = exact_joint(
        masked(logits["target"]), case.temperature * 2.0, case.top_p)
    config = SpeculativeConfig(k_config=case.k_config or (1,), acceptance=case.acceptance, verify=case.verify)
    engine = SeedEngine(models["target"], models[case.draft], letter_tokenizer(), config=config)
    constraint = Constraint.regex(LETTER_PATTERN)
    max_tokens = max(TOKENS, case.depth + 1)
    params = [SamplingParams(temperature=case.temperature, top_p=case.top_p, max_tokens=max_tokens, seed=seed,
                             constraint=constraint) for seed in range(case.samples)]
    results = engine.generate([PROMPT] * case.samples, params, mode=case.mode)
    counts = Counter(tuple(r.token_ids[:TOKENS]) for r in results)
    assert all(cell[i] in ALLOWED_AT[i] for cell in counts for i in range(TOKENS))
    statistic, dof = chi_square(counts, target_joint, case.samples)
    assert statistic < critical_value(dof), f"chi2={statistic:.1f} dof={dof}: not the masked target's distribution"
    for what, joint in wrong.items():
        wrong_statistic, wrong_dof = chi_square(counts, joint, case.samples)
        assert wrong_statistic > critical_value(wrong_dof), f"the test cannot tell {what} distribution from the target's"
    if case.depth:
        assert 0 < results.stats.acceptance_rate < 1
    engine.close()
