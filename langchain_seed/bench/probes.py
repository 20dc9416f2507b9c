"""What every measured call is watched with: forward counts (hooks on the target's and
the drafts' decoders) and peak memory (a thread sampling the process RSS, and the CUDA
allocator's peak when the target is on a GPU)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from langchain_seed.engine.stats import current_rss_mb


class ForwardCounter:
    """Counts forwards of the target's and the drafts' decoders (pre-hooks): every forward
    runs its model's decoder once, through the LM wrapper or directly (a prefill that needs
    no logits)."""

    def __init__(self, targets, *drafts) -> None:
        self.target = self.draft = 0
        self._handles = [target.get_decoder().register_forward_pre_hook(self._count_target)
                         for target in (targets if isinstance(targets, (list, tuple)) else [targets])]
        for draft in drafts:
            if draft is not None:
                self._handles.append(draft.get_decoder().register_forward_pre_hook(self._count_draft))

    def _count_target(self, module, args) -> None:
        self.target += 1

    def _count_draft(self, module, args) -> None:
        self.draft += 1

    def snapshot(self) -> tuple[int, int]:
        return self.target, self.draft

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


@dataclass
class MemoryPeak:
    """Peak memory of one measured call."""

    start_rss_mb: float = 0.0
    peak_rss_mb: float = 0.0
    peak_gpu_mb: float | None = None

    @property
    def rss_delta_mb(self) -> float:
        return max(0.0, self.peak_rss_mb - self.start_rss_mb)


class RssSampler:
    """A daemon thread sampling the process RSS while a `measure()` block runs."""

    def __init__(self, interval_s: float = 0.005, cuda: bool = False) -> None:
        self._read = current_rss_mb
        self.interval_s, self.cuda = interval_s, cuda
        self._peak: MemoryPeak | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-rss", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            with self._lock:
                if self._peak is not None:
                    self._peak.peak_rss_mb = max(self._peak.peak_rss_mb, self._read())

    @contextlib.contextmanager
    def measure(self) -> Iterator[MemoryPeak]:
        start = self._read()
        peak = MemoryPeak(start, start)
        if self.cuda:
            import torch

            torch.cuda.reset_peak_memory_stats()
        with self._lock:
            self._peak = peak
        try:
            yield peak
        finally:
            with self._lock:
                self._peak = None
                peak.peak_rss_mb = max(peak.peak_rss_mb, self._read())
            if self.cuda:
                import torch

                peak.peak_gpu_mb = torch.cuda.max_memory_allocated() / 2**20

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1)


def on_cuda(model) -> bool:
    """Whether ``model``'s weights are on a CUDA device."""
    return next(model.parameters()).device.type == "cuda"


@contextlib.contextmanager
def watching(models) -> Iterator[tuple[ForwardCounter, RssSampler]]:
    """A forward counter on the target and the drafts, and an RSS sampler, closed after."""
    targets = [models.target] + ([models.seed_target] if models.seed_target is not None else [])
    counter = ForwardCounter(targets, models.draft, models.seed_draft)
    sampler = RssSampler(cuda=on_cuda(models.target))
    try:
        yield counter, sampler
    finally:
        counter.close()
        sampler.close()
