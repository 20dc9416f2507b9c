"""Structured output and tool calls as grammar constraints, and the runnables that parse them.

- `tool_call_constraint`: the grammar of a reply with tools bound, in the Hermes format
  `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>` that `lc/messages.py` parses:
  a forced or required call is decoded under the tools' argument schemas (after the prefix
  `forced_prefix` put in the prompt); with `tool_choice="auto"` the reply is either free
  text (which never contains a call) or one or more calls.
- `structured_chat` / `structured_llm`: `with_structured_output` of `ChatSeed` and `SeedLLM`.
  The reply is decoded under the schema, so it always parses unless `max_tokens` cut it,
  which raises `IncompleteStructuredOutput` (or, with `include_raw`, is its `parsing_error`).
"""

from __future__ import annotations

import json
from operator import itemgetter
from typing import Any

from langchain_core.messages import AIMessage
from langchain_core.output_parsers import JsonOutputParser, PydanticOutputParser
from langchain_core.output_parsers.openai_tools import JsonOutputKeyToolsParser, PydanticToolsParser
from langchain_core.runnables import Runnable, RunnableLambda, RunnableMap, RunnablePassthrough
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass

from langchain_seed.engine.constraints import JSON_LAYOUT, Constraint

STRUCTURED_METHODS = ("json_schema", "function_calling", "json_mode")
ANY_JSON_OBJECT: dict[str, Any] = {"type": "object"}

FREE_TEXT_WITHOUT_CALLS = r"/(.|\n)+/ & ~/(.|\n)*<tool_call>(.|\n)*/"
"""Lark lexeme (llguidance's `&` and `~`): any non-empty text that contains no `<tool_call>`."""


class IncompleteStructuredOutput(ValueError):
    """A structured reply that `max_tokens` cut before its schema was complete."""


# ------------------------------------------------------------------------------ tools


def closed(schema: Any) -> Any:
    """`schema` with every object that lists its properties closed to others
    (`"additionalProperties": false` where it says nothing), as OpenAI's strict mode does: a
    small model otherwise keeps inventing keys, and a tool rejects arguments it does not take."""
    if isinstance(schema, list):
        return [closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: closed(value) if key not in ("const", "enum", "default", "examples") else value
           for key, value in schema.items()}
    if "properties" in out and "additionalProperties" not in out and isinstance(out["properties"], dict):
        out["additionalProperties"] = False
    return out


def _embedded(schema: dict[str, Any]) -> str:
    """A JSON schema as llguidance's Lark `%json` takes it, laid out as `json.dumps` writes."""
    return "%json " + json.dumps({**schema, "x-guidance": JSON_LAYOUT})


def _call_schema(tool: dict[str, Any]) -> dict[str, Any]:
    """`{"name": <the tool's name>, "arguments": <its parameters>}` as one JSON schema."""
    function = tool["function"]
    parameters = closed(function.get("parameters") or {"type": "object", "properties": {}})
    return {"type": "object", "properties": {"name": {"const": function["name"]}, "arguments": parameters},
            "required": ["name", "arguments"], "additionalProperties": False}


def tool_call_constraint(tools: list[dict[str, Any]], tool_choice: str | None) -> Constraint | None:
    """The grammar of a reply with `tools` (OpenAI tool dicts) bound, after the prompt's
    `forced_prefix(tool_choice)`; None without tools or with tool_choice "none"."""
    if not tools or tool_choice == "none":
        return None
    if tool_choice not in (None, "required"):  # one named tool; the prompt ends with its name and "arguments": "
        tool = next(t for t in tools if t["function"]["name"] == tool_choice)
        parameters = closed(tool["function"].get("parameters") or {"type": "object", "properties": {}})
        return Constraint.grammar(f'start: {_embedded(parameters)} "}}\\n</tool_call>"')
    calls = {"anyOf": [_call_schema(tool) for tool in tools]}
    if tool_choice == "required":  # the prompt ends with "<tool_call>\n"
        return Constraint.grammar(f'start: {_embedded(calls)} "\\n</tool_call>"')
    return Constraint.grammar(
        "start: TEXT | call (\"\\n\" call)*\n"
        f'call: "<tool_call>\\n" {_embedded(calls)} "\\n</tool_call>"\n'
        f"TEXT: {FREE_TEXT_WITHOUT_CALLS}\n"
    )


def may_be_tool_call(text: str) -> bool:
    """Whether a reply starting with `text` may still turn out to be a tool call."""
    stripped = text.lstrip()
    return "<tool_call>".startswith(stripped) or stripped.startswith("<tool_call>")


# --------------------------------------------------------------------- structured output


def check_method(method: str) -> None:
    if method not in STRUCTURED_METHODS:
        raise ValueError(f"method must be one of {', '.join(map(repr, STRUCTURED_METHODS))}; got {method!r}")


def json_schema_of(schema: Any) -> dict[str, Any]:
    """The JSON schema of a Pydantic class, a TypedDict, a JSON schema or an OpenAI tool dict."""
    if schema is None:
        raise ValueError("schema is required for method='json_schema' and 'function_calling'")
    try:
        return convert_to_json_schema(schema)
    except (ValueError, TypeError) as error:
        raise ValueError(f"schema must be a Pydantic class, a TypedDict or a JSON schema dict; {error}") from None


def _schema_name(schema: Any) -> str:
    return convert_to_openai_tool(schema)["function"]["name"]


def raise_if_cut(message: Any) -> Any:
    """Pass a reply through, or raise `IncompleteStructuredOutput` when `max_tokens` cut it."""
    metadata = getattr(message, "response_metadata", None) or {}
    if metadata.get("finish_reason") == "length":
        count = metadata.get("new_tokens", "max_tokens")
        raise IncompleteStructuredOutput(
            f"the structured reply did not complete within max_tokens: it stopped after {count} tokens, before "
            f"its schema was complete. Raise max_tokens (e.g. .with_structured_output(...) on a model with a larger "
            f"max_tokens, or invoke(..., max_tokens=...))"
        )
    return message


def _reply_parser(schema: Any, method: str) -> Runnable:
    """Parses the reply: a Pydantic instance for a Pydantic schema, else a dict."""
    pydantic = isinstance(schema, type) and is_basemodel_subclass(schema)
    if method == "function_calling":
        if pydantic:
            return PydanticToolsParser(tools=[schema], first_tool_only=True)
        return JsonOutputKeyToolsParser(key_name=_schema_name(schema), first_tool_only=True)
    if pydantic:
        return PydanticOutputParser(pydantic_object=schema)
    return JsonOutputParser()


def structured_chat(chat: Any, schema: Any, method: str, include_raw: bool, strict: bool | None = None) -> Runnable:
    """`ChatSeed.with_structured_output`: bind the constraint (or the forced tool) and parse.
    Objects are closed to unlisted keys (`closed`) unless `strict` is False."""
    check_method(method)
    if method == "function_calling":
        json_schema_of(schema)
        name = _schema_name(schema)
        bound = chat.bind_tools([schema], tool_choice=name,
                                ls_structured_output_format={"kwargs": {"method": method}, "schema": schema})
    else:
        target = ANY_JSON_OBJECT if method == "json_mode" else json_schema_of(schema)
        target = target if strict is False else closed(target)
        bound = chat.bind(constraint=Constraint.json_schema(target),
                          ls_structured_output_format={"kwargs": {"method": method}, "schema": schema})
    parser = RunnableLambda(raise_if_cut) | _reply_parser(schema, method)
    return _with_raw(bound, parser) if include_raw else bound | parser


def _with_raw(bound: Runnable, parser: Runnable) -> Runnable:
    """`{"raw", "parsed", "parsing_error"}`: the parser's error (a cut reply included) is kept, not raised."""
    parsed = RunnablePassthrough.assign(parsed=itemgetter("raw") | parser, parsing_error=lambda _: None)
    failed = RunnablePassthrough.assign(parsed=lambda _: None)
    return RunnableMap(raw=bound) | parsed.with_fallbacks([failed], exception_key="parsing_error")


def structured_llm(llm: Any, schema: Any, method: str, include_raw: bool, strict: bool | None = None) -> Runnable:
    """`SeedLLM.with_structured_output`: the prompt's completion decoded under the schema
    (method "json_schema" or "json_mode"), parsed like the chat model's."""
    check_method(method)
    if method == "function_calling":
        raise ValueError("SeedLLM has no tool calls; use method='json_schema' (or ChatSeed for function_calling)")
    target = ANY_JSON_OBJECT if method == "json_mode" else json_schema_of(schema)
    constraint = Constraint.json_schema(target if strict is False else closed(target))

    def complete(prompt: Any, config: Any) -> AIMessage:
        return _as_message(llm.generate_prompt([llm._convert_input(prompt)], constraint=constraint,
                                               callbacks=config.get("callbacks")))

    async def acomplete(prompt: Any, config: Any) -> AIMessage:
        return _as_message(await llm.agenerate_prompt([llm._convert_input(prompt)], constraint=constraint,
                                                      callbacks=config.get("callbacks")))

    bound = RunnableLambda(complete, afunc=acomplete, name="SeedLLM")
    parser = RunnableLambda(raise_if_cut) | _reply_parser(schema, method)
    return _with_raw(bound, parser) if include_raw else bound | parser


def _as_message(result: Any) -> AIMessage:
    """A `SeedLLM` result's text as a message, its generation info as the metadata."""
    generation = result.generations[0][0]
    return AIMessage(content=generation.text, response_metadata=dict(generation.generation_info or {}))

