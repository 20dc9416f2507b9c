"""The acceptance rules alone, made deterministic with +/-10 and -inf logits."""

import math

import pytest
import torch

from langchain_seed.engine.tree import build_tree
from langchain_seed.engine.verify import (
    accept_greedy,
    accept_sampling,
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


def test_without_replacement_removes_rejected_candidate():
    draft = torch.tensor([0.5, 0.25, 0.25, 0, 0, 0, 0, 0])
    target = one_hot(2)
    index, residual = sampling_step([0, 1], draft, target, generator(), without_replacement=True)
    assert index is None
    assert residual[2] == pytest.approx(1.0)


def test_top_p_keeps_the_nucleus():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    probs = target_probs_from_logits(logits, temperature=1.0, top_p=0.8)
    assert probs.tolist() == pytest.approx([0.5 / 0.8, 0.3 / 0.8, 0.0, 0.0])
    assert target_probs_from_logits(logits, 1.0, 0.01).tolist() == pytest.approx([1.0, 0, 0, 0])
