"""On a shared CPU the engine's kernels drop to one thread, and try every thread again later."""

from __future__ import annotations

import pytest
import torch

from langchain_seed.engine import SamplingParams, SeedEngine, native
from langchain_seed.engine.cpu_share import (
    CONTENDED_ABOVE,
    FIRST_HOLD_ROUNDS,
    MAX_HOLD_ROUNDS,
    CpuShare,
    process_wait_seconds,
)

from engine_fixtures import needs_kernel


class FakeProcess:
    """A clock and a run-queue wait counter the test advances round by round."""

    def __init__(self) -> None:
        self.now, self.wait = 0.0, 0.0

    def round(self, share: CpuShare, waiting_share: float, seconds: float = 0.1) -> int | None:
        """One round of `seconds` in which the threads waited `waiting_share` s/s; returns
        the thread limit for the next round."""
        self.now += seconds
        self.wait += waiting_share * seconds
        share.sample()
        return share.thread_limit()


@pytest.fixture
def fake() -> tuple[FakeProcess, CpuShare]:
    process = FakeProcess()
    return process, CpuShare(read_wait=lambda: process.wait, clock=lambda: process.now)


def test_a_round_of_waiting_switches_to_one_thread_at_once(fake):
    process, share = fake
    assert process.round(share, 0.0) is None
    assert process.round(share, CONTENDED_ABOVE / 2) is None
    assert process.round(share, 1.5) == 1 and share.contended


def test_one_thread_is_held_then_every_thread_tried_and_a_failed_try_doubles_the_hold(fake):
    process, share = fake
    process.round(share, 1.5)
    limits = [process.round(share, 0.0) for _ in range(FIRST_HOLD_ROUNDS)]
    assert limits == [1] * (FIRST_HOLD_ROUNDS - 1) + [None]  # the try
    assert process.round(share, 1.5) == 1  # still shared
    limits = [process.round(share, 0.0) for _ in range(2 * FIRST_HOLD_ROUNDS)]
    assert limits == [1] * (2 * FIRST_HOLD_ROUNDS - 1) + [None]
    assert process.round(share, 0.0) is None  # free again: the hold starts over
    process.round(share, 1.5)
    limits = [process.round(share, 0.0) for _ in range(FIRST_HOLD_ROUNDS)]
    assert limits[-1] is None


def test_the_hold_stops_doubling_at_its_maximum(fake):
    process, share = fake
    process.round(share, 1.5)
    for _ in range(12):
        while process.round(share, 0.0) == 1:
            pass
        process.round(share, 1.5)
    rounds = 1
    while process.round(share, 0.0) == 1:
        rounds += 1
    assert rounds == MAX_HOLD_ROUNDS


def test_waiting_on_one_thread_keeps_it_on_one_thread(fake):
    process, share = fake
    process.round(share, 1.5)
    assert all(process.round(share, 0.5) == 1 for _ in range(3 * MAX_HOLD_ROUNDS))


def test_without_the_kernels_figures_it_never_limits_the_threads():
    share = CpuShare(read_wait=lambda: None)
    for _ in range(5):
        share.sample()
    assert share.thread_limit() is None


def test_the_process_wait_is_read_from_proc_where_linux_has_it(tmp_path):
    for task, wait in (("1", 2_000_000_000), ("2", 500_000_000)):
        (tmp_path / task).mkdir()
        (tmp_path / task / "schedstat").write_text(f"123 {wait} 7\n")
    assert process_wait_seconds(tmp_path) == pytest.approx(2.5)
    assert process_wait_seconds(tmp_path / "missing") is None


@needs_kernel
def test_a_contended_engine_runs_its_kernels_on_one_thread(tiny_target, monkeypatch):
    if torch.get_num_threads() < 2:
        pytest.skip("one thread only: nothing to limit")
    seen = []
    skinny_linear = native.skinny_linear
    monkeypatch.setattr(native, "skinny_linear", lambda *a: seen.append(native.threads()) or skinny_linear(*a))
    engine = SeedEngine(tiny_target)
    engine.cpu_share = CpuShare(read_wait=lambda: None)  # whatever else this machine runs now
    try:
        engine.generate([[1, 2, 3]], SamplingParams(max_tokens=2), mode="autoregressive")
        assert seen and set(seen) == {torch.get_num_threads()}
        engine.cpu_share.contended = True
        engine.cpu_share.sample = lambda: None
        seen.clear()
        engine.generate([[1, 2, 3]], SamplingParams(max_tokens=2), mode="autoregressive")
        assert seen and set(seen) == {1}
    finally:
        engine.close()
    assert native.threads() == torch.get_num_threads()  # nothing outlives the rounds
