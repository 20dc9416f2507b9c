"""The llama.cpp peer (`langchain_seed.bench.peers`, method ``llamacpp_serial``) and what the
harness records for a method that is not the target: where each prompt's output diverges,
and the forwards the method counts itself.

Tiny models from conftest; the one test on the real GGUF runs only where llama-cpp-python is
installed and the default target's GGUF is cached (it never downloads anything).
"""

from __future__ import annotations

import hashlib
import json
import sys

import pytest

from langchain_seed.bench import peers, protocol, report, workloads
from langchain_seed.bench.methods import BenchModels, GroupOutput, Method, make_method, reference_outputs
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


@pytest.fixture(scope="module")
def real_decoder():
    pytest.importorskip("llama_cpp", reason="llama-cpp-python (the peers extra) is not installed")
    try:
        gguf = peers.shipped_gguf(fetch=False)
    except peers.PeerUnavailable as reason:
        pytest.skip(str(reason))
    decoder = peers.LlamaCppDecoder(gguf, threads=2)
    yield decoder
    decoder.close()


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
    with pytest.raises(ValueError, match="exceed llama.cpp's context"):
        real_decoder.generate(prompt_ids, real_decoder.context_tokens)


def test_the_peer_llm_cuts_at_stop_strings(real_decoder, real_tokenizer):
    eos = frozenset({real_tokenizer.eos_token_id})
    llm = peers.LlamaCppLLM(decoder=real_decoder, tokenizer=real_tokenizer, eos_token_ids=eos, max_tokens=6)
    full = llm.invoke("The capital of France is")
    assert full.startswith(" Paris")
    result = llm.generate(["The capital of France is"], stop=["aris"])
    generation = result.generations[0][0]
    assert generation.text == " P" and generation.generation_info["finish_reason"] == "stop"
