"""TreeOfThoughts as a Runnable: drop-in, tool, chat models, async, batch, validation."""

from __future__ import annotations

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import HumanMessage, SystemMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompt_values import StringPromptValue
from langchain_core.prompts import ChatPromptTemplate, PromptTemplate
from langchain_core.runnables import RunnableLambda
from langchain_core.tools import BaseTool

from langchain_seed.tot import ThoughtTree, ToTResult, TreeOfThoughts

from tot_fakes import (
    LEVEL1,
    LEVEL2,
    QUESTION,
    REFERENCE,
    ScriptedLLM,
    gsm8k_reply,
    roles_of_calls,
)


def test_invoke_returns_the_answer_string(scripted_llm):
    answer = TreeOfThoughts(llm=scripted_llm, n_select=1).invoke(QUESTION)
    assert answer == "10"
    assert roles_of_calls(scripted_llm.calls) == ["propose", "value", "propose", "value", "answer"]
    assert "Step 2: " + LEVEL2[0] in scripted_llm.calls[-1][0]


def test_return_tree_gives_answer_tree_and_stats():
    llm = ScriptedLLM(reply=gsm8k_reply, report_info=True)
    tot = TreeOfThoughts(llm=llm, breadth=3, depth=2, n_select=1)
    result = tot.invoke({"question": QUESTION, "answer": REFERENCE, "id": 7}, return_tree=True)
    assert isinstance(result, ToTResult) and isinstance(result.tree, ThoughtTree)
    assert result.answer == "10" and result.tree.answer == "10"
    assert result.is_correct is True and result.check("11") is False
    assert result.question == QUESTION and result.ground_truth == REFERENCE
    stats = result.stats
    assert stats.llm_batches == 5 and stats.llm_calls == 1 + 3 + 1 + 3 + 1
    assert stats.batches_by_role == {"propose": 2, "value": 2, "answer": 1}
    assert stats.states == 6 and stats.prompt_chars > 0 and stats.completion_chars > 0
    assert stats.prompt_tokens == 90 and stats.completion_tokens == 18
    assert stats.generation_info["drafted"] == 4 * 9
    assert stats.generation_info["accepted"] == 3 * 9
    assert stats.generation_info["acceptance_rate"] == pytest.approx(0.75)
    assert stats.llm_output["token_usage.prompt_tokens"] == 90
    assert stats.seconds >= stats.llm_seconds > 0
    assert result.to_dict()["is_correct"] is True


def test_wrong_answer_is_reported_incorrect(scripted_llm):
    result = TreeOfThoughts(llm=scripted_llm).invoke(
        {"question": QUESTION, "answer": "#### 11"}, return_tree=True)
    assert result.is_correct is False
    no_truth = TreeOfThoughts(llm=scripted_llm).invoke(QUESTION, return_tree=True)
    assert no_truth.is_correct is None


def test_drop_in_between_prompt_and_parser(scripted_llm):
    prompt = PromptTemplate.from_template("{problem}")
    plain = prompt | ScriptedLLM(reply=lambda p, i: "plain") | StrOutputParser()
    assert plain.invoke({"problem": QUESTION}) == "plain"
    chain = prompt | TreeOfThoughts(llm=scripted_llm) | StrOutputParser()
    assert chain.invoke({"problem": QUESTION}) == "10"
    assert f"Question: {QUESTION}\n" in scripted_llm.calls[-1][0]


def test_chat_prompt_with_one_message_gives_its_text(scripted_llm):
    chain = ChatPromptTemplate.from_messages([("human", "{q}")]) | TreeOfThoughts(llm=scripted_llm)
    assert chain.invoke({"q": QUESTION}) == "10"
    assert f"Question: {QUESTION}\n" in scripted_llm.calls[0][0]


@pytest.mark.parametrize("value", [
    StringPromptValue(text=QUESTION),
    [HumanMessage(content=QUESTION)],
    [("human", QUESTION)],
    {"question": QUESTION, "other": 1},
])
def test_accepted_inputs(scripted_llm, value):
    assert TreeOfThoughts(llm=scripted_llm).invoke(value) == "10"
    assert f"Question: {QUESTION}\n" in scripted_llm.calls[0][0]


def test_several_messages_become_a_buffer_string(scripted_llm):
    TreeOfThoughts(llm=scripted_llm).invoke([SystemMessage(content="Be brief."),
                                             HumanMessage(content=QUESTION)])
    assert "System: Be brief.\nHuman: " + QUESTION in scripted_llm.calls[0][0]


@pytest.mark.parametrize("value, message", [
    (42, "input must be a str"),
    ({"query": "x"}, "needs a 'question' key"),
    ("   ", "empty question"),
])
def test_bad_inputs_are_refused(scripted_llm, value, message):
    with pytest.raises(ValueError, match=message):
        TreeOfThoughts(llm=scripted_llm).invoke(value)
    assert scripted_llm.calls == []


def test_as_tool(scripted_llm):
    tool = TreeOfThoughts(llm=scripted_llm).as_tool(name="math_solver", description="Solves maths.")
    assert isinstance(tool, BaseTool)
    assert tool.name == "math_solver" and tool.description == "Solves maths."
    assert list(tool.args) == ["question"]
    assert tool.invoke({"question": QUESTION}) == "10"


async def test_tool_async(scripted_llm):
    tool = TreeOfThoughts(llm=scripted_llm).as_tool()
    assert tool.name == "tree_of_thoughts"
    assert await tool.ainvoke({"question": QUESTION}) == "10"
    assert scripted_llm.calls == [] and scripted_llm.async_calls


def test_chat_model_as_the_llm(scripted_chat):
    result = TreeOfThoughts(llm=scripted_chat, n_select=1).invoke(QUESTION, return_tree=True)
    assert result.answer == "10"
    assert result.tree.best.steps == (LEVEL1[0], LEVEL2[0])
    assert len(scripted_chat.calls) == 1 + 3 + 1 + 3 + 1
    assert all(len(messages) == 1 and isinstance(messages[0], HumanMessage)
               for messages in scripted_chat.calls)
    assert result.stats.llm_batches == 5
    assert result.stats.prompt_tokens == 7 * 9 and result.stats.completion_tokens == 3 * 9


def test_plain_runnable_as_the_llm():
    runnable = RunnableLambda(lambda prompt: gsm8k_reply(prompt))
    assert TreeOfThoughts(llm=runnable).invoke(QUESTION) == "10"


async def test_ainvoke_uses_the_async_api(scripted_llm):
    result = await TreeOfThoughts(llm=scripted_llm, n_select=1).ainvoke(QUESTION, return_tree=True)
    assert result.answer == "10"
    assert scripted_llm.calls == []
    assert roles_of_calls(scripted_llm.async_calls) == [
        "propose", "value", "propose", "value", "answer"]


async def test_ainvoke_with_a_chat_model(scripted_chat):
    assert await TreeOfThoughts(llm=scripted_chat).ainvoke(QUESTION) == "10"


def test_batch_merges_every_question_into_each_level_call(scripted_llm):
    other = QUESTION.replace("Tom", "Ann")
    tot = TreeOfThoughts(llm=scripted_llm, n_select=1)
    results = tot.batch([QUESTION, {"question": other, "answer": "#### 10"}], return_tree=True)
    assert [r.answer for r in results] == ["10", "10"]
    assert results[1].is_correct is True
    assert roles_of_calls(scripted_llm.calls) == ["propose", "value", "propose", "value", "answer"]
    assert [len(call) for call in scripted_llm.calls] == [2, 6, 2, 6, 2]
    assert results[0].stats.llm_calls == results[1].stats.llm_calls == 9


async def test_abatch_merges_too(scripted_llm):
    answers = await TreeOfThoughts(llm=scripted_llm).abatch([QUESTION, QUESTION + " "])
    assert answers == ["10", "10"]
    assert len(scripted_llm.async_calls) == 5


def test_batch_return_exceptions_keeps_the_good_answers(scripted_llm):
    outputs = TreeOfThoughts(llm=scripted_llm).batch([QUESTION, 42], return_exceptions=True)
    assert outputs[0] == "10" and isinstance(outputs[1], ValueError)


def test_llm_errors_propagate():
    def broken(prompt, i):
        raise RuntimeError("model down")

    with pytest.raises(RuntimeError, match="model down"):
        TreeOfThoughts(llm=ScriptedLLM(reply=broken)).invoke(QUESTION)


def test_dfs_and_vote_through_the_runnable():
    def votes_for_the_third(prompt: str, sample: int = 0) -> str:
        # The votes pick the option the value scores rank last (VALUES: 5 and 4 against 9 and 10).
        return "3" if prompt.endswith("Best choice: ") else gsm8k_reply(prompt, sample)

    llm = ScriptedLLM(reply=votes_for_the_third)
    tot = TreeOfThoughts(llm=llm, search="dfs", evaluator="vote", value_threshold=8)
    result = tot.invoke(QUESTION, return_tree=True)
    assert result.tree.search == "dfs" and result.answer == "10"
    assert roles_of_calls(llm.calls) == ["propose", "vote", "propose", "vote", "answer"]
    assert result.tree.best.steps == (LEVEL1[2], LEVEL2[2])


def test_sample_generator_with_n(scripted_llm):
    tot = TreeOfThoughts(llm=scripted_llm, generator="sample", use_n=True, breadth=2, depth=1)
    tot.invoke(QUESTION)
    assert scripted_llm.call_kwargs[0]["n"] == 2 and len(scripted_llm.calls[0]) == 1


def test_stop_sequences_and_llm_kwargs_reach_the_llm(scripted_llm):
    TreeOfThoughts(llm=scripted_llm, llm_kwargs={"max_tokens": 32}).invoke(QUESTION)
    stops = [kwargs["stop"] for kwargs in scripted_llm.call_kwargs]
    assert stops[1] == ["\n"] and stops[-1] == ["\n"]  # value, gsm8k answer: one line
    assert all(kwargs["max_tokens"] == 32 for kwargs in scripted_llm.call_kwargs)
    scripted_llm.call_kwargs.clear()
    TreeOfThoughts(llm=scripted_llm, use_stop=False).invoke(QUESTION)
    assert all(kwargs["stop"] is None for kwargs in scripted_llm.call_kwargs)


def test_prompt_overrides_reach_the_llm(scripted_llm):
    answer_prompt = PromptTemplate.from_template(
        "Question: {question}\n{steps}Therefore, the final answer is: ")
    TreeOfThoughts(llm=scripted_llm, prompts={"answer": answer_prompt}, depth=1).invoke(QUESTION)
    assert scripted_llm.calls[-1][0].endswith("Therefore, the final answer is: ")


def test_callbacks_see_the_chain_and_its_llm_calls(scripted_llm):
    class Recorder(BaseCallbackHandler):
        def __init__(self):
            self.events = []

        def on_chain_start(self, serialized, inputs, **kwargs):
            self.events.append("chain")

        def on_llm_start(self, serialized, prompts, **kwargs):
            self.events.append("llm")

    recorder = Recorder()
    TreeOfThoughts(llm=scripted_llm, n_select=1).invoke(QUESTION, {"callbacks": [recorder]})
    assert recorder.events[0] == "chain" and recorder.events.count("llm") == 9


def test_game24_end_to_end():
    def reply(prompt, i):
        if "Judgement: " in prompt[-12:]:
            return "sure"
        if "Answer: " in prompt[-8:]:
            return "(10 - 4) * (13 - 9) = 24"
        left = prompt.rsplit("Numbers: ", 1)[1].strip()
        return {"4 9 10 13": "13 - 9 = 4 (left: 4 4 10)", "4 4 10": "10 - 4 = 6 (left: 4 6)",
                "4 6": "4 * 6 = 24 (left: 24)"}[left]

    llm = ScriptedLLM(reply=reply)
    result = TreeOfThoughts(llm=llm, task="game24").invoke("4 9 10 13", return_tree=True)
    assert result.answer == "(10 - 4) * (13 - 9) = 24" and result.is_correct is True
    assert len(result.tree.best.steps) == 3  # game24's default depth
    assert "Numbers: 4 6\nJudgement: " in llm.calls[3][0]


@pytest.mark.parametrize("kwargs, words", [
    ({"task": "chess"}, ["task", "gsm8k", "game24", "writing", "generic"]),
    ({"generator": "guess"}, ["generator", "propose", "sample"]),
    ({"evaluator": "rank"}, ["evaluator", "value", "vote"]),
    ({"search": "astar"}, ["search", "bfs", "dfs"]),
    ({"breadth": 0}, ["breadth", ">= 1"]),
    ({"depth": -1}, ["depth", ">= 1"]),
    ({"n_evaluate": 1.5}, ["n_evaluate", "integer"]),
    ({"max_states": True}, ["max_states", "integer"]),
    ({"value_threshold": "high"}, ["value_threshold", "number"]),
    ({"prompts": {"judge": "x"}}, ["judge", "propose", "vote"]),
    ({"prompts": {"value": "{question} {colour}"}}, ["value", "colour", "steps"]),
    ({"breadht": 3}, ["breadht"]),
])
def test_bad_arguments_are_refused_with_clear_messages(scripted_llm, kwargs, words):
    with pytest.raises(ValueError) as error:
        TreeOfThoughts(llm=scripted_llm, **kwargs)
    for word in words:
        assert word in str(error.value)


def test_llm_must_be_a_langchain_model():
    with pytest.raises(ValueError, match="llm must be a LangChain LLM"):
        TreeOfThoughts(llm="gpt-4")


def test_defaults_come_from_the_task(scripted_llm):
    assert TreeOfThoughts(llm=scripted_llm).resolved_depth == 2
    assert TreeOfThoughts(llm=scripted_llm, task="game24").resolved_depth == 3
    assert TreeOfThoughts(llm=scripted_llm, task="game24").resolved_threshold == 1.0
    assert TreeOfThoughts(llm=scripted_llm, value_threshold=7).resolved_threshold == 7
    tot = TreeOfThoughts(llm=scripted_llm)
    accepted = tot.input_schema.model_json_schema()["anyOf"]
    assert {"type": "string"} in accepted and {"items": {}, "type": "array"} in accepted  # text, messages
    assert tot.output_schema.model_json_schema()["type"] == "string"
