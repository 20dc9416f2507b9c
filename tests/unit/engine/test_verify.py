"""The acceptance rules alone: made deterministic with +/-10 and -inf logits or with chosen
uniform draws, and checked against the target's exact distribution by sampling."""

import itertools
import math
from collections import Counter
from dataclasses import FrozenInstanceError

import pytest
import torch

from langchain_seed.engine import verify
from langchain_seed.engine.tree import build_tree
from langchain_seed.engine.verify import (
    Acceptance,
    accept_greedy,
    accept_sampling,
    greedy_step,
    greedy_tokens,
    sample_token,
    sampling_step,
    target_probs_from_logits,
)

VOCAB = 8


def peaked(token: int) -> torch.Tensor:
    """Logits with +10 on `token`, -10 elsewhere."""
    logits = torch.full((VOCAB,), -10.0)
    logits[token] = 10.0
    return logits


def one_hot(token: int) -> torch.Tensor:
    probs = torch.zeros(VOCAB)
    probs[token] = 1.0
    return probs


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def uniform_draws(monkeypatch):
    """`uniform_draws(u1, u2, ...)`: the rule's uniform draws (`torch.rand`) return u1, u2, ...
    in turn, the last one repeating."""

    def set_draws(*values: float) -> None:
        queue = list(values)

        def rand(*args, **kwargs):
            return torch.tensor(queue.pop(0) if len(queue) > 1 else queue[0])

        monkeypatch.setattr(verify.torch, "rand", rand)

    return set_draws


def test_greedy_chain_all_accepted_gives_bonus():
    tree = build_tree((1, 1, 1))
    logits = torch.stack([peaked(3), peaked(4), peaked(5), peaked(6)])
    result = accept_greedy(tree, [3, 4, 5], logits)
    assert result.path == [0, 1, 2] and result.next_token == 6


def test_greedy_chain_first_mismatch_recovers_target_token():
    tree = build_tree((1, 1, 1))
    logits = torch.stack([peaked(3), peaked(4), peaked(5), peaked(6)])
    result = accept_greedy(tree, [3, 7, 5], logits)
    assert result.path == [0] and result.next_token == 4


def test_greedy_tree_follows_matching_branch():
    tree = build_tree((2, 2))  # nodes 0,1 at depth 1; 2,3 under 0; 4,5 under 1
    logits = torch.stack([peaked(1)] + [peaked(t) for t in (0, 2, 0, 0, 0, 0)])
    logits[1 + 1] = peaked(5)  # target after node 1
    result = accept_greedy(tree, [0, 1, 6, 6, 4, 5], logits)
    assert result.path == [1, 5]
    assert result.next_token == int(logits[1 + 5].argmax())


def test_greedy_no_candidate_matches():
    tree = build_tree((2,))
    logits = torch.stack([peaked(7), peaked(0), peaked(0)])
    result = accept_greedy(tree, [1, 2], logits)
    assert result.path == [] and result.next_token == 7


def test_sampling_accepts_when_target_agrees_with_draft():
    tree = build_tree((1, 1))
    draft_probs = torch.stack([one_hot(2), one_hot(3), torch.zeros(VOCAB)])
    target_probs = torch.stack([one_hot(2), one_hot(3), one_hot(4)])
    result = accept_sampling(tree, [2, 3], draft_probs, target_probs, generator())
    assert result.path == [0, 1] and result.next_token == 4


def test_sampling_rejects_token_the_target_never_emits():
    tree = build_tree((1,))
    draft_probs = torch.stack([one_hot(2), torch.zeros(VOCAB)])
    target = torch.softmax(torch.tensor([-math.inf, 0.0, -math.inf, 0.0, -math.inf, -math.inf, -math.inf, -math.inf]), 0)
    target_probs = torch.stack([target, one_hot(0)])
    for seed in range(20):
        result = accept_sampling(tree, [2], draft_probs, target_probs, generator(seed))
        assert result.path == []
        assert result.next_token in (1, 3)  # the residual is the target's own distribution here


def test_mcsd_second_candidate_accepted_after_first_rejected():
    draft = torch.tensor([0.5, 0.5, 0, 0, 0, 0, 0, 0])
    target = one_hot(1)
    index, _ = sampling_step([0, 1], draft, target, generator(), without_replacement=False)
    assert index == 1


def test_without_replacement_removes_rejected_candidate(uniform_draws):
    # Candidate 0 is rejected (0.9 * 0.5 >= 0.1); the residual is [0, 0.625, 0.375]. Without
    # replacement the draft becomes [0, 0.5, 0.5], so candidate 2 is accepted with probability
    # 0.375 / 0.5 = 0.75 and a draw of 0.9 rejects it; with replacement the draft keeps 0.25 on
    # it and it is accepted (0.375 / 0.25 > 1).
    draft = torch.tensor([0.5, 0.25, 0.25, 0, 0, 0, 0, 0])
    target = torch.tensor([0.1, 0.5, 0.4, 0, 0, 0, 0, 0])
    uniform_draws(0.9)
    index, residual = sampling_step([0, 2], draft, target, generator(), without_replacement=True)
    assert index is None
    assert residual.tolist() == pytest.approx(one_hot(1).tolist())  # max(0, [0, .625, .375] - [0, .5, .5])
    index, residual = sampling_step([0, 2], draft, target, generator(), without_replacement=False)
    assert index == 1
    assert residual.tolist() == pytest.approx([0, 0.625, 0.375, 0, 0, 0, 0, 0])
    index, _ = sampling_step([0, 2], draft, target, generator())  # with replacement unless asked
    assert index == 1


def test_top_p_keeps_the_nucleus():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    probs = target_probs_from_logits(logits, temperature=1.0, top_p=0.8)
    assert probs.tolist() == pytest.approx([0.5 / 0.8, 0.3 / 0.8, 0.0, 0.0])
    assert target_probs_from_logits(logits, 1.0, 0.01).tolist() == pytest.approx([1.0, 0, 0, 0])


def test_greedy_step_returns_the_matching_index_and_the_argmax():
    logits = peaked(5)
    assert greedy_step([2, 5, 5], logits) == (1, 5)
    assert greedy_step([2, 3], logits) == (None, 5)
    assert greedy_step([], logits) == (None, 5)


def test_greedy_bonus_comes_from_the_leaf_row():
    tree = build_tree((1,))
    logits = torch.stack([peaked(3), peaked(6)])
    assert accept_greedy(tree, [3], logits) == Acceptance([0], 6)
    assert accept_greedy(build_tree(()), [], peaked(2)[None]) == Acceptance([], 2)


def test_acceptance_is_immutable():
    with pytest.raises(FrozenInstanceError):
        Acceptance([0], 1).next_token = 2


# ------------------------------------------------------------- sampling, chosen draws


def test_candidate_accepted_with_probability_target_over_draft(uniform_draws):
    draft = torch.tensor([0.5, 0.5, 0, 0, 0, 0, 0, 0])
    target = torch.tensor([0.2, 0.8, 0, 0, 0, 0, 0, 0])
    uniform_draws(0.39)  # 0.39 < 0.2 / 0.5
    index, residual = sampling_step([0], draft, target, generator())
    assert index == 0 and residual is target  # accepted: the target's distribution, untouched
    uniform_draws(0.41)
    index, residual = sampling_step([0], draft, target, generator())
    assert index is None
    assert residual.tolist() == pytest.approx(one_hot(1).tolist())  # max(0, target - draft), normalised


def test_candidate_the_target_prefers_is_always_accepted(uniform_draws):
    uniform_draws(0.999)
    draft = torch.tensor([0.25, 0.75, 0, 0, 0, 0, 0, 0])
    target = torch.tensor([0.5, 0.5, 0, 0, 0, 0, 0, 0])
    assert sampling_step([0], draft, target, generator())[0] == 0


def test_rejection_leaves_the_normalised_residual(uniform_draws):
    draft = torch.tensor([0.6, 0.2, 0.2, 0, 0, 0, 0, 0])
    target = torch.tensor([0.2, 0.5, 0.3, 0, 0, 0, 0, 0])
    uniform_draws(0.5)  # 0.5 * 0.6 >= 0.2: rejected
    index, residual = sampling_step([0], draft, target, generator())
    assert index is None
    assert residual.tolist() == pytest.approx([0, 0.75, 0.25, 0, 0, 0, 0, 0])  # [0, .3, .1] / .4


def test_each_rejection_takes_the_residual_of_the_last_residual(uniform_draws):
    draft = torch.tensor([0.4, 0.1, 0.5, 0, 0, 0, 0, 0])
    target = torch.tensor([0.1, 0.2, 0.7, 0, 0, 0, 0, 0])
    uniform_draws(0.99)  # token 0 rejected twice (0.99 * 0.4 >= 0.1, then >= 0)
    index, residual = sampling_step([0, 0], draft, target, generator())
    assert index is None
    first = torch.tensor([0, 1 / 3, 2 / 3, 0, 0, 0, 0, 0])  # max(0, target - draft) / 0.3
    second = (first - draft).clamp_min(0)
    assert residual.tolist() == pytest.approx((second / second.sum()).tolist())


def test_a_zero_draw_never_accepts_a_token_the_target_cannot_emit(uniform_draws):
    uniform_draws(0.0)
    draft = torch.tensor([0.5, 0.5, 0, 0, 0, 0, 0, 0])
    index, residual = sampling_step([0], draft, one_hot(1), generator())
    assert index is None and residual.tolist() == pytest.approx(one_hot(1).tolist())


def test_a_candidate_the_draft_gave_no_mass_is_never_accepted(uniform_draws):
    uniform_draws(0.0)
    target = torch.tensor([0.5, 0.5, 0, 0, 0, 0, 0, 0])
    index, residual = sampling_step([1], one_hot(0), target, generator())
    assert index is None and residual.tolist() == pytest.approx(one_hot(1).tolist())


def test_a_draft_heavier_than_the_target_everywhere_stops_with_the_last_distribution(uniform_draws):
    # Only rounding makes a draft outweigh the target everywhere; the residual would be empty.
    uniform_draws(0.99)
    draft = torch.tensor([0.6, 0.5, 0, 0, 0, 0, 0, 0])
    target = torch.tensor([0.5, 0.5, 0, 0, 0, 0, 0, 0])
    for without_replacement in (False, True):
        index, residual = sampling_step([0, 1], draft, target, generator(), without_replacement)
        assert index is None and residual.tolist() == target.tolist()


def test_without_replacement_stops_when_the_draft_has_no_mass_left(uniform_draws):
    uniform_draws(0.99)
    target = torch.tensor([0.5, 0.5, 0, 0, 0, 0, 0, 0])
    # One token with mass: the drafter repeats it to fill the second candidate.
    index, residual = sampling_step([0, 0], one_hot(0), target, generator(), without_replacement=True)
    assert index is None and residual.tolist() == pytest.approx(one_hot(1).tolist())


def test_without_replacement_renormalises_the_draft_without_modifying_it(uniform_draws):
    uniform_draws(0.9, 0.7)  # reject token 0; then accept token 2 only if 0.7 * 0.5 < 0.375
    draft = torch.tensor([0.5, 0.25, 0.25, 0, 0, 0, 0, 0])
    target = torch.tensor([0.1, 0.5, 0.4, 0, 0, 0, 0, 0])
    kept = draft.clone()
    assert sampling_step([0, 2], draft, target, generator(), without_replacement=True)[0] == 1
    assert torch.equal(draft, kept)


def test_sampling_chain_bonus_comes_from_the_leaf_row():
    tree = build_tree((1,))
    draft_probs = torch.stack([one_hot(2), torch.zeros(VOCAB)])
    target_probs = torch.stack([one_hot(2), one_hot(5)])
    assert accept_sampling(tree, [2], draft_probs, target_probs, generator()) == Acceptance([0], 5)


def test_sampling_tree_walks_into_the_accepted_childs_subtree(uniform_draws):
    tree = build_tree((2, 2))  # 0, 1 at depth 1; 2, 3 under 0; 4, 5 under 1
    uniform_draws(0.5)
    draft_probs = torch.zeros(1 + 6, VOCAB)
    draft_probs[0] = torch.tensor([0.5, 0.5, 0, 0, 0, 0, 0, 0])
    draft_probs[1 + 1] = torch.tensor([0, 0, 0, 0.5, 0.5, 0, 0, 0])
    target_probs = torch.stack([one_hot(1), one_hot(0), one_hot(4), one_hot(0), one_hot(0), one_hot(0), one_hot(7)])
    # Node 0 (token 0) is rejected, node 1 (token 1) accepted; under it node 4 (token 3) rejected and
    # node 5 (token 4) accepted; node 5 is a leaf, its row gives the bonus.
    result = accept_sampling(tree, [0, 1, 5, 5, 3, 4], draft_probs, target_probs, generator())
    assert result == Acceptance([1, 5], 7)


def test_sample_token_follows_the_distribution():
    probs = torch.tensor([0.0, 0.25, 0.0, 0.75, 0, 0, 0, 0])
    counts = Counter(sample_token(probs, generator(seed)) for seed in range(400))
    assert set(counts) == {1, 3} and 60 < counts[1] < 140


# ------------------------------------------------------------- sampling, distributions

SMALL = 4
TRIALS = 4000


def distributions(seed: int, scale: float = 1.5) -> tuple[torch.Tensor, torch.Tensor]:
    """A root distribution `[SMALL]` and, for each first token, the next one's `[SMALL, SMALL]`."""
    g = torch.Generator().manual_seed(seed)
    return (torch.softmax(torch.randn(SMALL, generator=g) * scale, -1),
            torch.softmax(torch.randn(SMALL, SMALL, generator=g) * scale, -1))


def padded(probs: torch.Tensor) -> torch.Tensor:
    return torch.cat([probs, torch.zeros(VOCAB - SMALL)])


def draw(probs: torch.Tensor, count: int, without_replacement: bool, g: torch.Generator) -> list[int]:
    return torch.multinomial(probs, count, replacement=not without_replacement, generator=g).tolist()


def two_tokens(k_config, without_replacement: bool, draft, target, seed: int) -> tuple[int, int]:
    """The first two tokens one round of `accept_sampling` gives (the second drawn from the target
    when the round ends after one), over a draft tree drawn from `draft` as the engine draws it."""
    g = generator(seed)
    tree = build_tree(k_config)
    (draft_root, draft_next), (target_root, target_next) = draft, target
    tokens = [0] * tree.size
    draft_probs = torch.zeros(1 + tree.size, VOCAB)
    target_probs = torch.zeros(1 + tree.size, VOCAB)
    draft_probs[0], target_probs[0] = padded(draft_root), padded(target_root)
    for child, token in zip(tree.children(-1), draw(draft_root, k_config[0], without_replacement, g)):
        tokens[child] = token
        target_probs[1 + child] = padded(target_next[token])
        if tree.depth > 1:
            draft_probs[1 + child] = padded(draft_next[token])
            for grandchild, second in zip(tree.children(child), draw(draft_next[token], k_config[1],
                                                                     without_replacement, g)):
                tokens[grandchild] = second
                target_probs[1 + grandchild] = torch.full((VOCAB,), 1 / VOCAB)
    result = accept_sampling(tree, tokens, draft_probs, target_probs, g, without_replacement)
    out = [tokens[node] for node in result.path] + [result.next_token]
    if len(out) == 1:
        out.append(sample_token(padded(target_next[out[0]]), g))
    return out[0], out[1]


def joint(root: torch.Tensor, following: torch.Tensor) -> torch.Tensor:
    return root[:, None] * following


def chi_square(counts: Counter, probs: torch.Tensor, total: int) -> tuple[float, int]:
    """Statistic and degrees of freedom over the cells of `probs`; cells under 5 expected pooled."""
    statistic, cells, pooled_observed, pooled_expected = 0.0, 0, 0, 0.0
    for cell in itertools.product(range(SMALL), repeat=2):
        expected, observed = float(probs[cell]) * total, counts.get(cell, 0)
        if expected < 5:
            pooled_observed, pooled_expected = pooled_observed + observed, pooled_expected + expected
            continue
        statistic, cells = statistic + (observed - expected) ** 2 / expected, cells + 1
    if pooled_observed or pooled_expected:
        statistic += (pooled_observed - pooled_expected) ** 2 / max(pooled_expected, 1e-9)
        cells += 1
    assert sum(counts.values()) == total and all(0 <= a < SMALL and 0 <= b < SMALL for a, b in counts)
    return statistic, cells - 1


def critical_value(dof: int, z: float = 3.72) -> float:
    """Chi-square quantile at p = 0.0001 (Wilson-Hilferty)."""
    return dof * (1 - 2 / (9 * dof) + z * math.sqrt(2 / (9 * dof))) ** 3


@pytest.mark.parametrize("k_config,without_replacement", [
    ((1,), False), ((3,), False), ((3,), True), ((1, 1), False), ((2, 2), False), ((2, 3), True),
])
def test_sampling_rules_give_the_targets_joint_distribution(k_config, without_replacement):
    target, draft = distributions(1), distributions(2)
    counts = Counter(two_tokens(k_config, without_replacement, draft, target, seed) for seed in range(TRIALS))
    statistic, dof = chi_square(counts, joint(*target), TRIALS)
    assert statistic < critical_value(dof), f"chi2={statistic:.1f} dof={dof}: not the target's distribution"
    draft_statistic, draft_dof = chi_square(counts, joint(*draft), TRIALS)
    assert draft_statistic > critical_value(draft_dof), "the test cannot tell the draft from the target"


def test_top_p_keeps_the_nucleus_at_an_exact_boundary():
    logits = torch.log(torch.tensor([0.5, 0.25, 0.25, 1e-30]))
    assert target_probs_from_logits(logits, 1.0, 0.5).tolist() == [1.0, 0.0, 0.0, 0.0]
    assert target_probs_from_logits(logits, 1.0, 0.51).tolist() == pytest.approx([2 / 3, 1 / 3, 0, 0])


def test_top_p_one_keeps_even_tokens_whose_mass_rounds_away():
    logits = torch.tensor([0.0, -20.0, -20.0, -20.0])  # the first token's probability rounds to 1.0
    probs = target_probs_from_logits(logits, 1.0, 1.0)
    assert torch.equal(probs, torch.softmax(logits, -1)) and bool((probs[1:] > 0).all())


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_temperature_divides_the_logits(temperature):
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0])
    expected = torch.softmax(logits / temperature, -1)
    assert target_probs_from_logits(logits, temperature, 1.0).tolist() == pytest.approx(expected.tolist())
    nucleus = target_probs_from_logits(logits, temperature, 0.9)
    keep = expected.cumsum(-1) - expected < 0.9
    assert nucleus.tolist() == pytest.approx((expected * keep / (expected * keep).sum()).tolist())
    assert target_probs_from_logits(logits.half(), temperature, 1.0).dtype == torch.float32


def test_target_probs_are_computed_row_by_row():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0], [0.0, 0.0, 3.0, 1.0]])
    for top_p in (1.0, 0.9, 0.5):
        rows = target_probs_from_logits(logits, 0.7, top_p)
        assert rows.shape == logits.shape
        for row, row_logits in zip(rows, logits):
            assert row.tolist() == pytest.approx(target_probs_from_logits(row_logits, 0.7, top_p).tolist())
    square = torch.tensor([[2.0, 0.0], [0.0, 1.0]])  # as many rows as tokens: broadcasting would not fail
    for row, row_logits in zip(target_probs_from_logits(square, 1.0, 0.99), square):
        assert row.tolist() == pytest.approx(target_probs_from_logits(row_logits, 1.0, 0.99).tolist())


def test_randomness_comes_only_from_the_requests_generator():
    """Same generator seed, same outcome, whatever the global RNG; and the draws advance it."""
    spread = torch.full((VOCAB,), 1 / VOCAB)
    tree = build_tree((1,))
    draft_probs = torch.stack([one_hot(0), torch.zeros(VOCAB)])
    rejected = torch.stack([torch.cat([torch.zeros(1), torch.full((VOCAB - 1,), 1 / (VOCAB - 1))]), spread])
    accepted = torch.stack([one_hot(0), spread])  # then the bonus token comes from `spread`
    half = torch.tensor([0.5, 0.5, 0, 0, 0, 0, 0, 0])
    quarter = torch.tensor([0.25, 0.75, 0, 0, 0, 0, 0, 0])  # token 0 accepted with probability 1/2
    coin = torch.stack([quarter, spread])

    def outcomes(global_seed: int) -> list:
        torch.manual_seed(global_seed)
        out = []
        for seed in range(20):
            g = generator(seed)
            out.append((sample_token(spread, g), sampling_step([0], half, quarter, g)[0],
                        accept_sampling(tree, [0], draft_probs, rejected, g),  # recovered token
                        accept_sampling(tree, [0], draft_probs, accepted, g),  # bonus token
                        accept_sampling(tree, [0], torch.stack([half, torch.zeros(VOCAB)]), coin, g).path,
                        float(torch.rand((), generator=g))))
        return out

    first = outcomes(0)
    assert first == outcomes(1)
    for position in range(5):  # every draw depends on the seed
        assert len({repr(o[position]) for o in first}) > 1, position
    fresh = [float(torch.rand((), generator=generator(seed))) for seed in range(20)]
    assert [o[-1] for o in first] != fresh  # the rules drew from the request's generator


def test_accept_sampling_is_with_replacement_unless_asked(uniform_draws):
    # The case of test_without_replacement_removes_rejected_candidate, through the tree rule.
    tree = build_tree((2,))
    draft = torch.tensor([0.5, 0.25, 0.25, 0, 0, 0, 0, 0])
    target = torch.tensor([0.1, 0.5, 0.4, 0, 0, 0, 0, 0])
    draft_probs = torch.stack([draft, torch.zeros(VOCAB), torch.zeros(VOCAB)])
    target_probs = torch.stack([target, one_hot(6), one_hot(7)])
    uniform_draws(0.9)
    assert accept_sampling(tree, [0, 2], draft_probs, target_probs, generator()) == Acceptance([1], 7)
    assert accept_sampling(tree, [0, 2], draft_probs, target_probs, generator(), True) == Acceptance([], 1)


def test_greedy_tokens_are_argmax_ties_and_nan_included():
    logits = torch.randn(4, 6, 300)
    logits[0, 0, [7, 250]] = 50.0  # a tie: the first index
    logits[1, 2, :] = 1.0  # all equal: index 0
    logits[2, 3, [9, 40]] = float("nan")  # NaN counts as the largest, the first one
    assert torch.equal(greedy_tokens(logits), logits.argmax(dim=-1))
    assert greedy_tokens(logits)[0, 0] == 7 and greedy_tokens(logits)[2, 3] == 9
    tree = build_tree((1, 1))
    rows = torch.randn(3, 300)
    assert accept_greedy(tree, [4, 5], rows) == accept_greedy(tree, [4, 5], rows.argmax(dim=-1).tolist())
