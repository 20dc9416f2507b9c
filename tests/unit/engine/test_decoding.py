"""Greedy identity with the target's own `generate`, and KV-cache consistency."""

import pytest
import torch

from langchain_seed.engine import SamplingParams, SeedEngine, SpeculativeConfig
from langchain_seed.engine.drafters import ModelDrafter
from langchain_seed.engine.forward import causal_row, forward_logits
from langchain_seed.engine.request import Request
from langchain_seed.engine.scheduler import Scheduler

from engine_fixtures import PROMPTS, build_model, hf_greedy, noisy_copy

K_CONFIGS = [(1, 1, 1, 1), (2, 2, 1), (3,), (1, 3, 1)]


@pytest.fixture(scope="module", params=["llama", "qwen2", "gpt2"])
def pair(request):
    target = build_model(request.param)
    return target, noisy_copy(target, 0.02)


@pytest.fixture(scope="module")
def reference(pair):
    target, _ = pair
    return [hf_greedy(target, prompt, 24) for prompt in PROMPTS]


@pytest.mark.parametrize("k_config", K_CONFIGS)
@pytest.mark.parametrize("mode,verify", [("speculative", "rounds"), ("scheduled", "rounds"), ("scheduled", "batched")])
def test_greedy_output_is_the_targets(pair, reference, k_config, mode, verify):
    target, draft = pair
    engine = SeedEngine(target, draft, config=SpeculativeConfig(k_config=k_config, verify=verify, compact_slack=4))
    results = engine.generate(PROMPTS, SamplingParams(max_tokens=24), mode=mode)
    assert [r.token_ids for r in results] == reference
    assert all(r.finish_reason == "length" for r in results)
    assert 0 < results.stats.acceptance_rate < 1, "the draft must be partly right for the test to mean anything"


@pytest.mark.parametrize("k_config", [(1,) * 6, (2, 2, 1)])
@pytest.mark.parametrize("mode,verify", [("speculative", "rounds"), ("scheduled", "rounds"), ("scheduled", "batched")])
def test_adaptive_draft_length_keeps_greedy_output(pair, reference, k_config, mode, verify):
    target, draft = pair
    config = SpeculativeConfig(k_config=k_config, verify=verify, compact_slack=4, draft_confidence=0.2)
    results = SeedEngine(target, draft, config=config).generate(PROMPTS, SamplingParams(max_tokens=24), mode=mode)
    assert [r.token_ids for r in results] == reference
    steps = sum(r.stats.verify_steps for r in results)
    # Every draft has at least one level; some were cut short and some were not.
    assert steps < results.stats.drafted < steps * len(k_config)


def test_unsure_draft_stops_after_one_level_and_saves_forwards(llama_pair):
    target, draft = llama_pair
    forwards = {}
    for confidence in (0.0, 0.99999):
        config = SpeculativeConfig(k_config=(1,) * 5, prompt_lookup=0, draft_confidence=confidence)
        [result] = SeedEngine(target, draft, config=config).generate(
            [PROMPTS[0]], SamplingParams(max_tokens=24), mode="speculative")
        forwards[confidence] = result.stats.draft_calls
        if confidence:
            assert result.stats.drafted == result.stats.verify_steps  # one level a round
    assert forwards[0.99999] < forwards[0.0]


def test_autoregressive_mode_is_the_targets(pair, reference):
    target, draft = pair
    results = SeedEngine(target, draft).generate(PROMPTS, SamplingParams(max_tokens=24), mode="autoregressive")
    assert [r.token_ids for r in results] == reference
    assert results.stats.draft_forwards == 0


def test_eos_ends_like_generate(pair, reference):
    target, draft = pair
    eos = reference[0][5]  # a token the target emits early for prompt 0
    expected = reference[0][: reference[0].index(eos) + 1]
    for mode in ("autoregressive", "speculative", "scheduled"):
        engine = SeedEngine(target, draft, config=SpeculativeConfig(k_config=(2, 2, 1)))
        [result] = engine.generate([PROMPTS[0]], SamplingParams(max_tokens=24, stop_token_ids=(eos,)), mode=mode)
        assert result.token_ids == expected and result.finish_reason == "stop", mode
        hf = target.generate(torch.tensor([PROMPTS[0]]), max_new_tokens=24, do_sample=False, eos_token_id=eos)
        assert hf[0, len(PROMPTS[0]):].tolist() == expected


@pytest.mark.parametrize("max_tokens", [1, 2, 3, 7])
def test_max_tokens_ending_mid_draft(pair, reference, max_tokens):
    target, draft = pair
    engine = SeedEngine(target, draft, config=SpeculativeConfig(k_config=(1, 1, 1, 1)))
    results = engine.generate(PROMPTS, SamplingParams(max_tokens=max_tokens), mode="scheduled")
    assert [r.token_ids for r in results] == [ref[:max_tokens] for ref in reference]


def test_self_draft_accepts_everything():
    target = build_model("llama")
    engine = SeedEngine(target, target, config=SpeculativeConfig(k_config=(1, 1, 1, 1)))
    [result] = engine.generate([PROMPTS[0]], SamplingParams(max_tokens=20), mode="speculative")
    assert result.stats.acceptance_rate == 1.0
    assert result.stats.verify_steps == 4  # 5 tokens per step: 4 drafted + 1 bonus


def test_draft_stops_where_the_request_would_end():
    target = build_model("llama")
    engine = SeedEngine(target, target, config=SpeculativeConfig(k_config=(1, 1, 1, 1)))
    [result] = engine.generate([PROMPTS[0]], SamplingParams(max_tokens=3), mode="speculative")
    assert len(result.token_ids) == 3 and result.stats.verify_steps == 1
    assert result.stats.drafted == 2  # 2 drafted + 1 bonus reach max_tokens; a 3rd or 4th would be waste


def test_cache_matches_fresh_forward_after_many_rejections(llama_pair):
    target, draft = llama_pair
    config = SpeculativeConfig(k_config=(2, 2, 1), verify="batched", compact_slack=3)
    scheduler = Scheduler(target, lambda: ModelDrafter(draft), frozenset())
    requests = [Request.create(p, SamplingParams(max_tokens=200), config) for p in PROMPTS[:3]]
    scheduler.submit(requests, start_thread=False)
    for _ in range(12):
        scheduler.run_round()
    lane = scheduler.lanes[config]
    rejected = sum(s.stats.draft_nodes - s.stats.accepted for s in lane.members)
    assert rejected > 20
    for model, kv_rows in ((target, [(b.kv, b.members) for b in lane.batches]), (draft, [(lane.drafter.kv, lane.drafter.rows)])):
        for kv, members in kv_rows:
            assert kv.num_slots > 0
            rows = []
            for sequence in members:
                pending = sequence.target_pending if model is target else sequence.draft_pending
                tokens, first = sequence.pending_tokens(pending)
                rows.append(causal_row(tokens, first))
            with torch.inference_mode():
                cached = forward_logits(model, kv, rows)
                for index, (sequence, row) in enumerate(zip(members, rows)):
                    fresh = model(torch.tensor([sequence.tokens])).logits[0, -1]
                    got = cached[index, len(row.token_ids) - 1]
                    # fixed on purpose: 70x the float32 difference seen (~1.5e-6); numerics.llama_logits'
                    # derived bound (~0.08 on these logits) would be too loose to catch a stale slot
                    torch.testing.assert_close(got, fresh, atol=1e-4, rtol=1e-4)


def test_model_without_4d_mask_decodes_chains_and_refuses_trees():
    from transformers import LlamaForCausalLM

    class RefusesMasks(LlamaForCausalLM):
        def forward(self, *args, attention_mask=None, **kwargs):
            if attention_mask is not None and attention_mask.dim() == 4:
                raise ValueError("4-D masks are not supported by this model")
            return super().forward(*args, attention_mask=attention_mask, **kwargs)

    source = build_model("llama")
    target = RefusesMasks(source.config).eval()
    target.load_state_dict(source.state_dict())
    target.generation_config.eos_token_id = None
    draft = noisy_copy(target, 0.02)
    engine = SeedEngine(target, draft, config=SpeculativeConfig(k_config=(1, 1, 1)))
    [result] = engine.generate([PROMPTS[2]], SamplingParams(max_tokens=20), mode="speculative")
    assert result.token_ids == hf_greedy(source, PROMPTS[2], 20)
    with pytest.raises(ValueError, match="RefusesMasks does not accept a 4-D attention mask"):
        engine.generate([PROMPTS[2]], SamplingParams(max_tokens=5), mode="speculative",
                        config=SpeculativeConfig(k_config=(2, 1)))


def test_ngram_index_finds_the_latest_continuation():
    from langchain_seed.engine.drafters import NGramIndex

    index = NGramIndex()
    index.update([5, 6, 7])
    index.update([5, 6, 7, 8, 5, 6, 9, 5, 6])
    assert index.lookup([1, 5, 6], min_n=2) == 9  # the latest occurrence wins
    assert index.lookup([6, 7], min_n=2) == 8
    assert index.lookup([3, 4], min_n=2) is None
    assert index.lookup([4, 6], min_n=2) is None and index.lookup([4, 6], min_n=1) == 9


@pytest.mark.parametrize("below", [0.7, 1.0])
@pytest.mark.parametrize("k_config", [(1, 1, 1, 1), (2, 2, 1)])
def test_prompt_lookup_keeps_output_and_raises_acceptance_on_repetitive_text(k_config, below):
    target = build_model("llama")
    draft = noisy_copy(target, 0.05)
    prompt = [3, 9, 4, 3, 9, 4, 3, 9, 4, 3, 9]
    expected = hf_greedy(target, prompt, 60)
    rates = {}
    for lookup in (0, 2):
        config = SpeculativeConfig(k_config=k_config, prompt_lookup=lookup, prompt_lookup_below=below)
        engine = SeedEngine(target, draft, config=config)
        [result] = engine.generate([prompt], SamplingParams(max_tokens=60), mode="speculative")
        assert result.token_ids == expected
        rates[lookup] = result.stats.acceptance_rate
    assert rates[2] >= rates[0]


def test_prompt_lookup_overrides_only_an_unsure_draft():
    """Lookup's token goes first only where the draft's top probability is under
    `prompt_lookup_below` (1.0: always); a lookup hit counts as sure for the draft length."""
    from types import SimpleNamespace

    drafter = ModelDrafter.__new__(ModelDrafter)  # no model needed: lookup is stubbed
    drafter._with_lookup = lambda sequence, tree, draft, parent, candidates: [99] + candidates[:-1]
    sure = torch.tensor([10.0, 0.0, 0.0])  # top probability 0.9999
    unsure = torch.tensor([0.5, 0.0, 0.0])  # top probability 0.45

    def candidates(logits, below, confidence=0.4):
        config = SpeculativeConfig(prompt_lookup_below=below, draft_confidence=confidence)
        sequence = SimpleNamespace(request=SimpleNamespace(config=config))
        return drafter._greedy_candidates(sequence, None, None, -1, [0], logits)

    tokens, confidence = candidates(sure, 0.7)
    assert tokens == [0] and confidence == pytest.approx(float(torch.softmax(sure, 0).max()))
    assert candidates(unsure, 0.7) == ([99], 1.0)
    assert candidates(sure, 1.0) == ([99], 1.0)
    assert candidates(sure, 0.7, confidence=0.0) == ([0], 1.0)  # no adaptive length: confidence unused
    with pytest.raises(ValueError, match="prompt_lookup_below must be a number in \\(0, 1\\]"):
        SpeculativeConfig(prompt_lookup_below=0)


@pytest.mark.parametrize("k_config", [(1, 1), (3, 2)])
def test_a_greedy_levels_picks_for_the_whole_batch_are_each_parents_own(k_config):
    """`_plain_greedy_picks` takes a level's candidates and top probabilities for every
    member in one call each: the same as `_choose` and `_top_probability` per parent."""
    from types import SimpleNamespace

    from langchain_seed.engine.drafters.model import _top_probability
    from langchain_seed.engine.tree import build_tree

    drafter = ModelDrafter.__new__(ModelDrafter)
    drafter.head_ids = torch.tensor([4, 9, 2, 7, 30, 11])
    tree = build_tree(k_config)
    sequence = SimpleNamespace(params=SamplingParams(), masks=None)
    logits = torch.randn(3, 2, 6, generator=torch.Generator().manual_seed(3))  # [members, parents, head]
    picks, tops = drafter._plain_greedy_picks([sequence] * 3, tree, [-1, 0], logits, None)
    for member in range(3):
        for parent in range(2):
            count = len(tree.children(-1 if parent == 0 else 0))
            expected, _ = drafter._choose(logits[member, parent], count, sequence)
            assert picks[member][parent][:count] == expected
            assert tops[member][parent] == _top_probability(logits[member, parent])
    sampled = SimpleNamespace(params=SamplingParams(temperature=1.0), masks=None)
    assert drafter._plain_greedy_picks([sequence, sampled], tree, [-1], logits[:2, :1], None) is None
    assert drafter._plain_greedy_picks([sequence, sampled], tree, [-1], logits[:2, :1], [True, False]) is not None


@pytest.mark.parametrize("verify", ["rounds", "batched"])
def test_verification_keeps_the_validity_mask_as_long_as_the_cache(llama_pair, monkeypatch, verify):
    """After each verification every cached slot has exactly one validity entry, however long the
    rows' pending text (a whole prompt in "rounds") and however many the vocabulary's tokens; and
    nothing keeps the target's features, which only a feature draft reads."""
    from langchain_seed.engine import scheduler as scheduler_module

    target, draft = llama_pair
    checked = []
    verify_batch = scheduler_module.verify_batch

    def checking(target_model, kv, *args, **kwargs):
        result = verify_batch(target_model, kv, *args, **kwargs)
        cached = kv.cache.get_seq_length() if kv.cache is not None else 0
        assert kv.num_slots == cached, (kv.num_slots, cached)
        assert all(not s.target_features for s in args[0])  # a token draft keeps no target features
        checked.append(kv.num_slots)
        return result

    monkeypatch.setattr(scheduler_module, "verify_batch", checking)
    config = SpeculativeConfig(k_config=(2, 1), verify=verify)
    scheduler = Scheduler(target, lambda: ModelDrafter(draft), frozenset())
    long_prompt = [(7 * i) % 60 + 1 for i in range(90)]  # longer than the vocabulary of 64
    requests = [Request.create(p, SamplingParams(max_tokens=12), config) for p in [long_prompt] + PROMPTS[:2]]
    scheduler.submit(requests, start_thread=False)
    scheduler.run_until_idle()
    assert checked and max(checked) > 64
    assert requests[0].handle.result().token_ids == hf_greedy(target, long_prompt, 12)


@pytest.mark.parametrize("mode", ["autoregressive", "speculative", "scheduled"])
def test_statistics_and_stream_match_what_was_committed(pair, reference, mode):
    """Per request: one target call per verification (a lone prompt is not prefilled: its text goes
    into the first verification); new tokens and the streamed chunks are the committed tokens, also
    when a stop token ends the request mid-round."""
    target, draft = pair
    engine = SeedEngine(target, draft, config=SpeculativeConfig(k_config=(2, 2, 1)))
    stop = reference[0][9]
    expected = reference[0][: reference[0].index(stop) + 1]
    for params, tokens, reason in ((SamplingParams(max_tokens=24), reference[0], "length"),
                                   (SamplingParams(max_tokens=24, stop_token_ids=(stop,)), expected, "stop")):
        [result] = engine.generate([PROMPTS[0]], params, mode=mode)
        stats = result.stats
        assert result.token_ids == tokens and result.finish_reason == reason
        assert stats.new_tokens == len(tokens)
        assert stats.target_calls == stats.verify_steps
        assert stats.accepted + stats.verify_steps >= len(tokens)  # each round: accepted + 1 token
        if mode == "autoregressive":
            assert stats.verify_steps == len(tokens) and stats.drafted == stats.accepted == 0
    handle = engine.submit(PROMPTS[0], SamplingParams(max_tokens=24))
    chunks = list(handle)
    assert [t for chunk in chunks for t in chunk] == handle.result().token_ids == reference[0]
    assert len(chunks) == handle.result().stats.verify_steps  # one chunk a round


@pytest.mark.parametrize("mode", ["speculative", "scheduled"])
def test_stop_callback_ends_or_fails_only_its_request(pair, reference, mode):
    target, draft = pair
    engine = SeedEngine(target, draft, config=SpeculativeConfig(k_config=(2, 1)))

    def enough(new_ids: list[int]) -> bool:  # stop once 5 tokens are out (rounds may commit more)
        return len(new_ids) >= 5

    def broken(new_ids: list[int]) -> bool:
        raise KeyError("callback bug")

    stopped, failed, free = engine.generate(
        [PROMPTS[0], PROMPTS[1], PROMPTS[2]],
        [SamplingParams(max_tokens=24, stop_callback=enough), SamplingParams(max_tokens=24, stop_callback=broken),
         SamplingParams(max_tokens=24)], mode=mode)
    assert stopped.finish_reason == "stop" and 5 <= len(stopped.token_ids) < 24
    assert stopped.token_ids == reference[0][: len(stopped.token_ids)] and stopped.error is None
    assert failed.finish_reason == "error" and isinstance(failed.error, KeyError)
    assert 0 < len(failed.token_ids) < 24  # it failed after the first commit
    assert free.finish_reason == "length" and free.token_ids == reference[2]
