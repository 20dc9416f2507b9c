"""The scheduled engine: many sequences at once, same output as each alone."""

import asyncio
import sys
import threading

import pytest

from langchain_seed.engine import SamplingParams, SeedEngine, SpeculativeConfig
from langchain_seed.engine.drafters import ModelDrafter
from langchain_seed.engine.request import Request
from langchain_seed.engine.scheduler import Scheduler

from engine_fixtures import PROMPTS, hf_greedy

MAX = 20


@pytest.fixture(scope="module")
def reference(llama_pair):
    target, _ = llama_pair
    return {tuple(p): hf_greedy(target, p, MAX) for p in PROMPTS + [[5, 6, 7, 8, 9, 10]]}


def manual_scheduler(pair, config):
    target, draft = pair
    return Scheduler(target, lambda: ModelDrafter(draft), frozenset())


def make_requests(prompts, config, max_tokens=MAX):
    return [Request.create(p, SamplingParams(max_tokens=max_tokens), config) for p in prompts]


@pytest.mark.parametrize("verify", ["rounds", "batched"])
def test_requests_admitted_mid_run(llama_pair, reference, verify):
    config = SpeculativeConfig(k_config=(2, 1), verify=verify)
    scheduler = manual_scheduler(llama_pair, config)
    first = make_requests(PROMPTS[:2], config)
    scheduler.submit(first, start_thread=False)
    for _ in range(3):
        scheduler.run_round()
    late = make_requests(PROMPTS[2:] + [[5, 6, 7, 8, 9, 10]], config)
    scheduler.submit(late, start_thread=False)
    scheduler.run_until_idle()
    for request in first + late:
        assert request.handle.result().token_ids == reference[tuple(request.prompt_ids)]


@pytest.mark.parametrize("verify", ["rounds", "batched"])
def test_every_active_sequence_is_verified_once_per_round(llama_pair, verify):
    config = SpeculativeConfig(k_config=(1, 1, 1), verify=verify)
    scheduler = manual_scheduler(llama_pair, config)
    scheduler.submit(make_requests(PROMPTS, config, max_tokens=40), start_thread=False)
    scheduler.run_round()
    lane = scheduler.lanes[config]
    rounds = 0
    while lane.members:
        before = {id(s): s.stats.verify_steps for s in lane.members}
        forwards_before = lane.target_forwards
        # SeeD's rounds: one target forward per sequence; batched: all of them in one.
        expected_forwards = len(lane.members) if verify == "rounds" else 1
        assert len(lane.batches) == expected_forwards
        scheduler.run_round()
        rounds += 1
        for sequence in lane.members:
            assert sequence.stats.verify_steps == before[id(sequence)] + 1
        assert lane.target_forwards - forwards_before == expected_forwards
    assert scheduler.stats.requests == len(PROMPTS)
    assert rounds > 1


def test_cancelled_requests_free_their_rows_and_leave_others_intact(llama_pair, reference):
    config = SpeculativeConfig(k_config=(2, 2, 1), verify="batched")
    scheduler = manual_scheduler(llama_pair, config)
    requests = make_requests(PROMPTS, config)
    scheduler.submit(requests, start_thread=False)
    scheduler.run_round()
    scheduler.run_round()
    requests[1].handle.cancel()
    requests[3].handle.cancel()
    scheduler.run_until_idle()
    for index, request in enumerate(requests):
        result = request.handle.result()
        expected = reference[tuple(request.prompt_ids)]
        if index in (1, 3):
            assert result.finish_reason == "cancelled"
            assert 0 < len(result.token_ids) < MAX and expected[: len(result.token_ids)] == result.token_ids
        else:
            assert result.token_ids == expected
    lane = scheduler.lanes[config]
    assert lane.members == [] and lane.batches == [] and lane.drafter.kv.batch_size == 0


def test_token_budget_splits_the_round(llama_pair, reference):
    config = SpeculativeConfig(k_config=(1, 1, 1), verify="batched", max_batch_tokens=8)  # 2 sequences per forward
    scheduler = manual_scheduler(llama_pair, config)
    requests = make_requests(PROMPTS, config)
    scheduler.submit(requests, start_thread=False)
    scheduler.run_round()
    lane = scheduler.lanes[config]
    assert [len(b.members) for b in lane.batches] == [2, 2, 1]
    scheduler.run_until_idle()
    assert [r.handle.result().token_ids for r in requests] == [reference[tuple(p)] for p in PROMPTS]


def test_shared_prompt_is_prefilled_once(llama_pair, reference):
    config = SpeculativeConfig(k_config=(1, 1))
    scheduler = manual_scheduler(llama_pair, config)
    requests = make_requests([PROMPTS[2]] * 4, config)
    scheduler.submit(requests, start_thread=False)
    scheduler.run_round()
    lane = scheduler.lanes[config]
    assert lane.drafter.forwards == 1 + 2  # one prefill, then one forward per draft depth
    assert lane.target_forwards == 1 + 1  # one prefill, then one batched verification
    scheduler.run_until_idle()
    assert all(r.handle.result().token_ids == reference[tuple(PROMPTS[2])] for r in requests)


def test_submit_from_many_threads_while_running(llama_pair, reference):
    target, draft = llama_pair
    engine = SeedEngine(target, draft, config=SpeculativeConfig(k_config=(2, 1)))
    handles, lock = [], threading.Lock()

    def client(prompt):
        handle = engine.submit(prompt, SamplingParams(max_tokens=MAX))
        with lock:
            handles.append((prompt, handle))

    threads = [threading.Thread(target=client, args=(p,)) for p in PROMPTS * 3]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for prompt, handle in handles:
        chunks = list(handle)
        assert sum(chunks, []) == reference[tuple(prompt)]
        assert handle.result(timeout=60).token_ids == reference[tuple(prompt)]
    engine.close()


async def test_async_streams_and_cancel(llama_pair, reference):
    target, draft = llama_pair
    engine = SeedEngine(target, draft, config=SpeculativeConfig(k_config=(1, 1, 1)))
    keep = engine.submit(PROMPTS[0], SamplingParams(max_tokens=MAX))
    stop = engine.submit(PROMPTS[2], SamplingParams(max_tokens=200))

    async def consume(handle, cancel_after=None):
        tokens = []
        async for chunk in handle:
            tokens.extend(chunk)
            if cancel_after is not None and len(tokens) >= cancel_after:
                handle.cancel()
        return tokens

    kept, stopped = await asyncio.gather(consume(keep), consume(stop, cancel_after=3))
    assert kept == reference[tuple(PROMPTS[0])]
    result = await stop
    assert result.finish_reason == "cancelled" and len(stopped) < 200
    engine.close()


def test_failing_stop_callback_fails_only_its_request(llama_pair, reference):
    target, draft = llama_pair
    engine = SeedEngine(target, draft, config=SpeculativeConfig(k_config=(1, 1)))

    def explode(_tokens):
        raise RuntimeError("stop callback broke")

    params = [SamplingParams(max_tokens=MAX)] * 2 + [SamplingParams(max_tokens=MAX, stop_callback=explode)]
    results = engine.generate(PROMPTS[:3], params, mode="scheduled")
    assert results[0].token_ids == reference[tuple(PROMPTS[0])]
    assert results[1].token_ids == reference[tuple(PROMPTS[1])]
    assert results[2].finish_reason == "error" and "stop callback broke" in str(results[2].error)
    with pytest.raises(RuntimeError, match="stop callback broke"):
        engine.submit(PROMPTS[2], params[2]).result(timeout=60)


def test_engine_survives_a_failing_forward(llama_pair, reference):
    target, draft = llama_pair
    engine = SeedEngine(target, draft, config=SpeculativeConfig(k_config=(1, 1)))
    original = target.forward
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("device fell over")
        return original(*args, **kwargs)

    target.forward = flaky
    try:
        results = engine.generate(PROMPTS[:2], SamplingParams(max_tokens=MAX), mode="scheduled")
    finally:
        del target.forward
    assert all(r.finish_reason == "error" for r in results)
    again = engine.generate(PROMPTS[:2], SamplingParams(max_tokens=MAX), mode="scheduled")
    assert [r.token_ids for r in again] == [reference[tuple(p)] for p in PROMPTS[:2]]
    assert engine.scheduler.active == 0


def test_run_stats_report_memory_and_forwards(llama_pair):
    target, draft = llama_pair
    engine = SeedEngine(target, draft)
    results = engine.generate(PROMPTS, SamplingParams(max_tokens=MAX), mode="scheduled")
    stats = results.stats
    assert stats.peak_kv_bytes > 0 and stats.peak_rss_mb > 0
    assert stats.new_tokens == MAX * len(PROMPTS)
    assert 0 < stats.target_forwards < stats.new_tokens
    assert stats.to_dict()["acceptance_rate"] == pytest.approx(stats.acceptance_rate)


@pytest.mark.parametrize("bad,match", [
    ([[]], "empty"),
    ([[1, 2, 999]], "outside the vocabulary"),
    ("text", "list of token-id lists"),
    ([["a"]], "int token ids"),
])
def test_bad_prompts_are_refused(llama_pair, bad, match):
    target, draft = llama_pair
    with pytest.raises(ValueError, match=match):
        SeedEngine(target, draft).generate(bad, SamplingParams(max_tokens=4))


def test_prompt_past_context_window_is_refused(llama_pair):
    target, draft = llama_pair
    with pytest.raises(ValueError, match="context window of 256"):
        SeedEngine(target, draft).generate([[1] * 200], SamplingParams(max_tokens=100))


@pytest.mark.parametrize("kwargs,match", [
    ({"temperature": -1}, "temperature"), ({"top_p": 0}, "top_p"), ({"max_tokens": 0}, "max_tokens"),
    ({"seed": "x"}, "seed"), ({"stop_token_ids": "ab"}, "stop_token_ids"), ({"stop_callback": 3}, "stop_callback"),
])
def test_bad_sampling_params_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplingParams(**kwargs)


def test_bad_mode_and_config_are_refused(llama_pair):
    target, draft = llama_pair
    with pytest.raises(ValueError, match="mode must be one of"):
        SeedEngine(target, draft).generate([[1]], mode="fast")
    with pytest.raises(ValueError, match="verify must be one of"):
        SpeculativeConfig(verify="sometimes")
    with pytest.raises(ValueError, match="needs a draft model"):
        SeedEngine(target).generate([[1]], mode="speculative")


def test_vocabulary_mismatch_is_named():
    from transformers import LlamaConfig, LlamaForCausalLM

    from engine_fixtures import build_model

    target = build_model("llama")
    other = LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1))
    with pytest.raises(ValueError, match="64 token ids, the draft .* has 100"):
        SeedEngine(target, other)


def test_sibling_prompts_share_their_common_prefix(llama_pair):
    from langchain_seed.engine.prefill import cluster_by_prefix

    target, _ = llama_pair
    stem = list(range(1, 13))
    siblings = [stem + [20 + i, 30 + i] for i in range(3)] + [[40, 41, 42]]
    assert cluster_by_prefix([p[:-1] for p in siblings]) == [(12, [0, 1, 2]), (2, [3])]
    config = SpeculativeConfig(k_config=(1, 1))
    scheduler = manual_scheduler(llama_pair, config)
    requests = make_requests(siblings, config)
    scheduler.submit(requests, start_thread=False)
    scheduler.run_round()
    lane = scheduler.lanes[config]
    # The shared stem is prefilled once; the short own texts ride in the batch's first verification.
    assert lane.target_forwards == 1 + 1
    scheduler.run_until_idle()
    assert [r.handle.result().token_ids for r in requests] == [hf_greedy(target, p, MAX) for p in siblings]


def test_batched_lane_prefills_own_text_longer_than_its_pending_limit(llama_pair, monkeypatch):
    from langchain_seed.engine import scheduler as scheduler_module

    monkeypatch.setattr(scheduler_module, "BATCHED_PENDING_MAX", 0)
    target, _ = llama_pair
    stem = list(range(1, 13))
    siblings = [stem + [20 + i, 30 + i] for i in range(3)] + [[40, 41, 42]]
    config = SpeculativeConfig(k_config=(1, 1))
    scheduler = manual_scheduler(llama_pair, config)
    requests = make_requests(siblings, config)
    scheduler.submit(requests, start_thread=False)
    scheduler.run_round()
    assert scheduler.lanes[config].target_forwards == 3 + 1  # stem, batched suffixes, lone prompt; verification
    scheduler.run_until_idle()
    assert [r.handle.result().token_ids for r in requests] == [hf_greedy(target, p, MAX) for p in siblings]


def test_rounds_lane_feeds_unshared_prompt_text_with_the_first_draft(llama_pair):
    target, _ = llama_pair
    stem = list(range(1, 13))
    siblings = [stem + [20 + i, 30 + i] for i in range(3)] + [[40, 41, 42]]
    config = SpeculativeConfig(k_config=(1, 1), verify="rounds")
    scheduler = manual_scheduler(llama_pair, config)
    requests = make_requests(siblings, config)
    scheduler.submit(requests, start_thread=False)
    scheduler.run_round()
    lane = scheduler.lanes[config]
    # Only the shared stem is prefilled; each sequence's own text rides in its first verification.
    assert lane.target_forwards == 1 + 4
    assert [s.stats.target_calls for s in lane.members] == [2, 2, 2, 1]
    scheduler.run_until_idle()
    assert [r.handle.result().token_ids for r in requests] == [hf_greedy(target, p, MAX) for p in siblings]


def test_prefill_shared_prefixes_leaves_unshared_text_pending(llama_pair):
    from langchain_seed.engine.prefill import prefill_prompts

    target, _ = llama_pair
    lists = [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12], [40, 41]]
    done = prefill_prompts(target, lists, pending_up_to=sys.maxsize)
    caches, forwards, unfilled = done.caches, done.forwards, done.unfilled
    assert forwards == 1
    assert [kv.num_slots for kv in caches] == [9, 9, 0]
    assert unfilled == [1, 2, 2]
    # Own text longer than the limit is prefilled: the suffixes in one batched forward, the lone list alone.
    done = prefill_prompts(target, lists, pending_up_to=1)
    assert done.forwards == 3
    assert [kv.valid_counts().tolist() for kv in done.caches] == [[10], [11], [2]] and done.unfilled == [0, 0, 0]
