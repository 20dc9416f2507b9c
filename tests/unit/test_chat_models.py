"""ChatSeed on the tiny random pair: chat template, streaming, statistics, tools (scripted replies)."""

from __future__ import annotations

import asyncio
import copy
import json
from typing import Any

import pytest
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, SystemMessage, ToolMessage
from langchain_core.runnables import RunnableBinding
from pydantic import BaseModel, Field

from langchain_seed.lc.chat_models import ChatSeed
from langchain_seed.lc.llms import SeedLLM
from langchain_seed.lc.messages import ToolContext, input_ids_of

CONVERSATION = [SystemMessage("Be brief."), HumanMessage("What is 12 + 30?")]


@pytest.fixture
def chat(tiny_engine) -> ChatSeed:
    return ChatSeed(engine=tiny_engine, model="tiny-random-llama", max_tokens=16)


def template_ids(tokenizer, messages: list[dict], **options) -> list[int]:
    return input_ids_of(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, **options))


def greedy_reply(engine, tokenizer, ids: list[int], max_tokens: int) -> tuple[str, list[int]]:
    from langchain_seed.engine import SamplingParams

    [result] = engine.generate([ids], SamplingParams(max_tokens=max_tokens), mode="autoregressive")
    return tokenizer.decode(result.token_ids, skip_special_tokens=True), result.token_ids


# ------------------------------------------------------------------------------ invoke


def test_invoke_renders_the_chat_template_and_replies_greedily(chat, tiny_engine, tiny_tokenizer):
    message = chat.invoke(CONVERSATION)
    ids = template_ids(tiny_tokenizer, [{"role": "system", "content": "Be brief."},
                                        {"role": "user", "content": "What is 12 + 30?"}])
    expected, tokens = greedy_reply(tiny_engine, tiny_tokenizer, ids, 16)
    assert isinstance(message, AIMessage)
    assert message.content == expected and message.content
    assert message.usage_metadata == {"input_tokens": len(ids), "output_tokens": len(tokens),
                                      "total_tokens": len(ids) + len(tokens)}
    metadata = message.response_metadata
    assert metadata["model_name"] == "tiny-random-llama" and metadata["finish_reason"] == "length"
    assert metadata["acceptance_rate"] == pytest.approx(metadata["accepted"] / metadata["drafted"])
    assert 1 <= metadata["target_calls"] <= len(tokens) and metadata["drafted"] > 0


def test_every_decoding_mode_gives_the_same_reply(chat):
    reference = chat.invoke(CONVERSATION, decoding="autoregressive").content
    for options in ({"decoding": "speculative"}, {"verify": "rounds"}, {"k_config": (2, 2, 1)}):
        assert chat.invoke(CONVERSATION, **options).content == reference


def test_conversation_roles_reach_the_template(chat, tiny_tokenizer):
    messages = [SystemMessage("sys"), HumanMessage("hi"), AIMessage("hello"),
                HumanMessage([{"type": "text", "text": "how"}, {"type": "text", "text": " are you"}])]
    ids, prefill = chat._prompt_ids(messages, None, None)
    text = tiny_tokenizer.decode(ids)
    assert text == ("<|im_start|>system\nsys<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
                    "<|im_start|>assistant\nhello<|im_end|>\n<|im_start|>user\nhow are you<|im_end|>\n"
                    "<|im_start|>assistant\n")
    assert prefill == ""


def test_token_count_and_live_run_follow_the_chat_template(chat, tiny_tokenizer):
    ids = template_ids(tiny_tokenizer, [{"role": "system", "content": "Be brief."},
                                        {"role": "user", "content": "What is 12 + 30?"}])
    assert chat.get_num_tokens_from_messages(CONVERSATION) == len(ids)

    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    assert chat.get_num_tokens_from_messages(CONVERSATION, tools=[add]) > len(ids)
    run = chat.start_run(CONVERSATION)
    try:
        assert "".join(run.iter_text(0)) == chat.invoke(CONVERSATION).content
        assert run.generation_info(0)["prompt_tokens"] == len(ids)
    finally:
        run.close()


def test_stream_chunks_add_up_to_invoke(chat):
    reply = chat.invoke("Hello").content
    chunks = list(chat.stream("Hello"))
    assert all(isinstance(c, AIMessageChunk) for c in chunks)
    assert len([c for c in chunks if c.content]) > 2
    assert "".join(c.content for c in chunks) == reply
    assert chunks[-1].chunk_position == "last"
    assert [bool(c.usage_metadata) for c in chunks].count(True) == 1
    full = chunks[0]
    for chunk in chunks[1:]:
        full = full + chunk
    assert full.usage_metadata["output_tokens"] == 16
    assert full.response_metadata["model_name"] == "tiny-random-llama"


async def test_astream_and_concurrent_ainvoke(chat):
    questions = ["Hello", "What is 2 + 2?", "Name a color.", "Tell me a joke."]
    expected = [chat.invoke(q).content for q in questions]
    chunks = [c async for c in chat.astream(questions[0])]
    assert "".join(c.content for c in chunks) == expected[0] and chunks[-1].chunk_position == "last"
    replies = await asyncio.gather(*(chat.ainvoke(q) for q in questions))
    assert [r.content for r in replies] == expected
    assert [r.content for r in await chat.abatch(questions)] == expected
    assert [r.content for r in chat.batch(questions)] == expected


def test_streaming_field_routes_invoke_through_the_stream(tiny_engine):
    chat = ChatSeed(engine=tiny_engine, max_tokens=16, streaming=True)
    from langchain_core.callbacks import BaseCallbackHandler

    class Counter(BaseCallbackHandler):
        tokens: list[str] = []

        def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
            self.tokens.append(token)

    counter = Counter()
    counter.tokens = []
    message = chat.invoke("Hello", config={"callbacks": [counter]})
    assert len(counter.tokens) > 2 and "".join(counter.tokens) == message.content


def test_stop_cuts_the_reply(chat):
    reply = chat.invoke("Hello", max_tokens=40).content
    stop = next(reply[i:i + 2] for i in range(5, len(reply) - 2)
                if reply.find(reply[i:i + 2]) == i and "\ufffd" not in reply[i:i + 2])
    message = chat.invoke("Hello", max_tokens=40, stop=[stop])
    assert message.content == reply[:reply.find(stop)]
    assert message.response_metadata["finish_reason"] == "stop"
    assert message.usage_metadata["output_tokens"] < 40
    assert "".join(c.content for c in chat.stream("Hello", max_tokens=40, stop=[stop])) == message.content


def test_n_generations(chat):
    result = chat.generate([CONVERSATION], n=3, temperature=1.0, seed=5)
    assert len(result.generations[0]) == 3
    assert len({g.text for g in result.generations[0]}) > 1
    assert result.llm_output["requests"] == 3


def test_from_llm_shares_the_engine_and_fields(tiny_engine):
    llm = SeedLLM.from_engine(tiny_engine, max_tokens=7, k_config=(2, 1), model="tiny")
    chat = ChatSeed.from_llm(llm, temperature=0.5)
    assert chat.engine is llm.engine
    assert (chat.max_tokens, chat.k_config, chat.model_name, chat.temperature) == (7, (2, 1), "tiny", 0.5)
    assert chat._llm_type == "seed-chat"
    params = chat._get_ls_params()
    assert params["ls_provider"] == "langchain-seed" and params["ls_model_type"] == "chat"


async def test_from_llm_streams_with_the_llms_settings(tiny_engine, tiny_tokenizer):
    llm = SeedLLM.from_engine(tiny_engine, max_tokens=9, k_config=(2, 1), model="tiny")
    chat = ChatSeed.from_llm(llm)
    ids = template_ids(tiny_tokenizer, [{"role": "user", "content": "Hello"}])
    expected, tokens = greedy_reply(tiny_engine, tiny_tokenizer, ids, 9)
    for chunks in (list(chat.stream("Hello")), [c async for c in chat.astream("Hello")]):
        assert all(isinstance(c, AIMessageChunk) for c in chunks) and len([c for c in chunks if c.content]) > 1
        full = chunks[0]
        for chunk in chunks[1:]:
            full = full + chunk
        assert full.content == expected  # the llm's greedy reply to the chat template's text
        assert full.usage_metadata["output_tokens"] == len(tokens) == 9  # the llm's max_tokens
        assert full.response_metadata["model_name"] == "tiny"
        assert full.response_metadata["drafted"] > 0  # drafted: the llm's k_config, not autoregressive


# ---------------------------------------------------------------------------- refusals


def test_refusals(chat, tiny_engine, tiny_tokenizer):
    with pytest.raises(ValueError, match="image.*text only"):
        chat.invoke([HumanMessage([{"type": "image", "url": "https://example.com/a.png"}])])
    with pytest.raises(ValueError, match="unknown keyword argument.*'foo'"):
        chat.invoke("hi", foo=1)
    with pytest.raises(ValueError, match="decoding must be one of"):
        chat.invoke("hi", decoding="turbo")
    with pytest.raises(ValueError, match="n=2"):
        list(chat.stream("hi", n=2))
    bare = copy.deepcopy(tiny_tokenizer)
    bare.chat_template = None
    from langchain_seed.engine import SeedEngine

    engine = SeedEngine(tiny_engine.target_model, None, bare)
    with pytest.raises(ValueError, match="no chat template"):
        ChatSeed(engine=engine).invoke("hi")
    engine.close()


def test_input_ids_accepts_every_shape():
    import torch
    from transformers import BatchEncoding

    assert input_ids_of([1, 2, 3]) == [1, 2, 3]
    assert input_ids_of([[1, 2, 3]]) == [1, 2, 3]
    assert input_ids_of(BatchEncoding({"input_ids": [1, 2], "attention_mask": [1, 1]})) == [1, 2]
    assert input_ids_of({"input_ids": torch.tensor([[4, 5]])}) == [4, 5]


# ------------------------------------------------------------------------------- tools


class Person(BaseModel):
    """Record a person."""

    name: str = Field(description="their name")
    age: int = Field(description="their age")


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def test_bind_tools_describes_tools_in_a_system_prompt_and_forces_calls(chat, tiny_tokenizer):
    bound = chat.bind_tools([add, Person], tool_choice="any")
    assert isinstance(bound, RunnableBinding)
    tools = bound.kwargs["tools"]
    assert [t["function"]["name"] for t in tools] == ["add", "Person"] and bound.kwargs["tool_choice"] == "required"
    ids, prefill = chat._prompt_ids([HumanMessage("hi")], tools, "required")
    text = tiny_tokenizer.decode(ids)
    assert text.startswith("<|im_start|>system\nYou can call these tools:") and '"name": "add"' in text
    assert text.endswith("<|im_start|>assistant\n<tool_call>\n") and prefill == "<tool_call>\n"
    _, named = chat._prompt_ids([HumanMessage("hi")], tools, "add")
    assert named == '<tool_call>\n{"name": "add", "arguments": '
    with pytest.raises(ValueError, match="tool_choice must be"):
        chat.bind_tools([add], tool_choice="multiply")


def test_templates_that_render_tools_get_them_natively(tiny_engine, tiny_tokenizer):
    from langchain_seed.engine import SeedEngine

    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.chat_template = ("{% if tools %}TOOLS:{% for t in tools %}{{ t.function.name }};{% endfor %}\n{% endif %}"
                               + tokenizer.chat_template)
    engine = SeedEngine(tiny_engine.target_model, None, tokenizer)
    chat = ChatSeed(engine=engine)
    tools = chat.bind_tools([add]).kwargs["tools"]
    history = [HumanMessage("add 1 and 2"),
               AIMessage("", tool_calls=[{"name": "add", "args": {"a": 1, "b": 2}, "id": "c1"}]),
               ToolMessage("3", tool_call_id="c1")]
    text = tokenizer.decode(chat._prompt_ids(history, tools, None)[0])
    assert text.startswith("TOOLS:add;<|im_start|>user") and "You can call these tools" not in text
    assert "<|im_start|>tool\n3<|im_end|>" in text
    engine.close()


def test_tool_history_without_native_template_support(chat, tiny_tokenizer):
    tools = chat.bind_tools([add]).kwargs["tools"]
    history = [HumanMessage("add 1 and 2"),
               AIMessage("", tool_calls=[{"name": "add", "args": {"a": 1, "b": 2}, "id": "c1"}]),
               ToolMessage("3", tool_call_id="c1")]
    text = tiny_tokenizer.decode(chat._prompt_ids(history, tools, None)[0])
    assert '<|im_start|>assistant\n<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>' in text
    assert "<|im_start|>user\n<tool_response>\n3\n</tool_response><|im_end|>" in text


@pytest.mark.parametrize(
    ("reply", "prefill", "content", "calls", "invalid"),
    [
        ('Sure.<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>', "", "Sure.",
         [("add", {"a": 1, "b": 2})], 0),
        ('{"name": "add", "arguments": {"a": 3, "b": 4}}\n</tool_call>', "<tool_call>\n", "",
         [("add", {"a": 3, "b": 4})], 0),
        ('{"a": 5, "b": 6}}\n</tool_call>', '<tool_call>\n{"name": "add", "arguments": ', "",
         [("add", {"a": 5, "b": 6})], 0),
        ('<tool_call>{"name": "add", "arguments": "{\\"a\\": 1, \\"b\\": 1}"}</tool_call>'
         '<tool_call>{"name": "Person", "parameters": {"name": "Ann", "age": 3}}</tool_call>', "", "",
         [("add", {"a": 1, "b": 1}), ("Person", {"name": "Ann", "age": 3})], 0),
        ('{"name": "add", "arguments": {"a": 1, "b": 2}}', "", "", [("add", {"a": 1, "b": 2})], 0),
        ("<tool_call>not json", "", "", [], 1),
        ("plain answer", "", "plain answer", [], 0),
    ],
)
def test_tool_call_parsing(reply, prefill, content, calls, invalid):
    parsed_content, parsed_calls, parsed_invalid = ToolContext(["add", "Person"], prefill).parse(reply)
    assert parsed_content == content
    assert [(c["name"], c["args"]) for c in parsed_calls] == calls
    assert all(c["id"].startswith("call_") for c in parsed_calls)
    assert len(parsed_invalid) == invalid


class ScriptedHandle:
    """Stands in for an engine request handle: replays fixed token ids in chunks of 3."""

    def __init__(self, token_ids: list[int], prompt_tokens: int) -> None:
        self.token_ids, self.prompt_tokens, self.done = token_ids, prompt_tokens, True

    def __iter__(self):
        for start in range(0, len(self.token_ids), 3):
            yield self.token_ids[start:start + 3]

    async def __aiter__(self):
        for chunk in self:
            yield chunk

    def wait(self, timeout: float | None = None):
        from langchain_seed.engine import GenerationResult, RequestStats

        stats = RequestStats(prompt_tokens=self.prompt_tokens, new_tokens=len(self.token_ids))
        return GenerationResult(list(self.token_ids), "stop", stats)

    def cancel(self) -> None:
        pass


@pytest.fixture
def scripted(tiny_engine, tiny_tokenizer, monkeypatch):
    """Make the engine 'reply' with a given text (tokenized), to test parsing end to end."""

    def script(text: str) -> None:
        ids = tiny_tokenizer.encode(text, add_special_tokens=False)
        monkeypatch.setattr(tiny_engine, "submit_many",
                            lambda prompts, params, config=None, mode="scheduled": [ScriptedHandle(ids, len(p))
                                                                                for p in prompts])

    return script


async def test_tool_calls_from_invoke_stream_and_structured_output(chat, scripted):
    scripted('{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>')
    bound = chat.bind_tools([add], tool_choice="any")
    message = bound.invoke("add 1 and 2")
    assert [(c["name"], c["args"]) for c in message.tool_calls] == [("add", {"a": 1, "b": 2})]
    assert message.content == ""
    chunks = list(bound.stream("add 1 and 2"))
    assert len(chunks) == 1 and chunks[0].chunk_position == "last"
    full = chunks[0]
    assert [(c["name"], c["args"]) for c in full.tool_calls] == [("add", {"a": 1, "b": 2})]
    achunks = [c async for c in bound.astream("add 1 and 2")]
    assert [(c["name"], c["args"]) for c in achunks[-1].tool_calls] == [("add", {"a": 1, "b": 2})]

    scripted('{"name": "Ann", "age": 3}}\n</tool_call>')  # after the forced prefix naming the tool
    assert chat.with_structured_output(Person, method="function_calling").invoke("Ann is 3") == Person(name="Ann", age=3)
    scripted('{"name": "Ann", "age": 3}')
    assert chat.with_structured_output(Person).invoke("Ann is 3") == Person(name="Ann", age=3)


def test_agent_loop_with_scripted_replies(chat, scripted):
    from langchain_core.tools import tool

    @tool
    def get_weather(location: str) -> str:
        """Get the weather at a location."""
        return "It's sunny."

    bound = chat.bind_tools([get_weather])
    scripted('<tool_call>{"name": "get_weather", "arguments": {"location": "Paris"}}</tool_call>')
    call = bound.invoke([HumanMessage("Weather in Paris?")])
    [tool_call] = call.tool_calls
    result = get_weather.invoke(tool_call)
    scripted("It is sunny in Paris.")
    answer = bound.invoke([HumanMessage("Weather in Paris?"), call, result])
    assert answer.content == "It is sunny in Paris." and not answer.tool_calls
    assert json.loads(json.dumps(answer.usage_metadata))["output_tokens"] > 0
