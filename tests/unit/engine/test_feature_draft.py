"""The feature-conditioned (EAGLE-style) draft: lossless in every mode, fed the target's own
features at the right positions, sampled output the target's, saved and loaded intact."""

from collections import Counter

import pytest
import torch
from test_sampling import PROMPT, chi_square, critical_value, exact_joint, prefix_logits, small_model

from langchain_seed.engine import FeatureDraftModel, SamplingParams, SeedEngine, SpeculativeConfig, drafters

from engine_fixtures import PROMPTS, VOCAB, build_model, hf_greedy

MODES = [("speculative", "rounds"), ("scheduled", "rounds"), ("scheduled", "batched")]
SAMPLES = 4000


def feature_draft(target, layers: int = 1, feature_scale: float = 0.0, head=range(VOCAB)) -> FeatureDraftModel:
    """A feature draft made from `target`'s first layers; with `feature_scale` 0 it ignores the
    features and is exactly the target when `layers` is all of the target's layers."""
    draft = FeatureDraftModel.from_target(target, layers, list(head))
    torch.manual_seed(3)
    with torch.no_grad():
        draft.proj.weight.normal_(0.0, feature_scale) if feature_scale else None
    return draft.eval()


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def one_layer_target(request):
    return build_model(request.param, layers=1)


@pytest.fixture(scope="module")
def reference(one_layer_target):
    return [hf_greedy(one_layer_target, prompt, 24) for prompt in PROMPTS]


@pytest.mark.parametrize("k_config", [(1, 1, 1, 1), (2, 2, 1)])
@pytest.mark.parametrize("mode,verify", MODES)
def test_a_draft_equal_to_the_target_is_always_accepted(one_layer_target, reference, k_config, mode, verify):
    """Token t_i sits at position i and sees t_0 .. t_i, as in the target: alignment is exact."""
    engine = SeedEngine(one_layer_target, feature_draft(one_layer_target),
                        config=SpeculativeConfig(k_config=k_config, verify=verify, compact_slack=4, prompt_lookup=0))
    results = engine.generate(PROMPTS, SamplingParams(max_tokens=24), mode=mode)
    assert [r.token_ids for r in results] == reference
    assert results.stats.acceptance_rate > 0.97


@pytest.mark.parametrize("k_config,draft_confidence", [((1, 1, 1, 1), 0.0), ((2, 2, 1), 0.0), ((1,) * 6, 0.3)])
@pytest.mark.parametrize("mode,verify", MODES)
def test_greedy_output_is_the_targets(one_layer_target, reference, k_config, draft_confidence, mode, verify):
    draft = feature_draft(one_layer_target, feature_scale=0.003)
    config = SpeculativeConfig(k_config=k_config, verify=verify, compact_slack=4, draft_confidence=draft_confidence)
    engine = SeedEngine(one_layer_target, draft, config=config)
    results = engine.generate(PROMPTS, SamplingParams(max_tokens=24), mode=mode)
    assert [r.token_ids for r in results] == reference
    assert 0.1 < results.stats.acceptance_rate < 0.95, "the draft must be partly right for the test to mean anything"


@pytest.mark.parametrize("mode,verify", MODES)
def test_drafter_is_fed_the_targets_features_in_order(mode, verify, monkeypatch):
    """Every round's root distribution equals the draft run afresh on the committed text
    paired with the target's features computed afresh: cache, positions and features agree."""
    target = build_model("llama", layers=2)
    draft = feature_draft(target, feature_scale=0.5, head=range(0, VOCAB, 2))
    errors: list[float] = []
    feed = drafters.FeatureDrafter._feed_pending

    def checked_feed(self, sequences):
        roots = feed(self, sequences)
        for sequence, root in zip(sequences, roots):
            tokens = torch.tensor(sequence.tokens)
            with torch.inference_mode():
                features = target.get_decoder()(input_ids=tokens[None]).last_hidden_state[0, :-1]
                shifted = torch.cat([torch.zeros(1, features.shape[-1]), features])  # f_{i-1} at position i
                fresh = draft(tokens[None], shifted[None])[0, -1]
            errors.append(float((draft.head_logits(fresh) - root).abs().max()))
        return roots

    monkeypatch.setattr(drafters.FeatureDrafter, "_feed_pending", checked_feed)
    engine = SeedEngine(target, draft, config=SpeculativeConfig(k_config=(2, 1), verify=verify, compact_slack=4))
    results = engine.generate(PROMPTS, SamplingParams(max_tokens=16), mode=mode)
    assert all(r.finish_reason == "length" for r in results)
    assert len(errors) > 2 * len(PROMPTS)
    assert max(errors) < 1e-3


def test_target_features_are_only_kept_for_feature_drafts(llama_pair):
    target, plain_draft = llama_pair
    engine = SeedEngine(target, plain_draft, config=SpeculativeConfig(k_config=(1, 1)))
    engine.generate(PROMPTS[:2], SamplingParams(max_tokens=6), mode="scheduled")
    lane = next(iter(engine.scheduler.lanes.values()))
    assert not lane.keeps_features


@pytest.mark.parametrize("k_config,acceptance", [((1, 1, 1), "auto"), ((2, 2), "mcsd")])
def test_sampled_tokens_follow_target_distribution(k_config, acceptance):
    target = small_model(0)
    draft = feature_draft(target, feature_scale=0.3, head=range(8))
    with torch.no_grad():
        for parameter in draft.decoder.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.3)
    engine = SeedEngine(target, draft, config=SpeculativeConfig(k_config=k_config, acceptance=acceptance))
    params = [SamplingParams(temperature=1.0, max_tokens=2, seed=seed) for seed in range(SAMPLES)]
    results = engine.generate([PROMPT] * SAMPLES, params, mode="scheduled")
    counts = Counter(tuple(r.token_ids[:2]) for r in results)
    statistic, dof = chi_square(counts, exact_joint(prefix_logits(target, 2), 1.0, 1.0, tokens=2), SAMPLES)
    assert statistic < critical_value(dof), f"chi2={statistic:.1f} dof={dof}: not the target's distribution"
    assert 0 < results.stats.acceptance_rate < 1


def test_save_and_load_round_trip(tmp_path):
    target = build_model("llama", layers=2)
    draft = feature_draft(target, feature_scale=1.0, head=[0, 3, 5, 9])
    draft.save(tmp_path / "d", dtype=torch.float32)
    loaded = FeatureDraftModel.load(tmp_path / "d", target)
    ids, features = torch.tensor([[1, 2, 3]]), torch.randn(1, 3, 32)
    with torch.inference_mode():
        assert torch.equal(draft(ids, features), loaded(ids, features))
    assert loaded.head_token_ids == [0, 3, 5, 9]


def test_loading_for_the_wrong_target_is_refused(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    FeatureDraftModel.from_target(build_model("llama"), 1, [1, 2]).save(tmp_path / "d")
    wider = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=48, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2))
    with pytest.raises(ValueError, match="hidden size 32"):
        FeatureDraftModel.load(tmp_path / "d", wider)
    with pytest.raises(FileNotFoundError, match="not a feature draft"):
        FeatureDraftModel.load(tmp_path, wider)
