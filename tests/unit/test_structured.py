"""Structured output and tool calls by constrained decoding, on the tiny random pair.

The tiny model writes random text, so every parsed reply below is the grammar's doing. The
schemas bound their strings so that the random text completes within max_tokens.
"""

from __future__ import annotations

import json
from typing import Annotated, Literal

import jsonschema
import pytest
from langchain_core.caches import InMemoryCache
from langchain_core.tools import tool
from pydantic import BaseModel, Field
from typing_extensions import TypedDict

from langchain_seed.engine import Constraint
from langchain_seed.lc.chat_models import ChatSeed
from langchain_seed.lc.llms import SeedLLM
from langchain_seed.lc.structured import IncompleteStructuredOutput, closed, tool_call_constraint


class Person(BaseModel):
    """A person."""

    name: str = Field(max_length=6, description="first name")
    age: int = Field(ge=0, le=120)
    nickname: str | None = Field(default=None, max_length=4)


class PersonDict(TypedDict):
    """A person (no free strings: a TypedDict cannot bound their length)."""

    kind: Annotated[Literal["friend", "colleague"], ..., "how we know them"]
    grown_up: bool


PERSON_DICT_SCHEMA = {
    "title": "PersonDict", "description": "A person.", "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 6}, "age": {"type": "integer", "minimum": 0, "maximum": 120}},
    "required": ["name", "age"],
}


@pytest.fixture
def chat(tiny_engine):
    return ChatSeed(engine=tiny_engine, max_tokens=64)


@tool
def add(a: Annotated[int, Field(ge=0, le=99)], b: Annotated[int, Field(ge=0, le=99)]) -> int:
    """Add two integers."""
    return a + b


@tool
def shout(word: Annotated[str, Field(max_length=5)]) -> str:
    """Shout a word."""
    return word.upper()


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
@pytest.mark.parametrize("kind", ["pydantic", "typeddict", "json_schema"])
def test_with_structured_output_for_each_method_and_input_kind(chat, method, kind):
    schema = {"pydantic": Person, "typeddict": PersonDict, "json_schema": PERSON_DICT_SCHEMA}[kind]
    result = chat.with_structured_output(schema, method=method).invoke("Ann is 3 years old.")
    if kind == "pydantic":
        assert isinstance(result, Person) and 0 <= result.age <= 120
    else:
        jsonschema.validate(result, PERSON_DICT_SCHEMA if kind == "json_schema" else {
            "type": "object", "required": ["kind", "grown_up"], "additionalProperties": False,
            "properties": {"kind": {"enum": ["friend", "colleague"]}, "grown_up": {"type": "boolean"}}})


async def test_json_mode_include_raw_and_async(chat):
    structured = chat.with_structured_output(None, method="json_mode", include_raw=True)
    result = await structured.ainvoke("Reply in JSON.")
    assert isinstance(result["parsed"], dict) and result["parsing_error"] is None
    assert json.loads(result["raw"].content) == result["parsed"]
    pydantic = chat.with_structured_output(Person, include_raw=True).invoke("Ann")
    assert isinstance(pydantic["parsed"], Person) and pydantic["raw"].response_metadata["finish_reason"] == "stop"


def test_a_reply_cut_by_max_tokens_raises_saying_so(chat):
    with pytest.raises(IncompleteStructuredOutput, match="did not complete within max_tokens"):
        chat.with_structured_output(Person).invoke("Ann", max_tokens=3)
    short = chat.model_copy(update={"max_tokens": 3})
    with pytest.raises(IncompleteStructuredOutput, match="stopped after 3 tokens"):
        short.with_structured_output(Person, method="function_calling").invoke("Ann")
    raw = short.with_structured_output(Person, include_raw=True).invoke("Ann")
    assert raw["parsed"] is None and isinstance(raw["parsing_error"], IncompleteStructuredOutput)


def test_strict_false_keeps_the_schema_open_and_strict_closes_it():
    schema = {"type": "object", "properties": {"a": {"type": "object", "properties": {"b": {"const": {"c": 1}}}}}}
    assert closed(schema) == {"type": "object", "additionalProperties": False, "properties": {
        "a": {"type": "object", "additionalProperties": False, "properties": {"b": {"const": {"c": 1}}}}}}
    open_schema = {"type": "object", "properties": {}, "additionalProperties": True}
    assert closed(open_schema) == open_schema


def test_bad_structured_output_arguments_are_refused(chat, tiny_engine):
    with pytest.raises(ValueError, match="method must be one of"):
        chat.with_structured_output(Person, method="xml")
    with pytest.raises(ValueError, match="schema is required"):
        chat.with_structured_output(None)
    with pytest.raises(ValueError, match="Unsatisfiable schema"):
        chat.with_structured_output({"title": "T", "type": "object", "required": ["n"], "properties": {
            "n": {"type": "integer", "minimum": 3, "maximum": 1}}}).invoke("x")
    with pytest.raises(ValueError, match="SeedLLM has no tool calls"):
        SeedLLM.from_engine(tiny_engine).with_structured_output(Person, method="function_calling")


def test_seed_llm_with_structured_output(tiny_engine):
    llm = SeedLLM.from_engine(tiny_engine, max_tokens=64)
    assert isinstance(llm.with_structured_output(Person).invoke("Ann is"), Person)
    assert isinstance(llm.with_structured_output(None, method="json_mode").invoke("{"), dict)
    with pytest.raises(IncompleteStructuredOutput):
        SeedLLM.from_engine(tiny_engine, max_tokens=2).with_structured_output(Person).invoke("Ann is")
    assert llm.invoke("Ann is", constraint=Constraint.regex("(yes|no)")) in ("yes", "no")


# ------------------------------------------------------------------------------ tools


@pytest.mark.parametrize("tool_choice", ["any", "required", "add"])
def test_forced_and_required_calls_are_decoded_under_the_argument_schemas(chat, tool_choice):
    message = chat.bind_tools([add, shout] if tool_choice != "add" else [add], tool_choice=tool_choice).invoke("1+2?")
    assert not message.invalid_tool_calls and len(message.tool_calls) == 1
    [call] = message.tool_calls
    schema = {"add": add, "shout": shout}[call["name"]].tool_call_schema.model_json_schema()
    jsonschema.validate(call["args"], schema)
    assert set(call["args"]) == set(schema["properties"])


def test_a_cut_tool_call_says_it_was_cut(chat):
    message = chat.bind_tools([add], tool_choice="add").invoke("1+2?", max_tokens=2)
    assert not message.tool_calls
    assert "cut off at max_tokens=2" in message.invalid_tool_calls[0]["error"]


def test_auto_tool_choice_allows_text_or_a_call(tiny_engine, tiny_tokenizer):
    grammar = tool_call_constraint([json.loads(json.dumps(t)) for t in ChatSeed(engine=tiny_engine).bind_tools(
        [add]).kwargs["tools"]], None)
    matcher = tiny_engine.grammar_vocabulary().compile(grammar)
    text = tiny_tokenizer.encode("The sum is 3.")
    call = tiny_tokenizer.encode('<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>')
    assert matcher.validate_tokens(text) == len(text)
    assert matcher.validate_tokens(call) == len(call)
    inner = tiny_tokenizer.encode("Sure <tool_call>")
    assert matcher.validate_tokens(inner) < len(inner), "text never holds a call"
    bad = tiny_tokenizer.encode('<tool_call>\n{"name": "mul"')
    assert matcher.validate_tokens(bad) < len(bad), "only bound tools are called"


def test_text_streams_with_tools_bound_and_a_call_comes_complete(chat):
    bound = chat.bind_tools([add])  # auto: the random model writes text
    chunks = list(bound.stream("Hello"))
    assert len(chunks) > 2 and not chunks[-1].tool_calls
    assert "".join(c.content for c in chunks) == bound.invoke("Hello").content
    forced = list(chat.bind_tools([add], tool_choice="add").stream("1+2?"))
    assert len(forced) == 1 and forced[0].tool_calls[0]["name"] == "add"


async def test_text_astreams_with_tools_bound(chat):
    chunks = [c async for c in chat.bind_tools([add]).astream("Hello")]
    assert len(chunks) > 2


# ----------------------------------------------------------------- the rest of the issue


def test_from_llm_keeps_streaming(tiny_engine):
    for fields in ({}, {"streaming": False}, {"streaming": True}):
        llm = SeedLLM.from_engine(tiny_engine, max_tokens=16, **fields)
        chat = ChatSeed.from_llm(llm)
        assert len(list(chat.stream("Hi"))) > 2, fields
        assert chat.max_tokens == 16 and chat.engine is tiny_engine
    assert ChatSeed.from_llm(SeedLLM.from_engine(tiny_engine, streaming=True)).streaming is True


def test_per_call_overrides_take_part_in_the_cache_key(tiny_engine):
    llm = SeedLLM.from_engine(tiny_engine, max_tokens=16, cache=InMemoryCache())
    long = llm.invoke("Hello")
    short = llm.invoke("Hello", max_tokens=4)
    assert short != long and long.startswith(short)
    assert llm.invoke("Hello", max_tokens=4) == short and llm.invoke("Hello") == long
    constrained = llm.invoke("Hello", constraint=Constraint.regex("(yes|no)"))
    assert constrained in ("yes", "no")
    chat = ChatSeed.from_llm(llm)
    chat.cache = InMemoryCache()
    assert chat.invoke("Hello", max_tokens=3).content != chat.invoke("Hello").content
