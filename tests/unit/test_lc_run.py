"""`SeedRun` over the engine's request handles: every decoding mode streams, and a consumer
that goes away (a cancelled `astream` or `ainvoke`) cancels its requests and leaks no thread."""

import asyncio
import threading
import time

import pytest

from handle_spies import spy_handles

MODES = ["autoregressive", "speculative", "scheduled"]
PROMPT = "The quick brown fox"


def _wait_idle(engine, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while (engine.stats().active or engine.stats().waiting) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.stats().active == engine.stats().waiting == 0


@pytest.mark.parametrize("mode", MODES)
async def test_a_cancelled_astream_cancels_its_request_and_leaks_no_thread(tiny_llm, tiny_engine, monkeypatch, mode):
    await tiny_llm.ainvoke(PROMPT, decoding=mode, max_tokens=2)  # the engine's threads have started
    threads = threading.active_count()
    handles = spy_handles(tiny_engine, monkeypatch)
    async def consume(started: asyncio.Event) -> None:
        async for _chunk in tiny_llm.astream(PROMPT, decoding=mode, max_tokens=1000, k_config=(1,)):
            started.set()

    for _ in range(3):
        started = asyncio.Event()
        task = asyncio.create_task(consume(started))
        await asyncio.wait_for(started.wait(), 30)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    results = [await asyncio.wait_for(handle, 30) for handle in handles]
    assert [r.finish_reason for r in results] == ["cancelled"] * 3
    assert all(len(r.token_ids) < 1000 for r in results)
    _wait_idle(tiny_engine)
    assert threading.active_count() == threads


@pytest.mark.parametrize("mode", ["autoregressive", "scheduled"])
async def test_a_cancelled_ainvoke_cancels_its_request(tiny_llm, tiny_engine, monkeypatch, mode):
    await tiny_llm.ainvoke(PROMPT, decoding=mode, max_tokens=2)
    threads = threading.active_count()
    handles = spy_handles(tiny_engine, monkeypatch)
    task = asyncio.create_task(tiny_llm.ainvoke(PROMPT, decoding=mode, max_tokens=1000, k_config=(1,)))
    deadline = time.monotonic() + 30
    while not (handles and handles[0]._chunks) and time.monotonic() < deadline:
        await asyncio.sleep(0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    result = await asyncio.wait_for(handles[0], 30)
    assert result.finish_reason == "cancelled" and len(result.token_ids) < 1000
    _wait_idle(tiny_engine)
    assert threading.active_count() == threads


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_streams_the_same_text_in_several_chunks(tiny_llm, mode):
    chunks = list(tiny_llm.stream(PROMPT, decoding=mode))
    assert len([c for c in chunks if c]) > 1
    assert "".join(chunks) == tiny_llm.invoke(PROMPT, decoding="scheduled")


def test_run_statistics_come_from_engine_stats(tiny_llm, tiny_engine):
    before = tiny_engine.stats()
    result = tiny_llm.generate([PROMPT], decoding="speculative", max_tokens=10)
    after = tiny_engine.stats()
    output = result.llm_output
    assert output["target_forwards"] == after.target_forwards - before.target_forwards > 0
    assert output["draft_forwards"] == after.draft_forwards - before.draft_forwards > 0
    assert output["rounds"] == after.rounds - before.rounds > 0
