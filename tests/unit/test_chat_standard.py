"""langchain-tests standard suites (unit and integration) on `ChatSeed` over the tiny random model.

The tiny model is random, so its replies are gibberish: every standard test that needs a
*sensible* answer (a well-formed tool call, JSON that fits a schema, a reply that uses a
tool result) is an expected failure, each with its reason below. Everything about the
plumbing (invoke, stream, async, batch, usage metadata, stop, conversations, tracing
params, tool binding) runs for real.
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests

from langchain_seed.lc.chat_models import ChatSeed

PARAMS = {"model": "tiny-random-llama"}
NO_TOOL_CALLS = (
    "the tiny random model writes random bytes, never a well-formed <tool_call> JSON block with the expected "
    "tool name and arguments (ChatSeed's tool binding and parsing are tested with scripted replies in "
    "test_chat_models.py)"
)
NO_STRUCTURED_OUTPUT = (
    "structured output goes through tool calling, and the tiny random model never writes a JSON tool call "
    "that fits the schema (its replies are random bytes)"
)
STRUCTURED_OUTPUT_SCHEMAS = ["pydantic", "typeddict", "json_schema"]
STRUCTURED_OUTPUT_FAILURES = (AssertionError, TypeError)
"""The suite's own checks fail on the None that a reply without a valid tool call parses to:
`isinstance(None, Joke)` is False (an assertion) for pydantic, `key in None` a TypeError for
the dict schemas. Any other exception (one from our tool or structured-output code) fails
the test."""
MAX_TOKENS = 12
"""Short replies keep the suites fast; the standard unit params ask for 100 (few tests generate)."""


_SHARED: dict[str, Any] = {}


@pytest.fixture(autouse=True)
def _shared_engine(tiny_engine):
    """The suites build models from a property (no fixtures there): hand it the shared engine."""
    _SHARED["engine"] = tiny_engine


def _params() -> dict[str, Any]:
    return {"engine": _SHARED["engine"], **PARAMS}


class TestChatSeedUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[ChatSeed]:
        return ChatSeed

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return _params()

    @property
    def standard_chat_model_params(self) -> dict[str, Any]:
        # A local model has no API key: the standard params minus `api_key`.
        params = super().standard_chat_model_params
        params.pop("api_key", None)
        return params


class TestChatSeedIntegration(ChatModelIntegrationTests):
    @property
    def chat_model_class(self) -> type[ChatSeed]:
        return ChatSeed

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return _params()

    @property
    def standard_chat_model_params(self) -> dict[str, Any]:
        return {"max_tokens": MAX_TOKENS}

    @property
    def returns_usage_metadata(self) -> bool:
        return True

    @property
    def supports_json_mode(self) -> bool:
        return False

    # ----- expected failures: they need a model that writes sensible tool calls ---------
    # ChatSeed binds tools and parses Hermes-style `<tool_call>{...}</tool_call>` replies
    # (tested with scripted replies in test_chat_models.py), but the tiny random model
    # writes random bytes, never a JSON tool call with the right name and arguments. With
    # tool_choice forcing a call, the reply starts with `<tool_call>` and the rest is
    # gibberish, so it comes back as an invalid tool call. Structured output goes through
    # tool calling, so it fails the same way; the agent loop needs a tool call first.

    @pytest.mark.xfail(reason=NO_TOOL_CALLS, strict=True, raises=AssertionError)
    @pytest.mark.parametrize("model", [{}, {"output_version": "v1"}], indirect=True)
    def test_tool_calling(self, model: Any) -> None:
        super().test_tool_calling(model)

    @pytest.mark.xfail(reason=NO_TOOL_CALLS, strict=True, raises=AssertionError)
    async def test_tool_calling_async(self, model: Any) -> None:
        await super().test_tool_calling_async(model)

    @pytest.mark.xfail(reason=NO_TOOL_CALLS, strict=True, raises=AssertionError)
    def test_bind_runnables_as_tools(self, model: Any) -> None:
        super().test_bind_runnables_as_tools(model)

    @pytest.mark.xfail(reason=NO_TOOL_CALLS, strict=True, raises=AssertionError)
    def test_tool_choice(self, model: Any) -> None:
        super().test_tool_choice(model)

    @pytest.mark.xfail(reason=NO_TOOL_CALLS, strict=True, raises=AssertionError)
    def test_tool_calling_with_no_arguments(self, model: Any) -> None:
        super().test_tool_calling_with_no_arguments(model)

    @pytest.mark.xfail(reason=NO_TOOL_CALLS, strict=True, raises=AssertionError)
    def test_unicode_tool_call_integration(self, model: Any, *, tool_choice: str | None = None,
                                           force_tool_call: bool = True) -> None:
        super().test_unicode_tool_call_integration(model, tool_choice=tool_choice, force_tool_call=force_tool_call)

    @pytest.mark.xfail(reason=NO_TOOL_CALLS + " (the agent loop needs a tool call first)", strict=True,
                       raises=AssertionError)
    @pytest.mark.parametrize("model", [{}, {"output_version": "v1"}], indirect=True)
    def test_agent_loop(self, model: Any) -> None:
        super().test_agent_loop(model)

    @pytest.mark.xfail(reason=NO_STRUCTURED_OUTPUT, strict=True, raises=STRUCTURED_OUTPUT_FAILURES)
    @pytest.mark.parametrize("schema_type", STRUCTURED_OUTPUT_SCHEMAS)
    def test_structured_output(self, model: Any, schema_type: Any) -> None:
        super().test_structured_output(model, schema_type)

    @pytest.mark.xfail(reason=NO_STRUCTURED_OUTPUT, strict=True, raises=STRUCTURED_OUTPUT_FAILURES)
    @pytest.mark.parametrize("schema_type", STRUCTURED_OUTPUT_SCHEMAS)
    async def test_structured_output_async(self, model: Any, schema_type: Any) -> None:
        await super().test_structured_output_async(model, schema_type)

    @pytest.mark.xfail(reason=NO_STRUCTURED_OUTPUT, strict=True, raises=AssertionError)
    def test_structured_output_pydantic_2_v1(self, model: Any) -> None:
        super().test_structured_output_pydantic_2_v1(model)

    @pytest.mark.xfail(reason=NO_STRUCTURED_OUTPUT, strict=True, raises=AssertionError)
    def test_structured_output_optional_param(self, model: Any) -> None:
        super().test_structured_output_optional_param(model)
