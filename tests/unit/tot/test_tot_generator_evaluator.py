"""ThoughtGenerator and StateEvaluator: one batched call each, parsing, cache, votes."""

from __future__ import annotations

import re

import pytest

from langchain_seed.tot import StateEvaluator, ThoughtGenerator

from tot_fakes import LEVEL1, QUESTION, ScriptedLLM, gsm8k_reply, last_step

ROOT = ()


def test_propose_is_one_call_for_all_states(scripted_llm):
    generator = ThoughtGenerator(scripted_llm, "gsm8k", "propose", k=2)
    thoughts = generator.propose(QUESTION, [ROOT, (LEVEL1[0],)])
    assert len(scripted_llm.calls) == 1 and len(scripted_llm.calls[0]) == 2
    assert thoughts[0] == LEVEL1[:2]  # numbering stripped, at most k
    assert len(thoughts[1]) == 2


def test_sample_sends_k_distinct_indexed_prompts_in_one_call(scripted_llm):
    generator = ThoughtGenerator(scripted_llm, "gsm8k", "sample", k=3)
    thoughts = generator.sample(QUESTION, [ROOT])
    (prompts,) = scripted_llm.calls
    assert len(prompts) == 3 and len(set(prompts)) == 3
    assert [re.search(r"option (\d) of 3", p).group(1) for p in prompts] == ["1", "2", "3"]
    assert thoughts == [LEVEL1]  # first line only, junk dropped
    assert scripted_llm.call_kwargs[0]["stop"] == ["\n"]


def test_sample_dedupes_identical_thoughts():
    llm = ScriptedLLM(reply=lambda prompt, i: "  The same step.  ")
    thoughts = ThoughtGenerator(llm, "gsm8k", "sample", k=3).sample(QUESTION, [ROOT, ("x",)])
    assert thoughts == [["The same step."], ["The same step."]]
    assert len(llm.calls) == 1 and len(llm.calls[0]) == 6


def test_sample_with_n_sends_one_prompt_per_state():
    llm = ScriptedLLM(reply=lambda prompt, i: f"thought number {i}")
    generator = ThoughtGenerator(llm, "gsm8k", "sample", k=3, use_n=True)
    thoughts = generator.sample(QUESTION, [ROOT, ("x",)])
    assert [len(call) for call in llm.calls] == [2]
    assert llm.call_kwargs[0]["n"] == 3
    assert thoughts[0] == ["thought number 0", "thought number 1", "thought number 2"]


def test_generator_rejects_bad_arguments(scripted_llm):
    with pytest.raises(ValueError, match="method must be one of"):
        ThoughtGenerator(scripted_llm, "gsm8k", "guess")
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        ThoughtGenerator(scripted_llm, "gsm8k", k=0)


def test_value_scores_every_state_in_one_call(scripted_llm):
    evaluator = StateEvaluator(scripted_llm, "gsm8k", "value")
    evaluations = evaluator.value(QUESTION, [(s,) for s in LEVEL1])
    assert [e.score for e in evaluations] == [9.0, 1.0, 5.0]
    assert len(scripted_llm.calls) == 1 and len(scripted_llm.calls[0]) == 3


def test_value_samples_are_averaged_and_junk_counts_as_unparsed():
    replies = {0: "8", 1: "4", 2: "no clue"}
    llm = ScriptedLLM(reply=lambda prompt, i: replies[i])
    evaluator = StateEvaluator(llm, "gsm8k", "value", n_evaluate=3, use_n=True)
    (evaluation,) = evaluator.value(QUESTION, [("a step",)])
    assert evaluation.samples == (8.0, 4.0, 0.0)
    assert evaluation.score == pytest.approx(4.0)
    assert evaluator.unparsed_values == 1


def test_value_repeats_the_prompt_without_n():
    answers = iter(["6", "2", "10", "0"])
    llm = ScriptedLLM(reply=lambda prompt, i: next(answers))
    evaluator = StateEvaluator(llm, "gsm8k", "value", n_evaluate=2)
    first, second = evaluator.value(QUESTION, [("a",), ("b",)])
    assert [len(call) for call in llm.calls] == [4]
    assert llm.calls[0][0] == llm.calls[0][1] and llm.calls[0][2] == llm.calls[0][3]
    assert (first.score, second.score) == (4.0, 5.0)


def test_value_cache_is_keyed_on_state_text(scripted_llm):
    evaluator = StateEvaluator(scripted_llm, "gsm8k", "value")
    evaluator.value(QUESTION, [(LEVEL1[0],), (LEVEL1[1],)])
    again = evaluator.value(QUESTION, [(LEVEL1[1],), (LEVEL1[0],), (LEVEL1[2],)])
    assert [len(call) for call in scripted_llm.calls] == [2, 1]  # only the new state asked
    assert [e.cached for e in again] == [True, True, False]
    assert [e.score for e in again] == [1.0, 9.0, 5.0]
    assert evaluator.cache_hits == 2
    evaluator.value("another question", [(LEVEL1[0],)])  # same steps, other question
    assert len(scripted_llm.calls) == 3


def vote_for(preferred: list[str]):
    """Vote j (0-based call order) picks the number under which ``preferred[j]`` is listed."""
    counter = iter(range(100))

    def reply(prompt: str, i: int) -> str:
        wanted = preferred[next(counter)]
        choices = re.findall(r"Choice (\d+):\nStep 1: (.*)", prompt)
        return next(number for number, text in choices if text == wanted)

    return reply


def test_vote_majority_wins_across_rotated_prompts():
    states = [("A",), ("B",), ("C",)]
    llm = ScriptedLLM(reply=vote_for(["B", "B", "C"]))
    evaluator = StateEvaluator(llm, "gsm8k", "vote", n_evaluate=3)
    scores = [e.score for e in evaluator.vote(QUESTION, states)]
    (prompts,) = llm.calls
    assert len(prompts) == 3 and len(set(prompts)) == 3  # rotated orders
    assert scores == pytest.approx([0.0, 20 / 3, 10 / 3])
    assert max(range(3), key=scores.__getitem__) == 1


def test_vote_counts_unparsed_votes():
    llm = ScriptedLLM(reply=lambda prompt, i: "I like them all")
    evaluator = StateEvaluator(llm, "gsm8k", "vote", n_evaluate=2)
    scores = [e.score for e in evaluator.vote(QUESTION, [("A",), ("B",)])]
    assert scores == [0.0, 0.0] and evaluator.unparsed_votes == 2


def test_vote_on_a_single_state_needs_no_call(scripted_llm):
    evaluator = StateEvaluator(scripted_llm, "gsm8k", "vote")
    assert [e.score for e in evaluator.vote(QUESTION, [("A",)])] == [10.0]
    assert scripted_llm.calls == []


def test_evaluator_rejects_bad_arguments(scripted_llm):
    with pytest.raises(ValueError, match="method must be one of"):
        StateEvaluator(scripted_llm, "gsm8k", "rank")
    with pytest.raises(ValueError, match="n_evaluate must be an integer >= 1"):
        StateEvaluator(scripted_llm, "gsm8k", n_evaluate=0)


async def test_async_generation_and_evaluation_use_the_async_api(scripted_llm):
    generator = ThoughtGenerator(scripted_llm, "gsm8k", "propose", k=3)
    evaluator = StateEvaluator(scripted_llm, "gsm8k", "value")
    thoughts = await generator.apropose(QUESTION, [ROOT])
    scores = await evaluator.avalue(QUESTION, [(t,) for t in thoughts[0]])
    assert thoughts == [LEVEL1] and [s.score for s in scores] == [9.0, 1.0, 5.0]
    assert scripted_llm.calls == [] and len(scripted_llm.async_calls) == 2
    assert last_step(scripted_llm.async_calls[1][0]) == LEVEL1[0]
    assert gsm8k_reply(scripted_llm.async_calls[1][0]).strip().startswith("9")
