"""`langchain_seed.bench`: every method on a tiny workload, the report, the CLI.

Tiny random models from conftest; no real model, no timing assertions (timings are
ratios measured in one run and are never asserted in tests).
"""

from __future__ import annotations

import json

import pytest

from langchain_seed.bench import probes, process_memory, profile, protocol, report, workloads
from langchain_seed.bench.methods import (
    BENCH_METHODS,
    METHODS,
    SEED_METHODS,
    BenchModels,
    make_method,
    parse_methods,
    reference_outputs,
)
from langchain_seed.bench.workloads import truncate_at_eos

QUESTIONS = ["What is 12 + 30?", "Tom has 3 apples and buys 2 more. How many apples?"]
ROW_KEYS = {"method", "seconds", "new_tokens", "tokens_per_s", "target_calls", "acceptance_rate", "peak_rss_mb",
            "identical_to_target", "speedup_vs_hf_ar_serial", "all_accepted_bound_s"}


@pytest.fixture(scope="module")
def models(tiny_target, tiny_draft, tiny_tokenizer):
    return BenchModels(tiny_target, tiny_draft, tiny_tokenizer, None, (1, 1, 1), "tiny-target", "tiny-draft")


@pytest.fixture(scope="module")
def reference(models):
    return protocol.CachedReference(reference_outputs(models))


@pytest.fixture(scope="module")
def tot_step(models, reference):
    return workloads.build_tot_step(QUESTIONS, models.tokenizer, reference, thought_tokens=8, value_tokens=4)


@pytest.fixture(scope="module")
def bench_run(models, reference, tot_step):
    methods = [make_method(name, models) for name in METHODS]
    try:
        run = protocol.run_benchmark(tot_step, methods, models, reference, reps=2, progress=False)
    finally:
        for method in methods:
            method.close()
    run.profile = profile.profile_seed(tot_step, models, "seed_batched")
    return run


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "questions.jsonl"
    path.write_text("".join(json.dumps({"question": q, "answer": "#### 1"}) + "\n" for q in QUESTIONS))
    return path


def test_tot_step_groups_thoughts_then_values(tot_step, reference, models):
    assert [g.phase for g in tot_step.groups] == ["thoughts", "values"] * len(QUESTIONS)
    thoughts, values = tot_step.groups[:2]
    assert len(set(thoughts.prompts)) == 3 and all(f"option {i} of 3" in p for i, p in enumerate(thoughts.prompts, 1))
    assert thoughts.max_tokens == 8 and values.max_tokens == 4
    # the value prompts are built from the target's greedy thoughts
    greedy = reference([list(ids) for ids in thoughts.prompt_ids], 8)
    for tokens, prompt in zip(greedy, values.prompts):
        thought = workloads.thought_from_tokens(models.tokenizer, tokens)
        assert prompt.startswith(f"Question: {QUESTIONS[0]}\nStep 1: {thought}\n") and prompt.endswith("Score: ")


def test_every_method_runs_and_seed_methods_are_identical(bench_run):
    records = {r.name: r for r in bench_run.records}
    assert list(records) == list(METHODS)
    for name, record in records.items():
        assert len(record.reps) == 2
        assert all(rep.seconds > 0 and rep.new_tokens > 0 and rep.target_calls > 0 for rep in record.reps), name
    for name in (*SEED_METHODS, "hf_ar_serial"):
        assert records[name].identical, (name, records[name].mismatches)
    for name in ("seed_sd_serial", "seed_rounds", "seed_batched", "hf_assisted_serial"):
        assert all(rep.draft_calls > 0 for rep in records[name].reps), name
    assert all(rep.draft_calls == 0 for rep in records["hf_ar_serial"].reps)
    # one target forward per generated token for plain serial decoding (transformers `generate`)
    rep = records["hf_ar_serial"].reps[0]
    assert rep.target_calls == rep.new_tokens
    # batching shares forwards across the group
    assert records["hf_ar_batched"].reps[0].target_calls < rep.target_calls


def test_rows_schema_and_values(bench_run):
    rows = report.build_rows(bench_run)
    assert [row["method"] for row in rows] == list(METHODS)
    for row in rows:
        assert ROW_KEYS <= set(row)
        assert row["tokens_per_s"] > 0 and row["peak_rss_mb"] > 0
    by_name = {row["method"]: row for row in rows}
    assert by_name["hf_ar_serial"]["speedup_vs_hf_ar_serial"] == pytest.approx(1.0)
    assert by_name["hf_ar_serial"]["acceptance_rate"] is None
    assert by_name["hf_ar_serial"]["all_accepted_bound_s"] is None
    for name in ("hf_assisted_serial", *SEED_METHODS):
        reps = next(r for r in bench_run.records if r.name == name).reps  # summed over the repetitions
        expected = sum(r.accepted for r in reps) / sum(r.drafted for r in reps)
        assert by_name[name]["acceptance_rate"] == pytest.approx(expected) and 0 < expected < 1, name
    for name in SEED_METHODS:
        bound = by_name[name]["all_accepted_bound_s"]
        assert bound is not None and 0 < bound <= by_name[name]["seconds"] * 1.0001, name
    assert len({row["new_tokens"] for row in rows}) == 1  # same work for every method


def test_json_document_schema(bench_run, tmp_path):
    document = report.to_document(bench_run, report.machine_info("cpu"), {"target": "t", "draft": "d"})
    path = report.write_json(document, tmp_path / "out" / "bench.json")
    loaded = json.loads(path.read_text())
    assert loaded["workload"] == "tot-step"
    assert {"platform", "cpu_count", "torch_threads", "torch_version"} <= set(loaded["machine"])
    assert loaded["model_pair"] == {"target": "t", "draft": "d"}
    assert len(loaded["rows"]) == len(METHODS)
    assert all(ROW_KEYS <= set(row) for row in loaded["rows"])
    assert loaded["profile"]["method"] == "seed_batched"


def test_table_and_profile_text(bench_run):
    table = report.format_table(report.build_rows(bench_run))
    lines = table.splitlines()
    assert lines[0].split()[0] == "method" and len(lines) == 2 + len(METHODS)
    assert all(name in table for name in METHODS)
    profile = report.format_profile(bench_run.profile)
    for stage in ("target_verify_forward", "draft_stage", "other"):
        assert stage in profile
    shares = bench_run.profile["share"]
    assert shares["draft_stage_forwards"] <= shares["draft_stage"] + 1e-9
    assert bench_run.profile["rounds"] > 0


def test_plot_is_written(bench_run, tmp_path):
    pytest.importorskip("matplotlib")
    path = report.write_plot(report.build_rows(bench_run), tmp_path / "bench.png", "tiny")
    assert path.stat().st_size > 1000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_single_workload(models, reference):
    workload = workloads.build_single(QUESTIONS[:1], models.tokenizer, max_tokens=6)
    methods = [make_method(name, models) for name in ("hf_ar_serial", "hf_ar_batched", "seed_batched")]
    try:
        run = protocol.run_benchmark(workload, methods, models, reference, reps=1, warmup=False, progress=False)
    finally:
        for method in methods:
            method.close()
    assert len(workload.groups) == 1 and len(workload.groups[0].prompts) == 1
    assert all(record.identical for record in run.records)


def test_tot_full_workload(models):
    workload = workloads.build_tot_full(QUESTIONS[:1], max_tokens=6)
    methods = [make_method(name, models) for name in ("hf_ar_batched", "seed_batched", "seed_sd_serial")]
    try:
        run = protocol.run_tot_full(workload, methods, models, reps=1, warmup=False, progress=False)
    finally:
        for method in methods:
            method.close()
    rows = {row["method"]: row for row in report.build_rows(run)}
    assert rows["seed_batched"]["identical_to_target"] and rows["seed_sd_serial"]["identical_to_target"]
    assert all(row["new_tokens"] > 0 and row["target_calls"] > 0 for row in rows.values())
    assert rows["hf_ar_batched"]["speedup_vs_hf_ar_serial"] is None  # the reference run is not timed


def test_truncate_at_eos():
    assert workloads.truncate_at_eos([5, 6, 2, 2, 2], {2}) == [5, 6, 2]
    assert workloads.truncate_at_eos([5, 6, 7], {2}, max_tokens=2) == [5, 6]
    assert workloads.truncate_at_eos([], {2}) == []


def test_parse_methods():
    assert parse_methods("seed_batched, hf_ar_serial") == ["hf_ar_serial", "seed_batched"]
    assert parse_methods(None) == list(BENCH_METHODS)  # the peers too: skipped where they cannot run
    assert parse_methods("llamacpp_serial,hf_ar_serial") == ["hf_ar_serial", "llamacpp_serial"]
    with pytest.raises(ValueError, match="unknown method"):
        parse_methods("hf_ar_serial,nope")


def test_load_questions(data_file):
    assert workloads.load_questions(2, data_file) == QUESTIONS
    with pytest.raises(ValueError, match="asked for 3"):
        workloads.load_questions(3, data_file)
    packaged = workloads.load_questions(3)
    assert len(packaged) == 3 and packaged[0].startswith("Janet")


def _parse(argv):
    from langchain_seed.cli import build_parser

    return build_parser().parse_args(argv)


def test_cli_quick_parsing():
    from langchain_seed.cli import bench as cli

    args = _parse(["bench", "--quick"])
    assert args.quick and args.workload == "tot-step" and args.func is cli.run_bench
    assert cli.resolve_counts(args) == cli.QUICK["tot-step"]
    assert cli.resolve_counts(_parse(["bench"])) == cli.FULL["tot-step"]
    args = _parse(["bench", "--quick", "--workload", "single", "--questions", "3", "--k-config", "2,2,1",
                   "--methods", "seed_rounds,hf_ar_serial", "--max-tokens", "32"])
    assert cli.resolve_counts(args) == (3, cli.QUICK["single"][1])
    assert args.k_config == (2, 2, 1) and args.methods == ["hf_ar_serial", "seed_rounds"]
    assert args.max_tokens == 32
    for bad in (["bench", "--k-config", "1,0"], ["bench", "--methods", "fast"], ["bench", "--reps", "0"]):
        with pytest.raises(SystemExit):
            _parse(bad)


def _save_pair(tmp_path, target, draft, tokenizer):
    """The tiny target and draft saved as model directories (each with the tokenizer)."""
    target_dir, draft_dir = tmp_path / "target", tmp_path / "draft"
    for model, directory in ((target, target_dir), (draft, draft_dir)):
        model.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
    return target_dir, draft_dir


def test_cli_end_to_end(tiny_target, tiny_draft, tiny_tokenizer, tmp_path, data_file, capsys, monkeypatch):
    from langchain_seed.cli import main

    monkeypatch.setenv("LANGCHAIN_SEED_HOME", str(tmp_path / "home"))

    target_dir, draft_dir = _save_pair(tmp_path, tiny_target, tiny_draft, tiny_tokenizer)
    (draft_dir / "head_token_ids.json").write_text(json.dumps(list(range(len(tiny_tokenizer)))))
    json_path, plot_path = tmp_path / "b.json", tmp_path / "b.png"
    argv = ["bench", "--target", str(target_dir), "--draft", str(draft_dir), "--data", str(data_file),
            "--questions", "1", "--reps", "1", "--max-tokens", "6", "--value-tokens", "3", "--k-config", "1,1",
            "--json", str(json_path), "--no-progress", "--profile", "--check-identical"]
    if _has_matplotlib():
        argv += ["--plot", str(plot_path)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "seed_batched" in out and "profile of seed_batched" in out
    document = json.loads(json_path.read_text())
    assert document["model_pair"]["k_config"] == [1, 1]
    assert document["model_pair"]["draft_head_tokens"] == len(tiny_tokenizer)
    assert {row["method"] for row in document["rows"]} == set(METHODS)
    assert all(row["identical_to_target"] for row in document["rows"] if row["method"].startswith("seed_"))
    own = document["own_process"]  # seed_batched again, in a process that loads only what it needs
    assert own["method"] == "seed_batched" and own["identical_to_target"] is True
    assert 0 < own["after_load_mb"] <= own["peak_rss_mb"]
    assert report.format_own_process(own) in out and "identical to the target's" in out
    if _has_matplotlib():
        assert plot_path.stat().st_size > 1000
    assert len(list((tmp_path / "home" / "bench-reference").glob("*.json"))) == 1


@pytest.mark.parametrize("methods", ["seed_batched", "hf_ar_serial,seed_batched", "hf_assisted_serial,seed_batched"])
def test_the_seed_methods_hold_the_draft_seedllm_holds_and_a_float32_one_only_for_the_assistant(
        tiny_target, tiny_draft, tiny_tokenizer, tmp_path, methods):
    """Only transformers' assisted generation gets a float32 draft; the seed methods' draft
    takes --draft-activations (int8 here), so their memory is what `SeedLLM` would hold."""
    from langchain_seed.cli import bench_models
    from langchain_seed.engine.weights.int8_dot import Int8Linear

    target_dir, draft_dir = _save_pair(tmp_path, tiny_target, tiny_draft, tiny_tokenizer)
    args = _parse(["bench", "--target", str(target_dir), "--draft", str(draft_dir), "--methods", methods,
                   "--draft-activations", "int8"])
    models = bench_models.load_bench_models(args)

    def int8_linears(model) -> int:
        return sum(isinstance(module, Int8Linear) for module in model.modules())

    assert int8_linears(models.engine_draft) > 0
    if "hf_assisted_serial" in methods:
        assert models.draft is not models.engine_draft and int8_linears(models.draft) == 0
    else:
        assert models.seed_draft is None and models.draft is models.engine_draft


def test_reference_outputs_persist_per_model(models, tmp_path):
    calls = []

    def generate(prompt_ids, max_tokens):
        calls.append(len(prompt_ids))
        return [ids[-1:] * max_tokens for ids in prompt_ids]

    path = tmp_path / f"{protocol.model_fingerprint(models.target)}.json"
    first = protocol.CachedReference(generate, path)
    assert first([[1, 2], [3]], 2) == [[2, 2], [3, 3]]
    assert first([[3], [4]], 2) == [[3, 3], [4, 4]] and calls == [2, 1]
    again = protocol.CachedReference(generate, path)
    assert again([[4], [1, 2], [3]], 2) == [[4, 4], [2, 2], [3, 3]]
    assert again([[4]], 3) == [[4, 4, 4]] and calls == [2, 1, 1]  # max_tokens is part of the key
    assert protocol.model_fingerprint(models.target) != protocol.model_fingerprint(models.draft)
    assert protocol.model_fingerprint(models.target) == protocol.model_fingerprint(models.target)


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def test_hf_generate_batched_rows_end_at_their_stop_string(models):
    from langchain_seed.bench.hf_llm import hf_generate

    prompts = [models.tokenizer.encode(q, add_special_tokens=False) for q in QUESTIONS]
    serial = [hf_generate(models.target, [ids], 12, models.tokenizer)[0] for ids in prompts]
    text = models.tokenizer.decode(serial[0])
    stop = next(ch for ch in text[1:] if not ch.isspace())  # a string the first output contains
    batched = hf_generate(models.target, prompts, 12, models.tokenizer, stop=[stop])
    one_by_one = [hf_generate(models.target, [ids], 12, models.tokenizer, stop=[stop])[0] for ids in prompts]
    assert batched == one_by_one
    assert len(batched[0]) < 12 and stop in models.tokenizer.decode(batched[0])


def test_seed_methods_run_their_own_feature_draft(models, reference, tot_step):
    """With `seed_draft` (a feature draft, which transformers cannot use as an assistant) the
    seed methods run it and stay identical; the assisted baseline keeps the token draft."""
    from dataclasses import replace

    from langchain_seed.engine import FeatureDraftModel

    feature = FeatureDraftModel.from_target(models.target, 1, list(range(models.target.config.vocab_size)))
    with_feature = replace(models, seed_draft=feature, seed_draft_name="tiny-feature")
    methods = [make_method(name, with_feature) for name in ("hf_assisted_serial", *SEED_METHODS)]
    try:
        assert all(m.engine.draft_model is feature for m in methods[1:])
        assert methods[0].assistant is models.draft
        run = protocol.run_benchmark(tot_step, methods, with_feature, reference, reps=1, warmup=False,
                                    progress=False)
    finally:
        for method in methods:
            method.close()
    document = report.to_document(run, {}, {}, {})
    assert all(row["identical_to_target"] for row in document["rows"])
    assert all(row["acceptance_rate"] > 0 for row in document["rows"] if row["method"] in SEED_METHODS)


def test_cli_seed_draft_is_the_seed_methods_and_a_feature_draft_is_no_assistant(
        tiny_target, tiny_draft, tiny_tokenizer, tmp_path, data_file, capsys, monkeypatch):
    from langchain_seed.cli import main
    from langchain_seed.engine import FeatureDraftModel

    monkeypatch.setenv("LANGCHAIN_SEED_HOME", str(tmp_path / "home"))
    target_dir, draft_dir = _save_pair(tmp_path, tiny_target, tiny_draft, tiny_tokenizer)
    feature_dir = tmp_path / "feature"
    FeatureDraftModel.from_target(tiny_target, 1, list(range(len(tiny_tokenizer)))).save(feature_dir)
    common = ["bench", "--target", str(target_dir), "--data", str(data_file), "--questions", "1", "--reps", "1",
              "--max-tokens", "6", "--value-tokens", "3", "--no-progress", "--no-warmup", "--no-own-process"]
    with pytest.raises(SystemExit, match="feature draft"):
        main(common + ["--draft", str(feature_dir), "--methods", "hf_assisted_serial"])
    json_path = tmp_path / "b.json"
    argv = common + ["--draft", str(draft_dir), "--seed-draft", str(feature_dir),
                     "--methods", "hf_assisted_serial,seed_batched", "--json", str(json_path)]
    assert main(argv) == 0
    pair = json.loads(json_path.read_text())["model_pair"]
    assert pair["seed_draft"] == str(feature_dir) and pair["draft"] == str(draft_dir)
    assert "own_process" not in json.loads(json_path.read_text())  # --no-own-process
    rows = json.loads(json_path.read_text())["rows"]
    assert all(row["identical_to_target"] for row in rows)


@pytest.mark.parametrize("pending_limit", [0, 32])
def test_target_calls_count_prefills_that_skip_the_lm_head(models, monkeypatch, pending_limit):
    """Own prompt text is prefilled through the target's decoder alone (no logits): those
    forwards are target calls too, and the harness counts what the engine made."""
    from langchain_seed.engine import scheduler as scheduler_module

    monkeypatch.setattr(scheduler_module, "BATCHED_PENDING_MAX", pending_limit)
    stem = models.tokenizer("Solve the math problem step by step. Question: what is 12 + 30?").input_ids
    siblings = [stem + models.tokenizer(f" option {i} of 3:").input_ids for i in range(3)]
    from langchain_seed.engine import SamplingParams

    method = make_method("seed_batched", models)
    method.engine.generate(siblings[:1], SamplingParams(max_tokens=2))  # the engine's one-off checks
    counter = probes.ForwardCounter(models.target, models.draft)
    try:
        batch = method.engine.generate(siblings, SamplingParams(max_tokens=6))
    finally:
        counter.close()
        method.close()
    assert counter.target == batch.stats.target_forwards
    assert counter.draft == batch.stats.draft_forwards


def test_the_machine_record_names_the_cpu_model_and_its_vector_extensions(monkeypatch, tmp_path):
    from langchain_seed.bench import report
    from langchain_seed.engine import calibration

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Example CPU 9000\nflags\t\t: fpu sse4_2 avx avx2 fma avx512f amx_tile\n")
    real_path = calibration.Path
    monkeypatch.setattr(calibration, "Path", lambda name: cpuinfo if name == "/proc/cpuinfo" else real_path(name))
    info = report.machine_info()
    assert info["cpu_model"] == "Example CPU 9000"
    assert info["cpu_vector_extensions"] == ["sse4_2", "avx", "avx2", "fma", "avx512f", "amx_tile"]


def test_every_timed_call_starts_without_earlier_prompts(models, reference, tot_step, monkeypatch):
    """The engine keeps prompt prefixes between requests; the harness empties them before
    each timed call, so that no method starts from another's prompts or an earlier repetition's."""
    method = make_method("seed_batched", models)
    calls = []
    run_group = method.run_group
    monkeypatch.setattr(method, "forget_prompts", lambda: calls.append("forget"))
    monkeypatch.setattr(method, "run_group", lambda *args: calls.append("run") or run_group(*args))
    try:
        protocol.run_benchmark(tot_step, [method], models, reference, reps=1, warmup=False, progress=False)
    finally:
        method.close()
    assert calls == ["forget", "run"] * len(tot_step.groups)


@pytest.mark.parametrize("methods", ["seed_batched", "hf_ar_serial,hf_ar_batched,seed_batched"])
def test_a_gguf_target_runs_in_the_engines_modules_and_transformers_methods_on_the_same_ones(
        tmp_path, data_file, capsys, monkeypatch, methods):
    """The seed methods decode the GGUF in the engine's own Llama modules (`engine.llama`);
    the transformers methods run transformers' classes on the same modules or their
    float32 copy, and every output is the same."""
    from langchain_seed.cli import bench_models, main
    from langchain_seed.engine.llama import is_engine_llama

    from tiny_llama import make_tiny_gguf_pair

    monkeypatch.setenv("LANGCHAIN_SEED_HOME", str(tmp_path / "home"))
    target, draft = make_tiny_gguf_pair(tmp_path)
    argv = ["bench", "--target", str(target), "--draft", str(draft), "--data", str(data_file), "--questions", "1",
            "--reps", "1", "--max-tokens", "6", "--value-tokens", "3", "--k-config", "1,1", "--methods", methods]
    models = bench_models.load_bench_models(_parse(argv))
    assert is_engine_llama(models.engine_target) and is_engine_llama(models.engine_draft)
    if "hf_ar_serial" in methods:
        assert not is_engine_llama(models.target) and hasattr(models.target, "generate")
    json_path = tmp_path / "gguf.json"
    assert main([*argv, "--json", str(json_path), "--no-progress", "--check-identical"]) == 0
    document = json.loads(json_path.read_text())
    assert {row["method"] for row in document["rows"]} == set(methods.split(","))
    assert all(row["identical_to_target"] for row in document["rows"])
    assert document["own_process"]["identical_to_target"] is True
    assert "seed_batched" in capsys.readouterr().out


def test_own_process_memory_runs_the_method_with_only_its_models_and_says_when_its_outputs_differ(
        tiny_target, tiny_draft, tiny_tokenizer, tmp_path, monkeypatch):
    from langchain_seed.cli import bench_own_process

    monkeypatch.setenv("LANGCHAIN_SEED_HOME", str(tmp_path / "home"))
    target_dir, draft_dir = _save_pair(tmp_path, tiny_target, tiny_draft, tiny_tokenizer)
    models = BenchModels(tiny_target, tiny_draft, tiny_tokenizer, None, (1, 1), str(target_dir), str(draft_dir))
    reference = protocol.CachedReference(reference_outputs(models))
    workload = workloads.build_single(["What is 2 + 3?", "Name a color."], tiny_tokenizer, max_tokens=5)
    args = _parse(["bench", "--target", str(target_dir), "--draft", str(draft_dir), "--k-config", "1,1"])
    ballast = bytearray(800 * 2**20)  # this process holds 800 MB more than the fresh one can
    ballast[::4096] = b"\x01" * len(range(0, len(ballast), 4096))
    answer = bench_own_process.measure(args, workload.groups, "seed_batched", threads=1)
    assert answer["method"] == "seed_batched" and 0 < answer["after_load_mb"] <= answer["peak_rss_mb"]
    assert answer["decoding_peak_mb"] is None or answer["decoding_peak_mb"] <= answer["peak_rss_mb"]
    # its own peak, not this process's (a forked child's ru_maxrss starts from its parent's)
    assert answer["peak_rss_mb"] < process_memory.status_mb("VmRSS") - 700
    del ballast
    eos = models.eos_token_ids
    expected = [[truncate_at_eos(ids, eos) for ids in reference(group.id_lists(), group.max_tokens)]
                for group in workload.groups]
    assert [[truncate_at_eos(ids, eos) for ids in outs] for outs in answer["outputs"]] == expected
    with pytest.raises(RuntimeError, match="in a process of its own failed"):
        bench_own_process.measure(_parse(["bench", "--target", str(tmp_path / "missing")]), workload.groups,
                                  "seed_batched", threads=1)


def test_process_memory_reads_this_process_and_the_own_process_line():
    assert 0 < process_memory.status_mb("VmRSS") <= process_memory.status_mb("VmHWM")
    with pytest.raises(RuntimeError, match="no VmNothing"):
        process_memory.status_mb("VmNothing")
    own = {"method": "seed_batched", "after_load_mb": 504.2, "decoding_peak_mb": 580.4, "peak_rss_mb": 590.0,
           "identical_to_target": False}
    assert report.format_own_process(own) == (
        "seed_batched in a process of its own (only what it loads): peak RSS 580 MB while decoding, 590 MB with "
        "loading (504 MB after loading); outputs NOT identical to the target's")
    assert "while decoding" not in report.format_own_process({**own, "decoding_peak_mb": None})

