"""The README's Python snippets run as pasted, in order, in one session on the default pair
(as a reader would paste them), except the ones that name what this machine cannot have."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[2] / "README.md"
NOT_RUN = {
    "HuggingFacePipeline.from_model_id": "the 'before' example: it downloads from the Hugging Face Hub",
    'draft="my-draft"': "names a draft directory the reader trains first (`distill --prompts`)",
}
"""Snippets left out, by a phrase they contain, and why."""


def _snippets() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_every_readme_snippet_is_run_or_named_as_not_runnable_here():
    blocks = _snippets()
    skipped = [b for b in blocks if any(phrase in b for phrase in NOT_RUN)]
    assert len(skipped) == len(NOT_RUN), "each NOT_RUN phrase must still match one snippet"
    assert len(blocks) - len(skipped) >= 4


def test_readme_snippets_run_as_pasted():
    namespace: dict = {}
    ran = 0
    for block in _snippets():
        if any(phrase in block for phrase in NOT_RUN):
            continue
        exec(compile(block, f"README.md snippet {ran + 1}", "exec"), namespace)
        ran += 1
    assert ran >= 4
    assert namespace["llm"].engine is not None
