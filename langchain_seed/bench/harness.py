"""Run methods over a workload: interleaved, repeated, timed, counted and compared.

Protocol (DESIGN.md section 5): every method runs in this process on the same loaded
models. Each method first decodes the first group once, untimed (warm-up). Then, per
repetition, the groups are taken in order and every method decodes each group before
the next group starts (interleaved; the method order rotates by one per repetition so
that no method always runs first). A method's time for a repetition is the sum of its
group times; reports take medians over repetitions.

Measured per call, the same way for every method:

- wall seconds (`time.perf_counter`, outputs already on the host);
- target and draft forwards, counted by forward pre-hooks on the target model and on
  the draft's decoder (the seed engine calls the draft decoder directly);
- peak resident memory: a background thread samples the process RSS every 5 ms while
  the call runs (and the CUDA allocator's peak when the target is on a GPU);
- outputs, cut after the first EOS, compared token for token with the target's greedy
  output (`reference`, transformers `generate` one prompt at a time).
"""

from __future__ import annotations

import contextlib
import json
import math
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from langchain_seed.bench.methods import BenchModels, GroupOutput, Method, SeedMethod
from langchain_seed.bench.workloads import PromptGroup, ToTFullWorkload, Workload, truncate_at_eos

# ----------------------------------------------------------------------------- probes


class ForwardCounter:
    """Counts forwards of the target's and the drafts' decoders (pre-hooks): every forward
    runs its model's decoder once, through the LM wrapper or directly (a prefill that needs
    no logits)."""

    def __init__(self, target, *drafts) -> None:
        self.target = self.draft = 0
        self._handles = [target.get_decoder().register_forward_pre_hook(self._count_target)]
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
        from langchain_seed.engine.stats import current_rss_mb

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


# ---------------------------------------------------------------------------- records


@dataclass
class RepTotals:
    """One method's totals over one repetition of the workload."""

    seconds: float = 0.0
    new_tokens: int = 0
    target_calls: int = 0
    draft_calls: int = 0
    drafted: int | None = None
    accepted: int | None = None
    bound_seconds: float | None = None
    peak_rss_mb: float = 0.0
    rss_delta_mb: float = 0.0
    peak_gpu_mb: float | None = None

    def add_optional(self, name: str, value: float | int | None) -> None:
        if value is not None:
            setattr(self, name, (getattr(self, name) or 0) + value)

    def add_call(self, seconds: float, new_tokens: int, target_calls: int, draft_calls: int,
                 memory: MemoryPeak) -> None:
        """Add one measured call: times and counts sum, memory peaks take the maximum."""
        self.seconds += seconds
        self.new_tokens += new_tokens
        self.target_calls += target_calls
        self.draft_calls += draft_calls
        self.peak_rss_mb = max(self.peak_rss_mb, memory.peak_rss_mb)
        self.rss_delta_mb = max(self.rss_delta_mb, memory.rss_delta_mb)
        if memory.peak_gpu_mb is not None:
            self.peak_gpu_mb = max(self.peak_gpu_mb or 0.0, memory.peak_gpu_mb)


def assisted_acceptance(draft_calls: int, target_calls: int, new_tokens: int) -> tuple[int, int]:
    """(drafted, accepted) of transformers assisted generation, from forward counts.

    Every assistant forward proposes one token and every target forward verifies one
    round, committing accepted + 1 tokens.
    """
    return draft_calls, min(draft_calls, max(0, new_tokens - target_calls))


@dataclass
class MethodRecord:
    """Everything measured for one method."""

    name: str
    reps: list[RepTotals] = field(default_factory=list)
    identical: bool = True
    mismatches: list[str] = field(default_factory=list)
    outputs: list[list[list[int]]] = field(default_factory=list, repr=False)

    def median(self, attribute: str) -> float | None:
        values = [getattr(rep, attribute) for rep in self.reps if getattr(rep, attribute) is not None]
        return statistics.median(values) if values else None

    def peak(self, attribute: str) -> float | None:
        values = [getattr(rep, attribute) for rep in self.reps if getattr(rep, attribute) is not None]
        return max(values) if values else None


@dataclass
class BenchRun:
    """A finished benchmark: workload settings and one record per method, in method order."""

    workload: str
    settings: dict
    records: list[MethodRecord]
    reps: int
    profile: dict | None = None


# ----------------------------------------------------------------------- the run loop


class CachedReference:
    """The target's greedy outputs, computed once per (prompt, max_tokens).

    With ``path`` the outputs are also kept on disk (JSON, written atomically after each
    batch of new prompts), so a rerun on the same target skips them. Name the file after
    `model_fingerprint` so that another model, dtype or device never reads it.
    """

    def __init__(self, generate: Callable[[list[list[int]], int], list[list[int]]],
                 path: Path | None = None) -> None:
        self._generate = generate
        self._path = path
        self._cache: dict[tuple[tuple[int, ...], int], list[int]] = {}
        if path is not None and path.is_file():
            for entry in json.loads(path.read_text()):
                self._cache[(tuple(entry["prompt"]), int(entry["max_tokens"]))] = list(entry["output"])

    def __call__(self, prompt_ids: list[list[int]], max_tokens: int) -> list[list[int]]:
        missing = [ids for ids in prompt_ids if (tuple(ids), max_tokens) not in self._cache]
        if missing:
            for ids, out in zip(missing, self._generate(missing, max_tokens)):
                self._cache[(tuple(ids), max_tokens)] = list(out)
            self._save()
        return [self._cache[(tuple(ids), max_tokens)] for ids in prompt_ids]

    def _save(self) -> None:
        if self._path is None:
            return
        entries = [{"prompt": list(prompt), "max_tokens": max_tokens, "output": output}
                   for (prompt, max_tokens), output in self._cache.items()]
        self._path.parent.mkdir(parents=True, exist_ok=True)
        partial = self._path.with_suffix(".tmp")
        partial.write_text(json.dumps(entries))
        partial.replace(self._path)


def model_fingerprint(model) -> str:
    """A short hash of a model's config, dtype, device type and weights (first and last tensors).

    Names a reference cache: greedy outputs depend on all of these.
    """
    import hashlib

    parameters = list(model.parameters())
    digest = hashlib.sha256(model.config.to_json_string().encode())
    digest.update(f"{parameters[0].dtype}|{parameters[0].device.type}".encode())
    for tensor in (parameters[0], parameters[-1]):
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, file=sys.stderr, disable=not enabled, leave=False, dynamic_ncols=True)


def run_benchmark(
    workload: Workload,
    methods: list[Method],
    models: BenchModels,
    reference: Callable[[list[list[int]], int], list[list[int]]],
    reps: int = 3,
    warmup: bool = True,
    progress: bool = True,
) -> BenchRun:
    """Run every method over every group, `reps` times, interleaved (see the module docstring)."""
    if reps < 1:
        raise ValueError(f"reps must be >= 1; got {reps}")
    eos = models.eos_token_ids
    expected = [[truncate_at_eos(out, eos, g.max_tokens) for out in reference(_ids(g), g.max_tokens)]
                for g in workload.groups]
    records = {m.name: MethodRecord(m.name) for m in methods}
    counter = ForwardCounter(models.target, models.draft, models.seed_draft)
    sampler = RssSampler(cuda=_on_cuda(models.target))
    total = len(methods) * (len(workload.groups) * reps + (1 if warmup else 0))
    try:
        with _progress(total, f"bench {workload.name}", progress) as bar:
            if warmup:
                for method in methods:
                    bar.set_postfix_str(f"warm-up {method.name}")
                    method.run_group(_ids(workload.groups[0]), workload.groups[0].max_tokens)
                    bar.update()
            for rep in range(reps):
                order = methods[rep % len(methods):] + methods[: rep % len(methods)]
                totals = {m.name: RepTotals() for m in methods}
                for index, group in enumerate(workload.groups):
                    for method in order:
                        bar.set_postfix_str(f"rep {rep + 1}/{reps} {group.name} {method.name}")
                        _measure_group(method, group, expected[index], counter, sampler, eos,
                                       totals[method.name], records[method.name], rep == 0)
                        bar.update()
                for name, rep_totals in totals.items():
                    records[name].reps.append(rep_totals)
    finally:
        counter.close()
        sampler.close()
    return BenchRun(workload.name, dict(workload.settings), [records[m.name] for m in methods], reps)


def _ids(group: PromptGroup) -> list[list[int]]:
    return [list(ids) for ids in group.prompt_ids]


def _on_cuda(model) -> bool:
    return next(model.parameters()).device.type == "cuda"


def _measure_group(method: Method, group: PromptGroup, expected: list[list[int]], counter: ForwardCounter,
                   sampler: RssSampler, eos: frozenset[int], totals: RepTotals, record: MethodRecord,
                   keep_outputs: bool) -> None:
    target_before, draft_before = counter.snapshot()
    with sampler.measure() as memory:
        started = time.perf_counter()
        output: GroupOutput = method.run_group(_ids(group), group.max_tokens)
        seconds = time.perf_counter() - started
    target_calls, draft_calls = counter.target - target_before, counter.draft - draft_before
    outputs = [truncate_at_eos(out, eos, group.max_tokens) for out in output.token_ids]
    new_tokens = sum(len(out) for out in outputs)
    totals.add_call(seconds, new_tokens, target_calls, draft_calls, memory)
    drafted, accepted = output.drafted, output.accepted
    if method.acceptance_from_forward_counts:
        drafted, accepted = assisted_acceptance(draft_calls, target_calls, new_tokens)
    totals.add_optional("drafted", drafted)
    totals.add_optional("accepted", accepted)
    if output.rounds:
        totals.add_optional("bound_seconds", seconds * output.rounds_all_accepted / output.rounds)
    if outputs != expected:
        record.identical = False
        if group.name not in record.mismatches:
            record.mismatches.append(group.name)
    if keep_outputs:
        record.outputs.append(outputs)


# ------------------------------------------------------------------------------ tot-full


class _OutputRecorder:
    """A LangChain callback keeping every generation's text and statistics, in order."""

    def __init__(self) -> None:
        from langchain_core.callbacks import BaseCallbackHandler

        recorder = self

        class Handler(BaseCallbackHandler):
            def on_llm_end(self, response, **kwargs: Any) -> None:
                for generations in response.generations:
                    for generation in generations:
                        recorder.items.append((generation.text, dict(generation.generation_info or {})))

        self.items: list[tuple[str, dict]] = []
        self.handler = Handler()


def run_tot_full(
    workload: ToTFullWorkload,
    methods: list[Method],
    models: BenchModels,
    reps: int = 3,
    warmup: bool = True,
    progress: bool = True,
) -> BenchRun:
    """Whole `TreeOfThoughts` searches per question and method, interleaved like `run_benchmark`.

    The reference is `hf_ar_serial`'s sequence of generated texts (computed here when that
    method is not benchmarked); a method is identical when every LLM call returned the
    same text and the answers agree. New tokens are the methods' own counts
    (``generation_info["new_tokens"]``).
    """
    from langchain_seed.bench.methods import make_method
    from langchain_seed.tot import TreeOfThoughts

    def tot_for(method: Method) -> tuple[Any, _OutputRecorder]:
        recorder = _OutputRecorder()
        llm = method.make_llm(workload.max_tokens)
        llm.callbacks = [recorder.handler]
        tot = TreeOfThoughts(llm=llm, task="gsm8k", breadth=workload.breadth, depth=workload.depth,
                             generator="sample", evaluator="value", search="bfs")
        return tot, recorder

    runners = {m.name: tot_for(m) for m in methods}
    reference_method = next((m for m in methods if m.name == "hf_ar_serial"), None)
    owned = reference_method is None
    if owned:
        reference_method = make_method("hf_ar_serial", models)
    reference_tot, reference_recorder = runners.get("hf_ar_serial") or tot_for(reference_method)
    expected = []
    for question in workload.questions:
        reference_recorder.items.clear()
        answer = reference_tot.invoke(question)
        expected.append(([text for text, _ in reference_recorder.items], answer))
    records = {m.name: MethodRecord(m.name) for m in methods}
    counter = ForwardCounter(models.target, models.draft, models.seed_draft)
    sampler = RssSampler(cuda=_on_cuda(models.target))
    total = len(methods) * (len(workload.questions) * reps + (1 if warmup else 0))
    try:
        with _progress(total, "bench tot-full", progress) as bar:
            if warmup:
                for method in methods:
                    runners[method.name][0].invoke(workload.questions[0])
                    bar.update()
            for rep in range(reps):
                order = methods[rep % len(methods):] + methods[: rep % len(methods)]
                totals = {m.name: RepTotals() for m in methods}
                for index, question in enumerate(workload.questions):
                    for method in order:
                        bar.set_postfix_str(f"rep {rep + 1}/{reps} q{index} {method.name}")
                        _measure_tree(method, runners[method.name], question, f"q{index}", expected[index],
                                      counter, sampler, totals[method.name], records[method.name])
                        bar.update()
                for name, rep_totals in totals.items():
                    records[name].reps.append(rep_totals)
    finally:
        counter.close()
        sampler.close()
    return BenchRun(workload.name, dict(workload.settings), [records[m.name] for m in methods], reps)


def _measure_tree(method: Method, runner, question: str, name: str, expected, counter: ForwardCounter,
                  sampler: RssSampler, totals: RepTotals, record: MethodRecord) -> None:
    tot, recorder = runner
    recorder.items.clear()
    target_before, draft_before = counter.snapshot()
    with sampler.measure() as memory:
        started = time.perf_counter()
        answer = tot.invoke(question)
        seconds = time.perf_counter() - started
    target_calls, draft_calls = counter.target - target_before, counter.draft - draft_before
    infos = [info for _, info in recorder.items]
    new_tokens = sum(int(info.get("new_tokens", 0)) for info in infos)
    totals.add_call(seconds, new_tokens, target_calls, draft_calls, memory)
    if method.acceptance_from_forward_counts:
        drafted, accepted = assisted_acceptance(draft_calls, target_calls, new_tokens)
        totals.add_optional("drafted", drafted)
        totals.add_optional("accepted", accepted)
    elif any("drafted" in info for info in infos):
        totals.add_optional("drafted", sum(int(info.get("drafted", 0)) for info in infos))
        totals.add_optional("accepted", sum(int(info.get("accepted", 0)) for info in infos))
    if ([text for text, _ in recorder.items], answer) != expected:
        record.identical = False
        if name not in record.mismatches:
            record.mismatches.append(name)


# ------------------------------------------------------------------------------- profile


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
    from langchain_seed.bench.methods import make_method

    sync = _no_sync
    if _on_cuda(models.target):
        import torch

        sync = torch.cuda.synchronize
    draft_prefill, draft_stage = _Timer(sync), _Timer(sync)

    from langchain_seed.engine import SeedEngine

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
    method.run_group(_ids(first), first.max_tokens)
    draft_prefill.seconds = draft_stage.seconds = 0.0
    draft_prefill.calls = draft_stage.calls = 0
    target_timer = _ForwardTimer(models.target,
                                 lambda kw: "prefill" if kw.get("logits_to_keep") == 1 else "verify", sync)
    # Prefills that need no logits (own prompt text) call the decoder directly.
    decoder_timer = _ForwardTimer(models.target.get_decoder(),
                                  lambda kw: "inside" if target_timer.running else "prefill", sync)
    draft_timer = _ForwardTimer(models.engine_draft.get_decoder(),
                                lambda kw: "stage" if draft_stage.active else "prefill", sync)
    rounds = new_tokens = 0
    started = time.perf_counter()
    try:
        for group in workload.groups:
            output = method.run_group(_ids(group), group.max_tokens)
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

