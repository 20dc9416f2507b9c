"""`DraftDepth`: how deep drafts are worth verifying, learnt from what verification kept;
and the engine cutting drafts with it without changing a token."""

from __future__ import annotations

import pytest

from langchain_seed.engine import SamplingParams, SeedEngine, SpeculativeConfig
from langchain_seed.engine.drafters.depth import PRIOR, DraftDepth


def test_a_new_estimate_drafts_the_whole_tree_and_zero_turns_it_off():
    depth = DraftDepth()
    assert depth.allowed(5, 0.3) == 5 and PRIOR ** 5 >= 0.3
    assert depth.allowed(8, 0.3) == 5
    assert depth.allowed(8, 0.0) == 8


def test_levels_that_are_rejected_stop_being_drafted_and_are_tried_again_later():
    depth = DraftDepth()
    for _ in range(100):
        depth.record(offered=5, accepted=1)  # the first level kept, the second never
    rates = depth.rates()
    assert rates[0] > 0.95 and rates[1] < 0.05
    assert depth.allowed(5, 0.3) == 1
    for _ in range(300):  # only the first level is drafted now: the others drift back
        depth.record(offered=1, accepted=1)
    assert depth.allowed(5, 0.3) > 1


def test_a_level_is_only_learnt_from_drafts_that_reached_it():
    depth = DraftDepth()
    for _ in range(50):
        depth.record(offered=4, accepted=0)  # the first level rejected: the rest never judged
    rates = depth.rates()
    assert rates[0] < 0.1 and rates[1:4] == [PRIOR] * 3
    assert depth.allowed(4, 0.3) == 1  # at least one level, to keep measuring it


@pytest.mark.parametrize("mode", ["speculative", "scheduled"])
def test_the_engine_cuts_drafts_verification_keeps_rejecting_without_changing_a_token(tiny_target, mode):
    """A draft that is never right (another random model): with `draft_survival` the engine
    soon drafts one level a round instead of four; the output is the target's either way."""
    from engine_fixtures import build_model, hf_greedy

    wrong_draft = build_model("llama", seed=99)
    target = build_model("llama", seed=98)
    prompts = [[(3 * i + k) % 50 + 1 for i in range(12)] for k in range(3)]
    reference = [hf_greedy(target, prompt, 40) for prompt in prompts]
    drafted = {}
    for survival in (0.0, 0.3):
        config = SpeculativeConfig(k_config=(1, 1, 1, 1), prompt_lookup=0, draft_survival=survival)
        engine = SeedEngine(target, wrong_draft, config=config)
        try:
            results = engine.generate(prompts, SamplingParams(max_tokens=40), mode=mode)
        finally:
            engine.close()
        assert [r.token_ids for r in results] == reference
        drafted[survival] = (results.stats.drafted, sum(r.stats.verify_steps for r in results))
    assert drafted[0.0][0] >= 3.5 * drafted[0.0][1]  # four levels nearly every round
    assert drafted[0.3][0] < 0.6 * drafted[0.0][0]


def test_draft_survival_is_checked():
    with pytest.raises(ValueError, match="draft_survival must be a number in \\[0, 1\\)"):
        SpeculativeConfig(draft_survival=1.0)


def test_a_seeded_sampled_request_drafts_as_if_nothing_ran_before():
    """What greedy requests taught the engine does not cut a sampled request's draft: its
    tokens depend on where its draft is cut, and a seed must give the same tokens whatever
    ran before."""
    from engine_fixtures import build_model

    wrong_draft, target = build_model("llama", seed=99), build_model("llama", seed=98)
    prompt = [5, 9, 14, 2, 7]
    sampled = SamplingParams(temperature=0.9, max_tokens=30, seed=7)
    config = SpeculativeConfig(k_config=(1, 1, 1, 1), prompt_lookup=0, draft_survival=0.3)
    fresh, taught = SeedEngine(target, wrong_draft, config=config), SeedEngine(target, wrong_draft, config=config)
    try:
        taught.generate([prompt] * 4, SamplingParams(max_tokens=40), mode="scheduled")  # greedy: learns to cut
        assert taught._draft_depth.allowed(4, 0.3) == 1
        expected = fresh.generate([prompt], sampled, mode="scheduled")[0]
        got = taught.generate([prompt], sampled, mode="scheduled")[0]
    finally:
        fresh.close()
        taught.close()
    assert got.token_ids == expected.token_ids and got.stats.drafted == expected.stats.drafted
