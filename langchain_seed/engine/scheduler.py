"""The scheduled engine (SeeD): many sequences, one draft model, one shared target.

A *lane* holds the active sequences that share a `SpeculativeConfig`: one draft batch for
all of them, and target batches by verification policy ("rounds": one per sequence,
verified first come first served; "batched": as many sequences per target forward as
`max_batch_tokens` allows). A round of the scheduler is, for every lane:

1. schedule: admit waiting requests (prefilling shared prompt prefixes once), drop
   cancelled ones;
2. draft: one batched draft forward per tree depth for every member;
3. verify: each target batch in one forward, the acceptance rule per sequence;
4. commit: append tokens, keep accepted cache slots, retire finished sequences;
5. stream: hand each request's new tokens to its handle.

Every active sequence is verified exactly once per round. Requests join between rounds;
`submit` is thread-safe, and a background thread runs rounds while there is work.
"""

from __future__ import annotations

import sys
import time
from collections import deque

import torch

from langchain_seed.engine.cache import BatchKV
from langchain_seed.engine.calibration import RowLimits
from langchain_seed.engine.config import SpeculativeConfig
from langchain_seed.engine.constraints import TokenMasks
from langchain_seed.engine.cpu_share import CpuShare
from langchain_seed.engine.decoding import accepted_tokens, commit_tokens, verify_batch
from langchain_seed.engine.drafters import Draft, Drafter
from langchain_seed.engine.kernels import engine_kernels
from langchain_seed.engine.native import limit_threads
from langchain_seed.engine.prefill import BATCHED_PENDING_MAX, prefill_prompts
from langchain_seed.engine.request import GenerationResult, Request, SequenceState
from langchain_seed.engine.stats import EngineStats, RequestStats, RunStats, current_rss_mb
from langchain_seed.engine.tree import build_tree
from langchain_seed.engine.worker import Worker


class TargetBatch:
    """Sequences verified together in one target forward, and their shared `BatchKV`."""

    def __init__(self) -> None:
        self.kv = BatchKV.empty(0)
        self.members: list[SequenceState] = []

    def add(self, kvs: list[BatchKV], sequences: list[SequenceState]) -> None:
        """Append `kvs`' rows (one copy each) and their sequences, in order."""
        self.kv.concat_all(kvs)
        self.members.extend(sequences)

    def remove(self, gone: set[int]) -> None:
        keep = [i for i, s in enumerate(self.members) if id(s) not in gone]
        if len(keep) < len(self.members):
            self.kv.select_rows(keep)
            self.members = [self.members[i] for i in keep]


class Lane:
    """Active sequences sharing one speculative configuration."""

    def __init__(self, config: SpeculativeConfig, target_model, drafter: Drafter | None) -> None:
        self.config = config
        self.tree = build_tree(config.k_config)
        self.target_model = target_model
        self.drafter = drafter if self.tree.size else None
        self.members: list[SequenceState] = []
        self.batches: list[TargetBatch] = []
        self.target_forwards = 0
        self.capacity = (
            1 if config.verify == "rounds" else max(1, config.max_batch_tokens // config.tokens_per_sequence)
        )
        self.keeps_features = bool(getattr(self.drafter, "needs_target_features", False))

    # ----- 1. schedule -------------------------------------------------------------
    def admit(self, sequences: list[SequenceState]) -> None:
        """Prefill the prompts (shared prefixes once, target and draft) and place the rows.

        A lane verifying one sequence per forward prefills only the prefixes its new
        sequences share; the rest of each prompt is pending for its first verification. A
        batched lane does the same with own text of up to `BATCHED_PENDING_MAX` tokens
        (sibling prompts that differ in a few words). Nothing is left pending when the
        drafter drafts from the target's features, which the prefill provides.
        """
        prompts = [s.request.prompt_ids[:-1] for s in sequences]
        with torch.inference_mode():
            done = prefill_prompts(self.target_model, prompts, self._pending_limit(),
                                   with_features=self.keeps_features)
        self.target_forwards += done.forwards
        for index, (sequence, kv) in enumerate(zip(sequences, done.caches)):
            sequence.target_pending = 1 + done.unfilled[index]
            features = done.features[index] if done.features is not None else None
            if features is not None:
                sequence.target_features.append(features)
            if kv.num_slots:
                sequence.stats.target_calls += 1
        self._place(done.caches, sequences)
        if self.drafter is not None:
            self.drafter.add(sequences)
        self.members.extend(sequences)

    def _pending_limit(self) -> int:
        """How much of a new prompt's own text `admit` leaves for the first verification."""
        if self.keeps_features:
            return 0
        return sys.maxsize if self.capacity == 1 else BATCHED_PENDING_MAX

    def _place(self, kvs: list[BatchKV], sequences: list[SequenceState]) -> None:
        """Put each one-row cache into the first target batch with room (or a new one); each
        batch takes its new rows in one copy."""
        arrivals: dict[TargetBatch, list[int]] = {}  # batch -> indices of its new rows
        for index in range(len(sequences)):
            batch = next((b for b in self.batches if len(b.members) + len(arrivals.get(b, ())) < self.capacity), None)
            if batch is None:
                batch = TargetBatch()
                self.batches.append(batch)
            arrivals.setdefault(batch, []).append(index)
        for batch, indices in arrivals.items():
            batch.add([kvs[i] for i in indices], [sequences[i] for i in indices])

    def remove(self, sequences: list[SequenceState]) -> None:
        if not sequences:
            return
        gone = {id(s) for s in sequences}
        self.members = [s for s in self.members if id(s) not in gone]
        for batch in self.batches:
            batch.remove(gone)
        self.batches = [b for b in self.batches if b.members]
        if self.drafter is not None:
            self.drafter.remove(sequences)
        self._merge_batches()

    def _merge_batches(self) -> None:
        """Fold half-empty target batches together once rows have left."""
        merged: list[TargetBatch] = []
        for batch in self.batches:
            host = next((m for m in merged if len(m.members) + len(batch.members) <= self.capacity), None)
            if host is None:
                merged.append(batch)
            else:
                host.add([batch.kv], batch.members)
        self.batches = merged

    # ----- 2-4. draft, verify, commit ----------------------------------------------
    def step(self) -> list[tuple[SequenceState, list[int]]]:
        """One round for every member; returns (sequence, committed tokens) per member."""
        drafts = self._draft_stage()
        committed: list[tuple[SequenceState, list[int]]] = []
        order = {id(s): i for i, s in enumerate(self.members)}
        for batch in sorted(self.batches, key=lambda b: min(order[id(s)] for s in b.members)):
            committed.extend(self._verify_and_commit(batch, drafts))
        self._compact()
        return committed

    def _draft_stage(self) -> dict[int, Draft | None]:
        if self.drafter is None:
            return {id(s): None for s in self.members}
        members = list(self.drafter.rows)
        drafts = self.drafter.draft(members, self.tree)
        return {id(s): d for s, d in zip(members, drafts)}

    def _verify_and_commit(self, batch: TargetBatch, drafts) -> list[tuple[SequenceState, list[int]]]:
        batch_drafts = [drafts[id(s)] for s in batch.members]
        self.target_forwards += 1
        acceptances = verify_batch(self.target_model, batch.kv, batch.members, batch_drafts, self.tree,
                                   self.config.acceptance, keep_features=self.keeps_features)
        out = []
        for sequence, draft, acceptance in zip(batch.members, batch_drafts, acceptances):
            if self.drafter is not None:
                self.drafter.commit(sequence, acceptance)
            out.append((sequence, commit_tokens(sequence, accepted_tokens(self.tree, draft, acceptance))))
        return out

    def _compact(self) -> None:
        for batch in self.batches:
            batch.kv.trim_tail()
            if batch.kv.slack() > self.config.compact_slack:
                batch.kv.compact()
        if self.drafter is not None:
            self.drafter.compact_if_needed(self.config.compact_slack)

    def nbytes(self) -> int:
        total = sum(b.kv.nbytes() for b in self.batches)
        return total + (self.drafter.nbytes() if self.drafter is not None else 0)


class Scheduler(Worker):
    """Runs rounds over every lane; requests come in through `submit` from any thread.

    Args:
        target_model: the model whose output is reproduced.
        make_drafter: builds the drafter (`ModelDrafter` or `FeatureDrafter`) of a new lane.
        kernel: run each round inside `kernels.engine_kernels(kernel)`: "native" or
            "onednn" (the models' linears must have been routed with `routing.install`),
            or "torch" (torch's kernels).
        cpu_share: sampled once a round; its thread limit applies to the next round's
            native kernels (one thread while other processes hold the CPUs).
        row_limits: how many rows each matmul route takes on this CPU (`engine.calibration`).
    """

    thread_name = "langchain-seed-scheduler"

    def __init__(self, target_model, make_drafter, eos_token_ids: frozenset[int], kernel: str = "torch",
                 cpu_share: CpuShare | None = None, row_limits: RowLimits | None = None) -> None:
        super().__init__()
        self.target_model = target_model
        self.kernel = kernel
        self.row_limits = row_limits
        self.cpu_share = cpu_share or CpuShare()
        self.make_drafter = make_drafter
        self.eos_token_ids = eos_token_ids
        self.lanes: dict[SpeculativeConfig, Lane] = {}
        self.stats = RunStats()
        self.call_peaks = RunStats()
        """Memory peaks since a caller last replaced it (`SeedEngine.generate` does, per call)."""
        self.last_kv_bytes = 0
        self._waiting: deque[Request] = deque()

    # ----- submission (any thread) ---------------------------------------------------
    def submit(self, requests: list[Request], start_thread: bool = True) -> None:
        """Queue requests; they are admitted together at the start of the next round.

        With `start_thread=False` nothing runs them until `run_until_idle` is called.
        """
        with self._lock:
            self._check_open()
            self._waiting.extend(requests)
            self._lock.notify_all()
            if start_thread:
                self._start_thread()

    @property
    def active(self) -> int:
        """Sequences being decoded now (waiting requests not counted)."""
        return sum(len(lane.members) for lane in self._lane_snapshot())

    def _serve(self) -> None:
        while True:
            with self._lock:
                self._lock.wait_for(lambda: self._waiting or self.active or self._closed)
                if self._closed and not self._waiting and not self.active:
                    return
            self.run_round()

    # ----- one round -------------------------------------------------------------------
    def run_round(self) -> None:
        """Schedule, then draft/verify/commit/stream every lane once."""
        with engine_kernels(self.kernel, self.row_limits), limit_threads(self.cpu_share.thread_limit()):
            self._admit_waiting()
            self._drop_cancelled()
            for lane in list(self.lanes.values()):
                if lane.members:
                    self._step_lane(lane)
        self.stats.rounds += 1
        self.last_kv_bytes = self.kv_bytes()
        rss_mb = current_rss_mb()
        self.stats.sample_memory(self.last_kv_bytes, rss_mb)
        self.call_peaks.sample_memory(self.last_kv_bytes, rss_mb)
        self.cpu_share.sample()

    def run_until_idle(self) -> None:
        """Run rounds in the calling thread until nothing is waiting or active (no thread)."""
        while self._waiting or self.active:
            self.run_round()

    def _admit_waiting(self) -> None:
        with self._lock:
            admitted = list(self._waiting)
            self._waiting.clear()
        by_config: dict[SpeculativeConfig, list[SequenceState]] = {}
        for request in admitted:
            if request.handle.cancel_requested:
                self._finish_unstarted(request, "cancelled")
                continue
            by_config.setdefault(request.config, []).append(self._start(request))
        for config, sequences in by_config.items():
            lane = self._lane(config)
            try:
                lane.admit(sequences)
            except Exception as error:
                lane.remove([s for s in sequences if s in lane.members])
                self._fail(sequences, error)

    def _lane(self, config: SpeculativeConfig) -> Lane:
        lane = self.lanes.get(config)
        if lane is None:
            drafter = self.make_drafter() if config.k_config else None
            lane = self.lanes[config] = Lane(config, self.target_model, drafter)
        return lane

    def _start(self, request: Request) -> SequenceState:
        seed = request.params.seed
        generator = torch.Generator()
        generator.manual_seed(seed if seed is not None else int(torch.randint(0, 2**62, ())))
        stop_ids = set(request.params.stop_token_ids)
        if not request.params.ignore_eos:
            stop_ids |= self.eos_token_ids
        now = time.perf_counter()
        stats = RequestStats(prompt_tokens=len(request.prompt_ids), queue_seconds=now - request.submitted_at)
        masks = None
        if request.matcher is not None:
            masks = TokenMasks(request.matcher, int(self.target_model.config.vocab_size))
        return SequenceState(request, generator, list(request.prompt_ids), frozenset(stop_ids), stats, now,
                             masks=masks)

    def _drop_cancelled(self) -> None:
        for lane in self.lanes.values():
            cancelled = [s for s in lane.members if s.request.handle.cancel_requested]
            for sequence in cancelled:
                sequence.finish_reason = "cancelled"
            self._retire(lane, cancelled)

    def _step_lane(self, lane: Lane) -> None:
        try:
            committed = lane.step()
        except Exception as error:
            members = list(lane.members)
            lane.remove(members)
            self._fail(members, error)
            return
        for sequence, tokens in committed:
            if tokens:
                sequence.request.handle._emit(tokens)
        self._retire(lane, [s for s in lane.members if s.finish_reason is not None])

    def _retire(self, lane: Lane, sequences: list[SequenceState]) -> None:
        if not sequences:
            return
        lane.remove(sequences)
        for sequence in sequences:
            self._finish(sequence)

    def _finish(self, sequence: SequenceState) -> None:
        sequence.stats.seconds = time.perf_counter() - sequence.admitted_at
        self.stats.add_request(sequence.stats)
        result = GenerationResult(sequence.output_ids, sequence.finish_reason or "error", sequence.stats,
                                  sequence.error)
        sequence.request.handle._finish(result)

    def _fail(self, sequences: list[SequenceState], error: BaseException) -> None:
        for sequence in sequences:
            sequence.finish_reason = "error"
            sequence.error = error
            self._finish(sequence)

    def _finish_unstarted(self, request: Request, reason) -> None:
        stats = RequestStats(prompt_tokens=len(request.prompt_ids))
        request.handle._finish(GenerationResult([], reason, stats))

    def forwards(self) -> tuple[int, int]:
        """(target forwards, draft forwards) made so far by every lane; safe from any thread."""
        lanes = self._lane_snapshot()
        target = sum(lane.target_forwards for lane in lanes)
        draft = sum(lane.drafter.forwards for lane in lanes if lane.drafter is not None)
        return target, draft

    def snapshot(self) -> EngineStats:
        """Counts, queue and memory so far; safe from any thread (KV bytes as of the last round)."""
        target, draft = self.forwards()
        with self._lock:
            waiting = len(self._waiting)
        return EngineStats(rounds=self.stats.rounds, target_forwards=target, draft_forwards=draft,
                           requests=self.stats.requests, active=self.active, waiting=waiting,
                           kv_bytes=self.last_kv_bytes, peak_kv_bytes=self.stats.peak_kv_bytes,
                           peak_rss_mb=self.stats.peak_rss_mb)

    def kv_bytes(self) -> int:
        """Bytes held by every lane's caches now."""
        return sum(lane.nbytes() for lane in self._lane_snapshot())

    def _lane_snapshot(self) -> list[Lane]:
        # list() of a plain dict's values runs in C under the GIL: the worker thread adding a lane
        # cannot change the dict mid-copy.
        return list(self.lanes.values())
