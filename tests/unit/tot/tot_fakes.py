"""Scripted fake LLMs for the Tree-of-Thoughts tests (imported by conftest and tests): deterministic replies keyed on the
prompt, and a record of every call with its prompts."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from langchain_core.language_models import BaseChatModel, BaseLLM
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult, Generation, LLMResult
from pydantic import Field

Reply = Callable[[str, int], str]


class ScriptedLLM(BaseLLM):
    """A text LLM whose reply is ``reply(prompt, sample_index)``; records each call."""

    reply: Reply
    calls: list[list[str]] = Field(default_factory=list)
    """Prompts of every sync ``_generate`` call."""
    async_calls: list[list[str]] = Field(default_factory=list)
    """Prompts of every ``_agenerate`` call."""
    call_kwargs: list[dict[str, Any]] = Field(default_factory=list)
    """``stop`` and extra keyword arguments of every call."""
    report_info: bool = False
    """Report SeedLLM-like speculative statistics and token usage."""

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def _generate(self, prompts: list[str], stop: Any = None, run_manager: Any = None,
                  **kwargs: Any) -> LLMResult:
        self.calls.append(list(prompts))
        return self._result(prompts, stop, kwargs)

    async def _agenerate(self, prompts: list[str], stop: Any = None, run_manager: Any = None,
                         **kwargs: Any) -> LLMResult:
        self.async_calls.append(list(prompts))
        return self._result(prompts, stop, kwargs)

    def _result(self, prompts: list[str], stop: Any, kwargs: dict[str, Any]) -> LLMResult:
        self.call_kwargs.append({"stop": stop, **kwargs})
        n = kwargs.get("n", 1)
        generations = [
            [Generation(text=self.reply(p, i), generation_info=self._info()) for i in range(n)]
            for p in prompts
        ]
        llm_output = None
        if self.report_info:
            llm_output = {"token_usage": {"prompt_tokens": 10 * len(prompts),
                                          "completion_tokens": 2 * len(prompts)}}
        return LLMResult(generations=generations, llm_output=llm_output)

    def _info(self) -> dict[str, Any] | None:
        if not self.report_info:
            return None
        return {"drafted": 4, "accepted": 3, "target_calls": 2, "acceptance_rate": 0.75}


class ScriptedChatModel(BaseChatModel):
    """A chat model replying ``reply(last message text, 0)``; records each call."""

    reply: Reply
    calls: list[list[BaseMessage]] = Field(default_factory=list)

    @property
    def _llm_type(self) -> str:
        return "scripted-chat"

    def _generate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None,
                  **kwargs: Any) -> ChatResult:
        self.calls.append(list(messages))
        text = self.reply(str(messages[-1].content), 0)
        message = AIMessage(content=text, usage_metadata={
            "input_tokens": 7, "output_tokens": 3, "total_tokens": 10})
        return ChatResult(generations=[ChatGeneration(message=message)])


# ----------------------------------------------------------------- GSM8K script

QUESTION = "Tom has 3 boxes of 4 apples and eats 2. How many apples are left?"
REFERENCE = "3 boxes of 4 apples are 3 * 4 = 12 apples. 12 - 2 = 10.\n#### 10"

LEVEL1 = ["How many apples in the boxes? 3 * 4 = 12.", "What colour are the apples? Red.",
          "How many boxes? 3."]
LEVEL2 = ["How many are left? 12 - 2 = 10.", "Is an apple a fruit? Yes.",
          "How many eaten? 2."]
VALUES = {LEVEL1[0]: 9, LEVEL1[1]: 1, LEVEL1[2]: 5, LEVEL2[0]: 10, LEVEL2[1]: 2, LEVEL2[2]: 4}


def role_of(prompt: str) -> str:
    """Which role a GSM8K prompt plays, from its fixed ending."""
    if "Propose" in prompt:
        return "propose"
    if "Next step (option" in prompt:
        return "sample"
    if prompt.endswith("Score: "):
        return "value"
    if prompt.endswith("Best choice: "):
        return "vote"
    if "final answer" in prompt:
        return "answer"
    raise AssertionError(f"unexpected prompt: {prompt!r}")


def last_step(prompt: str) -> str | None:
    """The text of the last ``Step i:`` line of a prompt."""
    steps = re.findall(r"^Step \d+: (.*)$", prompt, re.M)
    return steps[-1] if steps else None


def gsm8k_reply(prompt: str, sample: int = 0) -> str:
    """Deterministic replies: numbered proposals, values by step, the answer 10."""
    role = role_of(prompt)
    depth = len(re.findall(r"^Step \d+:", prompt, re.M))
    if role == "propose":
        thoughts = LEVEL1 if depth == 0 else LEVEL2
        return "\n".join(f"{i}. {t}" for i, t in enumerate(thoughts, 1)) + "\n"
    if role == "sample":
        index = int(re.search(r"option (\d+) of", prompt).group(1))
        return (LEVEL1 if depth == 0 else LEVEL2)[index - 1] + "\nJunk after the line"
    if role == "value":
        return f" {VALUES.get(last_step(prompt), 0)} out of 10"
    if role == "vote":
        return "1"
    return " 10.\nQuestion: something else 99"


def tree_reply(children: dict[str | None, list[str]], values: dict[str, float],
               answer: str = "42") -> Reply:
    """A reply function for any tree: proposals keyed on the state's last step (None at
    the root), values keyed on the last step, a fixed answer."""

    def reply(prompt: str, sample: int = 0) -> str:
        role = role_of(prompt)
        if role == "propose":
            return "\n".join(children.get(last_step(prompt), []))
        if role == "value":
            return str(values.get(last_step(prompt), 0))
        if role == "answer":
            return f" {answer}"
        raise AssertionError(f"unexpected role {role}")

    return reply


def roles_of_calls(calls: list[list[str]]) -> list[str]:
    """The role of each recorded call; fails if one call mixes roles."""
    roles = []
    for prompts in calls:
        kinds = {role_of(prompt) for prompt in prompts}
        assert len(kinds) == 1, f"one call mixed roles: {kinds}"
        roles.append(kinds.pop())
    return roles
