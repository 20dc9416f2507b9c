"""`SeedLlamaIndexLLM`: LlamaIndex's CustomLLM over the engine, on the tiny random pair."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("llama_index.core")

from llama_index.core.base.llms.types import ChatMessage, CompletionResponse
from llama_index.core.llms import CustomLLM
from llama_index.core.prompts import PromptTemplate

from seed_llamaindex import SeedLlamaIndexLLM

pytestmark = pytest.mark.timeout(120)

PROMPT = "The quick brown fox"


@pytest.fixture
def llm(tiny_llm):
    return SeedLlamaIndexLLM(tiny_llm)


def test_is_a_custom_llm_with_metadata_from_the_engine(llm, tiny_llm, tiny_engine):
    assert isinstance(llm, CustomLLM)
    metadata = llm.metadata
    assert metadata.context_window == tiny_engine.context_window == 2048
    assert metadata.num_output == tiny_llm.max_tokens == 24
    assert metadata.model_name == "tiny-random-llama"
    assert not metadata.is_chat_model
    custom = SeedLlamaIndexLLM(tiny_llm, num_output=8, context_window=1024, model_name="mine")
    assert (custom.metadata.num_output, custom.metadata.context_window, custom.metadata.model_name) == (
        8, 1024, "mine")
    assert custom.seed_llm is tiny_llm


def test_complete_is_seed_llms_text_with_its_statistics(llm, tiny_llm):
    # draft_survival=0: the draft depth does not depend on what the shared engine ran before,
    # so the two calls below draft alike and their statistics can be compared
    response = llm.complete(PROMPT, draft_survival=0.0)
    assert isinstance(response, CompletionResponse)
    assert response.text == tiny_llm.invoke(PROMPT)
    assert response.additional_kwargs["new_tokens"] == 24
    assert response.additional_kwargs["finish_reason"] == "length"
    info = tiny_llm.generate([PROMPT], draft_survival=0.0).generations[0][0].generation_info  # the same greedy run
    assert response.additional_kwargs["acceptance_rate"] == info["acceptance_rate"] > 0
    assert response.additional_kwargs["accepted"] == info["accepted"]


def test_num_output_and_call_options(llm, tiny_llm):
    short = SeedLlamaIndexLLM(tiny_llm, num_output=6).complete(PROMPT)
    assert short.additional_kwargs["new_tokens"] == 6
    assert short.text == tiny_llm.invoke(PROMPT, max_tokens=6)
    text = tiny_llm.invoke(PROMPT)
    stop = text[4:6]
    assert llm.complete(PROMPT, stop=[stop]).text == text[:text.index(stop)]
    assert llm.complete(PROMPT, max_tokens=3).additional_kwargs["new_tokens"] == 3


def test_stream_complete_deltas_add_up_to_the_text(llm, tiny_llm):
    responses = list(llm.stream_complete(PROMPT))
    assert len(responses) > 1
    assert "".join(r.delta for r in responses) == responses[-1].text == tiny_llm.invoke(PROMPT)
    assert all(a.text + b.delta == b.text for a, b in zip(responses, responses[1:]))


def test_async_complete_and_stream(llm, tiny_llm):
    async def run():
        completed = await llm.acomplete(PROMPT)
        streamed = [r async for r in await llm.astream_complete(PROMPT)]
        together = await asyncio.gather(*(llm.acomplete(f"Question {i}:") for i in range(4)))
        return completed, streamed, together

    completed, streamed, together = asyncio.run(run())
    expected = tiny_llm.invoke(PROMPT)
    assert completed.text == expected
    assert "".join(r.delta for r in streamed) == expected
    assert [r.text for r in together] == [tiny_llm.invoke(f"Question {i}:") for i in range(4)]


def test_chat_renders_the_chat_template(llm, tiny_llm):
    from langchain_seed import ChatSeed

    response = llm.chat([ChatMessage(role="system", content="Be brief."), ChatMessage(role="user", content="Hi")])
    expected = ChatSeed.from_llm(tiny_llm).invoke([("system", "Be brief."), ("user", "Hi")]).content
    assert response.message.role == "assistant"
    assert response.message.content == expected
    streamed = list(llm.stream_chat([ChatMessage(role="system", content="Be brief."),
                                     ChatMessage(role="user", content="Hi")]))
    assert streamed[-1].message.content == expected


def test_predict_with_a_llamaindex_prompt_template(llm, tiny_llm):
    template = PromptTemplate("Question: {question}\nAnswer:")
    assert llm.predict(template, question="what is 12 + 30?") == tiny_llm.invoke(
        "Question: what is 12 + 30?\nAnswer:")
