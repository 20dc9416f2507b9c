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
  output (`reference`, transformers `generate` one prompt at a time); for the first
  repetition, where each prompt's output first differs (`MethodRecord.divergences`).

A method running outside torch (llama.cpp) reports its own target forwards in
`GroupOutput.target_calls`, which then replaces the hook count.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from langchain_core.callbacks import BaseCallbackHandler
from tqdm.auto import tqdm

from langchain_seed.bench.methods import BenchModels, GroupOutput, Method, make_method
from langchain_seed.bench.probes import ForwardCounter, MemoryPeak, RssSampler, watching
from langchain_seed.bench.records import (
    BenchRun,
    MethodRecord,
    RepTotals,
    assisted_acceptance,
    first_divergence,
)
from langchain_seed.bench.workloads import (
    PromptGroup,
    ToTFullWorkload,
    Workload,
    truncate_at_eos,
)
from langchain_seed.tot import TreeOfThoughts


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
    """A short hash of a model's config, module classes, dtype, device type and weights (first
    and last parameters and buffers: a quantised model keeps its weights in buffers).

    Names a reference cache: greedy outputs depend on all of these.
    """
    parameters = list(model.parameters())
    buffers = [buffer for buffer in model.buffers() if buffer is not None]
    digest = hashlib.sha256(model.config.to_json_string().encode())
    digest.update("|".join(type(module).__name__ for module in model.modules()).encode())
    digest.update(f"{parameters[0].dtype}|{parameters[0].device.type}".encode())
    for tensor in (parameters[0], parameters[-1], *buffers[:1], *buffers[-1:]):
        digest.update(tensor.detach().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def _progress(total: int, desc: str, enabled: bool):
    return tqdm(total=total, desc=desc, file=sys.stderr, disable=not enabled, leave=False, dynamic_ncols=True)


def _interleaved(methods: list[Method], items: Sequence[Any], labels: Sequence[str], reps: int, warmup: bool,
                 desc: str, progress: bool, warm_up: Callable[[Method], Any],
                 measure: Callable[[Method, int, RepTotals, MethodRecord, int], None]) -> list[MethodRecord]:
    """The protocol: a warm-up call per method, then `reps` repetitions in which every method
    takes each item before the next item starts, the method order rotating by one per
    repetition. `measure(method, item index, totals, record, rep)` times one call."""
    records = {m.name: MethodRecord(m.name) for m in methods}
    with _progress(len(methods) * (len(items) * reps + (1 if warmup else 0)), desc, progress) as bar:
        if warmup:
            for method in methods:
                bar.set_postfix_str(f"warm-up {method.name}")
                warm_up(method)
                bar.update()
        for rep in range(reps):
            order = methods[rep % len(methods):] + methods[: rep % len(methods)]
            totals = {m.name: RepTotals() for m in methods}
            for index in range(len(items)):
                for method in order:
                    bar.set_postfix_str(f"rep {rep + 1}/{reps} {labels[index]} {method.name}")
                    measure(method, index, totals[method.name], records[method.name], rep)
                    bar.update()
            for name, rep_totals in totals.items():
                records[name].reps.append(rep_totals)
    return [records[m.name] for m in methods]


def _timed(
    call: Callable[[], Any], counter: ForwardCounter, sampler: RssSampler
) -> tuple[Any, float, int, int, MemoryPeak]:
    """(result, seconds, target forwards, draft forwards, memory peak) of one call."""
    target_before, draft_before = counter.snapshot()
    with sampler.measure() as memory:
        started = time.perf_counter()
        result = call()
        seconds = time.perf_counter() - started
    return result, seconds, counter.target - target_before, counter.draft - draft_before, memory


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
    groups = workload.groups
    expected = expected_outputs(groups, reference, eos)
    with watching(models) as (counter, sampler):
        def measure(method: Method, index: int, totals: RepTotals, record: MethodRecord, rep: int) -> None:
            _measure_group(method, groups[index], expected[index], counter, sampler, eos, totals, record, rep == 0)

        records = _interleaved(methods, groups, [g.name for g in groups], reps, warmup, f"bench {workload.name}",
                               progress, lambda m: m.run_group(groups[0].id_lists(), groups[0].max_tokens), measure)
    return BenchRun(workload.name, dict(workload.settings), records, reps)


def expected_outputs(groups: Sequence[PromptGroup], reference: Callable[[list[list[int]], int], list[list[int]]],
                     eos: frozenset[int]) -> list[list[list[int]]]:
    """The target's greedy outputs per group and prompt, cut as every method's are compared
    (`truncate_at_eos`, at most the group's max tokens)."""
    return [[truncate_at_eos(out, eos, g.max_tokens) for out in reference(g.id_lists(), g.max_tokens)]
            for g in groups]


def outputs_identical(groups: Sequence[PromptGroup], outputs: Sequence[Sequence[Sequence[int]]],
                      reference: Callable[[list[list[int]], int], list[list[int]]], eos: frozenset[int]) -> bool:
    """Whether a method's new ids per group and prompt equal the target's greedy ones, cut
    the same way (`expected_outputs`)."""
    cut = [[truncate_at_eos(out, eos, g.max_tokens) for out in group_outputs]
           for g, group_outputs in zip(groups, outputs, strict=True)]
    return cut == expected_outputs(groups, reference, eos)


def _measure_group(method: Method, group: PromptGroup, expected: list[list[int]], counter: ForwardCounter,
                   sampler: RssSampler, eos: frozenset[int], totals: RepTotals, record: MethodRecord,
                   keep_outputs: bool) -> None:
    output: GroupOutput
    method.forget_prompts()
    output, seconds, target_calls, draft_calls, memory = _timed(
        lambda: method.run_group(group.id_lists(), group.max_tokens), counter, sampler)
    if output.target_calls is not None:  # an engine the hooks cannot see counts its own forwards
        target_calls = output.target_calls
    outputs = [truncate_at_eos(out, eos, group.max_tokens) for out in output.token_ids]
    new_tokens = sum(len(out) for out in outputs)
    totals.add_call(seconds, new_tokens, target_calls, draft_calls, memory)
    drafted, accepted = output.drafted, output.accepted
    if method.acceptance_from_forward_counts:
        drafted, accepted = assisted_acceptance(draft_calls, target_calls, new_tokens)
    totals.add_optional("drafted", drafted)
    totals.add_optional("accepted", accepted)
    if output.rounds and output.rounds_all_accepted is not None:  # seed methods set both
        totals.add_optional("bound_seconds", seconds * output.rounds_all_accepted / output.rounds)
    if outputs != expected:
        record.mismatch(group.name)
    if keep_outputs:
        record.outputs.append(outputs)
        record.divergences.extend(first_divergence(out, ref) for out, ref in zip(outputs, expected))


# ------------------------------------------------------------------------------ tot-full


class _OutputRecorder(BaseCallbackHandler):
    """A LangChain callback keeping every generation's text and statistics, in order."""

    def __init__(self) -> None:
        self.items: list[tuple[str, dict]] = []

    def on_llm_end(self, response, **kwargs: Any) -> None:
        for generations in response.generations:
            for generation in generations:
                self.items.append((generation.text, dict(generation.generation_info or {})))


def run_tot_full(
    workload: ToTFullWorkload,
    methods: list[Method],
    models: BenchModels,
    reps: int = 3,
    warmup: bool = True,
    progress: bool = True,
) -> BenchRun:
    """Whole `TreeOfThoughts` searches per question and method, interleaved like `run_benchmark`.

    The trees are the workload's task and setup. Greedy, the reference is `hf_ar_serial`'s
    sequence of generated texts (computed here when that method is not benchmarked); a
    method is identical when every LLM call returned the same text and the answers agree.
    Sampled (``workload.temperature > 0``) every LLM samples, there is no reference and
    identity is not recorded (None). New tokens are the methods' own counts
    (``generation_info["new_tokens"]``).
    """
    def tot_for(method: Method) -> tuple[TreeOfThoughts, _OutputRecorder]:
        recorder = _OutputRecorder()
        llm = method.make_llm(workload.max_tokens)
        llm.callbacks = [recorder]
        if workload.temperature:
            llm.temperature = workload.temperature
        tot = TreeOfThoughts(llm=llm, task=workload.task, breadth=workload.breadth, depth=workload.depth,
                             generator="sample", evaluator=workload.evaluator, n_evaluate=workload.n_evaluate,
                             search="bfs")
        return tot, recorder

    runners = {m.name: tot_for(m) for m in methods}
    expected: list[Any] = [None] * len(workload.questions)
    if not workload.temperature:
        if "hf_ar_serial" not in runners:
            runners["hf_ar_serial"] = tot_for(make_method("hf_ar_serial", models))
        reference_tot, reference_recorder = runners["hf_ar_serial"]
        for index, question in enumerate(workload.questions):
            reference_recorder.items.clear()
            answer = reference_tot.invoke(question)
            expected[index] = ([text for text, _ in reference_recorder.items], answer)
    questions = workload.questions
    with watching(models) as (counter, sampler):
        def measure(method: Method, index: int, totals: RepTotals, record: MethodRecord, rep: int) -> None:
            _measure_tree(method, runners[method.name], questions[index], f"q{index}", expected[index],
                          counter, sampler, totals, record)

        records = _interleaved(methods, questions, [f"q{i}" for i in range(len(questions))], reps, warmup,
                               f"bench tot-full {workload.task}", progress,
                               lambda m: runners[m.name][0].invoke(questions[0]), measure)
    if workload.temperature:
        for record in records:
            record.identical = None
    return BenchRun(workload.name, dict(workload.settings), records, reps)


def _measure_tree(method: Method, runner, question: str, name: str, expected, counter: ForwardCounter,
                  sampler: RssSampler, totals: RepTotals, record: MethodRecord) -> None:
    tot, recorder = runner
    recorder.items.clear()
    method.forget_prompts()
    answer, seconds, target_calls, draft_calls, memory = _timed(lambda: tot.invoke(question), counter, sampler)
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
    if expected is not None and ([text for text, _ in recorder.items], answer) != expected:
        record.mismatch(name)
