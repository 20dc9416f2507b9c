"""LangChain messages as chat-template input, and Hermes tool calls out of a reply.

`to_chat_dict` turns a message into the {"role", "content"} dict a tokenizer's chat
template takes (tool calls and results included, natively or as Hermes blocks);
`ToolContext.parse` finds `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` blocks
in a reply. Nothing here touches a model.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from typing import Any

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.messages.tool import InvalidToolCall, ToolCall, invalid_tool_call, tool_call

TOOL_CALL_PATTERN = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)
TOOL_SYSTEM_PROMPT = (
    "You can call these tools:\n{tools}\n\n"
    "To call a tool, reply with one block per call, exactly like this:\n"
    '<tool_call>\n{{"name": "tool_name", "arguments": {{"arg": "value"}}}}\n</tool_call>'
)
ROLES = {HumanMessage: "user", AIMessage: "assistant", SystemMessage: "system", ToolMessage: "tool",
         FunctionMessage: "tool"}


class ToolContext:
    """The tools of one call: their names, the forced reply prefix, and reply parsing."""

    def __init__(self, names: list[str], prefill: str) -> None:
        self.names = names
        self.prefill = prefill

    def __bool__(self) -> bool:
        return bool(self.names)

    def parse(self, text: str) -> tuple[str, list[ToolCall], list[InvalidToolCall]]:
        """(content, tool_calls, invalid_tool_calls) of a reply."""
        if not self.names:
            return text, [], []
        text = self.prefill + text
        calls: list[ToolCall] = []
        invalid: list[InvalidToolCall] = []
        for match in TOOL_CALL_PATTERN.finditer(text):
            _parse_call(match.group(1), calls, invalid)
        content = TOOL_CALL_PATTERN.sub("", text).strip()
        if not calls and not invalid and content.startswith("{"):
            parsed = _json_object(content)
            if parsed is not None and parsed.get("name") in self.names:
                _parse_call(content, calls, invalid)
                content = ""
        return content, calls, invalid


def _parse_call(raw: str, calls: list[ToolCall], invalid: list[InvalidToolCall]) -> None:
    call_id = f"call_{uuid.uuid4().hex[:24]}"
    parsed = _json_object(raw)
    if parsed is None or not isinstance(parsed.get("name"), str):
        invalid.append(invalid_tool_call(name=None, args=raw, id=call_id, error="not a JSON tool call"))
        return
    args = parsed.get("arguments", parsed.get("parameters", {}))
    if isinstance(args, str):
        args = _json_object(args)
    if not isinstance(args, dict):
        invalid.append(invalid_tool_call(name=parsed["name"], args=raw, id=call_id, error="arguments not an object"))
        return
    calls.append(tool_call(name=parsed["name"], args=args, id=call_id))


def _json_object(text: str) -> dict | None:
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return None
    return value if isinstance(value, dict) else None


def normalize_tool_choice(tool_choice: Any, names: list[str]) -> str | None:
    """None (auto), "none", "required", or a tool name."""
    if tool_choice in (None, "auto"):
        return None
    if tool_choice in (False, "none"):
        return "none"
    if tool_choice in (True, "any", "required"):
        return "required"
    if isinstance(tool_choice, Mapping):
        tool_choice = tool_choice.get("function", {}).get("name", tool_choice.get("name"))
    if isinstance(tool_choice, str) and tool_choice in names:
        return tool_choice
    raise ValueError(
        f"tool_choice must be None, 'auto', 'none', 'any', 'required', True, False or one of the bound tool "
        f"names {names}; got {tool_choice!r}"
    )


def forced_prefix(tool_choice: str | None) -> str:
    if tool_choice in (None, "none"):
        return ""
    if tool_choice == "required":
        return "<tool_call>\n"
    return f'<tool_call>\n{{"name": {json.dumps(tool_choice)}, "arguments": '


def with_tool_system_prompt(conversation: list[dict], tools: list[dict]) -> list[dict]:
    described = "\n".join(json.dumps(tool["function"]) for tool in tools)
    instructions = TOOL_SYSTEM_PROMPT.format(tools=described)
    if conversation and conversation[0]["role"] == "system":
        first = {**conversation[0], "content": f"{conversation[0]['content']}\n\n{instructions}"}
        return [first, *conversation[1:]]
    return [{"role": "system", "content": instructions}, *conversation]


def _text_content(message: BaseMessage, index: int) -> str:
    content = message.content
    if isinstance(content, str):
        return content
    parts = []
    for block in content:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, dict) and block.get("type") == "text":
            parts.append(str(block.get("text", "")))
        elif isinstance(block, dict) and block.get("type") in ("tool_use", "tool_call", "reasoning", "thinking"):
            continue
        else:
            kind = block.get("type") if isinstance(block, dict) else type(block).__name__
            raise ValueError(f"message {index} has a {kind!r} content block; ChatSeed reads text only")
    return "".join(parts)


def to_chat_dict(message: BaseMessage, index: int, native_tools: bool) -> dict[str, Any]:
    """A LangChain message as the {"role", "content"} dict chat templates take."""
    role: str | None
    if isinstance(message, ChatMessage):
        role = message.role
    else:
        role = next((r for cls, r in ROLES.items() if isinstance(message, cls)), None)
    if role is None:
        raise ValueError(f"message {index} has unsupported type {type(message).__name__}")
    content = _text_content(message, index)
    if isinstance(message, AIMessage) and message.tool_calls:
        if native_tools:
            calls = [{"type": "function", "id": c.get("id"),
                      "function": {"name": c["name"], "arguments": c["args"]}} for c in message.tool_calls]
            return {"role": "assistant", "content": content, "tool_calls": calls}
        blocks = "\n".join(
            f"<tool_call>\n{json.dumps({'name': c['name'], 'arguments': c['args']})}\n</tool_call>"
            for c in message.tool_calls
        )
        return {"role": "assistant", "content": f"{content}\n{blocks}".strip()}
    if role == "tool":
        if native_tools:
            return {"role": "tool", "content": content, "tool_call_id": getattr(message, "tool_call_id", None)}
        return {"role": "user", "content": f"<tool_response>\n{content}\n</tool_response>"}
    return {"role": role, "content": content}


def input_ids_of(encoded: Any) -> list[int]:
    """`apply_chat_template(tokenize=True)` output (a list, or a BatchEncoding in transformers 5) as ids."""
    if isinstance(encoded, Mapping) or hasattr(encoded, "keys"):
        encoded = encoded["input_ids"]
    if hasattr(encoded, "tolist"):
        encoded = encoded.tolist()
    encoded = list(encoded)
    if encoded and isinstance(encoded[0], (list, tuple)):
        encoded = list(encoded[0])
    return [int(token) for token in encoded]

