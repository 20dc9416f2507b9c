"""Where one seed method's time goes per verification round (`profile_seed`).

Timers wrap the drafter's stages and hook the target's and the draft's forwards; on
CUDA every timer synchronizes the device first.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from langchain_seed.bench.methods import BenchModels, SeedMethod, make_method
from langchain_seed.bench.probes import on_cuda
from langchain_seed.bench.workloads import Workload


def _no_sync() -> None:
    return None


class _Timer:
    """Accumulated seconds and calls of one stage (`sync` waits for the device first)."""

    def __init__(self, sync: Callable[[], None] = _no_sync) -> None:
        self.seconds, self.calls, self.active = 0.0, 0, False
        self.sync = sync

    def wrap(self, function: Callable) -> Callable:
        def timed(*args, **kwargs):
            self.sync()
            started = time.perf_counter()
            self.active = True
            try:
                return function(*args, **kwargs)
            finally:
                self.sync()
                self.active = False
                self.seconds += time.perf_counter() - started
                self.calls += 1

        return timed


class _ForwardTimer:
    """Times a module's forwards (pre/post hooks); `classify(kwargs)` names the bucket."""

    def __init__(self, module, classify: Callable[[dict], str], sync: Callable[[], None] = _no_sync) -> None:
        self.buckets: dict[str, _Timer] = {}
        self._classify, self._sync = classify, sync
        self._started: list[tuple[str, float]] = []
        self._handles = [module.register_forward_pre_hook(self._pre, with_kwargs=True),
                         module.register_forward_hook(self._post, with_kwargs=True)]

    def _pre(self, module, args, kwargs):
        self._sync()
        self._started.append((self._classify(kwargs), time.perf_counter()))

    def _post(self, module, args, kwargs, output):
        self._sync()
        bucket, started = self._started.pop()
        timer = self.buckets.setdefault(bucket, _Timer())
        timer.seconds += time.perf_counter() - started
        timer.calls += 1

    @property
    def running(self) -> bool:
        """True inside a timed forward."""
        return bool(self._started)

    def seconds(self, bucket: str) -> float:
        return self.buckets[bucket].seconds if bucket in self.buckets else 0.0

    def calls(self, bucket: str) -> int:
        return self.buckets[bucket].calls if bucket in self.buckets else 0

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


def profile_seed(workload: Workload, models: BenchModels, method_name: str = "seed_batched") -> dict:
    """Where one seed method's time goes, per verification round, over the workload once.

    On CUDA every timer synchronizes the device (the profile is slower than the run). A
    fresh engine whose drafter is wrapped with timers (draft prefill = `add`, draft
    stage = `draft`) runs the workload after one untimed group; hooks time the target's
    forwards (prefill: ``logits_to_keep == 1`` and direct decoder calls, which prefill own
    prompt text that needs no logits; verification: the rest) and the draft
    decoder's forwards (``draft_stage_forwards`` and ``draft_stage_head_and_bookkeeping``
    split the draft stage: the restricted LM head, top-k and input building are the
    second). ``other`` is the wall time left: building masks and positions,
    the acceptance rule, commits, cache compaction and the scheduler thread handoff.
    Rounds are counted in the method's bound unit (`SeedMethod.run_group`).
    """
    import torch  # torch and the engine load when a benchmark runs

    from langchain_seed.engine import SeedEngine

    sync = torch.cuda.synchronize if on_cuda(models.target) else _no_sync
    draft_prefill, draft_stage = _Timer(sync), _Timer(sync)

    class ProfiledEngine(SeedEngine):
        def _drafter_factory(self):  # the engine's drafter factory, wrapped for timing
            make_drafter = super()._drafter_factory()

            def make_timed_drafter():
                drafter = make_drafter()
                drafter.add = draft_prefill.wrap(drafter.add)
                drafter.draft = draft_stage.wrap(drafter.draft)
                return drafter

            return make_timed_drafter

    method = make_method(method_name, models, engine_class=ProfiledEngine)
    if not isinstance(method, SeedMethod):
        raise ValueError(f"profile_seed profiles a seed method; got {method_name!r}")
    first = workload.groups[0]
    method.run_group(first.id_lists(), first.max_tokens)
    draft_prefill.seconds = draft_stage.seconds = 0.0
    draft_prefill.calls = draft_stage.calls = 0
    target_timer = _ForwardTimer(models.engine_target,
                                 lambda kw: "prefill" if kw.get("logits_to_keep") == 1 else "verify", sync)
    # Prefills that need no logits (own prompt text) call the decoder directly.
    decoder_timer = _ForwardTimer(models.engine_target.get_decoder(),
                                  lambda kw: "inside" if target_timer.running else "prefill", sync)
    draft_timer = _ForwardTimer(models.engine_draft.get_decoder(),
                                lambda kw: "stage" if draft_stage.active else "prefill", sync)
    rounds = new_tokens = 0
    started = time.perf_counter()
    try:
        for group in workload.groups:
            output = method.run_group(group.id_lists(), group.max_tokens)
            rounds += output.rounds or 0
            new_tokens += sum(len(t) for t in output.token_ids)
    finally:
        total = time.perf_counter() - started
        target_timer.close()
        decoder_timer.close()
        draft_timer.close()
        method.close()
    target_prefill = target_timer.seconds("prefill") + decoder_timer.seconds("prefill")
    target_verify = target_timer.seconds("verify")
    other = total - target_prefill - target_verify - draft_prefill.seconds - draft_stage.seconds
    per_round = (lambda s: 1000 * s / rounds) if rounds else (lambda s: math.nan)
    stages = {
        "target_prefill": target_prefill,
        "target_verify_forward": target_verify,
        "draft_prefill": draft_prefill.seconds,
        "draft_stage": draft_stage.seconds,
        "draft_stage_forwards": draft_timer.seconds("stage"),
        "draft_stage_head_and_bookkeeping": draft_stage.seconds - draft_timer.seconds("stage"),
        "other": other,
    }
    return {
        "method": method_name,
        "total_s": total,
        "rounds": rounds,
        "new_tokens": new_tokens,
        "tokens_per_round": new_tokens / rounds if rounds else None,
        "target_verify_calls": target_timer.calls("verify"),
        "target_prefill_calls": target_timer.calls("prefill") + decoder_timer.calls("prefill"),
        "draft_stage_forward_calls": draft_timer.calls("stage"),
        "draft_stage_calls": draft_stage.calls,
        "seconds": stages,
        "ms_per_round": {name: per_round(value) for name, value in stages.items()},
        "share": {name: value / total if total else None for name, value in stages.items()},
    }
