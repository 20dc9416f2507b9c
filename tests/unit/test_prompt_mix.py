"""The broad prompt mix and the user's prompt file: determinism, held-out split, refusals."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import pytest

from langchain_seed.training import mix, user_prompts

RECORDS = [{"question": f"Ann has {i} apples. She buys {i + 3} more at the shop. How many now?",
            "answer": f"She has {i} + {i + 3} = <<{i}+{i + 3}={2 * i + 3}>>{2 * i + 3}.\n#### {2 * i + 3}"}
           for i in range(150)]


def test_the_mix_is_deterministic_and_grows_by_appending():
    first = mix.build_mix(RECORDS, "train", 6, seed=3)
    assert first == mix.build_mix(RECORDS, "train", 6, seed=3)
    assert [p.text for p in first] == [p.text for p in mix.build_mix(RECORDS, "train", 6, seed=3)]
    assert first != mix.build_mix(RECORDS, "train", 6, seed=4)
    larger = mix.build_mix(RECORDS, "train", 9, seed=3)
    for family in mix.family_counts(first):
        assert [p for p in larger if p.family == family][:6] == [p for p in first if p.family == family]


def test_every_family_is_drawn_with_distinct_prompts():
    prompts = mix.build_mix(RECORDS, "heldout", 5)
    counts = mix.family_counts(prompts)
    assert set(mix.BASE_FAMILIES) <= set(counts) and all(n == 5 for n in counts.values())
    assert len({p.key for p in prompts}) == len(prompts)
    assert any(p.messages and p.messages[0][0] == "system" for p in prompts if p.family == "chat")
    assert all(p.messages or p.text for p in prompts)


def test_heldout_and_training_units_are_disjoint():
    train, heldout = mix.build_mix(RECORDS, "train", 30), mix.build_mix(RECORDS, "heldout", 30)
    assert {p.split for p in train} == {"train"} and {p.split for p in heldout} == {"heldout"}

    def units(prompts):
        return {u for p in prompts for u in p.unit.split("+")}

    assert not units(train) & units(heldout)
    assert not {p.key for p in train} & {p.key for p in heldout}
    gsm8k = {int(u.split(":")[1]) for u in units(heldout) if u.startswith("gsm8k:")}
    assert gsm8k and max(gsm8k) < 100, "GSM8K questions 0..99 are the held-out ones"
    assert all(int(u.split(":")[1]) >= 100 for u in units(train) if u.startswith("gsm8k:"))
    topics = {u for u in units(heldout) if u.startswith("topic:")}
    assert topics and topics <= {f"topic:{t}" for t in mix.topics_of("heldout")}


def test_game24_puzzles_are_solvable_and_the_solution_reaches_24():
    for prompt in mix.build_mix(RECORDS, "train", 10):
        if prompt.family == "tot-game24":
            numbers = [Fraction(n) for n in prompt.unit.removeprefix("game24:").split()]
            steps = mix.solve24(numbers)
            assert steps is not None and steps[-1].split("=")[1].strip().startswith("24")
    assert mix.solve24([Fraction(1)] * 4) is None


def test_chat_prompts_go_through_the_chat_template():
    class Tokenizer:
        chat_template = "set"

        def apply_chat_template(self, conversation, tokenize, add_generation_prompt):
            assert tokenize is False and add_generation_prompt is True
            return "|".join(f"{m['role']}:{m['content']}" for m in conversation) + "|assistant:"

    prompt = mix.MixPrompt("chat", "topic:x", "train", messages=(("system", "S"), ("user", "U")))
    assert mix.render(prompt, Tokenizer()) == "system:S|user:U|assistant:"
    assert mix.render(mix.MixPrompt("cot", "u", "train", "raw"), Tokenizer()) == "raw"


def test_self_instruct_turns_the_targets_list_into_prompts():
    [request] = mix.self_instruct_requests("train", 1, seed=0)
    assert request.family == mix.SELF_INSTRUCT and request.unit.startswith("topic:")
    reply = "1. Why is the sky blue at noon?\n2. Why is the sky blue at noon?\n- How do bees make honey?\nok\n"
    prompts = mix.self_instruct_prompts(request, reply)
    assert [p.text or p.messages for p in prompts] == [
        "Why is the sky blue at noon?\n", (("user", "How do bees make honey?"),)]
    assert all(p.unit == request.unit and p.split == "train" for p in prompts)


# ------------------------------------------------------------------------ prompt files


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_prompt_file_of_strings_chats_and_families(tmp_path):
    lines = [json.dumps(f"question {i}?") for i in range(6)]
    lines += [json.dumps([{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"hi {i}"}])
              for i in range(5)]
    lines += ["", json.dumps({"prompt": "summarise this", "family": "summarise"})]
    prompts = user_prompts.load_prompt_file(write_lines(tmp_path / "p.jsonl", lines))
    assert mix.family_counts(prompts) == {"chat": 5, "summarise": 1, "text": 6}
    heldout = [p for p in prompts if p.split == "heldout"]
    assert {p.family for p in heldout} == {"chat", "text"}, "a family of one prompt is not held out"
    assert len([p for p in heldout if p.family == "text"]) == 2  # every fifth of 6, by hash
    assert prompts[6].messages == (("system", "Be brief."), ("user", "hi 0"))
    assert prompts == user_prompts.load_prompt_file(tmp_path / "p.jsonl")


@pytest.mark.parametrize(("lines", "message"), [
    ([], "holds no prompts"),
    (["", "  "], "holds no prompts"),
    (['"ok"', "42"], "line 2: expected a string, a list of chat messages"),
    (['"ok"', "{not json"], "line 2: not JSON"),
    (['"ok"', '""'], "line 2: an empty prompt"),
    (['[{"role": "user"}]'], "line 1: message 1 is not an object with 'role' and 'content'"),
    (['[{"role": "robot", "content": "x"}]'], "line 1: message 1 has role 'robot'"),
    (["[]"], "line 1: an empty message list"),
    (['{"text": "x"}'], "line 1: an object needs a 'prompt'"),
])
def test_bad_prompt_files_are_refused_naming_the_line(tmp_path, lines, message):
    path = write_lines(tmp_path / "bad.jsonl", lines) if lines else tmp_path / "bad.jsonl"
    if not lines:
        path.write_text("")
    with pytest.raises(user_prompts.PromptFileError, match=message) as raised:
        user_prompts.load_prompt_file(path)
    assert str(path) in str(raised.value)


def test_a_missing_prompt_file_is_refused(tmp_path):
    with pytest.raises(user_prompts.PromptFileError, match="no such file"):
        user_prompts.load_prompt_file(tmp_path / "missing.jsonl")


def test_a_prompt_longer_than_the_context_is_refused_naming_its_line(tmp_path):
    class Tokenizer:
        chat_template = None

        def __call__(self, text, add_special_tokens):
            return type("E", (), {"input_ids": list(text)})()

    path = write_lines(tmp_path / "p.jsonl", ['"short"', json.dumps("x" * 90)])
    prompts = user_prompts.load_prompt_file(path)
    user_prompts.check_lengths(prompts[:1], Tokenizer(), context=100, room=20)
    with pytest.raises(user_prompts.PromptFileError, match=r"line 2: the prompt is 90 tokens; with 20 for the answer.*context of 100"):
        user_prompts.check_lengths(prompts, Tokenizer(), context=100, room=20)
