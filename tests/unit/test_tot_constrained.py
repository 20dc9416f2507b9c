"""ToT's evaluators ask SeedLLM / ChatSeed for constrained replies, so that every reply parses."""

from __future__ import annotations

import pytest
from langchain_core.language_models.fake import FakeListLLM

from langchain_seed.lc.chat_models import ChatSeed
from langchain_seed.lc.llms import SeedLLM
from langchain_seed.tot.evaluator import StateEvaluator, supports_constraints, value_pattern, vote_pattern
from langchain_seed.tot.tasks import get_task

QUESTION = "Tom has 3 apples and buys 5 more. How many apples does he have?"
STATES = [["3 + 5 = 8"], ["3 * 5 = 15"], ["He has 8 apples."]]


@pytest.mark.parametrize("kind", ["llm", "chat"])
def test_constrained_value_and_vote_replies_always_parse(tiny_engine, kind):
    model = (SeedLLM if kind == "llm" else ChatSeed).from_engine(tiny_engine, max_tokens=8)
    free = StateEvaluator(model, task="gsm8k", n_evaluate=2)
    free.value(QUESTION, STATES)
    assert free.unparsed_values > 0, "the tiny random model's free replies should fail to parse (the test's power)"
    evaluator = StateEvaluator(model, task="gsm8k", n_evaluate=2, constrained_replies=True)
    values = evaluator.value(QUESTION, STATES)
    assert evaluator.unparsed_values == 0
    assert all(sample in {float(v) for v in range(11)} for e in values for sample in e.samples)
    votes = evaluator.vote(QUESTION, STATES)
    assert evaluator.unparsed_votes == 0 and sum(e.samples[0] for e in votes) == 2


def test_game24_values_are_its_judgement_words():
    assert value_pattern(get_task("game24")) == "(impossible|likely|sure)"
    assert value_pattern(get_task("gsm8k")) == "(10|[0-9])"
    assert vote_pattern(get_task("gsm8k"), 3) == "(3|2|1)"


def test_llms_without_constraints_get_free_text_requests():
    llm = FakeListLLM(responses=["7"] * 4)
    assert not supports_constraints(llm)
    evaluator = StateEvaluator(llm, task="gsm8k", constrained_replies=True)
    assert evaluator.value(QUESTION, STATES[:2])[0].score == 7.0
    request = next(evaluator.plan_value(QUESTION, [["x"]]))
    assert "constraint" not in request.client.llm_kwargs


def test_seed_models_are_recognised_through_bindings(tiny_engine):
    llm = SeedLLM.from_engine(tiny_engine)
    assert supports_constraints(llm) and supports_constraints(llm.bind(max_tokens=3))
    request = next(StateEvaluator(llm, task="gsm8k", constrained_replies=True).plan_value(QUESTION, [["x"]]))
    assert request.client.llm_kwargs["constraint"] == {"regex": "(10|[0-9])"}
