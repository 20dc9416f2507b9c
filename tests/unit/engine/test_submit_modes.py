"""`SeedEngine.submit` in every mode (serial ones on the engine's worker) and `engine.stats()`."""

import asyncio
import gc
import threading
import weakref

import pytest

from langchain_seed.engine import EngineStats, SamplingParams, SeedEngine, SpeculativeConfig

from engine_fixtures import PROMPTS, hf_greedy

MAX = 16
MODES = ["autoregressive", "speculative", "scheduled"]


@pytest.fixture(scope="module")
def reference(llama_pair):
    target, _ = llama_pair
    return {tuple(p): hf_greedy(target, p, MAX) for p in PROMPTS}


@pytest.fixture
def engine(llama_pair):
    target, draft = llama_pair
    engine = SeedEngine(target, draft, config=SpeculativeConfig(k_config=(1, 1, 1)))
    yield engine
    engine.close()


@pytest.mark.parametrize("mode", MODES)
def test_submitted_greedy_output_is_generates(engine, reference, mode):
    handles = engine.submit_many(PROMPTS, SamplingParams(max_tokens=MAX), mode=mode)
    streamed = [[token for chunk in handle for token in chunk] for handle in handles]
    assert streamed == [reference[tuple(p)] for p in PROMPTS]
    assert [h.result().token_ids for h in handles] == streamed
    generated = engine.generate(PROMPTS, SamplingParams(max_tokens=MAX), mode=mode)
    assert [r.token_ids for r in generated] == streamed


@pytest.mark.parametrize("mode", ["autoregressive", "speculative"])
def test_serial_requests_stream_chunk_by_chunk_and_run_on_the_engines_worker(engine, reference, mode):
    threads = []

    def note_thread(_new_ids):
        threads.append(threading.current_thread().name)
        return False

    handle = engine.submit(PROMPTS[0], SamplingParams(max_tokens=MAX, stop_callback=note_thread), mode=mode)
    chunks = list(handle)
    assert len(chunks) > 1 and sum(chunks, []) == reference[tuple(PROMPTS[0])]
    assert set(threads) == {"langchain-seed-serial"}


@pytest.mark.parametrize("mode", ["autoregressive", "speculative"])
async def test_cancelling_a_serial_request_keeps_its_tokens_and_spares_the_next(engine, reference, mode):
    long = engine.submit(PROMPTS[2], SamplingParams(max_tokens=200), mode=mode)
    queued = engine.submit(PROMPTS[1], SamplingParams(max_tokens=MAX), mode=mode)
    tokens = []
    async for chunk in long:
        tokens.extend(chunk)
        if len(tokens) >= 3:
            long.cancel()
    result = await long
    assert result.finish_reason == "cancelled" and tokens == result.token_ids and len(tokens) < 200
    assert (await queued).token_ids == reference[tuple(PROMPTS[1])]


def test_a_serial_request_cancelled_before_it_starts_ends_empty(engine):
    first = engine.submit(PROMPTS[2], SamplingParams(max_tokens=60), mode="autoregressive")
    waiting = engine.submit(PROMPTS[0], SamplingParams(max_tokens=60), mode="autoregressive")
    waiting.cancel()
    assert first.result(timeout=60).finish_reason == "length"
    assert waiting.wait(timeout=60).finish_reason == "cancelled" and waiting.wait().token_ids == []


def test_a_failing_serial_request_fails_alone(engine, reference):
    def explode(_new_ids):
        raise RuntimeError("stop callback broke")

    bad = engine.submit(PROMPTS[0], SamplingParams(max_tokens=MAX, stop_callback=explode), mode="speculative")
    good = engine.submit(PROMPTS[1], SamplingParams(max_tokens=MAX), mode="speculative")
    with pytest.raises(RuntimeError, match="stop callback broke"):
        list(bad)
    assert bad.wait().finish_reason == "error"
    assert good.result(timeout=60).token_ids == reference[tuple(PROMPTS[1])]


def test_submit_refuses_an_unknown_mode_and_a_closed_engine(llama_pair):
    target, _ = llama_pair
    engine = SeedEngine(target)
    with pytest.raises(ValueError, match="mode must be one of"):
        engine.submit(PROMPTS[0], mode="eager")
    with pytest.raises(ValueError, match="needs a draft model"):
        engine.submit(PROMPTS[0], mode="speculative")
    engine.close()
    with pytest.raises(RuntimeError, match="closed"):
        engine.submit(PROMPTS[0], mode="autoregressive")


def test_close_joins_the_serial_worker(llama_pair):
    target, draft = llama_pair
    engine = SeedEngine(target, draft)
    handle = engine.submit(PROMPTS[0], SamplingParams(max_tokens=MAX), mode="speculative")
    engine.close()
    assert handle.done  # the queued request was finished first
    assert not any(t.name == "langchain-seed-serial" and t.is_alive() for t in threading.enumerate()
                   if t is engine._serial._thread)


def test_an_engine_whose_serial_worker_ran_is_still_collected_and_its_worker_stopped(llama_pair):
    target, draft = llama_pair
    engine = SeedEngine(target, draft)
    engine.generate([PROMPTS[0]], SamplingParams(max_tokens=4), mode="speculative")
    worker, collected = engine._serial._thread, weakref.ref(engine)
    assert worker.is_alive()
    del engine
    gc.collect()
    assert collected() is None
    worker.join(timeout=30)
    assert not worker.is_alive()


def test_stats_count_scheduled_and_serial_runs(engine):
    assert engine.stats() == EngineStats()
    serial = engine.generate(PROMPTS[:2], SamplingParams(max_tokens=MAX), mode="autoregressive")
    after_serial = engine.stats()
    assert after_serial.target_forwards == serial.stats.target_forwards == sum(
        r.stats.target_calls for r in serial)
    assert after_serial.draft_forwards == 0 and after_serial.requests == 2 and after_serial.rounds > 0
    scheduled = engine.generate(PROMPTS, SamplingParams(max_tokens=MAX), mode="scheduled")
    now = engine.stats()
    assert now.target_forwards - after_serial.target_forwards == scheduled.stats.target_forwards
    assert now.draft_forwards == scheduled.stats.draft_forwards > 0
    assert now.requests == 2 + len(PROMPTS) and now.active == now.waiting == 0
    assert now.peak_kv_bytes >= max(serial.stats.peak_kv_bytes, scheduled.stats.peak_kv_bytes) > 0
    assert now.peak_rss_mb > 0 and now.kv_bytes <= now.peak_kv_bytes


async def test_stats_are_safe_while_requests_run(engine):
    handles = engine.submit_many(PROMPTS, SamplingParams(max_tokens=60))
    serial = engine.submit(PROMPTS[2], SamplingParams(max_tokens=60), mode="speculative")
    seen = []
    while not all(h.done for h in [*handles, serial]):
        seen.append(engine.stats())
        await asyncio.sleep(0.001)
    assert any(s.active for s in seen)
    counts = [s.target_forwards for s in seen]
    assert counts == sorted(counts)
