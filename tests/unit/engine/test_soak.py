"""A short soak: concurrent clients, random lengths, cancellations; nothing lost or leaked."""

from langchain_seed.bench.soak import run_soak


def test_short_soak_serves_everything_correctly_and_frees_memory():
    report = run_soak(requests=120, clients=8, minutes=2.0, cancel_share=0.25, seed=3)
    assert not report.deadlocked
    assert report.requests == 120
    assert report.cancelled > 0 and report.completed > 0 and report.failed == 0
    assert report.greedy_checked > 50 and report.greedy_mismatches == 0
    assert report.tie_flips <= 2  # floating-point ties only (see is_tie_flip)
    assert report.active_after == 0 and report.kv_bytes_after == 0
    assert report.rss_after_mb < report.rss_after_warmup_mb + 200
