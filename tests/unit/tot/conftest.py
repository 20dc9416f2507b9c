"""Fixtures for the Tree-of-Thoughts tests; the fakes live in tot_fakes.py."""

from __future__ import annotations

import pytest

from tot_fakes import ScriptedChatModel, ScriptedLLM, gsm8k_reply


@pytest.fixture
def scripted_llm() -> ScriptedLLM:
    """A text LLM scripted for the GSM8K example question."""
    return ScriptedLLM(reply=gsm8k_reply)


@pytest.fixture
def scripted_chat() -> ScriptedChatModel:
    """A chat model scripted for the GSM8K example question."""
    return ScriptedChatModel(reply=gsm8k_reply)
