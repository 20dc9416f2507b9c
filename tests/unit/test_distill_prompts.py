"""`distill --prompts FILE` end to end on a tiny random pair: before/after acceptance per family
on the card, an interrupted run resumed to the same result, the generation cache, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from test_distill import make_target, make_tiny_llama  # noqa: E402

from langchain_seed import training  # noqa: E402
from langchain_seed.training import broad, fit, generations, mix, targets, token  # noqa: E402


def write_prompts(path: Path) -> Path:
    lines = [json.dumps(f"The {w} cat sat on the mat and then") for w in
             ("red", "big", "old", "shy", "fat", "tiny", "lazy", "wise", "odd", "calm")]
    lines += [json.dumps({"prompt": [{"role": "system", "content": "Be brief."},
                                     {"role": "user", "content": f"Count to {n}, please."}], "family": "count"})
              for n in range(3, 11)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def tiny_target(tmp_path_factory) -> Path:
    return make_target(tmp_path_factory.mktemp("pair") / "target")


@pytest.fixture(scope="module")
def tiny_pair(tiny_target, tmp_path_factory) -> tuple[Path, Path]:
    """The tiny target and a random 1-layer draft of its shape (the draft `--prompts` continues)."""
    return tiny_target, make_tiny_llama(tmp_path_factory.mktemp("draft") / "draft", layers=1, seed=5)


def distill_argv(pair: tuple[Path, Path], prompts: Path, out: Path, work: Path, *extra: str) -> list[str]:
    target, draft = pair
    return ["distill", "--prompts", str(prompts), "--target", str(target), "--out", str(out), "--work", str(work),
            "--init-draft", str(draft),
            "--layers", "1", "--head-size", "64", "--steps", "6", "--lr", "0.01", "--batch-size", "4",
            "--max-new-tokens", "8", "--measure-tokens", "8", "--gen-batch", "4", "--threads", "1",
            "--sample-temperatures", "1.0", "--measure-temperatures", "0.7", "--checkpoint-every", "2",
            "--prompt-weight", "0", "--no-progress", *extra]


def test_distill_prompts_end_to_end(tiny_pair, tmp_path):
    prompts = write_prompts(tmp_path / "prompts.jsonl")
    out, work = tmp_path / "draft", tmp_path / "work"
    assert training.main(distill_argv(tiny_pair, prompts, out, work, "--steps", "30")) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["config.json", token.LAYERS_FILE, targets.HEAD_IDS_FILE, "README.md"])
    report = json.loads((work / broad.REPORT_FILE).read_text())
    assert report["mode"] == "prompts" and report["heldout_prompts"] == {"count": 2, "text": 2}
    assert report["train_prompts"] == {"count": 6, "text": 8} and report["train_sequences"] == 28  # greedy + t1.0
    before, after = report["before"], report["after"]
    assert set(after["families"]) == {"count", "text"} and set(after["families"]["text"]) == {"greedy", "t0.7"}
    for table in (before, after):
        assert all(cell["drafted"] > 0 for per in table["families"].values() for cell in per.values())
    assert after["mean"]["greedy"] > before["mean"]["greedy"] + 0.1, "training did not raise acceptance"
    assert set(report["head"]["outside_head"]) == {"count", "text"}
    card = (out / "README.md").read_text()
    assert "| count |" in card and "greedy before | greedy after" in card and "t0.7 after" in card
    assert "langchain-seed distill --prompts" in card and 'SeedLLM.from_default(draft="DIR")' in card
    lines = (work / "generations.jsonl").read_text().splitlines()
    assert len(lines) == 28 and {json.loads(line)["temperature"] for line in lines} == {0.0, 1.0}


def test_an_interrupted_run_resumes_to_the_same_draft(tiny_pair, tmp_path, monkeypatch):
    prompts = write_prompts(tmp_path / "prompts.jsonl")
    calls = {"generate": 0, "loss": 0}
    real_generate, real_batch_loss = generations._generate, token.TokenDraft.batch_loss

    def counted_generate(*args, **kwargs):
        calls["generate"] += 1
        if calls.get("die_at") == calls["generate"]:
            raise KeyboardInterrupt
        return real_generate(*args, **kwargs)

    def counted_batch_loss(self, draft):
        loss = real_batch_loss(self, draft)

        def counted(picked):
            calls["loss"] += 1
            return loss(picked)
        return counted

    monkeypatch.setattr(generations, "_generate", counted_generate)
    monkeypatch.setattr(token.TokenDraft, "batch_loss", counted_batch_loss)
    assert training.main(distill_argv(tiny_pair, prompts, tmp_path / "whole", tmp_path / "work-whole")) == 0
    batches, steps = calls["generate"], calls["loss"]
    assert batches > 2 and steps == 6
    argv = distill_argv(tiny_pair, prompts, tmp_path / "resumed", tmp_path / "work-resumed")

    calls.update(generate=0, loss=0, die_at=2)  # killed while the target answers the second batch
    with pytest.raises(KeyboardInterrupt):
        training.main(argv)
    assert len((tmp_path / "work-resumed" / "generations.jsonl").read_text().splitlines()) == 4
    calls.update(generate=0, die_at=None)

    real_save = fit.Checkpoint.save

    def dies_after_step_4(self, state):
        real_save(self, state)
        if state["step"] == 4:
            raise KeyboardInterrupt

    monkeypatch.setattr(fit.Checkpoint, "save", dies_after_step_4)
    with pytest.raises(KeyboardInterrupt):
        training.main(argv)
    monkeypatch.setattr(fit.Checkpoint, "save", real_save)
    assert torch.load(tmp_path / "work-resumed" / "checkpoint.pt", weights_only=True)["step"] == 4
    assert calls["generate"] == batches - 1, "only the batches not yet cached were generated"

    calls.update(generate=0, loss=0)
    assert training.main(argv) == 0
    assert calls == {"generate": 0, "loss": 2, "die_at": None}, "the last run redid nothing but steps 5 and 6"
    whole = json.loads((tmp_path / "work-whole" / broad.REPORT_FILE).read_text())
    resumed = json.loads((tmp_path / "work-resumed" / broad.REPORT_FILE).read_text())
    for name in ("before", "after", "losses_every_10", "final_loss", "train_output_tokens"):
        assert resumed[name] == whole[name], name
    from safetensors.torch import load_file

    whole_weights, resumed_weights = (load_file(tmp_path / name / token.LAYERS_FILE) for name in ("whole", "resumed"))
    assert whole_weights.keys() == resumed_weights.keys()
    assert all(torch.equal(whole_weights[k], resumed_weights[k]) for k in whole_weights)
    assert (tmp_path / "work-resumed" / "generations.jsonl").read_bytes() == \
        (tmp_path / "work-whole" / "generations.jsonl").read_bytes()


def test_the_generation_cache_drops_a_cut_line_and_skips_done_jobs(tiny_target, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_target).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_target)
    prompts = [mix.MixPrompt("text", f"u{i}", "train", f"abc {i}") for i in range(3)]
    jobs = generations.jobs_for(prompts, [tokenizer(p.text).input_ids for p in prompts], (0.7,))
    path = tmp_path / "g.jsonl"
    first = generations.generate_all(model, tokenizer, jobs, generations.GenerationCache(path), 4, 5, 3, False)
    assert [r["temperature"] for r in first] == [0.0, 0.7] * 3
    assert all(len(r["topk_ids"]) == len(r["output_ids"]) and len(r["topk_ids"][0]) == 3 for r in first)
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"key": "cut sho')  # an interrupted append
    cache = generations.GenerationCache(path)
    assert path.read_bytes() == whole and len(cache.records) == 6
    monkeypatch.setattr(generations, "_generate", lambda *a, **k: pytest.fail("a cached job was regenerated"))
    assert generations.generate_all(model, tokenizer, jobs, cache, 4, 5, 3, False) == first
    example = generations.to_example(first[1])
    assert example.n_prompt == len(first[1]["prompt_ids"]) and example.topk_ids.shape == (len(first[1]["output_ids"]), 3)


@pytest.mark.parametrize(("lines", "message"), [
    (None, "no such file"),
    ([], "holds no prompts"),
    (['"fine"', "3"], "line 2: expected a string"),
    (['"fine"', json.dumps("x" * 1100)], "line 2: the prompt is 1100 tokens"),
])
def test_distill_refuses_bad_prompt_files_naming_the_line(tiny_pair, tmp_path, lines, message):
    path = tmp_path / "prompts.jsonl"
    if lines is not None:
        path.write_text("".join(line + "\n" for line in lines))
    with pytest.raises(SystemExit, match=message):
        training.main(distill_argv(tiny_pair, path, tmp_path / "o", tmp_path / "w"))


def test_from_default_loads_a_distilled_draft(tmp_path, monkeypatch):
    """`SeedLLM.from_default(draft=DIR)` assembles DIR (as distill wrote it) with the default target."""
    from test_distill import make_tiny_llama

    from langchain_seed import SeedLLM
    from langchain_seed.pair import assemble

    target = make_tiny_llama(tmp_path / "target")
    draft = make_tiny_llama(tmp_path / "draft", layers=1, seed=3)
    (draft / targets.HEAD_IDS_FILE).write_text(json.dumps(list(range(64))))
    asked = {}

    def assembled(target_dir, progress=True, asset_dir=None):
        asked["asset_dir"] = asset_dir
        return draft

    monkeypatch.setattr(assemble, "ensure_default_pair", lambda progress=True: (target, tmp_path / "shipped"))
    monkeypatch.setattr(assemble, "ensure_default_draft", assembled)
    llm = SeedLLM.from_default(draft=tmp_path / "my-draft")
    assert asked["asset_dir"] == tmp_path / "my-draft"
    assert llm.engine.draft_model.config.num_hidden_layers == 1
    assert llm.engine.draft_head_token_ids == list(range(64))
    llm.engine.close()


def test_distill_mix_end_to_end(tiny_pair, tmp_path):
    """`--mix`: every family of the broad mix (self-instruct from the target's own list) is trained
    on and measured on its held-out split; the fresh head is chosen from the answers."""
    from test_distill import write_gsm8k

    target, _ = tiny_pair
    data = write_gsm8k(tmp_path / "gsm8k.jsonl", n=12)
    work = tmp_path / "work"
    argv = ["distill", "--mix", "--target", str(target), "--out", str(tmp_path / "draft"), "--work", str(work),
            "--data", str(data), "--heldout", "4", "--per-family", "2", "--heldout-per-family", "1",
            "--self-instruct", "2", "--layers", "1", "--head-size", "64", "--steps", "4", "--batch-size", "4",
            "--max-new-tokens", "6", "--measure-tokens", "6", "--gen-batch", "8", "--threads", "1",
            "--sample-temperatures", "", "--measure-temperatures", "1.0", "--prompt-weight", "0", "--no-progress"]
    assert training.main(argv) == 0
    report = json.loads((work / broad.REPORT_FILE).read_text())
    assert report["mode"] == "mix" and report["init_draft"] is None and report["head_size"] == 64
    assert set(mix.BASE_FAMILIES) <= set(report["train_prompts"]) and report["train_prompts"]["self-instruct"] >= 2
    assert set(mix.BASE_FAMILIES) <= set(report["after"]["families"])
    assert set(report["after"]["families"]["chat"]) == {"greedy", "t1.0"}
    assert set(report["head"]["outside_top_n_by_size"]) == {"2048", "4096", "8192", "16384"}
