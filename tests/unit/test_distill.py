"""Distillation of a draft: acceptance replay, head ids, and an end-to-end tiny run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from langchain_seed import training  # noqa: E402
from langchain_seed.training import data as prompts  # noqa: E402
from langchain_seed.training import device, measure, pipeline, targets, token  # noqa: E402

import tiny_llama  # noqa: E402

CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant\n{% endif %}"
)


def make_tiny_llama(path: Path, layers: int = 3, seed: int = 0) -> Path:
    """The shared tiny Llama (`tiny_llama.make_tiny_llama`) with a chat template."""
    return tiny_llama.make_tiny_llama(path, layers, seed, chat_template=CHAT_TEMPLATE)


def make_target(path: Path) -> Path:
    """The tiny Llama with an LM head of its own. With tied embeddings a random model mostly repeats
    its last token, which any draft guesses, so there is nothing for training to improve."""
    target = make_tiny_llama(path)
    model = transformers.AutoModelForCausalLM.from_pretrained(target)
    model.config.tie_word_embeddings = False
    generator = torch.Generator().manual_seed(11)
    model.lm_head.weight = torch.nn.Parameter(torch.randn(model.lm_head.weight.shape, generator=generator) * 0.3)
    model.save_pretrained(target)
    return target


def write_gsm8k(path: Path, n: int = 12) -> Path:
    with open(path, "w") as handle:
        for i in range(n):
            answer = f"She has {i} + 2 = <<{i}+2={i + 2}>>{i + 2} apples.\nSo {i + 2} * 2 = {2 * i + 4}.\n#### {2 * i + 4}"
            handle.write(json.dumps({"question": f"Ann has {i} apples and gets 2. Then doubles. How many?",
                                     "answer": answer}) + "\n")
    return path


# ------------------------------------------------------------------ acceptance replay


def test_acceptance_is_one_when_draft_equals_target():
    tokens = [5, 6, 7, 8, 9, 10, 11, 12, 13, 14]
    accepted, drafted = measure.teacher_forced_acceptance(tokens, tokens, chain=4)
    # rounds at 0 and 5 each accept 4; positions 4 and 9 are the target's bonus tokens
    assert accepted == drafted == 8


def test_acceptance_hand_made_case():
    target = [1, 2, 3, 4, 5, 6, 7, 8, 9]
    draft = [1, 2, 0, 4, 5, 6, 7, 8, 0]
    # round at 0: drafts 4, matches [1, 2] -> accepted 2, target recovers token 3, j = 3
    # round at 3: drafts 4 (4..7), all match -> accepted 4, bonus token 8, j = 8
    # round at 8: drafts 1, mismatch -> accepted 0, j = 9
    assert measure.teacher_forced_acceptance(draft, target, chain=4) == (6, 9)
    assert measure.teacher_forced_acceptance([0] * 5, [1] * 5, chain=4) == (0, 4 + 4 + 3 + 2 + 1)


def test_acceptance_counted_past_the_end_drafts_the_whole_chain_every_round():
    target = [1, 2, 3, 4, 5, 6, 7, 8, 9]
    draft = [1, 2, 0, 4, 5, 6, 7, 8, 0]
    # the same three rounds as the hand-made case; the last one counts 4 drafted, not 1
    assert measure.teacher_forced_acceptance(draft, target, chain=4, count_past_end=True) == (6, 12)


def test_acceptance_rejects_length_mismatch():
    with pytest.raises(ValueError):
        measure.teacher_forced_acceptance([1, 2], [1], chain=4)


# ------------------------------------------------------------------------- helpers


def test_reference_steps_strip_calculator_and_final_line():
    answer = "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 eggs.\nShe makes 9 * 2 = $<<9*2=18>>18.\n#### 18"
    assert prompts.reference_steps(answer) == ["Janet sells 16 - 3 - 4 = 9 eggs.", "She makes 9 * 2 = $18."]
    assert prompts.format_steps(["a", "b"]) == "Step 1: a\nStep 2: b\n"


def test_prompt_shapes_match_the_tot_templates():
    assert prompts.render_prompt("answer", "Q?", "") == "Question: Q?\nTherefore, the final answer (a number) is "
    assert prompts.render_prompt("sample", "Q?", "Step 1: x\n", k=3, index=2).endswith(
        "Question: Q?\nStep 1: x\nNext step (option 2 of 3): ")
    assert "Propose 4 different next steps." in prompts.render_prompt("propose", "Q?", "", k=4)
    assert prompts.render_prompt("value", "Q?", "").endswith("Give a score from 0 to 10.\nScore: ")


def test_select_head_ids_frequency_then_lowest_fill():
    ids = targets.select_head_ids([[50, 50, 50, 40]], [[40, 30]], head_size=5, vocab_size=100, always=[2])
    assert ids == sorted({2, 50, 40, 30, 0})
    assert len(targets.select_head_ids([], [], head_size=300, vocab_size=100)) == 100


# ----------------------------------------------------------------------- end to end


@pytest.mark.parametrize("prompt_weight", ["0.2", "0"])
def test_distill_end_to_end_on_tiny_target(tmp_path, prompt_weight):
    target_dir = make_target(tmp_path / "target")
    data = write_gsm8k(tmp_path / "gsm8k.jsonl", n=12)
    out = tmp_path / "draft"
    argv = ["distill", "--target", str(target_dir), "--out", str(out), "--data", str(data),
            "--layers", "1", "--head-size", "64", "--steps", "10", "--lr", "0.01", "--heldout", "4",
            "--max-new-tokens", "6", "--gen-batch", "4", "--batch-size", "4", "--threads", "1",
            "--work", str(tmp_path / "work"), "--no-progress", "--prompt-weight", prompt_weight]
    assert training.main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["config.json", token.LAYERS_FILE, targets.HEAD_IDS_FILE, "README.md"])
    head_ids = json.loads((out / targets.HEAD_IDS_FILE).read_text())
    assert len(head_ids) == 64 and 2 in head_ids and head_ids == sorted(head_ids)
    from safetensors.torch import load_file

    weights = load_file(out / token.LAYERS_FILE)
    assert not any("embed_tokens" in k or "lm_head" in k for k in weights)
    assert "model.norm.weight" in weights and "model.layers.0.self_attn.q_proj.weight" in weights
    assert all(t.dtype == torch.float16 for t in weights.values())
    card = (out / "README.md").read_text()
    assert "acceptance" in card and "langchain-seed distill --target" in card
    report = json.loads((tmp_path / "work" / pipeline.REPORT_FILE).read_text())
    assert report["heldout_range"] == "0..3" and report["n_train_sequences"] == 8
    before, after = report["heldout_before"], report["heldout_after"]
    assert after["acceptance_rate"] > before["acceptance_rate"] + 0.1, "training did not raise acceptance"
    assert report["device"] == "cpu" and "time on the CPU (1 threads)" in card
    assert list((tmp_path / "work").glob("train-*.pt")), "target outputs are cached for reruns"
    assert list((tmp_path / "work" / "train-batches").glob("batch-*.pt")), "finished batches are kept"


def test_training_device_is_checked_before_any_work():
    assert device.training_device("cpu").type == "cpu"
    with pytest.raises(SystemExit, match="'gpu0' is not a torch device"):
        device.training_device("gpu0")
    with pytest.raises(SystemExit, match="only token drafts"):
        device.training_device("meta", kind="feature")
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="sees no CUDA GPU"):
            device.training_device("cuda")


def test_token_draft_continues_from_a_trained_one(tmp_path):
    """`--init-draft` with a token draft: training starts from its weights and keeps its
    head ids, and the card says where it started."""
    target_dir = make_tiny_llama(tmp_path / "target")
    token_draft = make_tiny_llama(tmp_path / "token-draft", layers=1, seed=5)
    head = list(range(32, 96))
    (token_draft / targets.HEAD_IDS_FILE).write_text(json.dumps(head))
    data = write_gsm8k(tmp_path / "gsm8k.jsonl", n=12)
    out = tmp_path / "draft"
    argv = ["distill", "--init-draft", str(token_draft), "--target", str(target_dir), "--out", str(out),
            "--data", str(data), "--layers", "1", "--head-size", "64", "--steps", "2", "--heldout", "4",
            "--max-new-tokens", "6", "--gen-batch", "4", "--batch-size", "4", "--threads", "1",
            "--work", str(tmp_path / "work"), "--no-progress", "--prompt-weight", "0"]
    assert training.main(argv) == 0
    assert json.loads((out / targets.HEAD_IDS_FILE).read_text()) == head
    report = json.loads((tmp_path / "work" / pipeline.REPORT_FILE).read_text())
    assert report["init_draft"] == "token-draft"
    assert "init: the trained draft `token-draft`" in (out / "README.md").read_text()


def test_feature_draft_end_to_end_from_a_token_draft(tmp_path):
    """`--kind feature --init-draft`: trains, measures, saves a loadable feature draft whose
    acceptance at init is the token draft's own (the projection starts at zero)."""
    from langchain_seed.engine import FeatureDraftModel, SamplingParams, SeedEngine

    target_dir = make_target(tmp_path / "target")
    token_draft = make_tiny_llama(tmp_path / "token-draft", layers=1, seed=5)
    (token_draft / targets.HEAD_IDS_FILE).write_text(json.dumps(list(range(0, 64))))
    data = write_gsm8k(tmp_path / "gsm8k.jsonl", n=12)
    out = tmp_path / "feature-draft"
    argv = ["distill", "--kind", "feature", "--init-draft", str(token_draft), "--target", str(target_dir),
            "--out", str(out), "--data", str(data), "--layers", "1", "--steps", "3", "--lr", "0.01", "--heldout", "4",
            "--max-new-tokens", "6", "--gen-batch", "4", "--batch-size", "4", "--threads", "1",
            "--work", str(tmp_path / "work"), "--no-progress", "--prompt-weight", "0.5"]
    assert training.main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["feature_draft.json", "feature_draft.safetensors", targets.HEAD_IDS_FILE, "README.md"])
    report = json.loads((tmp_path / "work" / pipeline.REPORT_FILE).read_text())
    assert report["kind"] == "feature" and report["head_size"] == 64 and report["init_draft"] == "token-draft"
    before, after = report["heldout_before"], report["heldout_after"]
    assert after["acceptance_rate"] > before["acceptance_rate"], "training did not raise acceptance"
    lookup = report["heldout_with_lookup"]  # the same held-out prompts (the drafts, so the rounds, differ)
    assert lookup["acceptance_by_shape"].keys() == after["acceptance_by_shape"].keys() and lookup["drafted"] > 0
    assert len(list((tmp_path / "work").glob("train-features-*.pt"))) == 1, "target features are cached"
    card = (out / "README.md").read_text()
    assert "feature draft" in card and "--kind feature" in card
    target = transformers.AutoModelForCausalLM.from_pretrained(target_dir).eval()
    draft = FeatureDraftModel.load(out, target)
    prompt = [[5, 6, 7, 8]]
    expected = target.generate(torch.tensor(prompt), max_new_tokens=8, do_sample=False)[0, 4:].tolist()
    [result] = SeedEngine(target, draft).generate(prompt, SamplingParams(max_tokens=8), mode="speculative")
    assert result.token_ids == expected


def _training_prompts(prompt_passes: int, first_pass: int = 0) -> list:
    """`training_prompts` over 30 toy questions, no chat template."""
    import argparse

    records = [
        {"question": f"Q{i} has {i} apples?", "answer": f"{i} + 1 = {i + 1}\n#### {i + 1}"} for i in range(30)]
    tokenizer = type("T", (), {"chat_template": None})()
    args = argparse.Namespace(prompt_passes=prompt_passes, first_pass=first_pass, seed=0, per_question=1,
                              chat_fraction=0.0)
    return prompts.training_prompts(records, range(30), tokenizer, args)


def test_prompt_passes_append_fresh_draws_after_the_single_pass_set():
    single, double = _training_prompts(1), _training_prompts(2)
    assert double[:30] == single and len(double) == 60
    assert [s.question_index for s in double[30:]] == list(range(30))
    assert [s.text for s in double[30:]] != [s.text for s in single]


def test_first_pass_draws_only_the_later_passes():
    assert _training_prompts(2, first_pass=1) == _training_prompts(3)[30:]


def test_first_pass_must_not_be_negative(capsys):
    with pytest.raises(SystemExit):
        training.main(["distill", "--target", "t", "--out", "o", "--first-pass", "-1"])
    assert "--first-pass: must be an int >= 0; got -1" in capsys.readouterr().err


def test_generation_batches_are_stable_prefixes():
    specs = [prompts.PromptSpec(i, prompts.PROMPT_SHAPES[i % 4], 0, False, f"q{i}") for i in range(40)]
    ids = [[0] * (i % 7 + 1) for i in range(40)]
    full = targets.generation_batches(specs, ids, batch_size=4, chunk_batches=2)
    prefix = targets.generation_batches(specs[:16], ids[:16], batch_size=4, chunk_batches=2)
    assert full[: len(prefix)] == prefix
    assert sorted(i for b in full for i in b) == list(range(40))


def test_init_draft_copies_target_layers(tmp_path):
    from transformers import AutoModelForCausalLM

    target = AutoModelForCausalLM.from_pretrained(make_tiny_llama(tmp_path / "t"))
    draft = token.init_draft(target, layers=2)
    assert draft.config.num_hidden_layers == 2
    assert torch.equal(draft.model.layers[1].mlp.up_proj.weight, target.model.layers[1].mlp.up_proj.weight)
    assert torch.equal(draft.get_input_embeddings().weight, target.get_input_embeddings().weight)
    assert draft.lm_head.weight.data_ptr() == draft.get_input_embeddings().weight.data_ptr()


def test_full_head_teacher_forcing_matches_itself(tmp_path):
    """A draft that is the whole target (all layers, full head) is accepted everywhere."""
    from transformers import AutoModelForCausalLM

    target = AutoModelForCausalLM.from_pretrained(make_tiny_llama(tmp_path / "t")).eval()
    prompt = torch.tensor([[5, 6, 7, 8]])
    sequence = target.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=8,
                               do_sample=False, min_new_tokens=8)[0]
    example = targets.Example(sequence, 4, None, None, {"shape": "x"})
    draft = token.init_draft(target, layers=3).eval()
    result = token.heldout_acceptance(draft, torch.arange(128), [example], chain=4)
    assert result["acceptance_rate"] == 1.0 and result["token_agreement"] == 1.0


def test_feature_replay_matches_drafting_from_scratch():
    """The cached replay gives the same runs as re-running the draft on the whole text for
    every drafted token (features: the target's before the round, the draft's own after)."""
    from langchain_seed.engine import FeatureDraftModel
    from langchain_seed.training.feature import FeatureExample, replay_example

    target = transformers.AutoModelForCausalLM.from_pretrained(
        make_tiny_llama(Path(__import__("tempfile").mkdtemp()) / "t", layers=1)).eval()
    draft = FeatureDraftModel.from_target(target, 1, list(range(128)))
    torch.manual_seed(0)
    with torch.no_grad():
        draft.proj.weight.normal_(0, 0.002)
    prompt = torch.tensor([5, 6, 7, 8, 9, 10])
    ids = target.generate(prompt[None], max_new_tokens=30, do_sample=False, min_new_tokens=30)[0]
    with torch.no_grad():
        features = target.model(ids[None]).last_hidden_state[0]
    example = FeatureExample(ids, len(prompt), features.half(), torch.zeros(len(ids), dtype=torch.long))
    previous = torch.cat([torch.zeros(1, 32), example.features[:-1].float()])
    expected, n = [], len(prompt) - 1
    with torch.inference_mode():
        while n + 1 < len(ids):
            tokens, feats, run = ids[: n + 1].tolist(), [previous[: n + 1]], 0
            while run < 4:
                output = draft(torch.tensor([tokens]), torch.cat(feats)[None])[0, -1]
                token = int(draft.head_logits(output).argmax())
                if n + 1 + run >= len(ids) or token != int(ids[n + 1 + run]):
                    break
                run, tokens, feats = run + 1, tokens + [token], feats + [output[None]]
            expected.append(run)
            n += run + 1
        runs = replay_example(draft, example, chain=4)
    assert runs == expected
    assert sum(runs) > 5, "the draft must be mostly right for the comparison to reach deep drafts"


# --------------------------------------------------------------------------- bad input


def _distill_argv(target: Path, data: Path, tmp_path: Path) -> list[str]:
    return ["distill", "--target", str(target), "--out", str(tmp_path / "draft"), "--data", str(data),
            "--layers", "1", "--steps", "1", "--heldout", "1", "--threads", "1", "--no-progress",
            "--work", str(tmp_path / "work")]


def test_missing_target_is_refused_before_any_work(tmp_path):
    data = write_gsm8k(tmp_path / "gsm8k.jsonl", n=4)
    missing = tmp_path / "no-such-target"
    with pytest.raises(FileNotFoundError, match="--target .*no-such-target.* does not exist"):
        training.main(_distill_argv(missing, data, tmp_path))
    assert not (tmp_path / "work").exists() and not (tmp_path / "draft").exists()


def test_missing_data_file_is_refused_naming_it(tmp_path):
    target = make_tiny_llama(tmp_path / "target", layers=1)
    with pytest.raises(FileNotFoundError, match="nothing.jsonl"):
        training.main(_distill_argv(target, tmp_path / "nothing.jsonl", tmp_path))
    assert not (tmp_path / "work").exists()


@pytest.mark.parametrize("line,problem", [
    ("not json", "line 4: not JSON"),
    ('{"question": "Q?"}', "line 4: expected an object with 'question' and 'answer'"),
    ('["Q?", "#### 1"]', "line 4: expected an object with 'question' and 'answer'"),
])
def test_malformed_data_file_is_refused_naming_file_and_line(tmp_path, line, problem):
    target = make_tiny_llama(tmp_path / "target", layers=1)
    data = write_gsm8k(tmp_path / "gsm8k.jsonl", n=2)
    with open(data, "a") as handle:
        handle.write("\n" + line + "\n")  # line 4: after two records and a blank line
    with pytest.raises(ValueError, match=f"gsm8k.jsonl, {problem}"):
        training.main(_distill_argv(target, data, tmp_path))
    assert not (tmp_path / "work").exists()
