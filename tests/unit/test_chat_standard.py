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
from langchain_seed.lc.structured import IncompleteStructuredOutput

PARAMS = {"model": "tiny-random-llama"}
NO_TOOL_CALLS = (
    "a forced or required call is decoded under the tool's argument schema, so it is well-formed, but the tiny "
    "random model fills free strings with random text past the suite's max_tokens (the call comes back invalid, "
    "saying it was cut at max_tokens), and with tool_choice='auto' it writes text, never a call (tool calls on "
    "complete replies are tested in test_structured.py)"
)
NO_STRUCTURED_OUTPUT = (
    "structured output is decoded under the schema, but the tiny random model fills the schema's free strings "
    "with random text longer than the suite's max_tokens, so the reply is cut before it completes "
    "(IncompleteStructuredOutput); with_structured_output on valid replies is tested in test_structured.py"
)
STRUCTURED_OUTPUT_SCHEMAS = ["pydantic", "typeddict", "json_schema"]
STRUCTURED_OUTPUT_FAILURES = (IncompleteStructuredOutput,)
"""The reply cut by max_tokens raises this, saying so; any other exception fails the test."""
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

    # ----- expected failures: they need a model that writes sensible replies ------------
    # Tool calls and structured output are decoded under their schemas (always well-formed
    # JSON), but the tiny random model's free strings run past the suite's short
    # max_tokens, and left to choose (tool_choice="auto") it writes text, not a call.

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

    @pytest.mark.xfail(reason=NO_STRUCTURED_OUTPUT, strict=True, raises=STRUCTURED_OUTPUT_FAILURES)
    def test_structured_output_pydantic_2_v1(self, model: Any) -> None:
        super().test_structured_output_pydantic_2_v1(model)

    @pytest.mark.xfail(reason=NO_STRUCTURED_OUTPUT, strict=True, raises=STRUCTURED_OUTPUT_FAILURES)
    def test_structured_output_optional_param(self, model: Any) -> None:
        super().test_structured_output_optional_param(model)
