"""The llama.cpp peer (`langchain_seed.bench.peers`, its worker process `peer_worker`, method
``llamacpp_serial``) and what the harness records for a method that is not the target: where
each prompt's output diverges, and the forwards the method counts itself.

Tiny models from conftest; the tests on the real GGUF run only where llama-cpp-python is
installed and the default target's GGUF is cached (they never download anything).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys

import pytest

from langchain_seed.bench import peer_worker, peers, protocol, report, workloads
from langchain_seed.bench.methods import (
    BenchModels,
    GroupOutput,
    LlamaCppMethod,
    Method,
    make_method,
    reference_outputs,
)
from langchain_seed.bench.records import first_divergence

QUESTIONS = ["What is 12 + 30?", "Tom has 3 apples and buys 2 more. How many apples?"]


@pytest.fixture(scope="module")
def models(tiny_target, tiny_draft, tiny_tokenizer):
    return BenchModels(tiny_target, tiny_draft, tiny_tokenizer, None, (1, 1), "tiny-target", "tiny-draft")


@pytest.fixture
def no_llama_cpp(monkeypatch):
    """llama-cpp-python not importable, whether installed or not."""
    monkeypatch.setitem(sys.modules, "llama_cpp", None)


@pytest.fixture
def target_dir_with_gguf(tiny_target, tiny_tokenizer, tmp_path):
    directory = tmp_path / "target"
    tiny_target.save_pretrained(directory)
    tiny_tokenizer.save_pretrained(directory)
    (directory / "tiny.Q4_1.gguf").write_bytes(b"GGUF")  # found, never loaded: llama_cpp is missing
    return directory


def test_first_divergence():
    assert first_divergence([5, 6, 7], [5, 6, 7]) is None
    assert first_divergence([5, 9, 7], [5, 6, 7]) == 1
    assert first_divergence([5, 6], [5, 6, 7]) == 2  # ended early: the missing token differs
    assert first_divergence([5, 6, 7, 2], [5, 6, 7]) == 3
    assert first_divergence([], []) is None


class _OffByOne(Method):
    """The target's greedy output with the token at `position` of the second prompt changed,
    and its own forward count (as a method outside torch reports it)."""

    name = "off_by_one"

    def __init__(self, reference, position: int) -> None:
        self.reference, self.position = reference, position

    def run_group(self, prompt_ids, max_tokens):
        outputs = [list(out) for out in self.reference(prompt_ids, max_tokens)]
        if len(outputs) > 1 and len(outputs[1]) > self.position:
            outputs[1][self.position] += 1
        return GroupOutput(outputs, target_calls=1000)

    def make_llm(self, max_tokens):
        raise NotImplementedError("only the fixed-group workloads are run here")


def test_the_harness_records_each_prompts_first_divergence_and_a_methods_own_forwards(models):
    reference = protocol.CachedReference(reference_outputs(models))
    workload = workloads.build_tot_step(QUESTIONS, models.tokenizer, reference, thought_tokens=8, value_tokens=4)
    methods = [make_method("hf_ar_serial", models), _OffByOne(reference, position=2)]
    run = protocol.run_benchmark(workload, methods, models, reference, reps=2, progress=False)
    exact, off = run.records
    prompts = workload.prompt_count
    assert exact.divergences == [None] * prompts  # the first repetition only
    changed = [index for index, value in enumerate(off.divergences) if value is not None]
    assert len(off.divergences) == prompts and changed == [1, 4, 7, 10]  # the second prompt of each group
    assert {off.divergences[i] for i in changed} == {2}
    assert all(rep.target_calls == 1000 * len(workload.groups) for rep in off.reps)  # its count, not the hooks'
    rows = {row["method"]: row for row in report.build_rows(run)}
    assert rows["hf_ar_serial"]["prompts_identical"] == prompts and rows["hf_ar_serial"]["same_prompts"] == "12/12"
    assert rows["off_by_one"]["prompts_identical"] == prompts - 4 and rows["off_by_one"]["prompts_compared"] == prompts
    assert rows["off_by_one"]["first_divergence"][1] == 2 and not rows["off_by_one"]["identical_to_target"]
    assert "8/12" in report.format_table(list(rows.values()))


def test_llamacpp_serial_without_llama_cpp_says_why_and_how_to_install(models, target_dir_with_gguf, no_llama_cpp):
    named = BenchModels(models.target, None, models.tokenizer, target_name=str(target_dir_with_gguf))
    with pytest.raises(peers.PeerUnavailable, match=r"llama-cpp-python is not installed.*\.\[peers\]"):
        make_method("llamacpp_serial", named)


def test_bench_skips_llamacpp_serial_with_a_one_line_reason(target_dir_with_gguf, tmp_path, capsys, monkeypatch,
                                                           no_llama_cpp):
    from langchain_seed.cli import main

    monkeypatch.setenv("LANGCHAIN_SEED_HOME", str(tmp_path / "home"))
    data = tmp_path / "questions.jsonl"
    data.write_text("".join(json.dumps({"question": q}) + "\n" for q in QUESTIONS))
    json_path = tmp_path / "b.json"
    argv = ["bench", "--target", str(target_dir_with_gguf), "--methods", "llamacpp_serial,hf_ar_serial",
            "--data", str(data), "--questions", "1", "--reps", "1", "--max-tokens", "4", "--value-tokens", "2",
            "--json", str(json_path), "--no-progress", "--no-reference-cache"]
    assert main(argv) == 0
    skipped = [line for line in capsys.readouterr().err.splitlines() if line.startswith("skipping")]
    assert len(skipped) == 1 and skipped[0].startswith("skipping llamacpp_serial: llama-cpp-python is not installed")
    assert [row["method"] for row in json.loads(json_path.read_text())["rows"]] == ["hf_ar_serial"]


def test_the_peer_needs_a_gguf_of_the_target(tmp_path):
    with pytest.raises(peers.PeerUnavailable, match=f"{tmp_path}.* holds none"):
        peers.target_gguf(tmp_path)
    (tmp_path / "b.gguf").write_bytes(b"b")
    (tmp_path / "a.gguf").write_bytes(b"a")
    assert peers.target_gguf(tmp_path) == tmp_path / "a.gguf"
    assert peers.target_gguf(tmp_path / "b.gguf") == tmp_path / "b.gguf"


def test_the_shipped_gguf_is_found_in_the_cache_only_with_its_pinned_sha256(tmp_path, monkeypatch):
    monkeypatch.setenv("LANGCHAIN_SEED_HOME", str(tmp_path))
    beside_target, own_copy = peers.shipped_gguf_candidates()
    assert beside_target.parent == tmp_path / "models" / "smollm2-135m-instruct"
    with pytest.raises(peers.PeerUnavailable, match="not cached"):
        peers.shipped_gguf(fetch=False)
    own_copy.parent.mkdir(parents=True)
    own_copy.write_bytes(b"not the model")
    with pytest.raises(peers.PeerUnavailable, match="wrong sha256, refused"):
        peers.shipped_gguf(fetch=False)
    monkeypatch.setattr(peers, "WHEEL_GGUF_SHA256", hashlib.sha256(b"not the model").hexdigest())
    assert peers.shipped_gguf(fetch=False) == own_copy
    # the default target's dir names the shipped GGUF, whatever else the dir holds
    assert peers.target_gguf(tmp_path / "models" / "smollm2-135m-instruct") == own_copy


class _EchoDecoder:
    """Stands in for `peer_worker.LlamaCppDecoder`: each prompt's new ids are its last id
    plus 1, 2, ...; a prompt holding 0 is refused as llama.cpp refuses an over-long one."""

    gguf, settings = "echo.gguf", {"threads": 2}

    def __init__(self) -> None:
        self.forwards = self.evaluated_tokens = self.forgotten = 0
        self.closed = False

    def forget_prompts(self) -> None:
        self.forgotten += 1

    def stop_rule(self, eos_ids, stop):
        return lambda new: new[-1] in set(eos_ids)

    def generate(self, prompt_ids, max_tokens, stop=None):
        if 0 in prompt_ids:
            raise ValueError("prompt holds 0")
        new = []
        for step in range(1, max_tokens + 1):
            new.append(prompt_ids[-1] + step)
            if stop is not None and stop(new):
                break
        self.forwards += len(new)
        self.evaluated_tokens += len(prompt_ids) + len(new)
        return new

    def close(self) -> None:
        self.closed = True


def _serve(requests: list[dict], factory) -> list[dict]:
    replies = io.StringIO()
    peer_worker.serve(factory, io.StringIO("".join(json.dumps(r) + "\n" for r in requests) + "\n"), replies)
    return [json.loads(line) for line in replies.getvalue().splitlines()]


def test_the_worker_says_ready_answers_each_request_and_closes_the_decoder_at_the_end_of_its_input():
    decoder = _EchoDecoder()
    ready, answer, refused, after = _serve([
        {"prompts": [[5], [7, 9]], "max_tokens": 4, "eos": [11]},
        {"prompts": [[0]], "max_tokens": 2},
        {"prompts": [[1]], "max_tokens": 1},
    ], lambda: decoder)
    assert ready["ready"]["gguf"] == "echo.gguf" and ready["ready"]["threads"] == 2
    assert answer["outputs"] == [[6, 7, 8, 9], [10, 11]]  # the second ends at its EOS
    assert answer["forwards"] == 6 and answer["evaluated_tokens"] == 1 + 4 + 2 + 2 and answer["peak_rss_mb"] > 0
    assert refused == {"error": "ValueError: prompt holds 0"}  # one bad request; the worker goes on
    assert after["outputs"] == [[2]] and decoder.closed


def test_the_worker_forgets_its_prompts_when_asked():
    decoder = _EchoDecoder()
    _, answer, forgotten = _serve([{"prompts": [[5]], "max_tokens": 1}, {"forget": True}], lambda: decoder)
    assert answer["outputs"] == [[6]] and forgotten == {"forgotten": True} and decoder.forgotten == 1


def test_a_worker_without_llama_cpp_says_so_and_exits():
    def missing():
        raise ImportError("No module named 'llama_cpp'")

    assert _serve([{"prompts": [[1]], "max_tokens": 1}], missing) == [
        {"error": "llama-cpp-python is not installed (No module named 'llama_cpp')", "unavailable": True}]


def test_the_worker_client_refuses_where_llama_cpp_is_missing(tmp_path, no_llama_cpp):
    with pytest.raises(peers.PeerUnavailable, match=r"llama-cpp-python is not installed.*\.\[peers\]"):
        peers.LlamaCppWorker(tmp_path / "a.gguf")


def test_a_worker_that_cannot_load_the_gguf_is_a_peer_unavailable(tmp_path):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python (the peers extra) is not installed")
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF not a model")
    with pytest.raises(peers.PeerUnavailable, match="could not load the GGUF"):
        peers.LlamaCppWorker(broken, start_timeout_s=60)


@pytest.fixture(scope="module")
def real_gguf():
    pytest.importorskip("llama_cpp", reason="llama-cpp-python (the peers extra) is not installed")
    try:
        return peers.shipped_gguf(fetch=False)
    except peers.PeerUnavailable as reason:
        pytest.skip(str(reason))


@pytest.fixture(scope="module")
def real_decoder(real_gguf):
    decoder = peer_worker.LlamaCppDecoder(real_gguf, threads=2)
    yield decoder
    decoder.close()


@pytest.fixture(scope="module")
def real_worker(real_gguf):
    worker = peers.LlamaCppWorker(real_gguf, threads=2)
    yield worker
    worker.close()


@pytest.fixture(scope="module")
def real_tokenizer():
    from transformers import AutoTokenizer

    from langchain_seed.pair.paths import TARGET_NAME, cache_dir

    directory = cache_dir() / "models" / TARGET_NAME
    if not (directory / "tokenizer.json").is_file():
        pytest.skip(f"the default target's tokenizer is not cached in {directory}")
    return AutoTokenizer.from_pretrained(directory)


def test_llama_cpp_decodes_the_shipped_gguf_greedily_reusing_the_prompt_prefix(real_decoder, real_tokenizer):
    prompt_ids = real_tokenizer.encode("The capital of France is", add_special_tokens=False)
    forwards, evaluated = real_decoder.forwards, real_decoder.evaluated_tokens
    first = real_decoder.generate(prompt_ids, 6)
    assert len(first) == 6 and real_tokenizer.decode(first).startswith(" Paris")
    assert real_decoder.forwards - forwards == 1 + 5  # one prefill, then one forward per token after the first
    assert real_decoder.evaluated_tokens - evaluated == len(prompt_ids) + 5
    evaluated = real_decoder.evaluated_tokens
    again = real_decoder.generate(prompt_ids, 6)  # the prompt is cached: one token replayed for its logits
    assert again == first and real_decoder.evaluated_tokens - evaluated == 1 + 5
    assert real_decoder.generate(prompt_ids, 6, stop=lambda new: len(new) == 3) == first[:3]
    real_decoder.forget_prompts()
    evaluated = real_decoder.evaluated_tokens
    assert real_decoder.generate(prompt_ids, 6) == first  # nothing reused: the whole prompt again
    assert real_decoder.evaluated_tokens - evaluated == len(prompt_ids) + 5
    with pytest.raises(ValueError, match="exceed llama.cpp's context"):
        real_decoder.generate(prompt_ids, real_decoder.context_tokens)


def test_the_stop_rule_ends_at_an_eos_or_a_stop_string_in_llama_cpps_text(real_decoder, real_tokenizer):
    prompt_ids = real_tokenizer.encode("The capital of France is", add_special_tokens=False)
    free = real_decoder.generate(prompt_ids, 12)
    text = real_tokenizer.decode(free)
    assert "." in text  # " Paris." and on
    at_stop = real_decoder.generate(prompt_ids, 12, real_decoder.stop_rule([], ["."]))
    assert "." in real_tokenizer.decode(at_stop) and "." not in real_tokenizer.decode(at_stop[:-1])
    assert at_stop == free[:len(at_stop)]
    assert real_decoder.generate(prompt_ids, 12, real_decoder.stop_rule([free[2]], [])) == free[:3]
    assert real_decoder.generate(prompt_ids, 12, real_decoder.stop_rule([], [])) == free


def test_the_worker_decodes_as_the_decoder_does_in_its_own_process(real_worker, real_decoder, real_tokenizer):
    prompts = [real_tokenizer.encode(text, add_special_tokens=False)
               for text in ("The capital of France is", "The capital of France is a city")]
    expected = [real_decoder.generate(ids, 8) for ids in prompts]
    reply = real_worker.generate(prompts, 8)
    assert reply.outputs == expected and real_worker.settings["flash_attn"] is True
    assert reply.forwards >= 2 * 7 and reply.evaluated_tokens >= 2 * 7 and reply.peak_rss_mb > 0
    assert real_worker.settings["pid"] != os.getpid()
    assert real_worker.generate(prompts[:1], 8, eos_ids=[expected[0][1]]).outputs == [expected[0][:2]]
    with pytest.raises(ValueError, match="llama.cpp worker: .*exceed llama.cpp's context"):
        real_worker.generate(prompts[:1], real_worker.context_tokens)
    assert real_worker.generate(prompts[:1], 8).outputs == expected[:1]  # still serving
    real_worker.generate(prompts[:1], 8)
    assert real_worker.generate(prompts[:1], 8).evaluated_tokens == 1 + 7  # the prompt reused
    real_worker.forget_prompts()
    assert real_worker.generate(prompts[:1], 8).evaluated_tokens == len(prompts[0]) + 7


def test_a_closed_worker_refuses_requests(real_gguf):
    worker = peers.LlamaCppWorker(real_gguf)
    worker.close()
    assert worker._process.returncode == 0
    with pytest.raises(RuntimeError, match="closed"):
        worker.generate([[1, 2]], 2)


def test_the_peer_llm_cuts_at_stop_strings(real_worker, real_tokenizer):
    eos = frozenset({real_tokenizer.eos_token_id})
    llm = peers.LlamaCppLLM(peer=real_worker, tokenizer=real_tokenizer, eos_token_ids=eos, max_tokens=6)
    full = llm.invoke("The capital of France is")
    assert full.startswith(" Paris")
    result = llm.generate(["The capital of France is"], stop=["aris"])
    generation = result.generations[0][0]
    assert generation.text == " P" and generation.generation_info["finish_reason"] == "stop"
    assert generation.generation_info["new_tokens"] == 1  # llama.cpp stopped at the stop string itself


def test_llamacpp_serial_forgets_its_prompts_before_each_timed_call_as_every_method_does(models):
    class Peer:
        def __init__(self) -> None:
            self.calls: list[str] = []

        def forget_prompts(self) -> None:
            self.calls.append("forget")

        def generate(self, prompts, max_tokens, eos_ids=()):
            self.calls.append("generate")
            return peers.PeerReply([[7] * max_tokens for _ in prompts], max_tokens, max_tokens, 1.0)

    method = LlamaCppMethod.__new__(LlamaCppMethod)
    method.name, method.models, method.peer = "llamacpp_serial", models, Peer()
    workload = workloads.build_single(QUESTIONS, models.tokenizer, max_tokens=2)
    protocol.run_benchmark(workload, [method], models, reference_outputs(models), reps=1, warmup=False, progress=False)
    assert method.peer.calls == ["forget", "generate"] * len(QUESTIONS)
